"""Captioning many images: decoding in background workers overlaps inference, one bad file never
stops the others, and a long job writes to a resumable record file.

    summary = caption_collection(captioner, ["./collection"], Path("captions.jsonl"), recursive=True)

The record file (JSON Lines or CSV) holds one record per image, in sorted input order. Records are
appended and flushed one by one and fsynced in small groups; on start an existing file is read, a
trailing partial record (kill -9, power loss) is cut away and the images it already holds are
skipped. So an interrupted job, re-run with the same command, ends with exactly the file an
uninterrupted run writes (only the time fields differ).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .captioner import Captioner
from .errors import ArtcapError
from .features import decoded_batches

# Chosen by measurement (benchmarks/bench_caption.py): small batches keep the CNN's activations in
# cache. A decoding process overlaps decoding with inference, which pays once there are cores to
# spare; on 2 cores torch already uses both and a worker only competes (44-50 img/s without one,
# 33-42 with one, on 224-500 px images).
DEFAULT_BATCH_SIZE = 2
DEFAULT_NUM_WORKERS = 0 if (os.cpu_count() or 1) <= 2 else min(4, (os.cpu_count() or 1) // 2)
DEFAULT_DECODE_BATCH_SIZE = 32

RECORD_FIELDS = ("path", "caption", "beam", "model", "time", "error")
RECORD_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

try:  # POSIX: refuse a second job appending to the same file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@dataclass
class CaptionResult:
    path: Path
    caption: str | None  # None when the image could not be read
    error: str | None = None


def caption_paths(captioner: Captioner, paths: Sequence[Path], *, batch_size: int = DEFAULT_BATCH_SIZE,
                  num_workers: int = DEFAULT_NUM_WORKERS, decode_batch_size: int = DEFAULT_DECODE_BATCH_SIZE,
                  beam: int | None = None, max_len: int | None = None) -> Iterator[CaptionResult]:
    """Yield one result per path, in the order of `paths`.

    The CNN runs on `batch_size` images at a time (small batches stay in cache and are fastest on a
    CPU); their features are pooled until `decode_batch_size` images are waiting, then captioned
    together (each decoding step reads the whole vocabulary projection, so it pays to share it).
    """
    if batch_size < 1:
        raise ArtcapError(f"batch size must be 1 or more, got {batch_size}")
    if decode_batch_size < 1:
        raise ArtcapError(f"decode batch size must be 1 or more, got {decode_batch_size}")
    if num_workers < 0:
        raise ArtcapError(f"number of workers must be 0 or more, got {num_workers}")
    if not paths:
        return
    pending: list[tuple[int, torch.Tensor | str]] = []  # (index, features [F] or error), in index order
    waiting = 0  # features in `pending`

    def flush() -> Iterator[CaptionResult]:
        features = [f for _, f in pending if isinstance(f, torch.Tensor)]
        captions = iter(captioner.caption_features(torch.stack(features), beam, max_len) if features else [])
        for i, item in pending:
            yield CaptionResult(paths[i], None, item) if isinstance(item, str) else CaptionResult(paths[i], next(captions))
        pending.clear()

    with torch.inference_mode():
        # The DataLoader keeps batches in order and each batch is handled in index order, so the
        # results come out in exactly the order of `paths` (a resumed job depends on it).
        for indices, batch, errors in decoded_batches(paths, captioner.encoder, batch_size, num_workers):
            features = {}
            if batch is not None:
                pooled = captioner.encode(batch)
                features = dict(zip(indices, pooled))
            for i in sorted([*indices, *errors]):
                pending.append((i, errors[i] if i in errors else features[i]))
            waiting += len(features)
            if waiting >= decode_batch_size:
                yield from flush()
                waiting = 0
        yield from flush()


# ---- the record file ------------------------------------------------------------------------------

def record_format(path: Path) -> str:
    """'jsonl' or 'csv', from the file's suffix."""
    fmt = RECORD_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ArtcapError(f"{path}: unknown output format; name the file .jsonl (JSON Lines) or .csv")
    return fmt


