"""IIIF manifests in, Web Annotations out: a publisher on 127.0.0.1 serving real paintings (plain
images and a level-0 Image API tile set), misbehaving image servers, v2 and broken manifests, and
a collection of two manifests; the output validated by iiif-prezi3's Presentation 3 models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artcap.annotations import ARTCAP_ID, page_file_name
from artcap.captioner import Captioner
from artcap.cli import main
from artcap.errors import ArtcapError
from artcap.iiif import FetchLimits, IIIFClient, read_manifests
from artcap.iiif_job import caption_iiif

from iiif_loopback import HUGE_BYTES, Publisher, canvas, collection, level0_tiles, manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fast_captioner():
    return Captioner.load("fast", backend="torch")


@pytest.fixture
def paintings(shared_data):
    return sorted((shared_data / "artemis-mini" / "wikiart").rglob("*.jpg"))[:6]


@pytest.fixture
def publisher(tmp_path, paintings):
    root = tmp_path / "www"
    (root / "img").mkdir(parents=True)
    for i, painting in enumerate(paintings):
        (root / "img" / f"{i}.jpg").write_bytes(painting.read_bytes())
    (root / "img" / "notes.jpg").write_text("a note, not a painting\n")
    server = Publisher(root)
    yield server
    server.close()


def validate_page(page: dict) -> None:
    """Presentation 3 validity by iiif-prezi3's models (generated from the IIIF JSON schema)."""
    from iiif_prezi3 import AnnotationPage

    AnnotationPage(**page)
    assert page["type"] == "AnnotationPage" and page["@context"] == "http://iiif.io/api/presentation/3/context.json"


def bad_canvases(publisher: Publisher) -> dict[str, tuple[dict, str]]:
    """name -> (canvas, what its one-line error must say)."""
    blank = {**canvas(publisher, 10, None), "items": []}
    return {
        "no image": (blank, "no painting annotation"),
        "image without a URL": (canvas(publisher, 16, None), "no 'id' (URL)"),
        "404": (canvas(publisher, 11, publisher.url("img/missing.jpg")), "404"),
        "timeout": (canvas(publisher, 12, publisher.url("slow/img/0.jpg")), "timed out"),
        "not an image": (canvas(publisher, 13, publisher.url("img/notes.jpg")), "not an image"),
        "50 MB, no length": (canvas(publisher, 14, publisher.url("huge.jpg")), "limit of 2 MiB"),
        "50 MB declared": (canvas(publisher, 15, publisher.url("huge-declared.jpg")), "over the limit"),
        "unreachable (offline)": (canvas(publisher, 17, "http://127.0.0.1:9/painting.jpg"), "cannot connect"),
    }


def test_every_bad_canvas_is_one_line_and_the_rest_are_captioned(fast_captioner, publisher, paintings, tmp_path):
    service = level0_tiles(publisher, "tiles0", paintings[2])
    good = [canvas(publisher, 1, publisher.url("img/0.jpg")),
            canvas(publisher, 2, None, service=service, size=(0, 0)),
            canvas(publisher, 3, publisher.url("flaky/img/1.jpg"))]  # a 503 once: retried
    bad = bad_canvases(publisher)
    url = manifest(publisher, "m", [*good, *(c for c, _ in bad.values())])
    limits = FetchLimits(timeout_s=1.0, max_image_bytes=2 * 1024 * 1024, backoff_s=0.05)
    summary = caption_iiif(fast_captioner, url, tmp_path / "records.jsonl", limits=limits)

    errors = dict(summary.errors)
    assert len(errors) == len(bad)
    for (c, expected) in bad.values():
        message = errors[c["id"]]
        assert expected in message and "\n" not in message and c["id"] in summary.records[c["id"]]["path"]
    page = summary.annotation_page(summary.manifests[0])
    validate_page(page)
    assert [a["target"] for a in page["items"]] == [c["id"] for c in good]
    for annotation in page["items"]:
        assert annotation["motivation"] == "describing" and annotation["body"][0]["type"] == "TextualBody"
        assert annotation["body"][0]["value"] and annotation["creator"]["type"] == "Software"
    # The 50 MB were not downloaded. What the server wrote counts the socket buffers too, which grow when the
    # machine is busy (10.7 MB seen at load 4), so the bound is half the file, not the 2 MiB limit.
    assert publisher.server.huge_sent < 25 * 1024 * 1024
    assert all(ua.startswith("artcap/") for _, ua in publisher.requests)


def test_level0_service_is_asked_for_the_smallest_size_that_is_big_enough(fast_captioner, publisher, paintings,
                                                                          tmp_path):
    from PIL import Image

    large = tmp_path / "large.jpg"  # a museum's master is far larger than the model's input
    with Image.open(paintings[3]) as picture:
        picture.convert("RGB").resize((picture.width * 5, picture.height * 5)).save(large)
    service = level0_tiles(publisher, "t", large)
    url = manifest(publisher, "m", [canvas(publisher, 1, None, service=service, size=(0, 0))])
    summary = caption_iiif(fast_captioner, url)
    assert not summary.errors and summary.records[publisher.url("m/canvas/1")]["caption"]
    asked = [p for p, _ in publisher.requests if p.startswith("/iiif/t/full/")]
    assert len(asked) == 1
    w, h = (int(v) for v in asked[0].split("/")[4].split(","))
    info = json.loads((publisher.root / "iiif/t/info.json").read_text())
    side = fast_captioner.encoder.image_size
    fits = [s for s in info["sizes"] if min(s["width"], s["height"]) >= side]
    assert min(w, h) >= side or not fits
    assert (w * h) == min(s["width"] * s["height"] for s in fits)  # no more pixels than needed
    with Image.open(large) as full:
        assert w * h < full.size[0] * full.size[1]


