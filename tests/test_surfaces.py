"""Every decoding field means the same on every caption path: stdout, --out (JSONL and CSV) and Python.

The flags of `caption` and `evaluate` are made from DecodingConfig's fields (artcap.settings), and
every path resolves them through one function, so a field can no longer be dropped by one path.
"""

import json
from dataclasses import fields
from pathlib import Path

import pytest

from artcap.captioner import Captioner
from artcap.cli import build_parser, main
from artcap.decode import DecodingConfig

# One non-default value per field (the shipped `fast` model decodes with beam 5 and rerank on).
CHANGES = {"beam": 2, "max_len": 6, "length_alpha": 1.5, "no_repeat_ngram": 3, "max_word_repeats": 1,
           "emotion_guidance": 1.0, "rerank": False}


def test_every_decoding_field_has_a_change_here_and_a_flag_on_every_command():
    assert set(CHANGES) == {f.name for f in fields(DecodingConfig)}
    parser = build_parser()
    for command in ("caption", "evaluate"):
        sub = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == command)[1]
        assert {f.name for f in fields(DecodingConfig)} <= {a.dest for a in sub._actions}, command


def _flags(name, value):
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + name.replace("_", "-")]
    return [flag, str(value)]


@pytest.fixture(scope="module")
def paintings(shared_data):
    folder = shared_data / "artemis-mini" / "wikiart" / "Baroque"
    return sorted(folder.glob("*.jpg"))[:3]


@pytest.fixture(scope="module")
def fast():
    return Captioner.load("fast")


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_decoding_field_gives_the_same_captions_on_every_path(name, paintings, fast, tmp_path, capsys):
    value = CHANGES[name]
    args = ["caption", *map(str, paintings), "--model", "fast", "--emotion", "awe", *_flags(name, value), "-q"]
    python = fast.caption(paintings, emotion="awe", **{name: value})
    assert python != fast.caption(paintings, emotion="awe") or name in ("length_alpha", "max_word_repeats"), \
        "the change should show in the captions (else this case tests nothing)"

    assert main(args + ["--format", "json"]) == 0
    stdout = [r["caption"] for r in json.loads(capsys.readouterr().out)["captions"]]
    assert stdout == python

    for suffix in ("jsonl", "csv"):
        out = tmp_path / f"records.{suffix}"
        assert main(args + ["--out", str(out)]) == 0
        manifest = json.loads(Path(f"{out}.job.json").read_text())
        assert manifest["job"][name] == value, f"--out {suffix} recorded {manifest['job'][name]!r}"
        if suffix == "jsonl":
            records = [json.loads(line) for line in out.read_text().splitlines()]
            by_path = {r["path"]: r["caption"] for r in records}
            assert [by_path[str(p)] for p in paintings] == python
