"""POST /v1/iiif against a real uvicorn server, captioning a manifest served by a loopback publisher."""

from __future__ import annotations

import time

import httpx
import pytest

from artcap.captioner import Captioner
from artcap.server import create_app, serve_in_background

from iiif_loopback import Publisher, canvas, manifest
from test_iiif import validate_page

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def publisher(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("www")
    (root / "img").mkdir()
    for i, painting in enumerate(sorted((shared_data / "artemis-mini" / "wikiart").rglob("*.jpg"))[:3]):
        (root / "img" / f"{i}.jpg").write_bytes(painting.read_bytes())
    server = Publisher(root)
    yield server
    server.close()


@pytest.fixture(scope="module")
def app_url():
    app = create_app(Captioner.load("fast", backend="torch"), max_iiif_canvases=4, iiif_timeout_s=2.5)
    with serve_in_background(app) as url:
        yield url


def post(url: str, manifest_url) -> httpx.Response:
    return httpx.post(f"{url}/v1/iiif", json={"manifest": manifest_url}, timeout=60)


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message
    return message


def test_a_manifest_is_captioned_into_an_annotation_page(app_url, publisher):
    url = manifest(publisher, "m", [canvas(publisher, 1, publisher.url("img/0.jpg")),
                                    canvas(publisher, 2, publisher.url("img/missing.jpg")),
                                    canvas(publisher, 3, publisher.url("img/2.jpg"))])
    answer = post(app_url, url)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    validate_page(body["annotations"])
    assert [c["caption"] is not None for c in body["canvases"]] == [True, False, True]
    assert "404" in body["canvases"][1]["error"] and body["canvases"][0]["label"] == "Painting 1"
    assert [a["target"] for a in body["annotations"]["items"]] == [body["canvases"][i]["canvas"] for i in (0, 2)]


def test_bounds_and_bad_manifests_are_one_line_errors(app_url, publisher):
    many = manifest(publisher, "many", [canvas(publisher, n, publisher.url("img/0.jpg"), manifest="many")
                                        for n in range(5)])
    assert "limit of 4 canvases" in error_of(post(app_url, many), 413)
    assert "http(s) URL" in error_of(post(app_url, "/etc/passwd"), 422)
    (publisher.root / "notjson.json").write_text("<html>")
    assert "not JSON" in error_of(post(app_url, publisher.url("notjson.json")), 422)
    slow = manifest(publisher, "slow", [canvas(publisher, n, publisher.url("slow/img/1.jpg"), manifest="slow")
                                        for n in range(4)])
    started = time.monotonic()
    assert "2.5 s" in error_of(post(app_url, slow), 504)
    assert time.monotonic() - started < 10
    assert httpx.get(f"{app_url}/healthz").status_code == 200


def test_a_manifest_takes_the_caption_parameters_of_a_painting(app_url, publisher):
    """The decoding settings and `emotion` of POST /v1/captions, from the same settings fields; a
    misspelled one is refused, not ignored."""
    url = manifest(publisher, "options", [canvas(publisher, 1, publisher.url("img/0.jpg"))])
    answer = httpx.post(f"{app_url}/v1/iiif", json={"manifest": url, "max_len": 3, "emotion": "awe"}, timeout=60)
    assert answer.status_code == 200, answer.text
    captioned = answer.json()["canvases"][0]
    assert 1 <= len(captioned["caption"].split()) <= 3 and captioned["emotion"] == "awe"
    assert "beem" in error_of(httpx.post(f"{app_url}/v1/iiif", json={"manifest": url, "beem": 3}, timeout=60), 422)
    assert "beam" in error_of(httpx.post(f"{app_url}/v1/iiif", json={"manifest": url, "beam": 99}, timeout=60), 422)
