"""Never change what artcap did not write; never lose a person's words. Generated pre-existing content
-- a train out folder, an --explain folder, an XMP sidecar, records of another job appended to a
journal -- is either left byte-identical (or, for a sidecar, every property and comment artcap does not
own, exactly) with the run refused in one line, or it was artcap's own and is replaced."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from artcap.cli import main
from artcap.data import EMOTIONS
from artcap.decode import DecodingConfig
from artcap.errors import ArtcapError
from artcap.explain import explanation_path, is_explanation, write_explanation
from artcap.names import clean_text
from artcap.records import JobIdentity, RecordFile, journal_path, manifest_path
from artcap.train import RUN_MARKER
from artcap.xmp import ARTCAP_NS, DC_NS, IPTC_CORE_NS, RDF_NS, XMP_NS, write_sidecar

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "landscape.jpg"


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder`: a file's bytes, None for a folder."""
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


# ---- a train out folder ---------------------------------------------------------------------------------

RUN_NAMES = ["config.toml", "vocab.json", "model/config.json", "model/model.safetensors", "splits.json",
             "history.json", "data.json", "loss.png", "notes.txt", "model/README.md"]


@SETTINGS
@given(files=st.dictionaries(st.sampled_from(RUN_NAMES), st.binary(max_size=64), min_size=1, max_size=5),
       as_file=st.booleans())
def test_train_never_replaces_files_it_did_not_write(files, as_file, artemis_subset, tmp_path_factory):
    csv_path, images = artemis_subset
    root = tmp_path_factory.mktemp("train-out")
    out = root / "run"
    if as_file:  # the out "folder" is someone's file
        out.write_bytes(next(iter(files.values())))
    else:
        for name, data in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
    before = snapshot(root)

    code, _, err = run_cli(["train", "--data", str(csv_path), "--images", str(images),
                            "--cache", str(root / "cache"), "--set", f"run.out={out}"])

    assert code == 2 and err.count("\n") == 1 and str(out) in err, err
    assert snapshot(root) == before  # not a byte changed, nothing added (no feature cache either)


# ---- an --explain folder -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sat_description():
    from artcap.captioner import Captioner

    captioner = Captioner.load("sat")
    return captioner.describe([EXAMPLE], with_attention=True)[0], captioner.feature_spec.grid_size


def png_with_text(chunks: dict[str, str]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


existing_picture = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=200)),
    st.tuples(st.just("png"), st.dictionaries(st.sampled_from(["artcap", "Software", "Comment"]),
                                              st.sampled_from(["explain", "artcap", "mine", ""]), max_size=2)),
    st.sampled_from([("artcap's", None), ("folder", None), ("symlink", None), ("none", None)]))


@SETTINGS
@given(existing=existing_picture)
def test_explain_replaces_only_its_own_pictures(existing, sat_description, tmp_path_factory):
    description, grid_size = sat_description
    folder = tmp_path_factory.mktemp("explain")
    target = explanation_path(EXAMPLE, folder)
    kind, value = existing
    theirs = folder / "theirs.txt"
    theirs.write_bytes(b"a person's file")
    if kind == "bytes":
        target.write_bytes(value)
    elif kind == "png":
        target.write_bytes(png_with_text(value))
    elif kind == "artcap's":
        assert write_explanation(EXAMPLE, description, grid_size, folder) is None
    elif kind == "folder":
        target.mkdir()
    elif kind == "symlink":
        target.symlink_to(theirs)
    ours = kind in ("artcap's", "none") or (kind == "png" and value.get("artcap") == "explain")
    before = snapshot(folder)

    error = write_explanation(EXAMPLE, description, grid_size, folder)

    if ours:
        assert error is None and is_explanation(target)
        assert {k: v for k, v in snapshot(folder).items() if k != target.name} == \
            {k: v for k, v in before.items() if k != target.name}
    else:
        assert error is not None and "\n" not in error and "artcap did not write it" in error, error
        assert snapshot(folder) == before


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_explain_into_a_path_it_cannot_write_is_one_line_per_image_and_captions_still_print(where, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    folder = blocker if where == "a file" else blocker / "pictures"

    second = tmp_path / "second.jpg"
    Image.open(EXAMPLE).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(second)

    code, out, err = run_cli(["caption", str(EXAMPLE), str(second), "--model", "sat", "--explain", str(folder), "-q"])

    assert code == 1 and "Traceback" not in err
    assert len(out.splitlines()) == 2 and all("\t" in line for line in out.splitlines())  # the captions
    failures = [line for line in err.splitlines() if line.startswith("artcap:   ")]
    assert len(failures) == 2 and all("cannot write the picture" in line for line in failures), err
    assert blocker.read_text() == "mine"


# ---- an XMP sidecar -------------------------------------------------------------------------------------

xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
                   min_size=1, max_size=12).filter(str.strip)
