"""Faults a folder job must survive: a full disk (a real, tiny tmpfs; a real file-size limit) and
kill -9 at random points of a real `artcap caption DIR --out` process, resumed until done."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artcap.cli import main
from artcap.collection import caption_collection
from artcap.records import journal_path, manifest_path
from test_collection import make_collection, paintings, read_records, without_time


def caption_command(folder: Path, out: Path, model_dir: Path) -> list[str]:
    return [sys.executable, "-m", "artcap", "-q", "caption", str(folder), "--recursive", "--out", str(out),
            "--model", str(model_dir), "--batch-size", "1", "--threads", "1"]


def assert_only_complete_records(out: Path) -> None:
    """What a failed or killed job leaves: whole records only, and never without the manifest."""
    if not out.exists():  # killed before it opened the file
        return
    data = out.read_bytes()
    assert data == b"" or manifest_path(out).is_file()  # artcap's manifest always comes first
    lines = data.split(b"\n")
    assert lines[-1] == b"" or not data.endswith(b"}"), "a partial record was left"
    for line in lines[:-1]:
        json.loads(line)


# ---- a full disk ------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB tmpfs, filled up but for two pages (root only; skips elsewhere)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        stats = os.statvfs(mount_point)
        (mount_point / "ballast").write_bytes(b"x" * (stats.f_bavail * stats.f_frsize - 2 * stats.f_frsize))
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_next_run_resumes(shared_data, model_dir, captioner, small_disk, tmp_path,
                                                          capsys):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 20), broken=False)
    reference = tmp_path / "reference.jsonl"
    caption_collection(captioner, [folder], reference, recursive=True, progress=False)
    out = small_disk / "captions.jsonl"
    command = ["-q", "caption", str(folder), "--recursive", "--out", str(out), "--model", str(model_dir)]

    assert main(command) == 2

    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "No space left on device" in err and str(out) in err, err
    assert_only_complete_records(out)
    assert 0 < len(read_records(out)) < 20, "the disk did not fill up mid-job"
    (small_disk / "ballast").unlink()  # the user frees some space
    assert main(command) == 0
    assert without_time(read_records(out)) == without_time(read_records(reference))


def _limit_file_size(limit: int):
    def set_limit() -> None:  # in the child: every file it writes stops at `limit` bytes (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_and_the_next_run_resumes(shared_data, model_dir, captioner, tmp_path):
    folder = make_collection(tmp_path / "c", paintings(shared_data, 20), broken=False)
    reference = tmp_path / "reference.csv"
    caption_collection(captioner, [folder], reference, recursive=True, progress=False)
    out = tmp_path / "captions.csv"
    limit = len(reference.read_bytes()) // 2

    limited = subprocess.run(caption_command(folder, out, model_dir), capture_output=True, text=True, timeout=120,
                             preexec_fn=_limit_file_size(limit))

    assert limited.returncode == 2, limited.stderr
    assert limited.stderr.strip().count("\n") == 0 and "File too large" in limited.stderr, limited.stderr
    journal = journal_path(out)  # a CSV output is rendered from its journal when the job finishes
    assert journal.stat().st_size <= limit and not out.exists()
    assert 0 < len(read_records(journal)) < 20  # whole records only: json.loads would choke on half of one
    resumed = caption_collection(captioner, [folder], out, recursive=True, progress=False)
    assert resumed.skipped == len(read_records(reference)) - resumed.captioned > 0
    assert without_time(read_records(out)) == without_time(read_records(reference))


# ---- kill -9 anywhere ------------------------------------------------------------------------------

def run_killed(command: list[str], out: Path, rng: random.Random, run_seconds: float) -> None:
    """Start the job and SIGKILL its whole process group at a random point: after a random part of a
    whole run's time (model loading, the manifest, a rewrite...) or once a random number of further
    records are on disk."""
    already = out.read_bytes().count(b"\n") if out.exists() else 0
    more, delay = rng.randint(0, 20), rng.uniform(0.0, run_seconds)
    by_records = rng.random() < 0.7
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + (60 if by_records else delay)
        while time.monotonic() < deadline and process.poll() is None:
            if by_records and out.exists() and out.read_bytes().count(b"\n") >= already + more:
                break
            time.sleep(0.003)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the decoding worker too
    finally:
        process.wait(timeout=30)


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(shared_data, model_dir, tmp_path):
    sources = paintings(shared_data, 40)
    folder = make_collection(tmp_path / "collection", sources, broken=False)
    (folder / sources[7].parent.name / "corrupt.jpg").write_bytes(sources[7].read_bytes()[:1000])
    reference = tmp_path / "reference.jsonl"
    started = time.monotonic()
    done = subprocess.run(caption_command(folder, reference, model_dir), capture_output=True, text=True, timeout=120)
    run_seconds = time.monotonic() - started
    assert done.returncode == 1, done.stderr  # the corrupt file
    expected = without_time(read_records(reference))
    assert len(expected) == 41 and sum(r["error"] is not None for r in expected) == 1

    for seed in range(3):
        rng = random.Random(seed)
        out = tmp_path / f"killed-{seed}.jsonl"
        for _ in range(2):  # the second kill often lands in a resume that is retrying the corrupt file
            run_killed(caption_command(folder, out, model_dir), out, rng, run_seconds)
            assert_only_complete_records(out)
        resumed = subprocess.run(caption_command(folder, out, model_dir), capture_output=True, text=True,
                                 timeout=120)
        assert resumed.returncode == 1, resumed.stderr
        assert without_time(read_records(out)) == expected, f"seed {seed}"  # nothing lost, nothing twice
        assert sorted(p.name for p in tmp_path.glob(f".killed-{seed}*")) == []  # no temporary file left behind
