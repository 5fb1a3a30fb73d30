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
from artcap.collection import caption_collection
from artcap.decode import DecodingConfig
from artcap.errors import ArtcapError
from artcap.records import JobIdentity, RecordFile, journal_path, manifest_path

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
    """The records as pandas or jq would read them: the file is plain CSV / JSON Lines."""
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        numbers = {k: (lambda text: text == "True") if isinstance(v, bool) else type(v)  # the decoding settings
                   for k, v in DecodingConfig().to_dict().items()}
        return [{**r, **{k: f(r[k]) for k, f in numbers.items()}, "caption": r["caption"] or None,
                 "error": r["error"] or None} for r in rows]
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
    assert {(r["beam"], r["max_len"]) for r in records} == {(captioner.decoding.beam, captioner.decoding.max_len)}
    assert all(r["time"].endswith("+00:00") for r in records)  # ISO 8601, UTC
    # the same captions as the Python API gives for those files
    assert [r["caption"] for r in good] == captioner.caption([folder / r["path"] for r in good])


def test_resume_cuts_a_partial_record_and_matches_an_uninterrupted_run(shared_data, captioner, tmp_path):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 10))
    for suffix in (".jsonl", ".csv"):
        full = tmp_path / f"full{suffix}"
        summary = caption_collection(captioner, [folder], full, recursive=True, progress=False, num_workers=0)
        assert (summary.total, summary.captioned, summary.skipped, len(summary.errors)) == (14, 14, 0, 4)
        lines = journal_path(full).read_bytes().splitlines(keepends=True)  # a CSV output's journal is beside it
        # as if killed while writing record 6: five whole records and half of the sixth
        cut = tmp_path / f"cut{suffix}"
        journal = journal_path(cut)
        journal.write_bytes(b"".join(lines[:5]) + lines[5][:20])
        shutil.copyfile(manifest_path(full), manifest_path(cut))  # the job's manifest, as the killed job left it

        summary = caption_collection(captioner, [folder], cut, recursive=True, progress=False, num_workers=0)

        assert (summary.captioned, summary.skipped, len(summary.errors)) == (9, 5, 4)
        assert without_time(read_records(cut)) == without_time(read_records(full))
        # a finished file keeps its good records; only the four broken images are tried again
        good_lines = [line for line in journal.read_bytes().splitlines() if line.endswith(b'"error": null}')]
        assert len(good_lines) == 10
        again = caption_collection(captioner, [folder], cut, recursive=True, progress=False)
        assert (again.captioned, again.retried, again.skipped, len(again.errors)) == (4, 4, 10, 4)
        assert without_time(read_records(cut)) == without_time(read_records(full))
        assert all(line in journal.read_bytes().splitlines() for line in good_lines)


def test_a_killed_first_record_is_cut_and_a_damaged_file_is_refused(shared_data, captioner, tmp_path):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 2), broken=False)
    out = tmp_path / "out.csv"
    caption_collection(captioner, [folder], out, recursive=True, progress=False)
    out.unlink()
    journal_path(out).write_bytes(b'{"path": "a')  # as if killed while writing the first record (the manifest came first)
    caption_collection(captioner, [folder], out, recursive=True, progress=False)
    assert len(read_records(out)) == 2

    damaged = tmp_path / "damaged.jsonl"
    caption_collection(captioner, [folder], damaged, recursive=True, progress=False)
    damaged.write_bytes(damaged.read_bytes().replace(b"\n", b"\nnot json\n", 1))
    before = damaged.read_bytes()
    with pytest.raises(ArtcapError, match="line 2 is not a caption record"):
        caption_collection(captioner, [folder], damaged, recursive=True, progress=False)
    assert damaged.read_bytes() == before


def asked_emotion(captioner) -> str:
    """What a folder job without --emotion records: "auto" for a grounded model (the default is one)."""
    return "auto" if captioner.is_grounded else ""


def test_resuming_with_another_decoding_or_a_second_writer_is_refused(shared_data, captioner, tmp_path):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 2), broken=False)
    out = tmp_path / "out.jsonl"
    caption_collection(captioner, [folder], out, recursive=True, progress=False, beam=1)
    with pytest.raises(ArtcapError, match="beam was 1, now 3"):
        caption_collection(captioner, [folder], out, recursive=True, progress=False, beam=3)
    identity = JobIdentity(captioner.model_id, captioner.resolve_decoding(beam=1), asked_emotion(captioner))
    with RecordFile(out, identity):
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


# ---- nothing lost, nothing silently wrong ---------------------------------------------------------

def test_a_file_artcap_did_not_write_is_refused_and_left_byte_identical(shared_data, model_dir, tmp_path, capsys):
    image = paintings(shared_data, 1)[0]
    theirs = b'{"path": "a.jpg", "caption": "a cat"}\n{"path": "b.jpg", "caption": "a dog"}'  # no final newline
    out = tmp_path / "m.jsonl"
    out.write_bytes(theirs)

    code = main(["-q", "caption", str(image), "--out", str(out), "--model", str(model_dir)])

    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not an artcap record file" in err and "m.jsonl.job.json" in err, err
    assert out.read_bytes() == theirs  # not even the "partial" last line was cut
    assert not manifest_path(out).exists()