class RecordFile:
    """An append-only file of caption records that survives any interruption.

    Opening it reads what is there, cuts away a trailing partial record and keeps the file locked
    against a second writer. `append` writes and flushes one complete record (so kill -9 loses
    nothing already written); every `sync_every` records or `sync_seconds` the file is fsynced
    (so a power loss loses at most that much, never leaves half a record once reopened).
    """

    def __init__(self, path: Path, *, sync_every: int = 16, sync_seconds: float = 2.0):
        self.path = Path(path)
        self.format = record_format(self.path)
        self.sync_every, self.sync_seconds = sync_every, sync_seconds
        self.records: list[dict[str, Any]] = []  # what the file held when opened
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._file = open(self.path, "a+b")
        except OSError as e:
            raise ArtcapError(f"{self.path}: cannot open the output file ({e.strerror or e})") from None
        try:
            self._lock()
            self._load()
        except BaseException:
            self._file.close()
            raise

    def _lock(self) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ArtcapError(f"{self.path}: another artcap job is writing to this file; wait for it "
                              f"or choose another --out") from None

    def _load(self) -> None:
        self._file.seek(0)
        data = self._file.read()
        complete_end = 0  # byte offset just past the last complete record
        pending_start = 0
        header_seen = False
        position = 0
        # Split on b"\n" only: a carriage return inside a quoted CSV field is data, not a line end.
        while (newline := data.find(b"\n", position)) >= 0:
            position = newline + 1
            chunk = data[pending_start:position]
            # A CSV record may span lines inside a quoted field: it is complete once its quotes pair up.
            if self.format == "csv" and chunk.count(b'"') % 2:
                continue
            record = self._parse(chunk, header_seen)
            if record is None:
                line_no = data.count(b"\n", 0, pending_start) + 1
                self._refuse(f"line {line_no} is not a caption record")
            if record == "header":
                header_seen = True
            else:
                self.records.append(record)
            complete_end = pending_start = position
        if complete_end < len(data):  # cut the partial record away before appending after it
            tail, start = data[complete_end:], self._first_bytes()
            if complete_end == 0 and not (tail.startswith(start) or start.startswith(tail)):
                self._refuse("it does not start like a caption record file")  # never cut a stranger's file
            self._file.truncate(complete_end)
            os.fsync(self._file.fileno())
        self._file.seek(0, os.SEEK_END)
        if self.format == "csv" and not header_seen:
            self._write(self._encode_csv(RECORD_FIELDS))
            self.sync()

    def _refuse(self, why: str) -> None:
        raise ArtcapError(f"{self.path}: {why}; it is damaged or was not written by artcap: move it away "
                          f"or choose another --out")

    def _first_bytes(self) -> bytes:
        return b'{"path": ' if self.format == "jsonl" else self._encode_csv(RECORD_FIELDS)

    def _parse(self, chunk: bytes, header_seen: bool) -> dict[str, Any] | str | None:
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if self.format == "jsonl":
            try:
                record = json.loads(text)
            except ValueError:
                return None
            return record if isinstance(record, dict) and isinstance(record.get("path"), str) else None
        rows = list(csv.reader(io.StringIO(text, newline="")))
        if len(rows) != 1:
            return None
        row = rows[0]
        if not header_seen:
            return "header" if tuple(row) == RECORD_FIELDS else None
        if len(row) != len(RECORD_FIELDS):
            return None
        record: dict[str, Any] = dict(zip(RECORD_FIELDS, row))
        for key in ("caption", "error"):
            record[key] = record[key] or None
        record["beam"] = int(record["beam"]) if record["beam"].isdigit() else None
        return record

    @staticmethod
    def _encode_csv(values: Sequence[Any]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        return buffer.getvalue().encode("utf-8")

    def _write(self, data: bytes) -> None:
        # One write of the whole record, then flush: the OS holds complete records only.
        self._file.write(data)
        self._file.flush()

    def append(self, record: dict[str, Any]) -> None:
        if self.format == "jsonl":
            data = (json.dumps({k: record.get(k) for k in RECORD_FIELDS}, ensure_ascii=False) + "\n").encode("utf-8")
        else:
            data = self._encode_csv(["" if record.get(k) is None else record[k] for k in RECORD_FIELDS])
        self._write(data)
        self._unsynced += 1
        if self._unsynced >= self.sync_every or time.monotonic() - self._last_sync >= self.sync_seconds:
            self.sync()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            try:
                self.sync()
            finally:
                self._file.close()  # closing releases the lock

    def __enter__(self) -> "RecordFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- a whole collection -----------------------------------------------------------------------------

@dataclass
class CollectionSummary:
    out: Path
    total: int  # images found
    skipped: int  # already in the record file
    captioned: int  # captioned now
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), old and new
    unusable_inputs: int = 0  # inputs that yielded no image (missing path, folder without images)
    seconds: float = 0.0  # time spent captioning this run

    @property
    def images_per_second(self) -> float:
        return self.captioned / self.seconds if self.seconds > 0 else 0.0


