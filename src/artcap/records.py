"""Record files: a job's results in a JSON Lines journal that survives any interruption.

    with RecordFile(Path("captions.jsonl"), identity) as records:
        records.append({"path": "a.jpg", "caption": "...", **identity.to_dict(), "time": ..., "error": None})
        records.finish()

What is on disk, for `--out captions.jsonl` and for `--out captions.csv`:

    captions.jsonl                   the journal: one JSON object per line, one line per record
    captions.jsonl.job.json          the manifest: proof that artcap wrote the journal, and the job it holds

    captions.csv.journal.jsonl       the journal (the same format)
    captions.csv.job.json            the manifest
    captions.csv                     rendered from the journal when the job finishes

The journal is the only file a job appends to: a CSV output is a rendering of it, written atomically
when the job finishes (re-run the finished job's command to render it again). The manifest names the
journal and the SHA-256 of the CSV artcap rendered last, so a CSV someone changed afterwards (saved from a
spreadsheet, say) is recognised as theirs and never overwritten.

    {"format": "artcap-caption-records", "version": 2,
     "job": {"model": "...", "beam": 1, "max_len": 30, ...}, "fields": ["path", "caption", ...],
     "journal": "captions.csv.journal.jsonl", "rendered_sha256": "..." }

("job" is JobIdentity.to_dict(): the model and every DecodingConfig setting.)

The guarantees, and how each is kept:
- A file artcap did not write is never touched: the manifest is written (atomically) before the first
  record, so a non-empty journal without one is someone else's; a CSV that is not the one artcap rendered
  is someone else's.
- One journal holds one job: resuming with another identity is refused naming each differing setting,
  and every record must carry the job's settings, so records of another job added to the file
  (`cat other.jsonl >> captions.jsonl`) are refused naming their line, before anything is changed.
- Nothing is lost: records are appended and flushed one by one (a failed write is cut back), fsynced in
  small groups; on opening, a trailing partial record (kill -9, power loss, full disk) is cut away.
  When reading, the last record for a path wins; a job that superseded a record rewrites the journal
  atomically with each path's last record in its first place, so an interrupted job re-run with the same
  command ends with exactly the file an uninterrupted run writes (only the time fields differ).
- The journal is read as written by artcap or by an editor that saved it with a byte-order mark and CRLF
  line ends; a blank line is skipped.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from .decode import DecodingConfig
from .errors import ArtcapError
from .io import atomic_path, atomic_write_bytes, atomic_write_json
from .names import clean_text, spreadsheet_cell

RECORD_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
MANIFEST_FORMAT = "artcap-caption-records"
MANIFEST_VERSION = 2  # 2: a CSV output is rendered from a JSON Lines journal; names are names.encode_name's
UTF8_BOM = b"\xef\xbb\xbf"

try:  # POSIX: refuse a second job appending to the same file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


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


def record_fields(job: dict[str, Any]) -> tuple[str, ...]:
    """A record's fields: the image and its caption, every setting of the `job` it belongs to, when, and
    any error. "emotion": what a grounded model captioned under; "emotion_scores": the emotion
    classifier's distribution (in CSV, as a JSON object)."""
    return ("path", "caption", "emotion", "emotion_scores", *job, "time", "error")


RECORD_FIELDS = record_fields(JobIdentity().to_dict())


def record_format(path: Path) -> str:
    """'jsonl' or 'csv', from the file's suffix."""
    fmt = RECORD_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ArtcapError(f"{path}: unknown output format; name the file .jsonl (JSON Lines) or .csv")
    return fmt


def manifest_path(out: Path) -> Path:
    """`captions.jsonl` -> `captions.jsonl.job.json`."""
    return out.with_name(out.name + ".job.json")


def journal_path(out: Path) -> Path:
    """The file records are appended to: `out` itself for JSON Lines, `captions.csv.journal.jsonl` for a CSV."""
    return out if record_format(out) == "jsonl" else out.with_name(out.name + ".journal.jsonl")


def _not_ours(out: Path, why: str) -> ArtcapError:
    return ArtcapError(f"{out}: not an artcap record file ({why}); move it away or choose another --out")