comment = xml_text.filter(lambda t: "--" not in t and not t.endswith("-"))
USER_PROPERTIES = [(DC_NS, "title"), (XMP_NS, "Rating"), ("http://ns.adobe.com/photoshop/1.0/", "Headline"),
                   ("http://example.org/museum/1.0/", "Accession"), ("http://example.org/museum/1.0/", "Room")]
CAPTION_STATES = ["absent", "blank", "artcap's", "person's", "person's x-default only", "other language only",
                  "not an alternative"]
PREFIXES = {DC_NS: "dc", XMP_NS: "xmp", "http://ns.adobe.com/photoshop/1.0/": "photoshop",
            "http://example.org/museum/1.0/": "museum", IPTC_CORE_NS: "Iptc4xmpCore", ARTCAP_NS: "artcap"}
PREVIOUS = "a caption artcap wrote before"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def caption_property(prefix: str, name: str, state: str, human: str) -> str:
    items = {"absent": None, "blank": [("x-default", " ")], "artcap's": [("x-default", PREVIOUS), ("en", PREVIOUS)],
             "person's": [("x-default", human), ("en", human), ("fr", "le " + human)],
             "person's x-default only": [("x-default", human)], "other language only": [("de", human)],
             "not an alternative": "plain"}[state]
    if items is None:
        return ""
    if items == "plain":
        return f"<{prefix}:{name}>{_escape(human)}</{prefix}:{name}>"
    lis = "".join(f'<rdf:li xml:lang="{lang}">{_escape(text)}</rdf:li>' for lang, text in items)
    return f"<{prefix}:{name}><rdf:Alt>{lis}</rdf:Alt></{prefix}:{name}>"


@st.composite
def sidecars(draw) -> tuple[str, dict]:
    """A person's sidecar, and what the test needs to know of it."""
    properties = draw(st.lists(st.tuples(st.sampled_from(USER_PROPERTIES), xml_text, st.booleans()), max_size=4,
                               unique_by=lambda p: p[0]))
    states = {"description": draw(st.sampled_from(CAPTION_STATES)), "alt": draw(st.sampled_from(CAPTION_STATES))}
    human = draw(xml_text)
    creator = draw(st.sampled_from([None, "Adobe Lightroom", "artcap 0.0.1"]))
    comments = draw(st.lists(comment, max_size=3))
    attributes = " ".join(f'{PREFIXES[ns]}:{name}="{_escape(v)}"' for (ns, name), v, as_attribute in properties
                          if as_attribute)
    children = "".join(f"<{PREFIXES[ns]}:{name}>{_escape(v)}</{PREFIXES[ns]}:{name}>"
                       for (ns, name), v, as_attribute in properties if not as_attribute)
    children += caption_property("dc", "description", states["description"], human)
    children += caption_property("Iptc4xmpCore", "AltTextAccessibility", states["alt"], human)
    if creator:
        children += f"<xmp:CreatorTool>{creator}</xmp:CreatorTool>"
    if "artcap's" in states.values():
        children += f"<artcap:Caption>{PREVIOUS}</artcap:Caption>"
    children += "".join(f"<!--{c}-->" for c in comments[1:])
    namespaces = " ".join(f'xmlns:{p}="{ns}"' for ns, p in PREFIXES.items())
    text = (f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            + "".join(f"<!--{c}-->\n" for c in comments[:1])
            + f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{RDF_NS}">'
            f'<rdf:Description rdf:about="" {namespaces} {attributes}>{children}</rdf:Description>'
            f'</rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>')
    return text, {"states": states, "creator": creator, "comments": comments}


