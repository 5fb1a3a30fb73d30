"""`artcap caption` printing to stdout: formats, decoding options, and bad inputs that never stop the others."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from artcap.cli import main


@pytest.fixture()
def images(shared_data, tmp_path) -> list[Path]:
    """Three real paintings, copied so that a bad file can sit beside them."""
    sources = sorted((shared_data / "artemis-mini" / "wikiart" / "Impressionism").glob("*.jpg"))[:3]
    out = []
    for src in sources:
        shutil.copyfile(src, tmp_path / src.name)
        out.append(tmp_path / src.name)
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["-q", "caption", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_text_format_prints_path_tab_caption(capsys, model_dir, images, captioner):
    code, out, err = run(capsys, *map(str, images), "--model", str(model_dir))
    assert code == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    assert [Path(p) for p, _ in lines] == images
    assert [c for _, c in lines] == captioner.caption(images)  # the model's default decoding


def test_json_format_with_beam_and_max_len(capsys, model_dir, images, captioner):
    code, out, err = run(capsys, str(images[0].parent), "--format", "json", "--beam", "1", "--max-len", "4",
                         "--model", str(model_dir))
    assert code == 0, err
    data = json.loads(out)
    assert data["model"] == captioner.model_id
    captions = [r["caption"] for r in data["captions"]]
    assert [Path(r["path"]).name for r in data["captions"]] == sorted(p.name for p in images)
    assert all(1 <= len(c.split()) <= 4 for c in captions)
    assert captions == captioner.caption(sorted(images), beam=1, max_len=4)


def test_csv_format_and_beam_width(capsys, model_dir, images, captioner):
    code, out, err = run(capsys, *map(str, images), "--format", "csv", "--beam", "3", "--model", str(model_dir))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["path"] for r in rows] == [str(p) for p in images]
    assert [r["caption"] for r in rows] == captioner.caption(images, beam=3)
    assert all(r["error"] == "" for r in rows)


def test_bad_and_missing_inputs_are_listed_and_never_stop_the_others(capsys, model_dir, images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(images[0].read_bytes()[:500])  # a truncated JPEG
    missing = tmp_path / "nowhere.jpg"
    code, out, err = run(capsys, str(missing), str(images[0]), str(bad), str(images[1]), "--format", "csv",
                         "--model", str(model_dir))
    assert code == 1
    rows = {r["path"]: r for r in csv.DictReader(io.StringIO(out))}
    assert rows[str(images[0])]["caption"] and rows[str(images[1])]["caption"]
    assert "truncated or corrupt" in rows[str(bad)]["error"]
    assert "file not found" in rows[str(missing)]["error"]
    assert "2 of 4 input(s) could not be captioned" in err
    assert "nowhere.jpg: file not found" in err and "broken.jpg: truncated or corrupt" in err


def test_missing_path_alone_in_text_format(capsys, model_dir, tmp_path):
    code, out, err = run(capsys, str(tmp_path / "missing.png"), "--model", str(model_dir))
    assert code == 1 and out == ""
    assert "missing.png: file not found" in err


def test_bad_beam_is_one_line_error(capsys, model_dir, images):
    code, out, err = run(capsys, str(images[0]), "--beam", "0", "--model", str(model_dir))
    assert code == 2
    assert err.strip().count("\n") == 0 and "--beam: must be from 1 to 20, got '0'" in err  # refused as it is read