def write_error(path: Path, e: OSError) -> ArtcapError:
    """One line for a failed write; a full disk (or file size limit) says how to carry on."""
    if e.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return ArtcapError(f"{path}: cannot write ({e.strerror}); every complete record is kept: free some "
                           f"space and run the same command again to resume")
    return ArtcapError(f"{path}: cannot write ({e.strerror or e})")


# ---- codecs: a record as a journal line, records as a CSV --------------------------------------------

def _well_formed(value: Any) -> Any:
    """A string no UTF-8 writer can write (it holds a lone surrogate) as clean_text's escape; else as it is."""
    if isinstance(value, str) and not value.isprintable():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return clean_text(value)
    return value


def encode_record(record: dict[str, Any], names: Iterable[str] = RECORD_FIELDS) -> bytes:
    """One journal line: the record's `names`, in order, as a JSON object."""
    return (json.dumps({k: _well_formed(record.get(k)) for k in names}, ensure_ascii=False) + "\n").encode("utf-8")


def decode_record(line: bytes) -> dict[str, Any] | None:
    """The record on a journal line (with or without its line end), None when it is not one."""
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:  # not UTF-8, or not JSON
        return None
    return record if isinstance(record, dict) and isinstance(record.get("path"), str) else None


def csv_cell(value: Any) -> str:
    """One CSV cell: text through clean_text and spreadsheet_cell, a dict as JSON, None as empty."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):  # numbers and flags are artcap's own; only text can hold a formula
        return spreadsheet_cell(clean_text(value))
    return str(value)


def render_csv(records: Iterable[dict[str, Any]], names: Iterable[str] = RECORD_FIELDS) -> bytes:
    """The records as CSV with a header: one line per record (text through names.clean_text, so no cell
    holds a line break), every text cell a spreadsheet shows as text (names.spreadsheet_cell)."""
    names = list(names)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    writer.writerows([csv_cell(record.get(k)) for k in names] for record in records)
    return buffer.getvalue().encode("utf-8")


# ---- a locked file that is only appended to ----------------------------------------------------------

class AppendFile:
    """A file opened for appending under an exclusive lock (a second writer is refused): whole pieces
    are appended (a failed write is cut back), it can be cut to a length, fsynced, or replaced whole
    (atomically) when done."""

    def __init__(self, path: Path, busy: str):
        self.path = path
        self.created = not path.exists()
        self._busy = busy  # what to say when another process holds the lock
        self._file = self._open_locked()
        self.end = os.fstat(self._file.fileno()).st_size

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
            raise ArtcapError(f"{self.path}: {self._busy}") from None

    def read(self) -> bytes:
        self._file.seek(0)
        return self._file.readall()

    def cut(self, length: int) -> None:
        """Cut the file to `length` bytes (a partial record away), durably."""
        self._file.truncate(length)
        os.fsync(self._file.fileno())
        self.end = length

    def append(self, data: bytes) -> None:
        """Write all of `data` at the end; if that fails (disk full), cut back to where it was."""
        try:
            written = 0
            while written < len(data):
                written += self._file.write(data[written:])
        except OSError as e:
            try:
                self._file.truncate(self.end)
            except OSError:
                pass  # the next run cuts the partial record away
            raise write_error(self.path, e) from None
        self.end += len(data)

    def sync(self) -> None:
        try:
            os.fsync(self._file.fileno())
        except OSError as e:
            raise write_error(self.path, e) from None

    def replace(self, data: bytes) -> None:
        """Put `data` in the file's place atomically (readers see the old file or the new one)."""
        try:
            with atomic_path(self.path) as tmp:
                tmp.write_bytes(data)
        except OSError as e:
            raise write_error(self.path, e) from None

    def close(self) -> None:
        self._file.close()  # closing releases the lock

    @property
    def closed(self) -> bool:
        return self._file.closed


def _same_file(path: Path, file: io.FileIO) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(file.fileno())
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


# ---- the manifest beside the record file --------------------------------------------------------

