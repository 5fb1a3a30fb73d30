"""Captioning many images: decoding in background workers overlaps inference, one bad file never
stops the others, and a long job writes to a resumable record file.

    summary = caption_collection(captioner, ["./collection"], Path("captions.jsonl"), recursive=True)

The record file (JSON Lines or CSV) stays plain: pandas or jq read it as it is. Beside it,
`<out>.job.json` (the job manifest) says that artcap wrote it and with which settings:

    {"format": "artcap-caption-records", "version": 1,
     "job": {"model": "...", "beam": 1, "max_len": 30, "length_alpha": 0.7, ...},
     "fields": ["path", "caption", "model", "beam", "max_len", "length_alpha", ..., "time", "error"]}

("job" is JobIdentity.to_dict(): the model and every DecodingConfig setting.)

The manifest is written (atomically) before the first record, so a non-empty record file without
one was not written by artcap and is never touched. Each record holds one image's caption (or its
error) and the settings that made it. Records are appended and flushed one by one and fsynced in
small groups. On start, once the manifest shows the file is artcap's and the job is the same
(same model and decoding: anything else is refused), a trailing partial record (kill -9, power
loss, disk full) is cut away; images with a good record are skipped and images whose record is an
error are tried again, their new record appended (when reading, the last record for a path wins).
A run that finishes, if it superseded a record, rewrites the file atomically with one record per
image (its last) in the order the images were first written, so an interrupted job re-run with the same command ends with exactly
the file an uninterrupted run writes (only the time fields differ).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import torch

from .captioner import Captioner, Description
from .decode import DecodingConfig
from .errors import ArtcapError
from .features import encoded_batches
from .images import single_input_folder
from .io import atomic_path, atomic_write_json
from .xmp import MetadataWriter

# Chosen by measurement (benchmarks/bench_caption.py): small batches keep the CNN's activations in
# cache. A decoding process overlaps decoding with inference, which pays once there are cores to
# spare; on 2 cores torch already uses both and a worker only competes (44-50 img/s without one,
# 33-42 with one, on 224-500 px images).
DEFAULT_BATCH_SIZE = 2
DEFAULT_NUM_WORKERS = 0 if (os.cpu_count() or 1) <= 2 else min(4, (os.cpu_count() or 1) // 2)
DEFAULT_DECODE_BATCH_SIZE = 32
OVERLAP_AHEAD = DEFAULT_DECODE_BATCH_SIZE  # CNN batches the background thread may encode ahead of the decoder

RECORD_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

try:  # POSIX: refuse a second job appending to the same file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class CaptionEngine(Protocol):
    """Captions a job's images somewhere else (ray_job.RayEngine): one result per path, in the order
    of `paths` (the record file's order depends on it), decoded with `decoding` under `emotion`."""

    def __call__(self, paths: list[Path], decoding: DecodingConfig, emotion: str | None) -> Iterable["CaptionResult"]:
        ...


@dataclass
class CaptionResult:
    path: Path
    description: Description | None  # None when the image could not be read
    error: str | None = None

    @property
    def caption(self) -> str | None:
        return self.description.caption if self.description else None


def caption_paths(captioner: Captioner, paths: Sequence[Path], *, batch_size: int = DEFAULT_BATCH_SIZE,
                  num_workers: int = DEFAULT_NUM_WORKERS, decode_batch_size: int = DEFAULT_DECODE_BATCH_SIZE,
                  decoding: DecodingConfig | None = None, emotion: str | None = None,
                  with_attention: bool = False, overlap: bool = True, **overrides: Any) -> Iterator[CaptionResult]:
    """Yield one result per path, in the order of `paths`, captioned with `decoding` (default: the
    model's) with any DecodingConfig field given as a keyword changed, under `emotion` (grounded models; None = the model's "auto");
    `with_attention`: with each word's attention map.

    The CNN runs on `batch_size` images at a time (small batches stay in cache and are fastest on a
    CPU); their features are pooled until `decode_batch_size` images are waiting, then captioned
    together (each decoding step reads the whole vocabulary projection, so it pays to share it).
    `overlap`: the CNN runs in a background thread, ahead of decoding (False: in this thread, one after
    the other; the captions are the same either way).
    """
    if batch_size < 1:
        raise ArtcapError(f"batch size must be 1 or more, got {batch_size}")
    if decode_batch_size < 1:
        raise ArtcapError(f"decode batch size must be 1 or more, got {decode_batch_size}")
    if num_workers < 0:
        raise ArtcapError(f"number of workers must be 0 or more, got {num_workers}")
    decoding = captioner.resolve_decoding(decoding, **overrides)
    if not paths:
        return
    pending: list[tuple[int, torch.Tensor | str]] = []  # (index, features [F] or error), in index order
    waiting = 0  # features in `pending`

    def flush() -> Iterator[CaptionResult]:
        features = [f for _, f in pending if isinstance(f, torch.Tensor)]
        captions = iter(captioner.describe(torch.stack(features), decoding, emotion=emotion,
                                           with_attention=with_attention) if features else [])
        for i, item in pending:
            yield CaptionResult(paths[i], None, item) if isinstance(item, str) else CaptionResult(paths[i], next(captions))
        pending.clear()

    with torch.inference_mode():
        # The DataLoader keeps batches in order and each batch is handled in index order, so the
        # results come out in exactly the order of `paths` (a resumed job depends on it).
        # The image network runs ahead in a background thread while this one decodes captions
        # (features.encoded_batches; `overlap` False: one after the other, in this thread).
        for indices, pooled, errors in encoded_batches(paths, captioner.encoder, captioner.encode, batch_size,
                                                       num_workers, ahead=OVERLAP_AHEAD if overlap else 0):
            features = dict(zip(indices, pooled)) if pooled is not None else {}
            for i in sorted([*indices, *errors]):
                pending.append((i, errors[i] if i in errors else features[i]))
            waiting += len(features)
            if waiting >= decode_batch_size:
                yield from flush()
                waiting = 0
        yield from flush()


# ---- the job: every setting that makes a record file's captions what they are ---------------------

@dataclass(frozen=True)
class JobIdentity:
    """What a folder job's captions depend on besides the images. One record file holds one job:
    resuming it with any other identity is refused (a file mixing two would be a silent lie). It is
    compared as a whole through `to_dict`, so a new setting is one more field here."""

    model: str = ""  # the model's id, or hf:OWNER/NAME@COMMIT for a Hub model
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    asked_emotion: str = ""  # grounded models: the emotion asked for ("auto" or a name); "" for ungrounded ones
    metadata: str = ""  # what is written beside the records: XMP sidecars, embedded fields (xmp.MetadataWriter)

    def to_dict(self) -> dict[str, Any]:
        """Flat {setting: value}; a nested config (DecodingConfig) contributes each of its settings."""
        flat: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            flat.update(value.to_dict() if hasattr(value, "to_dict") else {f.name: value})
        return flat

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """'max_len was 30, now 12' for each setting in which `saved` (another job's to_dict) differs."""
        now = self.to_dict()
        names = [*now, *(k for k in saved if k not in now)]
        return [f"{k} was {saved.get(k, '(not set)')}, now {now.get(k, '(not set)')}"
                for k in names if saved.get(k, _UNSET) != now.get(k, _UNSET)]


_UNSET = object()
# "emotion": what a grounded model captioned under; "emotion_scores": the emotion classifier's distribution
# (in CSV, as a JSON object).
RECORD_FIELDS = ("path", "caption", "emotion", "emotion_scores", *JobIdentity().to_dict(), "time", "error")


# ---- the manifest beside the record file --------------------------------------------------------

MANIFEST_FORMAT = "artcap-caption-records"
MANIFEST_VERSION = 1


def manifest_path(records: Path) -> Path:
    """`captions.jsonl` -> `captions.jsonl.job.json`."""
    return records.with_name(records.name + ".job.json")


def _not_ours(records: Path, why: str) -> ArtcapError:
    return ArtcapError(f"{records}: not an artcap record file ({why}); move it away or choose another --out")


def _write_error(path: Path, e: OSError) -> ArtcapError:
    """One line for a failed write; a full disk (or file size limit) says how to carry on."""
    if e.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return ArtcapError(f"{path}: cannot write ({e.strerror}); every complete record is kept: free some "
                           f"space and run the same command again to resume")
    return ArtcapError(f"{path}: cannot write ({e.strerror or e})")


@dataclass(frozen=True)
class JobManifest:
    """`<out>.job.json`: positive proof that artcap wrote the record file, and the job it holds."""

    job: dict[str, Any]  # JobIdentity.to_dict()
    fields: tuple[str, ...] = RECORD_FIELDS

    @classmethod
    def read(cls, records: Path) -> "JobManifest | None":
        """The manifest beside `records`, None when there is none; ArtcapError when it is not artcap's."""
        path = manifest_path(records)
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # ValueError: not UTF-8 or not JSON
            raise _not_ours(records, f"{path.name} cannot be read: {getattr(e, 'strerror', None) or e}") from None
        if not (isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT
                and isinstance(data.get("job"), dict) and isinstance(data.get("fields"), list)):
            raise _not_ours(records, f"{path.name} is not an artcap job manifest")
        if data.get("version") != MANIFEST_VERSION:
            raise ArtcapError(f"{records}: written by another artcap version (record format {data.get('version')}, "
                              f"this one reads {MANIFEST_VERSION}); choose another --out")
        return cls(data["job"], tuple(data["fields"]))

    def write(self, records: Path) -> None:
        data = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "job": self.job, "fields": list(self.fields)}
        try:
            atomic_write_json(manifest_path(records), data)
        except OSError as e:
            raise _write_error(manifest_path(records), e) from None

    def check_resumes(self, records: Path, identity: JobIdentity) -> None:
        """Refuse to add `identity`'s records to a file holding another job's."""
        changed = identity.differences(self.job)
        if changed:
            raise ArtcapError(f"{records}: holds another job's captions ({'; '.join(changed)}); resume with the "
                              f"same options or choose another --out")
        if self.fields != RECORD_FIELDS:
            raise ArtcapError(f"{records}: its records have other fields ({', '.join(self.fields)}); it was "
                              f"written by another artcap version: choose another --out")