def record_key(path: Path, inputs: Sequence[str | Path]) -> str:
    """How an image is named in the record file: relative to the input folder when a single folder
    is captioned, else the path as found (so names from several inputs cannot collide)."""
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        try:
            return path.relative_to(Path(inputs[0])).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def caption_collection(captioner: Captioner, inputs: Sequence[str | Path], out: str | Path, *,
                       recursive: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
                       num_workers: int = DEFAULT_NUM_WORKERS, beam: int | None = None,
                       max_len: int | None = None, progress: bool = True) -> CollectionSummary:
    """Caption every image under `inputs` into the record file `out`, resuming what is there.

    Inputs that yield no image (missing path, empty folder) are listed in the summary's errors but
    not written to the file; unreadable images are written as error records. Raises ArtcapError
    when the file was written with another model or decoding (mixing them would be a silent lie).
    """
    from tqdm import tqdm

    from .images import find_images

    out = Path(out)
    record_format(out)  # a bad suffix fails before any work
    paths, input_errors = find_images(inputs, recursive=recursive)
    errors = [(str(e.source), str(e)) for e in input_errors]
    decoding = captioner.config.get("decoding", {})
    beam_used = beam if beam is not None else int(decoding.get("beam", 1))

    with RecordFile(out) as records:
        _check_same_job(records, captioner.model_id, beam_used)
        done = {r["path"] for r in records.records}
        errors += [(r["path"], r["error"]) for r in records.records if r.get("error")]
        keys = [record_key(p, inputs) for p in paths]
        todo = [(p, k) for p, k in zip(paths, keys) if k not in done]
        summary = CollectionSummary(out, total=len(paths), skipped=len(paths) - len(todo), captioned=0,
                                    unusable_inputs=len(input_errors))
        bar = tqdm(total=len(paths), initial=summary.skipped, unit="img", desc="caption", disable=not progress,
                   dynamic_ncols=True, smoothing=0.1)
        key_of = dict(todo)
        started = time.perf_counter()
        try:
            for result in caption_paths(captioner, [p for p, _ in todo], batch_size=batch_size,
                                        num_workers=num_workers, beam=beam, max_len=max_len):
                key = key_of[result.path]
                records.append({"path": key, "caption": result.caption, "beam": beam_used,
                                "model": captioner.model_id, "time": _now(), "error": result.error})
                if result.error:
                    errors.append((key, result.error))
                summary.captioned += 1
                bar.update(1)
        finally:
            summary.seconds = time.perf_counter() - started
            bar.close()
    summary.errors = errors
    return summary


def _check_same_job(records: RecordFile, model_id: str, beam: int) -> None:
    for r in records.records[:1]:
        if r.get("model") != model_id or r.get("beam") != beam:
            raise ArtcapError(f"{records.path}: holds captions by model {r.get('model')} with beam {r.get('beam')}, "
                              f"not {model_id} with beam {beam}; resume with the same options or choose another --out")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
