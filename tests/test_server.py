"""The HTTP API against a real uvicorn server on 127.0.0.1 with the real shipped model."""

from __future__ import annotations

import csv
import io
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from artcap.errors import ArtcapError
from artcap.cli import build_parser, run_serve
from artcap.server import create_app, serve, serve_in_background

UPLOAD_LIMIT = 1024 * 1024
PIXEL_LIMIT = 4_000_000

pytestmark = pytest.mark.slow  # starts a server and runs the real model


@pytest.fixture(scope="module")
def base_url(captioner):
    app = create_app(captioner, max_upload_bytes=UPLOAD_LIMIT, max_pixels=PIXEL_LIMIT, request_timeout_s=120)
    with serve_in_background(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def paintings(shared_data) -> list[Path]:
    found = sorted((shared_data / "artemis-mini" / "wikiart").glob("*/*.jpg"))
    if not found:
        pytest.skip(f"no paintings under {shared_data / 'artemis-mini' / 'wikiart'}")
    return found[:: max(1, len(found) // 6)][:6]  # six paintings spread over the styles


@pytest.fixture(scope="module")
def artemis_words(shared_data) -> set[str]:
    """Every word the ArtEmis annotators used: a caption made of 'real words' uses these."""
    words: set[str] = set()
    with open(shared_data / "artemis-mini" / "artemis_mini.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            words.update(re.findall(r"[a-z]+", row["utterance"].lower()))
    return words


def assert_real_words(caption: str, vocabulary: set[str]) -> None:
    words = re.findall(r"[a-z]+", caption.lower())
    assert len(words) >= 2, f"caption too short: {caption!r}"
    unknown = [w for w in words if w not in vocabulary]
    assert not unknown, f"caption {caption!r} has words no annotator used: {unknown}"
    assert "<" not in caption, f"special token leaked into {caption!r}"


def post_image(client: httpx.Client, data: bytes, name: str = "painting.jpg", **fields: str) -> httpx.Response:
    return client.post("/v1/captions", files={"image": (name, data, "application/octet-stream")}, data=fields)


def assert_json_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"].strip() and "\n" not in body["error"], body
    return body["error"]


def test_healthz_names_the_loaded_model(client, captioner):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": captioner.model_id}


def test_caption_a_real_painting(client, captioner, paintings, artemis_words):
    data = paintings[0].read_bytes()
    response = post_image(client, data, paintings[0].name)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == captioner.model_id and body["beam"] == captioner.decoding.beam
    assert body["caption"] == (body["captions"]["beam"] or body["captions"]["greedy"])
    assert_real_words(body["caption"], artemis_words)
    with Image.open(paintings[0]) as image:
        assert (body["image"]["width"], body["image"]["height"]) == image.size
    assert body["image"] == {**body["image"], "format": "JPEG", "bytes": len(data)}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0


def test_beam_and_max_len_from_form_and_query(client, paintings, artemis_words):
    data = paintings[1].read_bytes()
    body = post_image(client, data, beam="3").json()
    assert body["beam"] == 3
    assert body["caption"] == body["captions"]["beam"]
    assert_real_words(body["captions"]["beam"], artemis_words)
    assert_real_words(body["captions"]["greedy"], artemis_words)

    short = client.post("/v1/captions?max_len=2", files={"image": ("p.jpg", data)}).json()
    assert short["max_len"] == 2
    assert 1 <= len(short["caption"].split()) <= 2, short


@pytest.mark.parametrize(
    "query, fields",
    [("?beam=0", {}), ("?beam=many", {}), ("", {"beam": "11"}), ("", {"max_len": "-1"}), ("?max_len=1000", {})],
)
def test_bad_parameters_are_422(client, paintings, query, fields):
    response = client.post(f"/v1/captions{query}", files={"image": ("p.jpg", paintings[0].read_bytes())}, data=fields)
    error = assert_json_error(response, 422)
    assert "beam" in error or "max_len" in error


def test_oversize_upload_is_413_from_content_length(client):
    error = assert_json_error(post_image(client, b"\xff\xd8\xff" + bytes(2 * UPLOAD_LIMIT)), 413)
    assert "1 MiB" in error


def test_oversize_upload_without_content_length_is_413_while_streaming(client):
    def chunked_body():  # no Content-Length: the server must count the bytes itself
        yield b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n\xff\xd8\xff'
        for _ in range(3 * UPLOAD_LIMIT // 65536):
            yield bytes(65536)
        yield b"\r\n--b0undary--\r\n"

    response = client.post(
        "/v1/captions", content=chunked_body(), headers={"content-type": "multipart/form-data; boundary=b0undary"}
    )
    assert "content-length" not in response.request.headers
    assert_json_error(response, 413)


def test_garbage_named_jpg_is_rejected(client):
    error = assert_json_error(post_image(client, b"this is not a picture at all" * 50, "painting.jpg"), 415)
    assert "painting.jpg" in error


def test_truncated_jpeg_is_422(client, paintings):
    data = paintings[0].read_bytes()
    error = assert_json_error(post_image(client, data[: len(data) // 3], "cut.jpg"), 422)
    assert "cut.jpg" in error


def test_unaccepted_format_is_415(client):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "navy").save(buffer, "ICO")
    assert_json_error(post_image(client, buffer.getvalue(), "icon.ico"), 415)


def test_image_over_pixel_limit_is_413_and_tiny_on_the_wire(client):
    buffer = io.BytesIO()
    Image.new("L", (2500, 2000), 200).save(buffer, "PNG", optimize=True)  # 5 MP > 4 MP limit
    assert len(buffer.getvalue()) < 50_000
    error = assert_json_error(post_image(client, buffer.getvalue(), "huge.png"), 413)
    assert "2500x2000" in error


def test_missing_image_field_and_wrong_content_type(client, paintings):
    assert "'image'" in assert_json_error(client.post("/v1/captions", files={"beam": (None, "1")}), 422)
    assert "'image'" in assert_json_error(client.post("/v1/captions", data={"beam": "1"}), 415)  # urlencoded
    assert "'image'" in assert_json_error(
        client.post("/v1/captions", files={"file": ("p.jpg", paintings[0].read_bytes())}), 422
    )
    raw = client.post("/v1/captions", content=paintings[0].read_bytes(), headers={"content-type": "image/jpeg"})
    assert "multipart/form-data" in assert_json_error(raw, 415)


def test_unknown_paths_are_json_404_and_static_serves_only_its_own_files(client):
    assert_json_error(client.get("/nope"), 404)
    assert_json_error(client.get("/static/..%2Fserver.py"), 404)
    assert_json_error(client.get("/static/%2e%2e/server.py"), 404)
    assert_json_error(client.get("/v1/captions"), 405)
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert client.get(asset).status_code == 200, asset
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


def test_openapi_documents_the_caption_endpoint(client):
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/captions"]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert {"413", "415", "422", "504"} <= set(operation["responses"])
    assert client.get("/docs").status_code == 200


def test_concurrent_requests_are_all_answered_like_single_ones(client, base_url, paintings):
    images = [p.read_bytes() for p in paintings]
    expected = [post_image(client, data).json()["caption"] for data in images]

    def caption(index: int) -> tuple[int, str]:
        response = httpx.post(
            f"{base_url}/v1/captions", files={"image": ("p.jpg", images[index % len(images)])}, timeout=120
        )
        return response.status_code, response.json().get("caption", response.text)

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(caption, range(24)))
    assert [status for status, _ in results] == [200] * 24
    assert [text for _, text in results] == [expected[i % len(images)] for i in range(24)]


def test_request_timeout_is_504_json(captioner, paintings):
    app = create_app(captioner, request_timeout_s=0.001)
    with serve_in_background(app) as url:
        response = httpx.post(f"{url}/v1/captions", files={"image": ("p.jpg", paintings[0].read_bytes())}, timeout=60)
        assert "0.001 s" in assert_json_error(response, 504)
        assert httpx.get(f"{url}/healthz").status_code == 200  # the server survives its timed-out work


def test_create_app_refuses_nonsense_limits(captioner):
    with pytest.raises(ArtcapError, match="max_pixels"):
        create_app(captioner, max_pixels=0)


def test_serve_subcommand_options():
    parser = build_parser()
    defaults = parser.parse_args(["serve"])
    assert (defaults.host, defaults.port, defaults.model, defaults.func) == ("127.0.0.1", 8000, None, run_serve)
    args = parser.parse_args(["serve", "--port", "9001", "--model", "m", "--max-upload-mb", "2.5", "--max-pixels", "1000"])
    assert (args.port, args.model, args.max_upload_mb, args.max_pixels) == (9001, "m", 2.5, 1000)
    with pytest.raises(SystemExit) as refused:  # checked where it is parsed, before the server starts
        parser.parse_args(["serve", "--max-upload-mb", "0"])
    assert refused.value.code == 2


def test_serve_refuses_a_port_in_use_in_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ArtcapError, match=f"127.0.0.1:{port}.*pick another --port"):
            serve(port=port)


# ---------------------------------------------------------------------------------------- trust
def test_truncated_multipart_body_is_400_not_500(client):
    for body in (b"--XYZ\r\n", b'--XYZ\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n\xff\xd8\xff'):
        response = client.post("/v1/captions", content=body, headers={"content-type": "multipart/form-data; boundary=XYZ"})
        assert "multipart" in assert_json_error(response, 400)


def test_head_of_the_page_is_200_without_a_body(client):
    response = client.head("/")
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-type"].startswith("text/html")


def test_every_answer_says_nosniff(client):
    for response in (client.get("/"), client.get("/static/app.js"), client.get("/healthz"), client.get("/v1/limits"),
                     client.get("/nope"), client.post("/v1/captions", content=b"x", headers={"content-type": "text/plain"})):
        assert response.headers.get("x-content-type-options") == "nosniff", response.request.url


def test_beam_omitted_uses_the_models_default_decoding(client, captioner, paintings):
    default = captioner.decoding
    limits = client.get("/v1/limits").json()
    assert limits["default_decoding"] == default.to_dict()
    body = post_image(client, paintings[2].read_bytes()).json()
    assert (body["beam"], body["max_len"]) == (default.beam, default.max_len)
    expected = captioner.caption([paintings[2]])[0]  # the CLI's path: the model's default decoding
    assert body["caption"] == expected
    assert body["captions"]["greedy"] == captioner.caption([paintings[2]], beam=1)[0]
    assert (body["captions"]["beam"] is not None) == (default.beam > 1)


def test_a_big_jpeg_is_captioned_like_the_cli_and_reports_its_real_size(client, captioner, paintings, tmp_path):
    path = tmp_path / "big.jpg"  # decoded at a reduced scale (JPEG draft), reported at its real size
    with Image.open(paintings[3]) as painting:
        painting.convert("RGB").resize((2400, 1600), Image.BICUBIC).save(path, quality=85)
    assert path.stat().st_size < UPLOAD_LIMIT
    response = post_image(client, path.read_bytes(), "big.jpg", beam="1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["image"]["width"], body["image"]["height"]) == (2400, 1600)
    assert body["caption"] == captioner.caption([path], beam=1)[0]


def test_a_burst_of_decompression_heavy_uploads_keeps_memory_bounded():
    """8 clients post a 131 KB PNG that decodes to 119 MB, at once, to a real server process.
    Before: every decoded image waited full-size in the queue (+1 GB for 8, +2.8 GB for 24)."""
    import json
    import subprocess
    import sys

    if not Path("/proc/self/status").is_file():
        pytest.skip("reads the server's memory from /proc (Linux)")
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_server_memory.py"
    run = subprocess.run([sys.executable, str(bench), "--uploads", "8", "--json"], capture_output=True, text=True,
                         timeout=300)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["peak_growth_mb"] < 600, result
    assert result["after_growth_mb"] < 150, result
    assert set(result["statuses"]) <= {200, 503} and 200 in result["statuses"] and not result["problems"], result
    assert result["max_s"] < 30, result


def test_serve_refuses_a_bad_thread_count_before_loading_anything():
    with pytest.raises(ArtcapError, match="--threads"):
        serve(port=1, threads=0)