@pytest.mark.parametrize("manifest", [b"\xff\xfe not json", b'{"format": "someone-elses", "version": 1}'])
def test_a_manifest_artcap_did_not_write_is_refused_and_nothing_is_touched(shared_data, captioner, tmp_path,
                                                                           manifest):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 2), broken=False)
    out = tmp_path / "captions.csv"
    caption_collection(captioner, [folder], out, recursive=True, progress=False)
    records = out.read_bytes()
    manifest_path(out).write_bytes(manifest)
    out.write_bytes(records[:-5])  # a partial last record that must not be cut either

    with pytest.raises(ArtcapError, match="not an artcap record file"):
        caption_collection(captioner, [folder], out, recursive=True, progress=False)
    assert (out.read_bytes(), manifest_path(out).read_bytes()) == (records[:-5], manifest)


def test_an_empty_file_starts_a_new_job_with_its_manifest(shared_data, captioner, tmp_path):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 2), broken=False)
    out = tmp_path / "captions.jsonl"
    out.touch()
    caption_collection(captioner, [folder], out, recursive=True, progress=False)
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["format"] == "artcap-caption-records" and manifest["version"] == 2
    assert manifest["job"] == {"model": captioner.model_id, **captioner.decoding.to_dict(),
                               "asked_emotion": asked_emotion(captioner), "metadata": ""}
    assert manifest["fields"] == list(read_records(out)[0])


def test_a_fixed_image_is_retried_and_only_it(shared_data, model_dir, captioner, tmp_path):
    sources = paintings(shared_data, 6)
    folder = make_collection(tmp_path / "c", sources, broken=False)
    broken = folder / "broken.jpg"
    broken.write_bytes(sources[0].read_bytes()[:500])
    out = tmp_path / "captions.jsonl"
    command = ["-q", "caption", str(folder), "--recursive", "--out", str(out), "--model", str(model_dir)]
    assert main(command) == 1
    first = out.read_bytes().splitlines()
    assert [json.loads(line)["error"] is not None for line in first].count(True) == 1

    shutil.copyfile(sources[1], broken)  # the user follows the error's advice: replaces the file
    assert main(command) == 0

    second = out.read_bytes().splitlines()
    assert len(second) == len(first)  # one record per image, same order
    changed = [i for i, (a, b) in enumerate(zip(first, second)) if a != b]
    assert [json.loads(first[i])["path"] for i in changed] == ["broken.jpg"]  # good records byte-identical
    fixed = json.loads(second[changed[0]])
    assert fixed["error"] is None and fixed["caption"]
    reference = tmp_path / "reference.jsonl"
    caption_collection(captioner, [folder], reference, recursive=True, progress=False)
    assert without_time(read_records(out)) == without_time(read_records(reference))


def test_a_retry_killed_before_the_rewrite_leaves_no_duplicate_after_the_next_run(shared_data, captioner, tmp_path):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 3), broken=False)
    out = tmp_path / "captions.csv"
    caption_collection(captioner, [folder], out, recursive=True, progress=False)
    reference = read_records(out)
    identity = JobIdentity(captioner.model_id, captioner.decoding, asked_emotion(captioner))
    with RecordFile(out, identity) as records:  # appended, then "killed": no finish()
        records.append({**reference[1], "caption": None, "error": "was unreadable then"})
    assert len(journal_path(out).read_bytes().splitlines()) == 4  # the CSV is rendered when a job finishes

    summary = caption_collection(captioner, [folder], out, recursive=True, progress=False)

    assert (summary.retried, summary.captioned, summary.errors) == (1, 1, [])
    assert without_time(read_records(out)) == without_time(reference)


def test_resuming_with_another_max_len_is_refused_naming_it(shared_data, model_dir, captioner, tmp_path, capsys):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 2), broken=False)
    out = tmp_path / "captions.jsonl"
    command = ["-q", "caption", str(folder), "--recursive", "--out", str(out), "--model", str(model_dir)]
    assert main([*command, "--max-len", "5"]) == 0
    assert {r["max_len"] for r in read_records(out)} == {5}
    assert all(len(r["caption"].split()) <= 5 for r in read_records(out))
    before = out.read_bytes()

    assert main(command) == 2

    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"max_len was 5, now {captioner.decoding.max_len}" in err, err
    assert "beam" not in err  # only the settings that differ
    assert out.read_bytes() == before


def test_every_decoding_setting_is_part_of_the_job(shared_data, captioner, tmp_path):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 1), broken=False)
    out = tmp_path / "captions.csv"
    decoding = DecodingConfig(beam=2, max_len=8, length_alpha=0.5, no_repeat_ngram=2)
    caption_collection(captioner, [folder], out, recursive=True, progress=False, decoding=decoding)
    record = read_records(out)[0]
    assert {k: record[k] for k in decoding.to_dict()} == decoding.to_dict()
    assert record["caption"] == captioner.caption([folder / record["path"]], decoding=decoding)[0]
    for change in [{"length_alpha": 0.9}, {"no_repeat_ngram": 0}, {"beam": 3, "max_len": 9}]:
        other = decoding.with_overrides(**change)
        expected = "; ".join(f"{k} was {getattr(decoding, k)}, now {v}" for k, v in change.items())
        with pytest.raises(ArtcapError, match=expected):
            caption_collection(captioner, [folder], out, recursive=True, progress=False, decoding=other)
    again = caption_collection(captioner, [folder], out, recursive=True, progress=False, decoding=decoding)
    assert (again.skipped, again.captioned) == (1, 0)
