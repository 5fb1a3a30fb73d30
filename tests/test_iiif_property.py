"""Generated IIIF inputs: any JSON document as a manifest is either read or refused in one line, and
any mix of good and bad canvases gives one annotation per good canvas and one error line per bad one."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from artcap.captioner import Captioner
from artcap.errors import ArtcapError
from artcap.iiif import FetchLimits, IIIFClient, read_manifests
from artcap.iiif_job import caption_iiif

from iiif_loopback import P3, Publisher, canvas, manifest
from test_iiif import validate_page

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=20)
# Documents near a manifest: the right context and type with any of the other fields.
near_manifests = st.fixed_dictionaries(
    {"@context": st.sampled_from([P3, "http://iiif.io/api/presentation/2/context.json", ""]),
     "type": st.sampled_from(["Manifest", "Collection", "Canvas", 3])},
    optional={"id": st.one_of(st.text(max_size=10), st.integers()), "items": json_values,
              "label": json_values})


@pytest.fixture(scope="module")
def publisher(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("www")
    (root / "img").mkdir()
    painting = sorted((shared_data / "artemis-mini" / "wikiart").rglob("*.jpg"))[0]
    (root / "img" / "good.jpg").write_bytes(painting.read_bytes())
    (root / "img" / "notes.jpg").write_text("a note\n")
    server = Publisher(root)
    yield server
    server.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(json_values, near_manifests))
def test_any_document_is_read_or_refused_in_one_line(publisher, document):
    url = publisher.write_json("generated.json", document)
    try:
        with IIIFClient() as client:
            for item in read_manifests(url, client):
                assert isinstance(item, ArtcapError) or item.canvases
    except ArtcapError as error:
        assert "\n" not in str(error)


KINDS = {  # kind -> (image path on the publisher or None, whether it captions)
    "good": ("img/good.jpg", True),
    "flaky": ("flaky/img/good.jpg", True),
    "404": ("img/missing.jpg", False),
    "not an image": ("img/notes.jpg", False),
    "too big": ("huge.jpg", False),
    "no image": (None, False),
}


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=6),
       label=st.text(min_size=1, max_size=12))
def test_each_bad_canvas_is_one_error_and_each_good_one_an_annotation(publisher, kinds, label):
    captioner = _captioner()
    publisher.server.failed_once.clear()
    canvases = []
    for n, kind in enumerate(kinds):
        path, _ = KINDS[kind]
        c = canvas(publisher, n, publisher.url(path) if path else None, manifest="gen")
        c["label"] = {"en": [label]}
        canvases.append(c)
    url = manifest(publisher, "gen", canvases)
    summary = caption_iiif(captioner, url, limits=FetchLimits(max_image_bytes=1024 * 1024, backoff_s=0.01))
    page = summary.annotation_page(summary.manifests[0])
    validate_page(page)
    good = [c["id"] for c, kind in zip(canvases, kinds) if KINDS[kind][1]]
    assert [a["target"] for a in page["items"]] == good
    assert sorted(cid for cid, _ in summary.errors) == sorted(c["id"] for c in canvases if c["id"] not in good)
    assert all("\n" not in message and message.startswith("canvas ") for _, message in summary.errors)
    json.dumps(page, allow_nan=False)


_loaded: list[Captioner] = []


def _captioner() -> Captioner:
    if not _loaded:
        _loaded.append(Captioner.load("fast", backend="torch"))
    return _loaded[0]


@settings(max_examples=300, deadline=None)
@given(width=st.integers(1, 30_000), height=st.integers(1, 30_000), level=st.sampled_from([1, 2]),
       version=st.sampled_from([2, 3]), min_side=st.sampled_from([224, 260, 384]))
def test_image_api_request_covers_the_model_input_with_no_more_pixels_than_needed(width, height, level, version,
                                                                                     min_side):
    """What a level 1 or 2 server returns for artcap's request (by the Image API's size rules) covers
    the model's input, is never upscaled, and is at most one pixel per side over the least that does."""
    from artcap.iiif import Canvas, ImageService, image_request_url

    service = ImageService("http://127.0.0.1:1/iiif/p", level, version)
    canvas = Canvas("c", "c", "m", service=service, width=width, height=height)
    url = image_request_url(canvas, client=None, min_side=min_side)  # level and size known: no request made
    size = url.split("/")[-3]
    if min(width, height) <= min_side:
        assert size == ("max" if version == 3 else "full")
        return
    scale = min_side / min(width, height)
    if size.startswith("!"):  # best fit inside W x H, aspect kept
        box_w, box_h = (int(v) for v in size[1:].split(","))
        fit = min(box_w / width, box_h / height)
        got = (width * fit, height * fit)
    else:  # "W,": the height follows the aspect
        got = (int(size.rstrip(",")), int(size.rstrip(",")) * height / width)
    assert min(got) >= min_side - 1  # rounding to whole pixels
    assert got[0] <= width * scale + 1 and got[1] <= height * scale + 1
    assert got[0] <= width and got[1] <= height