def owned(tag: str, info: dict, overwrite: bool) -> bool:
    """The properties the rule gives artcap in this sidecar (decided here from what was generated)."""
    free = {"absent", "blank", "artcap's", "other language only"}
    if tag.startswith(f"{{{ARTCAP_NS}}}"):
        return True
    if tag == f"{{{XMP_NS}}}CreatorTool":
        return info["creator"] is None or info["creator"].startswith("artcap ")
    for state, prop in [(info["states"]["description"], f"{{{DC_NS}}}description"),
                        (info["states"]["alt"], f"{{{IPTC_CORE_NS}}}AltTextAccessibility")]:
        if tag == prop:
            return overwrite or state in free
    return False


def persons_part(data: bytes, info: dict, overwrite: bool):
    """The sidecar without what artcap owns: each element as (tag, attributes, text, children), comments kept."""
    def normal(element):
        if element.tag is ET.Comment:
            return ("#comment", element.text)
        attributes = sorted((k, v) for k, v in element.attrib.items() if not owned(k, info, overwrite))
        children = [normal(c) for c in element if not (isinstance(c.tag, str) and owned(c.tag, info, overwrite))]
        return element.tag, attributes, (element.text or "").strip(), children

    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    return normal(ET.fromstring(data, parser=parser))


def outside_comments(data: bytes) -> list[str]:
    events = ET.XMLPullParser(events=("start", "end", "comment"))
    events.feed(data)
    depth, found = 0, []
    for event, item in events.read_events():
        depth += {"start": 1, "end": -1}.get(event, 0)
        if event == "comment" and depth == 0:
            found.append(item.text)
    return found


@SETTINGS
@given(sidecar=sidecars(), caption=st.text(min_size=1, max_size=20), overwrite=st.booleans(),
       mode=st.sampled_from([0o644, 0o600, 0o444, 0o400]))
def test_a_sidecar_keeps_a_persons_words_and_everything_artcap_does_not_own(sidecar, caption, overwrite, mode):
    text, info = sidecar
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "a.jpg"
        path = Path(tmp) / "a.jpg.xmp"
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)
        before = path.read_bytes()

        error = write_sidecar(image, caption, "m", {"beam": 1}, overwrite_description=overwrite)

        if not mode & 0o222:  # read-only: a failed record, the file as it was
            assert error is not None and "read-only" in error and "\n" not in error
            assert path.read_bytes() == before
            return
        assert error is None, error
        after = path.read_bytes()
        assert persons_part(after, info, overwrite) == persons_part(before, info, overwrite)
        assert outside_comments(after)[:1] == info["comments"][:1]
        assert path.stat().st_mode & 0o777 == mode  # its permissions too
        root = ET.fromstring(after)
        assert root.find(f".//{{{ARTCAP_NS}}}Caption").text == clean_text(caption)
        for tag, state in [(f"{{{DC_NS}}}description", info["states"]["description"]),
                           (f"{{{IPTC_CORE_NS}}}AltTextAccessibility", info["states"]["alt"])]:
            if owned(tag, info, overwrite):  # the caption is where the rule lets it go
                entries = {li.get("{http://www.w3.org/XML/1998/namespace}lang"): li.text
                           for li in root.find(f".//{tag}/{{{RDF_NS}}}Alt")}
                assert entries["x-default"] == entries["en"] == clean_text(caption)


# ---- records of another job appended to a journal --------------------------------------------------------

decodings = st.builds(DecodingConfig, beam=st.integers(1, 5), max_len=st.integers(5, 40),
                      length_alpha=st.sampled_from([0.0, 0.7]), rerank=st.booleans())
identities = st.builds(JobIdentity, model=st.sampled_from(["artcap-default", "fast"]), decoding=decodings,
                       asked_emotion=st.sampled_from(["", "auto", "awe"]), metadata=st.sampled_from(["", "xmp"]))


def rows_of(identity: JobIdentity, paths: list[str]) -> list[dict]:
    return [{"path": p, "caption": f"a painting {i}", "emotion": EMOTIONS[i % 9], "emotion_scores": None,
             **identity.to_dict(), "time": "2026-01-01T00:00:00+00:00", "error": None} for i, p in enumerate(paths)]