@dataclass(frozen=True)
class JobManifest:
    """`<out>.job.json`: positive proof that artcap wrote the journal, and the job it holds."""

    job: dict[str, Any]  # JobIdentity.to_dict()
    fields: tuple[str, ...] = RECORD_FIELDS
    rendered_sha256: str | None = None  # of the CSV output artcap rendered last

    @classmethod
    def read(cls, out: Path) -> "JobManifest | None":
        """The manifest beside `out`, None when there is none; ArtcapError when it is not artcap's."""
        path = manifest_path(out)
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # ValueError: not UTF-8 or not JSON
            raise _not_ours(out, f"{path.name} cannot be read: {getattr(e, 'strerror', None) or e}") from None
        if not (isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT
                and isinstance(data.get("job"), dict) and isinstance(data.get("fields"), list)):
            raise _not_ours(out, f"{path.name} is not an artcap job manifest")
        if data.get("version") != MANIFEST_VERSION:
            raise ArtcapError(f"{out}: written by another artcap version (record format {data.get('version')}, "
                              f"this one reads {MANIFEST_VERSION}); finish it with that version, or choose "
                              f"another --out")
        return cls(data["job"], tuple(data["fields"]), data.get("rendered_sha256"))

    def write(self, out: Path) -> None:
        data = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "job": self.job, "fields": list(self.fields),
                "journal": journal_path(out).name, "rendered_sha256": self.rendered_sha256}
        try:
            atomic_write_json(manifest_path(out), data)
        except OSError as e:
            raise write_error(manifest_path(out), e) from None

    def check_resumes(self, out: Path, identity: JobIdentity) -> None:
        """Refuse to add `identity`'s records to a file holding another job's."""
        changed = identity.differences(self.job)
        if changed:
            raise ArtcapError(f"{out}: holds another job's captions ({'; '.join(changed)}); resume with the "
                              f"same options or choose another --out")
        if self.fields != record_fields(identity.to_dict()):
            raise ArtcapError(f"{out}: its records have other fields ({', '.join(self.fields)}); it was "
                              f"written by another artcap version: choose another --out")


# ---- the record file ------------------------------------------------------------------------------