# ---- the record file ------------------------------------------------------------------------------

def record_format(path: Path) -> str:
    """'jsonl' or 'csv', from the file's suffix."""
    fmt = RECORD_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ArtcapError(f"{path}: unknown output format; name the file .jsonl (JSON Lines) or .csv")
    return fmt


class RecordFile:
    """An append-only file of caption records, for one job, that survives any interruption.

    Opening it locks it against a second writer, then checks its manifest: an empty file starts a
    new job, a non-empty one must be this job's. Only then is it read and a trailing partial record
    cut away. `append` writes and flushes one complete record (so kill -9 loses nothing already
    written; a failed write is undone); every `sync_every` records or `sync_seconds` the file is
    fsynced. `finish` rewrites it atomically with one record per path (the last one written).
    """

    def __init__(self, path: Path, identity: JobIdentity, *, sync_every: int = 16, sync_seconds: float = 2.0):
        self.path = Path(path)
        self.format = record_format(self.path)
        self.identity = identity
        self.job = identity.to_dict()
        self.sync_every, self.sync_seconds = sync_every, sync_seconds
        self.records: list[dict[str, Any]] = []  # every record in file order, superseded ones too
        self._raw: list[bytes] = []  # each record's bytes, as in the file
        self._end = 0  # byte offset just past the last complete record
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._open_locked()
        try:
            self._claim()
            self._load()
        except BaseException:
            self._file.close()
            raise

    # -- opening: lock, prove ownership, read, repair

    def _open_locked(self) -> io.FileIO:
        for _ in range(10):
            try:  # unbuffered: a record reaches the OS in one piece or a failed write can be undone
                file = open(self.path, "a+b", buffering=0)
            except OSError as e:
                raise ArtcapError(f"{self.path}: cannot open the output file ({e.strerror or e})") from None
            try:
                self._lock(file)
                if _same_file(self.path, file):
                    return file
            except BaseException:
                file.close()
                raise
            file.close()  # a finishing job replaced the file while we waited: open the new one
        raise ArtcapError(f"{self.path}: the file keeps being replaced by another program; choose another --out")

    def _lock(self, file: io.FileIO) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ArtcapError(f"{self.path}: another artcap job is writing to this file; wait for it "
                              f"or choose another --out") from None

    def _claim(self) -> None:
        """Make sure the file is this job's before anything in it is changed."""
        manifest = JobManifest.read(self.path)
        if os.fstat(self._file.fileno()).st_size == 0:  # a new job (or one killed before its first record)
            JobManifest(self.job).write(self.path)
        elif manifest is None:
            raise _not_ours(self.path, f"no {manifest_path(self.path).name} beside it")
        else:
            manifest.check_resumes(self.path, self.identity)
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """A job killed while rewriting the file (or its manifest) leaves its temporary file behind
        (io.atomic_path's `.<name>.<8 random characters>.tmp`); under the lock none is in use."""
        names = {self.path.name, manifest_path(self.path).name}
        for entry in self.path.parent.iterdir():
            match = _TEMPORARY.fullmatch(entry.name)
            if match and match.group(1) in names:
                entry.unlink(missing_ok=True)

    def _load(self) -> None:
        self._file.seek(0)
        data = self._file.readall()
        self._end, header_seen = self._scan(data)
        if self._end < len(data):  # cut the partial record away before appending after it
            self._file.truncate(self._end)
            os.fsync(self._file.fileno())
        if self.format == "csv" and not header_seen:
            self._write(self._encode_csv(RECORD_FIELDS))
            self.sync()

    def _scan(self, data: bytes) -> tuple[int, bool]:
        """Read the complete records into self.records; (offset past the last one, header seen)."""
        complete_end = 0
        header_seen = False
        position = 0
        # Split on b"\n" only: a carriage return inside a quoted CSV field is data, not a line end.
        while (newline := data.find(b"\n", position)) >= 0:
            position = newline + 1
            chunk = data[complete_end:position]
            # A CSV record may span lines inside a quoted field: it is complete once its quotes pair up.
            if self.format == "csv" and chunk.count(b'"') % 2:
                continue
            record = self._parse(chunk, header_seen)
            if record is None:
                line_no = data.count(b"\n", 0, complete_end) + 1
                raise ArtcapError(f"{self.path}: line {line_no} is not a caption record; the file is damaged: "
                                  f"repair it, or move it away and start again")
            if record == "header":
                header_seen = True
            else:
                self.records.append(record)
                self._raw.append(chunk)
            complete_end = position
        return complete_end, header_seen

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
        if not header_seen:
            return "header" if tuple(rows[0]) == RECORD_FIELDS else None
        return self._from_csv_row(rows[0])

    def _from_csv_row(self, row: list[str]) -> dict[str, Any] | None:
        if len(row) != len(RECORD_FIELDS):
            return None
        record: dict[str, Any] = {k: v or None for k, v in zip(RECORD_FIELDS, row)}
        if record["emotion_scores"] is not None:
            try:
                record["emotion_scores"] = json.loads(record["emotion_scores"])
            except ValueError:
                return None
        for key, like in self.job.items():  # the job's settings have the types they had in JSON
            if isinstance(like, str):
                record[key] = record[key] or ""  # CSV cannot tell "" from a missing value; the job's are strings
            elif isinstance(like, bool):  # csv wrote str(True); bool("False") would be True
                flag = {"true": True, "false": False}.get(str(record[key]).lower())
                if flag is None:
                    return None
                record[key] = flag
            elif record[key] is not None:
                try:
                    record[key] = type(like)(record[key])
                except ValueError:
                    return None
        return record

    # -- writing

    @staticmethod
    def _encode_csv(values: Sequence[Any]) -> bytes:
        buffer = io.StringIO()
        # The csv module quotes only the line terminator's characters, so a lone "\r" would go out bare and
        # read back as a line end: a row holding one has every field quoted.
        quoting = csv.QUOTE_ALL if any("\r" in str(v) for v in values) else csv.QUOTE_MINIMAL
        csv.writer(buffer, lineterminator="\n", quoting=quoting).writerow(values)
        return buffer.getvalue().encode("utf-8")

    def _encode(self, record: dict[str, Any]) -> bytes:
        if self.format == "jsonl":
            return (json.dumps({k: record.get(k) for k in RECORD_FIELDS}, ensure_ascii=False) + "\n").encode("utf-8")
        values = {**record, "emotion_scores": json.dumps(record["emotion_scores"]) if record.get("emotion_scores") else None}
        return self._encode_csv(["" if values.get(k) is None else values[k] for k in RECORD_FIELDS])

    def _write(self, data: bytes) -> None:
        """Write all of `data` at the end; if that fails (disk full), cut back to the last complete record."""
        try:
            written = 0
            while written < len(data):
                written += self._file.write(data[written:])
        except OSError as e:
            try:
                self._file.truncate(self._end)
            except OSError:
                pass  # the next run cuts the partial record away
            raise _write_error(self.path, e) from None
        self._end += len(data)

    def append(self, record: dict[str, Any]) -> None:
        data = self._encode(record)
        self._write(data)
        self.records.append({k: record.get(k) for k in RECORD_FIELDS})
        self._raw.append(data)
        self._unsynced += 1
        if self._unsynced >= self.sync_every or time.monotonic() - self._last_sync >= self.sync_seconds:
            self.sync()

    def sync(self) -> None:
        try:
            os.fsync(self._file.fileno())
        except OSError as e:
            raise _write_error(self.path, e) from None
        self._unsynced = 0
        self._last_sync = time.monotonic()

    # -- reading back, finishing

    def latest(self) -> dict[str, dict[str, Any]]:
        """{path: its last record}, in the order the paths were first written."""
        last: dict[str, dict[str, Any]] = {}
        for record in self.records:
            last[record["path"]] = record  # an existing key keeps its place
        return last

    def finish(self) -> None:
        """Sync and, if any record was superseded (a retried image), atomically rewrite the file with
        each path's last record in its first place; then close. The good records keep their bytes."""
        self.sync()
        last_index = {r["path"]: i for i, r in enumerate(self.records)}
        if len(last_index) < len(self.records):
            header = self._encode_csv(RECORD_FIELDS) if self.format == "csv" else b""
            compact = header + b"".join(self._raw[last_index[p]] for p in self.latest())
            try:
                with atomic_path(self.path) as tmp:
                    tmp.write_bytes(compact)
            except OSError as e:
                raise _write_error(self.path, e) from None
        self.close()

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


_TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


def _same_file(path: Path, file: io.FileIO) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(file.fileno())
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


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
    is captioned, else the path as found (so names from several inputs cannot collide)."""
    root = single_input_folder(inputs)
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.as_posix()


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
            records.append({"path": key_of[result.path], "caption": result.caption,
                            "emotion": description.emotion if description else None,
                            "emotion_scores": description.emotion_scores if description else None,
                            **records.job, "time": _now(), "error": error})
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