def write_finished(out: Path, identity: JobIdentity, rows: list[dict]) -> None:
    with RecordFile(out, identity) as records:
        for row in rows:
            records.append(row)
        records.finish()


@SETTINGS
@given(mine=identities, theirs=identities, suffix=st.sampled_from([".jsonl", ".csv"]),
       mine_paths=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4, unique=True),
       their_paths=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=4, unique=True))
def test_records_of_another_job_appended_to_a_journal_are_refused_naming_their_line(
        mine, theirs, suffix, mine_paths, their_paths):
    with tempfile.TemporaryDirectory() as tmp:
        out, other = Path(tmp) / f"mine{suffix}", Path(tmp) / f"other{suffix}"
        write_finished(out, mine, rows_of(mine, mine_paths))
        write_finished(other, theirs, rows_of(theirs, their_paths))
        with open(journal_path(out), "ab") as f:  # cat other.jsonl >> mine.jsonl
            f.write(journal_path(other).read_bytes())
        files = [journal_path(out), manifest_path(out), out]
        before = {p: p.read_bytes() for p in files}

        if theirs.to_dict() == mine.to_dict():  # the same job's records: read as its own
            with RecordFile(out, mine) as records:
                assert len(records.records) == len(mine_paths) + len(their_paths)
            return
        with pytest.raises(ArtcapError, match=f"line {len(mine_paths) + 1} is a record of another job") as info:
            RecordFile(out, mine)
        assert "\n" not in str(info.value)
        assert {p: p.read_bytes() for p in files} == before


@SETTINGS
@given(identity=identities, paths=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4, unique=True))
def test_a_journal_saved_with_a_bom_and_crlf_reads_the_same(identity, paths):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "captions.jsonl"
        write_finished(out, identity, rows_of(identity, paths))
        with RecordFile(out, identity) as records:
            expected = records.records
        out.write_bytes(b"\xef\xbb\xbf" + out.read_bytes().replace(b"\n", b"\r\n"))  # as an editor saves it
        with RecordFile(out, identity) as records:
            assert records.records == expected


def test_a_csv_saved_by_a_spreadsheet_is_left_alone_with_the_way_to_recover(tmp_path):
    identity = JobIdentity("m", DecodingConfig())
    out = tmp_path / "captions.csv"
    write_finished(out, identity, rows_of(identity, ["a.jpg", "b.jpg"]))
    saved = b"\xef\xbb\xbf" + out.read_bytes().replace(b"\n", b"\r\n")
    out.write_bytes(saved)

    with pytest.raises(ArtcapError) as info:
        RecordFile(out, identity)
    message = str(info.value)
    assert "changed since artcap wrote it" in message and "move it away" in message and "\n" not in message
    assert out.read_bytes() == saved
    out.rename(tmp_path / "mine.csv")  # what the message says to do
    with RecordFile(out, identity) as records:
        assert [r["path"] for r in records.records] == ["a.jpg", "b.jpg"]
        records.finish()
    assert out.read_bytes() == saved.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")


# ---- a failed write leaves nothing that blocks a rerun ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
def test_an_embed_killed_mid_write_leaves_no_temporary_and_the_rerun_finishes(tmp_path):
    image = tmp_path / "a.jpg"
    shutil.copyfile(EXAMPLE, image)
    out = tmp_path / "captions.jsonl"
    command = [sys.executable, "-m", "artcap", "-q", "caption", str(image), "--model", "fast", "--embed",
               "--out", str(out), "--backend", "torch"]

    def limit():  # exiftool (started with SIGXFSZ at its default) dies writing the image's new copy
        resource.setrlimit(resource.RLIMIT_FSIZE, (image.stat().st_size // 2, image.stat().st_size // 2))

    killed = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert killed.returncode == 2 and killed.stderr.strip().count("\n") == 0, killed.stderr
    assert "exiftool stopped unexpectedly" in killed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "captions.jsonl", "captions.jsonl.job.json"]

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(out.read_text().splitlines()[0])["error"] is None
