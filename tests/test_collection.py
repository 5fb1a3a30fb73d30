"""Captioning a whole collection into a resumable record file: real paintings, real broken files,
a real process killed with SIGKILL and resumed."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from artcap.captioner import Captioner
from artcap.cli import main
from artcap.collection import RecordFile, caption_collection
from artcap.errors import ArtcapError

BROKEN = {  # file name -> the start of the reason its error record must give
    "aaa-empty.jpg": "zero bytes",
    "truncated.jpg": "truncated or corrupt",
    "notes.jpg": "not an image",
    "zz-huge.png": "too many pixels",
}


def paintings(shared_data: Path, n: int) -> list[Path]:
    return sorted((shared_data / "artemis-mini" / "wikiart").rglob("*.jpg"))[:n]


def huge_png(path: Path, width: int = 10_000, height: int = 10_000) -> None:
    """A valid PNG header claiming width x height pixels (100 M > the 40 M limit), with tiny data."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))


def make_collection(root: Path, sources: list[Path], broken: bool = True) -> Path:
    """Paintings copied into style sub-folders (so --recursive matters), plus broken files."""
    for src in sources:
        dest = root / src.parent.name / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    if broken:
        (root / "aaa-empty.jpg").write_bytes(b"")
        data = sources[0].read_bytes()
        (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
        (root / "notes.jpg").write_text("not a painting, a note about one\n")
        huge_png(root / "zz-huge.png")
    return root


def read_records(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [{**r, "caption": r["caption"] or None, "error": r["error"] or None, "beam": int(r["beam"])}
                for r in rows]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_mixed_folder_captions_every_good_image_and_lists_every_bad_one(shared_data, model_dir, tmp_path, suffix,
                                                                        caplog):
    sources = paintings(shared_data, 12)
    folder = make_collection(tmp_path / "collection", sources)
    out = tmp_path / f"captions{suffix}"

    code = main(["-q", "caption", str(folder), "--recursive", "--out", str(out), "--model", str(model_dir)])

    assert code == 1  # bad files make the exit code non-zero, but never stop the job
    records = read_records(out)
    expected = sorted([f"{s.parent.name}/{s.name}" for s in sources] + list(BROKEN))
    assert [r["path"] for r in records] == expected  # relative paths, sorted input order, each once
    by_path = {r["path"]: r for r in records}
    for name, reason in BROKEN.items():
        assert by_path[name]["caption"] is None
        assert reason in by_path[name]["error"], by_path[name]["error"]
    good = [r for r in records if r["path"] not in BROKEN]
    assert all(r["error"] is None and r["caption"] and r["caption"].strip() for r in good)
    captioner = Captioner.load(model_dir)
    assert {r["model"] for r in records} == {captioner.model_id}
    assert all(r["time"].endswith("+00:00") for r in records)  # ISO 8601, UTC
    # the same captions as the Python API gives for those files
    assert [r["caption"] for r in good] == captioner.caption([folder / r["path"] for r in good])


def test_resume_cuts_a_partial_record_and_matches_an_uninterrupted_run(shared_data, captioner, tmp_path):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 10))
    for suffix in (".jsonl", ".csv"):
        full = tmp_path / f"full{suffix}"
        summary = caption_collection(captioner, [folder], full, recursive=True, progress=False, num_workers=0)
        assert (summary.total, summary.captioned, summary.skipped, len(summary.errors)) == (14, 14, 0, 4)
        lines = full.read_bytes().splitlines(keepends=True)
        header = 1 if suffix == ".csv" else 0
        # as if killed while writing record 6: five whole records and half of the sixth
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(b"".join(lines[: header + 5]) + lines[header + 5][:20])

        summary = caption_collection(captioner, [folder], cut, recursive=True, progress=False, num_workers=0)

        assert (summary.captioned, summary.skipped, len(summary.errors)) == (9, 5, 4)
        assert without_time(read_records(cut)) == without_time(read_records(full))
        # and a finished file is left alone
        again = caption_collection(captioner, [folder], cut, recursive=True, progress=False)
        assert (again.captioned, again.skipped) == (0, 14)
        assert without_time(read_records(cut)) == without_time(read_records(full))


def test_a_killed_header_is_rewritten_and_a_foreign_file_is_never_truncated(shared_data, captioner, tmp_path):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 2), broken=False)
    out = tmp_path / "out.csv"
    out.write_bytes(b"path,capt")  # killed while writing the header
    caption_collection(captioner, [folder], out, recursive=True, progress=False)
    assert len(read_records(out)) == 2

    foreign = tmp_path / "notes.jsonl"
    foreign.write_bytes(b"my own notes, no newline at the end")
    with pytest.raises(ArtcapError, match="not written by artcap"):
        caption_collection(captioner, [folder], foreign, recursive=True, progress=False)
    assert foreign.read_bytes() == b"my own notes, no newline at the end"
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_bytes(b'{"path": "a.jpg", "caption": "x"}\nnot json\n')
    with pytest.raises(ArtcapError, match="line 2"):
        caption_collection(captioner, [folder], damaged, recursive=True, progress=False)


def test_resuming_with_another_decoding_or_a_second_writer_is_refused(shared_data, captioner, tmp_path):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 2), broken=False)
    out = tmp_path / "out.jsonl"
    caption_collection(captioner, [folder], out, recursive=True, progress=False, beam=1)
    with pytest.raises(ArtcapError, match="beam 1"):
        caption_collection(captioner, [folder], out, recursive=True, progress=False, beam=3)
    with RecordFile(out):
        with pytest.raises(ArtcapError, match="another artcap job"):
            caption_collection(captioner, [folder], out, recursive=True, progress=False, beam=1)


def test_bad_output_suffix_is_one_line(tmp_path, capsys, model_dir):
    code = main(["caption", str(tmp_path), "--out", str(tmp_path / "captions.txt"), "--model", str(model_dir)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ".jsonl" in err and "captions.txt" in err


def _caption_command(folder: Path, out: Path, model_dir: Path) -> list[str]:
    return [sys.executable, "-m", "artcap", "-q", "caption", str(folder), "--recursive", "--out", str(out),
            "--model", str(model_dir), "--batch-size", "1", "--threads", "1"]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(shared_data, model_dir, tmp_path):
    n_good = 64
    folder = make_collection(tmp_path / "collection", paintings(shared_data, n_good))
    reference = tmp_path / "reference.jsonl"
    done = subprocess.run(_caption_command(folder, reference, model_dir), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # the broken files
    assert len(read_records(reference)) == n_good + len(BROKEN)

    out = tmp_path / "killed.jsonl"
    process = subprocess.Popen(_caption_command(folder, out, model_dir), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 8:
                break
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)  # the whole group: the decoding worker dies too
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    written = out.read_bytes().count(b"\n")
    assert 8 <= written < n_good + len(BROKEN), "the job was not killed mid-run"

    resumed = subprocess.run(_caption_command(folder, out, model_dir), capture_output=True, text=True, timeout=300)

    assert resumed.returncode == 1, resumed.stderr
    records = read_records(out)
    assert len({r["path"] for r in records}) == len(records)  # nothing captioned twice
    assert without_time(records) == without_time(read_records(reference))  # nothing lost, same order
