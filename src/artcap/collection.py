"""Captioning many images into a resumable record file (artcap.records): one bad file never stops the
others, and a job interrupted at any point ends, when its command is run again, with exactly the file an
uninterrupted run writes.

    summary = caption_collection(captioner, ["./collection"], Path("captions.jsonl"), recursive=True)

Each image's record is named by names.encode_name of its path (relative to the input folder when one
folder is captioned), and its caption and error go through names.clean_text, so the record file is
well-formed whatever the file names and the model's vocabulary hold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

from .caption_files import DEFAULT_BATCH_SIZE, DEFAULT_NUM_WORKERS, CaptionResult, caption_paths
from .captioner import Captioner
from .decode import DecodingConfig
from .images import single_input_folder
from .names import clean_text, encode_name
from .records import JobIdentity, RecordFile, record_format
from .xmp import MetadataWriter


class CaptionEngine(Protocol):
    """Captions a job's images somewhere else (ray_job.RayEngine): one result per path, in the order
    of `paths` (the record file's order depends on it), decoded with `decoding` under `emotion`."""

    def __call__(self, paths: list[Path], decoding: DecodingConfig, emotion: str | None) -> Iterable["CaptionResult"]:
        ...


# ---- a whole collection -----------------------------------------------------------------------------

@dataclass
class CollectionSummary:
    out: Path
    total: int  # images found
    skipped: int  # already in the record file with a caption
    captioned: int  # captioned now (retried ones included)
    retried: int = 0  # had an error record, tried again now
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): inputs, then error records
    unusable_inputs: int = 0  # inputs that yielded no image (missing path, folder without images)
    seconds: float = 0.0  # time spent captioning this run

    @property
    def images_per_second(self) -> float:
        return self.captioned / self.seconds if self.seconds > 0 else 0.0


def record_key(path: Path, inputs: Sequence[str | Path]) -> str:
    """How an image is named in the record file: relative to the input folder when a single folder
    is captioned, else the path as found (so names from several inputs cannot collide), written by
    names.encode_name (names.decode_name gives back the file's exact name)."""
    root = single_input_folder(inputs)
    if root is not None:
        try:
            return encode_name(path.relative_to(root).as_posix())
        except ValueError:
            pass
    return encode_name(path.as_posix())


def caption_collection(captioner: Captioner, inputs: Sequence[str | Path], out: str | Path, *,
                       decoding: DecodingConfig | None = None, recursive: bool = False,
                       batch_size: int = DEFAULT_BATCH_SIZE, num_workers: int = DEFAULT_NUM_WORKERS,
                       emotion: str | None = None, metadata: MetadataWriter | None = None,
                       progress: bool = True, engine: "CaptionEngine | None" = None,
                       **overrides: Any) -> CollectionSummary:
    """Caption every image under `inputs` into the record file `out`, resuming what is there.

    `decoding` (default: the model's) with any DecodingConfig field given as a keyword (beam=3)
    changed decodes every caption. Images with a good record are skipped, images with an error record are tried again. Inputs that yield
    no image (missing path, empty folder) are listed in the summary's errors but not written to the
    file; unreadable images are written as error records. Raises ArtcapError when `out` is not an
    artcap record file or holds another job (model or decoding). `metadata` also writes each caption
    into XMP sidecars or the image files; a failure there is the image's error record (retried next run).
    `engine` captions the images elsewhere (ray_job.RayEngine: an actor pool on a Ray cluster); this
    process stays the only writer of the record file, so every guarantee above holds the same.
    """
    from .captioner import emotion_name
    from .images import list_images

    out = Path(out)
    record_format(out)  # a bad suffix fails before any work
    writer = metadata or MetadataWriter()
    emotion = emotion_name(emotion) if emotion is not None else None  # "" is refused, as on every surface
    asked = (emotion or "auto") if captioner.is_grounded else (emotion or "")
    identity = JobIdentity(captioner.source, captioner.resolve_decoding(decoding, **overrides),
                           asked, writer.describe())
    listing = list_images(inputs, recursive=recursive)  # entries that cannot be read become error records
    paths, input_errors = listing.paths, listing.input_errors
    with writer, RecordFile(out, identity) as records:  # the writer first: no exiftool fails before any file is touched
        old = records.latest()
        todo = [(p, k) for p, k in ((p, record_key(p, inputs)) for p in paths)
                if k not in old or old[k].get("error")]
        summary = CollectionSummary(out, total=len(paths), skipped=len(paths) - len(todo), captioned=0,
                                    retried=sum(k in old for _, k in todo), unusable_inputs=len(input_errors))
        _caption_into(records, captioner, todo, summary, writer, batch_size=batch_size, num_workers=num_workers,
                      progress=progress, engine=engine, refused=listing.refused)
        records.finish()
    summary.errors = [(str(e.source), str(e)) for e in input_errors]
    summary.errors += [(k, r["error"]) for k, r in records.latest().items() if r.get("error")]
    return summary


def _caption_into(records: RecordFile, captioner: Captioner, todo: list[tuple[Path, str]],
                  summary: CollectionSummary, writer: MetadataWriter, *, batch_size: int, num_workers: int,
                  progress: bool, engine: "CaptionEngine | None" = None,
                  refused: dict[Path, str] | None = None) -> None:
    """Caption the (path, key) pairs of `todo` in order, appending one record each; a `refused` path
    (path -> why it cannot be read) gets its error record without being read."""
    from tqdm import tqdm

    bar = tqdm(total=summary.total, initial=summary.skipped, unit="img", desc="caption", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    key_of = dict(todo)
    started = time.perf_counter()
    try:
        refused = refused or {}
        images, emotion = [p for p, _ in todo if p not in refused], records.identity.asked_emotion or None
        results = (caption_paths(captioner, images, batch_size=batch_size, num_workers=num_workers,
                                 decoding=records.identity.decoding, emotion=emotion)
                   if engine is None else engine(images, records.identity.decoding, emotion))
        for result in _with_refusals([p for p, _ in todo], refused, results):
            description, error = result.description, result.error
            if error is None and writer.enabled:
                error = writer.write(result.path, result.caption, captioner.source,
                                     records.identity.decoding.to_dict(), description.emotion)
            records.append({"path": key_of[result.path], "caption": _clean(result.caption),
                            "emotion": description.emotion if description else None,
                            "emotion_scores": description.emotion_scores if description else None,
                            **records.job, "time": _now(), "error": _clean(error)})
            summary.captioned += 1
            bar.update(1)
    finally:
        summary.seconds = time.perf_counter() - started
        bar.close()


def _with_refusals(paths: list[Path], refused: dict[Path, str], results: Iterable[CaptionResult]
                   ) -> Iterator[CaptionResult]:
    """`results` (one per path not in `refused`, in order) with an error result for each refused path
    in its place, so the record file keeps the order of `paths`."""
    results = iter(results)
    for path in paths:
        yield CaptionResult(path, None, f"{path}: {refused[path]}") if path in refused else next(results)


def _clean(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
