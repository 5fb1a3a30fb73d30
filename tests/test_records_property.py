"""Property-based tests of the record file's reader and repair: whatever the records hold and wherever
a write was cut, reopening keeps exactly the complete records; a file without artcap's manifest is
never changed; records of another job added to a journal are refused naming their line."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artcap.records import RECORD_FIELDS, JobIdentity, RecordFile, journal_path, manifest_path
from artcap.data import EMOTIONS
from artcap.decode import DecodingConfig
from artcap.errors import ArtcapError

IDENTITY = JobIdentity("artcap-test", DecodingConfig(beam=2, max_len=12, length_alpha=0.5, no_repeat_ngram=2))
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text as captions and file names can hold it: any character UTF-8 can carry (no lone surrogates),
# stressed with the ones that break naive CSV/JSONL handling.
tricky = st.sampled_from(['"', ",", "\n", "\r", "\r\n", "\\", "'", "{", "}", "é", "画", "\u2028", "🎨", " "])
text = st.lists(st.one_of(tricky, st.characters(blacklist_categories=("Cs",))), min_size=1, max_size=12).map("".join)


@st.composite
def records(draw) -> list[dict]:
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        failed = draw(st.booleans())
        scores = draw(st.lists(st.floats(0, 1), min_size=9, max_size=9))
        rows.append({"path": draw(text), "caption": None if failed else draw(text),
                     "emotion": None if failed else draw(st.sampled_from(EMOTIONS)),
                     "emotion_scores": None if failed else dict(zip(EMOTIONS, scores)), **IDENTITY.to_dict(),
                     "time": "2024-01-01T00:00:00+00:00", "error": draw(text) if failed else None})
    return rows


def write_job(path: Path, rows: list[dict], finish: bool = False) -> list[int]:
    """Write `rows` as a job would (killed before finishing: no rewrite, no CSV rendering); the
    journal's size before the first record and after each."""
    journal = journal_path(path)
    sizes = []
    with RecordFile(path, IDENTITY) as file:
        sizes.append(journal.stat().st_size)
        for row in rows:
            file.append(row)
            sizes.append(journal.stat().st_size)
        if finish:
            file.finish()
    return sizes


def reopened(path: Path) -> list[dict]:
    with RecordFile(path, IDENTITY) as file:
        return file.records


@SETTINGS
@given(rows=records(), suffix=st.sampled_from([".jsonl", ".csv"]), where=st.floats(0, 1))
def test_a_record_file_cut_anywhere_reopens_with_exactly_its_complete_records(rows, suffix, where):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"captions{suffix}"
        journal = journal_path(path)
        sizes = write_job(path, rows)
        assert [{k: r[k] for k in RECORD_FIELDS} for r in reopened(path)] == rows  # the whole file reads back
        data = journal.read_bytes()
        cut = round(where * len(data))
        journal.write_bytes(data[:cut])  # killed (or out of space) in the middle of a write
        complete = sum(size <= cut for size in sizes[1:])

        assert reopened(path) == rows[:complete]
        assert journal.read_bytes() == data[:sizes[complete]]  # only the partial record is gone
        assert reopened(path) == rows[:complete]  # and the repaired file reads the same again


@SETTINGS
@given(rows=records(), suffix=st.sampled_from([".jsonl", ".csv"]), where=st.floats(0, 1))
def test_the_same_file_without_its_manifest_is_never_touched(rows, suffix, where):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"captions{suffix}"
        write_job(path, rows, finish=True)
        manifest_path(path).unlink()
        journal = journal_path(path)
        data = journal.read_bytes()
        journal.write_bytes(data[:max(1, round(where * len(data)))])
        before = {p: p.read_bytes() for p in (path, journal)}

        with pytest.raises(ArtcapError, match="not an artcap record file"):
            RecordFile(path, IDENTITY)
        assert {p: p.read_bytes() for p in (path, journal)} == before
        assert not manifest_path(path).exists()


@SETTINGS
@given(data=st.binary(min_size=1, max_size=300), manifest=st.one_of(st.none(), st.binary(max_size=200)),
       suffix=st.sampled_from([".jsonl", ".csv"]), as_journal=st.booleans())
def test_random_bytes_are_never_modified(data, manifest, suffix, as_journal):
    """A foreign file (the output, or where a CSV output's journal goes), beside no manifest or beside
    random bytes as one: refused, untouched, and no file is left behind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"theirs{suffix}"
        path = journal_path(out) if as_journal else out
        path.write_bytes(data)
        if manifest is not None:
            manifest_path(out).write_bytes(manifest)

        with pytest.raises(ArtcapError, match="not an artcap record file"):
            RecordFile(out, IDENTITY)
        assert path.read_bytes() == data
        assert manifest_path(out).exists() == (manifest is not None)
        if manifest is not None:
            assert manifest_path(out).read_bytes() == manifest
        assert sorted(p.name for p in Path(tmp).iterdir()) == sorted({path.name, *[manifest_path(out).name] * (
            manifest is not None)})


@SETTINGS
@given(rows=records(), suffix=st.sampled_from([".jsonl", ".csv"]))
def test_the_last_record_of_a_path_wins_and_finish_keeps_one_per_path(rows, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"captions{suffix}"
        retried = [{**r, "caption": f"fixed {r['caption']}", "error": None} for r in rows[::2]]
        write_job(path, rows + retried)
        expected: dict[str, dict] = {}
        for row in rows + retried:
            expected[row["path"]] = row  # a path keeps its first place, takes its last record

        with RecordFile(path, IDENTITY) as file:
            assert file.latest() == expected
            file.finish()
        assert reopened(path) == list(expected.values())