def test_cli_collection_writes_one_page_per_manifest_and_resumes(publisher, tmp_path, capsys):
    first = manifest(publisher, "a", [canvas(publisher, 1, publisher.url("img/0.jpg"), manifest="a"),
                                      canvas(publisher, 2, publisher.url("img/missing.jpg"), manifest="a")])
    second = manifest(publisher, "b", [canvas(publisher, 1, publisher.url("img/4.jpg"), manifest="b")])
    old = publisher.write_json("v2.json", {"@context": "http://iiif.io/api/presentation/2/context.json",
                                           "@id": publisher.url("v2.json"), "@type": "sc:Manifest"})
    url = collection(publisher, "both", [first, old, second])
    out_dir, records = tmp_path / "pages", tmp_path / "records.jsonl"
    args = ["caption", "--iiif", url, "--model", "fast", "--annotations-dir", str(out_dir), "--out", str(records), "-q"]
    assert main(args) == 1
    err = capsys.readouterr().err.splitlines()
    failures = [line for line in err if "a/canvas/2" in line]
    assert len(failures) == 1 and "404" in failures[0]
    assert len([line for line in err if "v2.json" in line and "Presentation 2" in line]) == 1  # the others go on
    pages = {p.name: json.loads(p.read_text()) for p in out_dir.iterdir()}
    assert sorted(pages) == sorted([page_file_name(first), page_file_name(second)])
    for page in pages.values():
        validate_page(page)
        assert len(page["items"]) == 1 and page["generator"]["id"] == ARTCAP_ID
    first_run = records.read_text()
    assert main(args) == 1  # resumed: the captioned canvases are skipped, the 404 tried again
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) == 3 and first_run.splitlines()[0] == records.read_text().splitlines()[0]
    other = manifest(publisher, "c", [canvas(publisher, 1, publisher.url("img/5.jpg"), manifest="c")])
    capsys.readouterr()
    assert main(["caption", "--iiif", other, "--model", "fast", "--out", str(records), "-q"]) == 2
    assert one_error_line(capsys).count("manifest was") == 1  # another manifest's job is refused
    assert main(["caption", "--iiif", url, "--model", "fast", "--annotations", str(tmp_path / "one.json"), "-q"]) == 2
    assert "2 manifests" in one_error_line(capsys)


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_annotation_file_not_written_by_artcap_is_never_touched(publisher, tmp_path, capsys):
    url = manifest(publisher, "m", [canvas(publisher, 1, publisher.url("img/0.jpg"))])
    theirs = tmp_path / "theirs.json"
    theirs.write_text('{"type": "AnnotationPage", "items": []}')
    assert main(["caption", "--iiif", url, "--model", "fast", "--annotations", str(theirs), "-q"]) == 2
    assert "not written by artcap" in one_error_line(capsys)
    assert theirs.read_text() == '{"type": "AnnotationPage", "items": []}'
    ours = tmp_path / "ours.json"
    for _ in range(2):  # the second run replaces artcap's own page
        assert main(["caption", "--iiif", url, "--model", "fast", "--annotations", str(ours), "-q"]) == 0
    validate_page(json.loads(ours.read_text()))


@pytest.mark.parametrize("document, expected", [
    (b"<html>not json</html>", "not JSON"),
    (json.dumps({"@context": "http://iiif.io/api/presentation/2/context.json", "@type": "sc:Manifest",
                 "@id": "x"}).encode(), "Presentation 2"),
    (json.dumps({"@context": "http://iiif.io/api/presentation/3/context.json", "type": "Canvas", "id": "x"}).encode(),
     "not a IIIF Presentation 3 manifest"),
    (json.dumps([1, 2]).encode(), "not a IIIF manifest"),
])
def test_a_manifest_that_cannot_be_read_is_one_line(publisher, document, expected):
    (publisher.root / "bad.json").write_bytes(document)
    with IIIFClient() as client, pytest.raises(ArtcapError, match=expected) as error:
        list(read_manifests(publisher.url("bad.json"), client))
    assert "\n" not in str(error.value) and "bad.json" in str(error.value)


def test_unreachable_manifest_is_one_line():
    with IIIFClient(FetchLimits(retries=1, backoff_s=0.01, timeout_s=1)) as client, \
            pytest.raises(ArtcapError, match="cannot connect") as error:
        list(read_manifests("http://127.0.0.1:9/manifest.json", client))
    assert "\n" not in str(error.value)


def test_a_killed_job_resumes_to_the_file_an_uninterrupted_run_writes(publisher, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    url = manifest(publisher, "k", [canvas(publisher, n, publisher.url(f"img/{n % 6}.jpg"), manifest="k")
                                    for n in range(60)])
    killed, whole = tmp_path / "killed.jsonl", tmp_path / "whole.jsonl"
    command = ["caption", "--iiif", url, "--model", "fast", "--backend", "torch", "--batch-size", "1", "-q"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    job = subprocess.Popen([sys.executable, "-m", "artcap", *command, "--out", str(killed)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not killed.exists() or killed.read_text().count("\n") < 5):
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    partial = killed.read_text().count("\n")
    assert 0 < partial < 60, "the job was not caught half way"
    assert main([*command, "--out", str(killed)]) == 0
    assert main([*command, "--out", str(whole)]) == 0

    def without_time(path: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in path.read_text().splitlines()]
    assert without_time(killed) == without_time(whole)
