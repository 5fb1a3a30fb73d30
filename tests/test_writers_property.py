"""Whatever artcap writes is well-formed, whatever the names: generated file names (any bytes: control
characters, line breaks, invalid UTF-8, formula prefixes) go through every output format -- stdout
text, JSON and CSV, record files (JSON Lines and CSV), XMP sidecars -- and are read back, each by a
strict reader, to the exact bytes of the name (names.decode_name). Generated vocabularies with
control characters give sidecars a strict XML parser reads, which artcap itself updates again."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from artcap.captioner import Captioner
from artcap.cli import main
from artcap.collection import caption_collection
from artcap.names import FORMULA_TRIGGERS, clean_text, decode_name, encode_name, from_spreadsheet_cell
from artcap.records import journal_path
from artcap.xmp import ARTCAP_NS, IPTC_CORE_NS, RDF_NS, write_sidecar

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Each case of the file-name test runs a command that loads the model: fewer of them.
NAME_SETTINGS = settings(SETTINGS, max_examples=15)

# Pieces a file name is made of: what breaks lines, CSV, JSON, XML or UTF-8, and arbitrary bytes.
TRICKY = [b"\n", b"\t", b"\r", b"\r\n", b"\\", b"\\x41", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc2\x85",
          "\u2028".encode(), b"\x1b", b"\x7f", b'"', b",", b";", b"'", b"<", b"&", "é".encode(), "画".encode(),
          "\ufeff".encode(), b" "]
FORMULA_STARTS = [b"", b"=", b"+", b"-", b"@", b"\t", b"\r", b"'", b"=HYPERLINK(\"http://x\",\"y\")", b"+cmd|' /C calc'!A0",
                  b"@SUM(1)", b"-2+3"]
piece = st.one_of(st.sampled_from(TRICKY), st.binary(min_size=1, max_size=3))
stem = st.builds(lambda first, rest: (first + rest).replace(b"/", b"_").replace(b"\0", b"_"),
                 st.sampled_from(FORMULA_STARTS), st.lists(piece, min_size=1, max_size=5).map(b"".join))
names = st.lists(stem.map(lambda s: s + b".jpg"), min_size=1, max_size=4, unique=True)


@pytest.fixture(scope="module")
def fast():
    return Captioner.load("fast")


@pytest.fixture(scope="module")
def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.effect_mandelbrot((48, 48), (-2, -1.5, 1, 1.5), 60).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def make_folder(root: Path, file_names: list[bytes], data: bytes) -> bytes:
    """A folder holding an image under each name (made through bytes paths: any name the OS takes)."""
    folder = os.fsencode(root) + b"/images"
    os.mkdir(folder)
    for name in file_names:
        with open(folder + b"/" + name, "wb") as f:
            f.write(data)
    return folder


def strict_text(data: bytes) -> str:
    """`data` as UTF-8 that any strict reader accepts: no invalid bytes, no encoded surrogate."""
    return data.decode("utf-8")  # Python's decoder refuses invalid bytes and encoded surrogates alike


def assert_well_formed_strings(value) -> None:
    """No string in a parsed JSON value holds a lone surrogate (strict JSON readers refuse one)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            assert_well_formed_strings(k)
            assert_well_formed_strings(v)
    elif isinstance(value, list):
        for v in value:
            assert_well_formed_strings(v)


def assert_csv_safe(rows: list[list[str]]) -> None:
    """No cell a spreadsheet would run as a formula (OWASP: = + - @ tab CR at the start)."""
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA_TRIGGERS) or cell.startswith("'"), cell