class RecordFile:
    """The records of one job at `out` (.jsonl or .csv): opening locks the journal, proves that it and
    the CSV output are artcap's and this job's, reads it and cuts a partial record away. `append`
    adds one record; `finish` compacts the journal, renders the CSV output and closes."""

    def __init__(self, out: Path, identity: JobIdentity, *, sync_every: int = 16, sync_seconds: float = 2.0):
        self.path = Path(out)
        self.format = record_format(self.path)
        self.journal = journal_path(self.path)
        self.identity = identity
        self.job = identity.to_dict()
        self.fields = record_fields(self.job)
        self.sync_every, self.sync_seconds = sync_every, sync_seconds
        self.records: list[dict[str, Any]] = []  # every record in journal order, superseded ones too
        self._raw: list[bytes] = []  # each record's line, as in the journal
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = AppendFile(self.journal, "another artcap job is writing to this file; wait for it or "
                                              "choose another --out")
        try:
            manifest = self._claim()
            self._load()
            self._check_rendering(manifest)
        except BaseException:
            self._file.close()
            if self._file.created and self.journal.exists() and self.journal.stat().st_size == 0:
                self.journal.unlink()  # refused before anything was written: leave nothing behind
            raise

    # -- opening: prove ownership, read, repair

    def _claim(self) -> JobManifest:
        """Make sure the journal is this job's before anything in it is changed; the manifest."""
        manifest = JobManifest.read(self.path)
        if manifest is None and self._file.end > 0:
            raise _not_ours(self.path, f"no {manifest_path(self.path).name} beside {self.journal.name}")
        if manifest is None and self.format == "csv" and _size(self.path) > 0:
            raise _not_ours(self.path, f"no {manifest_path(self.path).name} beside it")
        if manifest is None or self._file.end == 0:  # a new job (or one killed before its first record)
            manifest = JobManifest(self.job, self.fields, rendered_sha256=manifest.rendered_sha256 if manifest else None)
            self._check_rendering(manifest)  # before the manifest is replaced: a CSV there must be artcap's
            manifest.write(self.path)
        else:
            manifest.check_resumes(self.path, self.identity)
        self._remove_stale_temporaries()
        return manifest

    def _remove_stale_temporaries(self) -> None:
        """A job killed while rewriting a file leaves its temporary behind (io.atomic_path's
        `.<name>.<8 random characters>.tmp`); under the lock none is in use."""
        names = {self.path.name, manifest_path(self.path).name, self.journal.name}
        for entry in self.path.parent.iterdir():
            match = _TEMPORARY.fullmatch(entry.name)
            if match and match.group(1) in names:
                entry.unlink(missing_ok=True)

    def _load(self) -> None:
        data = self._file.read()
        position = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
        line_no = 0
        while (newline := data.find(b"\n", position)) >= 0:
            line, position = data[position:newline + 1], newline + 1
            line_no += 1
            if not line.strip():
                continue
            record = decode_record(line)
            if record is None:
                raise ArtcapError(f"{self.journal}: line {line_no} is not a caption record; the file is damaged: "
                                  f"repair it, or move it away and start again")
            self._check_belongs(record, line_no)
            self.records.append(record)
            self._raw.append(line)
        if position < len(data):  # cut the partial record away before appending after it
            self._file.cut(position)

    def _check_belongs(self, record: dict[str, Any], line_no: int) -> None:
        """Every record names the job it belongs to: one of another job (added by another program) is refused."""
        if set(record) != set(self.fields):
            raise ArtcapError(f"{self.journal}: line {line_no} is not a record of this job (its fields are "
                              f"{', '.join(record)}); remove that line, or move the file away and start again")
        other = [f"{k} {record[k]!r} there, {v!r} in this job" for k, v in self.job.items()
                 if not _same_value(record[k], v)]
        if other:
            raise ArtcapError(f"{self.journal}: line {line_no} is a record of another job ({'; '.join(other)}); "
                              f"lines were added to the file by another program: remove them, or move the file "
                              f"away and start again")

    def _check_rendering(self, manifest: JobManifest) -> None:
        """A CSV output in place must be the one artcap rendered last (or, if artcap was killed before it
        noted that rendering in the manifest, the rendering of the journal as it is): else it is someone's."""
        if self.format != "csv" or _size(self.path) == 0:
            return
        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() == manifest.rendered_sha256 or data == self._rendering():
            return
        raise ArtcapError(f"{self.path}: changed since artcap wrote it (saved from a spreadsheet, or edited), so "
                          f"artcap leaves it as it is: move it away and run the same command again to have it "
                          f"rendered anew from {self.journal.name}, or choose another --out")

    # -- writing

    def append(self, record: dict[str, Any]) -> None:
        data = encode_record(record, self.fields)
        self._file.append(data)
        self.records.append(json.loads(data))
        self._raw.append(data)
        self._unsynced += 1
        if self._unsynced >= self.sync_every or time.monotonic() - self._last_sync >= self.sync_seconds:
            self.sync()

    def sync(self) -> None:
        self._file.sync()
        self._unsynced = 0
        self._last_sync = time.monotonic()

    # -- reading back, finishing

    def latest(self) -> dict[str, dict[str, Any]]:
        """{path: its last record}, in the order the paths were first written."""
        last: dict[str, dict[str, Any]] = {}
        for record in self.records:
            last[record["path"]] = record  # an existing key keeps its place
        return last

    def _rendering(self) -> bytes:
        return render_csv(self.latest().values(), self.fields)

    def finish(self) -> None:
        """Sync; if any record was superseded (a retried image), rewrite the journal atomically with each
        path's last record in its first place (the good records keep their bytes); render the CSV output;
        close."""
        self.sync()
        last_index = {r["path"]: i for i, r in enumerate(self.records)}
        if len(last_index) < len(self.records):
            self._file.replace(b"".join(self._raw[last_index[p]] for p in self.latest()))
        if self.format == "csv":
            rendering = self._rendering()
            try:
                atomic_write_bytes(self.path, rendering)
            except OSError as e:
                raise write_error(self.path, e) from None
            JobManifest(self.job, self.fields, rendered_sha256=hashlib.sha256(rendering).hexdigest()).write(self.path)
        self.close()

    def close(self) -> None:
        if not self._file.closed:
            try:
                self.sync()
            finally:
                self._file.close()

    def __enter__(self) -> "RecordFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


def _same_value(a: Any, b: Any) -> bool:
    """Equal as JSON values: True is not 1 (Python says it is)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
