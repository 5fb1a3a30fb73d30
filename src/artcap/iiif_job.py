"""Captioning a IIIF manifest or collection: canvases' images fetched a few at a time while the model
works, one record per canvas in a resumable record file (records.RecordFile, keyed by canvas id),
and one AnnotationPage per manifest.

    summary = caption_iiif(captioner, "https://example.org/manifest.json", out=Path("captions.jsonl"))
    page = summary.annotation_page(summary.manifests[0])

The record file's job identity is the folder job's plus the manifest URL: resuming a file with
another manifest (or model, or decoding) is refused as for folders.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .annotations import annotation_page
from .caption_files import DEFAULT_BATCH_SIZE, DEFAULT_DECODE_BATCH_SIZE
from .captioner import Captioner, Description, emotion_name
from .decode import DecodingConfig
from .errors import ArtcapError
from .iiif import (Canvas, CanvasError, FetchLimits, IIIFClient, Manifest, TooManyCanvases, fetch_canvas_image,
                   read_manifests)
from .records import JobIdentity, RecordFile


# The model step: model-size uint8 images -> one Description each. The default runs the captioner
# here; the server passes one that goes through its single inference thread.
Describer = Callable[[list[np.ndarray]], list[Description]]


@dataclass(frozen=True)
class IIIFJobIdentity(JobIdentity):
    """A folder job's identity and the manifest (or collection) URL the canvases came from."""

    manifest: str = ""


@dataclass
class IIIFSummary:
    source: str
    model: str
    manifests: list[Manifest] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # canvas id -> its (last) record
    errors: list[tuple[str, str]] = field(default_factory=list)  # (canvas or manifest, one line)
    skipped: int = 0  # already captioned in the record file
    captioned: int = 0  # captioned (or failed) now
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(len(m.canvases) for m in self.manifests)

    @property
    def images_per_second(self) -> float:
        return self.captioned / self.seconds if self.seconds > 0 else 0.0

    def annotation_page(self, manifest: Manifest) -> dict[str, Any]:
        return annotation_page(manifest.id, [c.id for c in manifest.canvases], self.records, self.model)


def caption_iiif(captioner: Captioner, source: str, out: str | Path | None = None, *,
                 decoding: DecodingConfig | None = None, beam: int | None = None, max_len: int | None = None,
                 emotion: str | None = None, limits: FetchLimits | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 progress: bool = False, stop: threading.Event | None = None,
                 describe: Describer | None = None) -> IIIFSummary:
    """Caption every canvas of the manifest or collection at `source` (URL or path). With `out` (a
    .jsonl or .csv record file) canvases already captioned there are skipped and failed ones retried.
    Per-canvas failures are records with an error and lines in `errors`; an unreadable `source` raises.
    `stop` (set by another thread) ends the job after the images being fetched: what is done is kept.
    `describe` replaces the model step (default: this captioner, `batch_size` images per CNN call)."""
    if out is not None and Path(out).suffix.lower() not in (".jsonl", ".ndjson"):
        raise ArtcapError(f"{out}: a IIIF job's record file is JSON Lines; name it .jsonl")
    decoding = captioner.resolve_decoding(decoding, beam=beam, max_len=max_len)
    emotion = emotion_name(emotion) if emotion is not None else None  # "" is refused, as on every surface
    asked = (emotion or "auto") if captioner.is_grounded else (emotion or "")
    summary = IIIFSummary(source, captioner.source)
    with IIIFClient(limits) as client:
        canvases = _gather(source, client, summary)
        identity = IIIFJobIdentity(captioner.source, decoding, asked, "", manifest=source)
        records = RecordFile(Path(out), identity) if out is not None else None
        try:
            done = records.latest() if records else {}
            todo = [c for c in canvases if c.id not in done or done[c.id].get("error")]
            summary.skipped = len(canvases) - len(todo)
            summary.records = dict(done)
            started = time.perf_counter()
            describe = describe or local_describer(captioner, decoding, asked or None, batch_size)
            for canvas, description, error in caption_canvases(captioner, todo, client, describe,
                                                               progress=progress, stop=stop):
                record = _record(canvas, description, error, identity)
                summary.records[canvas.id] = record
                if records:
                    records.append(record)
                summary.captioned += 1
            summary.seconds = time.perf_counter() - started
            if records:
                records.finish()
        finally:
            if records:
                records.close()
    summary.errors += [(c.id, summary.records[c.id]["error"]) for c in canvases
                       if summary.records.get(c.id, {}).get("error")]
    return summary