def run_cli(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    text = out.getvalue()
    text.encode("utf-8")  # what a real stdout (UTF-8, strict) would have to write
    return code, text


def check_stdout(fmt: str, text: str, full: list[bytes]) -> None:
    """`text`, what `artcap caption --format fmt` printed, names exactly the files `full` and is well-formed."""
    if fmt == "text":
        lines = text.splitlines()  # the strictest split: every Unicode line boundary
        assert len(lines) == len(full), lines
        assert all(line.count("\t") == 1 for line in lines)
        printed = [line.split("\t")[0] for line in lines]
    elif fmt == "json":
        document = json.loads(text)
        assert_well_formed_strings(document)
        printed = [r["path"] for r in document["captions"]]
    else:
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert_csv_safe(rows)
        printed = [from_spreadsheet_cell(r[0]) for r in rows[1:]]
    assert sorted(os.fsencode(decode_name(name)) for name in printed) == full


@NAME_SETTINGS
@given(file_names=names, fmt=st.sampled_from(["text", "json", "csv"]))
def test_any_file_name_is_written_well_formed_and_read_back_exactly(file_names, fmt, fast, jpeg_bytes):
    # One stdout format per case (each is a command that loads the model); the record files and sidecars every time.
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp), file_names, jpeg_bytes)
        expected = sorted(file_names, key=os.fsdecode)  # the folder walk sorts by name as Python holds it
        full = sorted(folder + b"/" + n for n in file_names)

        code, text = run_cli(["-q", "caption", os.fsdecode(folder), "--model", "fast", "--format", fmt, "--xmp"])
        assert code == 0
        check_stdout(fmt, text, full)
        for name in file_names:
            root = ET.fromstring(open(folder + b"/" + name + b".xmp", "rb").read())  # expat: strict XML 1.0
            assert root.find(f".//{{{ARTCAP_NS}}}Caption").text

        for suffix in (".jsonl", ".csv"):
            out = Path(tmp) / f"captions{suffix}"
            for run in range(2):  # the second run re-reads the file and finds the job done
                summary = caption_collection(fast, [os.fsdecode(folder)], out, progress=False, num_workers=0,
                                             metadata=None)
                assert (summary.captioned, summary.skipped, summary.errors) == (
                    (len(file_names), 0, []) if run == 0 else (0, len(file_names), []))
            records = [json.loads(strict_text(line)) for line in journal_path(out).read_bytes().splitlines()]
            assert_well_formed_strings(records)
            assert [os.fsencode(decode_name(r["path"])) for r in records] == expected
            if suffix == ".csv":
                rows = list(csv.reader(io.StringIO(strict_text(out.read_bytes()), newline="")))
                assert_csv_safe(rows)
                assert [os.fsencode(decode_name(from_spreadsheet_cell(r[0]))) for r in rows[1:]] == expected
                assert len(out.read_bytes().splitlines()) == len(file_names) + 1  # one line per record


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=stem.map(lambda s: s + b".jpg"))
def test_a_file_that_cannot_be_read_is_named_with_its_escapes_in_its_error(name, fast):
    """The error of a file that is not an image names it as clean_text writes the name: a tab or a line
    break in it shows as \\t or \\n, never as white space folded away."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp), [name], b"not an image")
        shown = clean_text(os.fsdecode(folder + b"/" + name))
        out = Path(tmp) / "captions.jsonl"
        summary = caption_collection(fast, [os.fsdecode(folder)], out, progress=False, num_workers=0, metadata=None)
        [written] = [json.loads(strict_text(line)) for line in out.read_bytes().splitlines()]
        assert os.fsencode(decode_name(written["path"])) == name
        assert written["caption"] is None and written["error"].startswith(f"{shown}: not an image"), written
        assert summary.errors[0][1] == written["error"]


# ---- a model whose vocabulary holds control characters -------------------------------------------------

# Words as a damaged or hostile vocabulary could hold them: every control character, XML's forbidden
# characters, lone surrogates, line separators, markup.
character = st.one_of(st.characters(max_codepoint=0x9F), st.sampled_from(
    ["\u2028", "\u2029", "\ufffe", "\uffff", "\ud800", "\udcff", "<", "&", "]]>", "\\", "é"]))
word = st.lists(character, min_size=1, max_size=6).map("".join)


@SETTINGS
@given(caption=st.lists(word, min_size=1, max_size=8).map(" ".join), existing=st.booleans())
def test_any_caption_gives_a_sidecar_a_strict_xml_parser_reads(caption, existing):
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "a.jpg"
        if existing:
            assert write_sidecar(image, "an earlier caption", "m", {"beam": 1}) is None
        assert write_sidecar(image, caption, "m\x00odel", {"beam": 1}, emotion="awe\x07") is None
        root = ET.fromstring(Path(tmp, "a.jpg.xmp").read_bytes())  # expat refuses anything not XML 1.0
        assert root.find(f".//{{{ARTCAP_NS}}}Caption").text == clean_text(caption)
        alt = root.find(f".//{{{IPTC_CORE_NS}}}AltTextAccessibility/{{{RDF_NS}}}Alt")
        assert [li.text for li in alt] == [clean_text(caption)] * 2
        assert write_sidecar(image, caption + " again", "m", {"beam": 1}) is None  # artcap re-reads its own


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory) -> Path:
    from artcap.captioner import shipped_models

    folder = tmp_path_factory.mktemp("vocab") / "fast"
    shutil.copytree(shipped_models()["fast"], folder)
    return folder


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(words=st.lists(word, min_size=30, max_size=30), fmt=st.sampled_from(["json", "text"]))
def test_a_vocabulary_with_control_characters_writes_well_formed_outputs(words, fmt, model_copy, jpeg_bytes, tmp_path):
    vocab_file = model_copy / "vocab.json"
    vocabulary = json.loads(vocab_file.read_text(encoding="utf-8"))
    vocabulary[4:34] = words  # the most frequent words: every caption holds some
    vocab_file.write_text(json.dumps(vocabulary), encoding="utf-8")  # ASCII escapes: any string, surrogates too
    image = tmp_path / f"p{len(list(tmp_path.iterdir()))}.jpg"
    image.write_bytes(jpeg_bytes)

    # one command per case (each loads the model), its stdout format drawn
    code, text = run_cli(["-q", "caption", str(image), "--model", str(model_copy), "--xmp", "--format", fmt])
    assert code == 0
    if fmt == "json":
        caption = json.loads(text)["captions"][0]["caption"]
        assert_well_formed_strings(caption)
    else:
        assert len(text.splitlines()) == 1 and text.count("\t") == 1
        caption = text.rstrip("\n").split("\t")[1]
    assert "\n" not in caption and caption == clean_text(caption)
    root = ET.fromstring(Path(f"{image}.xmp").read_bytes())
    assert root.find(f".//{{{ARTCAP_NS}}}Caption").text == caption


def test_the_name_encoding_round_trips_every_byte_and_leaves_plain_names_alone():
    for value in range(256):
        name = b"a" + bytes([value]) + b".jpg"
        if value in (0, ord("/")):
            continue
        assert os.fsencode(decode_name(encode_name(os.fsdecode(name)))) == name
    for plain in ["landscape.jpg", "Impressionism/monet_1.jpg", "é 画 🎨.png", "a'b\"c,d.jpg"]:
        assert encode_name(plain) == plain and clean_text(plain) == plain
    assert encode_name("a\\b\nc.jpg") == "a\\\\b\\nc.jpg"
    assert encode_name(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
