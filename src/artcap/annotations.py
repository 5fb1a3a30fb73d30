"""Captions as IIIF viewers show them: a W3C Web Annotation `AnnotationPage` (Presentation 3 context),
one `describing` annotation per captioned canvas.

    {"@context": "http://iiif.io/api/presentation/3/context.json", "id": ".../artcap-captions",
     "type": "AnnotationPage", "generator": {"id": ARTCAP_ID, "type": "Software", ...},
     "items": [{"id": ".../artcap-captions/1", "type": "Annotation", "motivation": "describing",
                "creator": {"id": ARTCAP_ID, "type": "Software", "name": "artcap (model default)"},
                "body": [{"type": "TextualBody", "value": "the caption", "language": "en", "format": "text/plain"},
                         {"type": "TextualBody", "value": "contentment", "purpose": "tagging", ...}],
                "emotion_scores": {"amusement": 0.02, ...},
                "target": "https://.../canvas/1"}]}

The emotion a caption was made under is a second body (purpose `tagging`: viewers list it as a
tag); the classifier's scores, which no Web Annotation term describes, are the extension field
`emotion_scores`. The page's `generator` is artcap's mark: an existing file is replaced only when
it carries it (a file artcap did not write is never touched).
"""

from __future__ import annotations

import json
import re
import hashlib
from pathlib import Path
from typing import Any, Mapping

from . import __version__
from .errors import ArtcapError
from .io import atomic_write_json

PRESENTATION_CONTEXT = "http://iiif.io/api/presentation/3/context.json"
ARTCAP_ID = "https://github.com/artcap/artcap"
CAPTION_LANGUAGE = "en"  # every shipped model was trained on English (ArtEmis) captions


def generator() -> dict[str, str]:
    return {"id": ARTCAP_ID, "type": "Software", "name": f"artcap {__version__}"}


def annotation_page(manifest_id: str, canvases: list[str], records: Mapping[str, Mapping[str, Any]],
                    model: str) -> dict[str, Any]:
    """The page for one manifest: an annotation for each of `canvases` (ids, in order) whose record
    (record-file fields: caption, emotion, emotion_scores, error) holds a caption."""
    page_id = f"{manifest_id.split('#')[0]}#artcap-captions"
    items = []
    for canvas in canvases:
        record = records.get(canvas)
        if record and record.get("caption") and not record.get("error"):
            items.append(_annotation(f"{page_id}-{len(items) + 1}", canvas, record, model))
    return {"@context": PRESENTATION_CONTEXT, "id": page_id, "type": "AnnotationPage",
            "generator": generator(), "items": items}


def _annotation(annotation_id: str, canvas: str, record: Mapping[str, Any], model: str) -> dict[str, Any]:
    body: list[dict[str, Any]] = [{"type": "TextualBody", "value": record["caption"], "language": CAPTION_LANGUAGE,
                                   "format": "text/plain"}]
    if record.get("emotion"):
        body.append({"type": "TextualBody", "value": record["emotion"], "purpose": "tagging",
                     "language": CAPTION_LANGUAGE, "format": "text/plain"})
    annotation = {"id": annotation_id, "type": "Annotation", "motivation": "describing",
                  "creator": {"id": ARTCAP_ID, "type": "Software", "name": f"artcap (model {model})"},
                  "body": body, "target": canvas}
    if record.get("emotion_scores"):
        annotation["emotion_scores"] = dict(record["emotion_scores"])
    return annotation


def is_artcap_page(path: Path) -> bool:
    """Does the file at `path` carry artcap's generator mark (so artcap may replace it)?"""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("generator"), dict) and data["generator"].get("id") == ARTCAP_ID


def check_page_target(path: Path) -> None:
    """Refuse, before any work, a page file artcap may not write: another suffix, or someone else's file."""
    if path.suffix.lower() not in (".json", ".jsonld"):
        raise ArtcapError(f"{path}: name the annotation page .json (or .jsonld)")
    if path.exists() and not is_artcap_page(path):
        raise ArtcapError(f"{path}: exists and was not written by artcap (no artcap generator in it); move it away "
                          f"or choose another file")


def write_annotation_page(path: str | Path, page: dict[str, Any]) -> None:
    """Write `page` atomically; an existing file is replaced only when artcap wrote it."""
    path = Path(path)
    check_page_target(path)
    try:
        atomic_write_json(path, page)
    except OSError as e:
        raise ArtcapError(f"{path}: cannot write the annotation page ({e.strerror or e})") from None


def page_file_name(manifest_id: str) -> str:
    """A file name for a manifest's page in --annotations-dir: readable, and unique per manifest id."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", manifest_id.split("://", 1)[-1].removesuffix(".json")).strip("-.")
    digest = hashlib.sha256(manifest_id.encode("utf-8")).hexdigest()[:8]
    return f"{stem[-60:].strip('-.') or 'manifest'}-{digest}.annotations.json"