def _gather(source: str, client: IIIFClient, summary: IIIFSummary) -> list[Canvas]:
    """Every manifest's canvases once (a canvas in two manifests is captioned once); more than
    max_canvases is refused before any image is fetched."""
    canvases: dict[str, Canvas] = {}
    for item in read_manifests(source, client):
        if isinstance(item, ArtcapError):
            summary.errors.append((source, str(item)))
            continue
        summary.manifests.append(item)
        for canvas in item.canvases:
            if len(canvases) >= client.limits.max_canvases and canvas.id not in canvases:
                raise TooManyCanvases(f"{source}: more than the limit of {client.limits.max_canvases} canvases; "
                                      f"caption its manifests one by one")
            canvases.setdefault(canvas.id, canvas)
    return list(canvases.values())


def _record(canvas: Canvas, description: Description | None, error: str | None,
            identity: IIIFJobIdentity) -> dict[str, Any]:
    return {"path": canvas.id, "caption": description.caption if description else None,
            "emotion": description.emotion if description else None,
            "emotion_scores": description.emotion_scores if description else None,
            **identity.to_dict(), "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "error": error}


def caption_canvases(captioner: Captioner, canvases: list[Canvas], client: IIIFClient, describe: Describer, *,
                     decode_batch_size: int = DEFAULT_DECODE_BATCH_SIZE,
                     progress: bool = False, stop: threading.Event | None = None) -> Iterator[tuple[Canvas, Description | None, str | None]]:
    """(canvas, description, None) or (canvas, None, one-line error) for each canvas, in order. Images
    are fetched and decoded by `client.limits.concurrency` threads, a window ahead of the model."""
    from tqdm import tqdm

    bar = tqdm(total=len(canvases), unit="canvas", desc="caption", disable=not progress, dynamic_ncols=True)
    window = 2 * max(decode_batch_size, client.limits.concurrency)  # bounds the decoded images held at once
    with ThreadPoolExecutor(client.limits.concurrency, thread_name_prefix="iiif-fetch") as pool:
        pending: deque[tuple[Canvas, Future]] = deque()
        upcoming = iter(canvases)
        chunk: list[tuple[Canvas, np.ndarray | str]] = []
        while True:
            while len(pending) < window and not (stop and stop.is_set()) and (
                    canvas := next(upcoming, None)) is not None:
                pending.append((canvas, pool.submit(_model_input, canvas, client, captioner)))
            if not pending:
                break
            canvas, future = pending.popleft()
            chunk.append((canvas, future.result()))
            if len(chunk) == decode_batch_size or not pending:
                yield from _describe_chunk(chunk, describe)
                bar.update(len(chunk))
                chunk = []
    bar.close()


def _model_input(canvas: Canvas, client: IIIFClient, captioner: Captioner) -> np.ndarray | str:
    """The canvas's image as the encoder's uint8 input, or the one-line reason it has none."""
    size = captioner.encoder.image_size
    try:
        return captioner.encoder.to_array(fetch_canvas_image(canvas, client, size))
    except CanvasError as e:
        return str(e)


def local_describer(captioner: Captioner, decoding: DecodingConfig, emotion: str | None,
                    batch_size: int = DEFAULT_BATCH_SIZE) -> Describer:
    """The model step in this thread: the CNN on `batch_size` images at a time, then one decoding for all."""
    def describe(arrays: list[np.ndarray]) -> list[Description]:
        with torch.inference_mode():
            features = torch.cat([captioner.encode(captioner.encoder.preprocess(arrays[i:i + batch_size]))
                                  for i in range(0, len(arrays), batch_size)])
            return captioner.describe(features, decoding, emotion=emotion)
    return describe


def _describe_chunk(chunk: list[tuple[Canvas, np.ndarray | str]],
                    describe: Describer) -> Iterator[tuple[Canvas, Description | None, str | None]]:
    arrays = [a for _, a in chunk if not isinstance(a, str)]
    descriptions = iter(describe(arrays) if arrays else [])
    for canvas, item in chunk:
        yield (canvas, None, item) if isinstance(item, str) else (canvas, next(descriptions), None)
