"""Idle clients cannot hold the server's capacity: real uvicorn on 127.0.0.1, raw sockets that start an
upload and stall. Uploads still arriving hold an upload slot (bounded in number and in time), never a
caption slot; a stalled upload is answered 408 and its slot freed; a full upload pool is 503 at once;
a request uvicorn cannot parse (Content-Length twice) is a JSON 400 like every other error. Every loop
here is bounded by socket timeouts and deadlines: the tests stop by themselves."""

from __future__ import annotations

import json
import socket
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artcap.server import create_app, serve_in_background

pytestmark = pytest.mark.slow  # real servers and the real model

IDLE_S = 1.5  # the servers here cut an upload that sends nothing for this long
BOUNDARY = b"XYZ"


@pytest.fixture(scope="module")
def painting_path(shared_data) -> Path:
    return sorted((shared_data / "artemis-mini" / "wikiart").glob("*/*.jpg"))[0]


@pytest.fixture(scope="module")
def painting(painting_path) -> bytes:
    return painting_path.read_bytes()


def multipart(image: bytes) -> bytes:
    return (b"--XYZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + image + b"\r\n--XYZ--\r\n")


def start_upload(url: str, body: bytes, declared: int | None = None) -> socket.socket:
    """Open a connection, send the request's headers and `body` (a prefix of the real body), then stall."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    sock = socket.create_connection((host, port), timeout=30)
    head = (f"POST /v1/captions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
            f"Content-Length: {declared if declared is not None else len(body) + 100_000}\r\n\r\n").encode()
    sock.sendall(head + body)
    return sock


def read_answer(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], dict]:
    """The HTTP answer on `sock`, read until the server closes it or `timeout` passes."""
    sock.settimeout(timeout)
    data, deadline = b"", time.monotonic() + timeout
    while b"\r\n\r\n" not in data or not _complete(data):
        if time.monotonic() > deadline:
            raise AssertionError(f"no full answer within {timeout} s: {data[:200]!r}")
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
                  None)
    return length is not None and len(body) >= length


def assert_one_line_json(status: int, headers: dict, body: dict, expected: int) -> str:
    assert status == expected, body
    assert headers["content-type"].startswith("application/json") and headers["x-content-type-options"] == "nosniff"
    assert set(body) == {"error"} and body["error"].strip() and "\n" not in body["error"]
    return body["error"]


def still_waiting(sock: socket.socket) -> bool:
    """No answer (and no close) on `sock` yet."""
    sock.settimeout(0.01)
    try:
        sock.recv(1, socket.MSG_PEEK)
        return False
    except (BlockingIOError, socket.timeout):
        return True


def test_stalled_uploads_do_not_hold_caption_slots(captioner, painting, painting_path):
    """More stalled uploads than caption slots: a real client is still captioned while they stall, and
    each stalled upload is answered 408 (JSON) within its idle limit, freeing its slot."""
    app = create_app(captioner, max_active_requests=2, max_uploads=16, upload_idle_s=IDLE_S * 4)
    body = multipart(painting)
    with serve_in_background(app) as url, ExitStack() as stack:
        stalled = [stack.enter_context(start_upload(url, body[:2])) for _ in range(6)]
        time.sleep(0.3)  # the server has taken them all in
        started = time.monotonic()
        response = httpx.post(f"{url}/v1/captions", files={"image": ("p.jpg", painting)}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["caption"] == captioner.caption([painting_path])[0]
        assert time.monotonic() - started < IDLE_S * 4 and all(still_waiting(s) for s in stalled)
        for sock in stalled:
            assert "sent nothing" in assert_one_line_json(*read_answer(sock, IDLE_S * 4 + 10), 408)


def test_a_full_upload_pool_is_503_at_once_and_frees_itself(captioner, painting):
    app = create_app(captioner, max_uploads=3, upload_idle_s=IDLE_S)
    with serve_in_background(app) as url, ExitStack() as stack:
        stalled = [stack.enter_context(start_upload(url, b"--")) for _ in range(3)]
        time.sleep(0.3)
        started = time.monotonic()
        busy = httpx.post(f"{url}/v1/captions", files={"image": ("p.jpg", painting)}, timeout=60)
        assert busy.status_code == 503 and "uploads at once" in busy.json()["error"], busy.text
        assert time.monotonic() - started < IDLE_S
        for sock in stalled:
            assert_one_line_json(*read_answer(sock, IDLE_S + 10), 408)
        assert httpx.post(f"{url}/v1/captions", files={"image": ("p.jpg", painting)}, timeout=60).status_code == 200


def test_a_trickling_upload_is_cut_at_its_deadline(captioner, painting):
    app = create_app(captioner, upload_idle_s=IDLE_S, upload_timeout_s=2.0)
    body = multipart(painting)
    with serve_in_background(app) as url, start_upload(url, body[:10], declared=len(body)) as sock:
        started = time.monotonic()
        for byte in body[10:60]:  # one byte every 0.2 s: never idle, but far too slow (at most 10 s)
            if not still_waiting(sock):
                break  # answered
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
        answered_after = time.monotonic() - started
        assert "took longer than 2 s" in assert_one_line_json(*read_answer(sock, 10), 408)
        assert 1.5 < answered_after < 4


def test_content_length_twice_is_a_json_400(captioner):
    with serve_in_background(create_app(captioner)) as url:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello")
            assert "malformed HTTP request" in assert_one_line_json(*read_answer(sock, 10), 400)


@pytest.fixture(scope="module")
def small_server(captioner):
    app = create_app(captioner, max_active_requests=1, max_uploads=8, upload_idle_s=IDLE_S)
    with serve_in_background(app) as url:
        yield url


@given(cuts=st.lists(st.floats(0, 1), min_size=1, max_size=5))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_stall_point_frees_its_slot_and_never_blocks_a_caption(small_server, painting, cuts):
    """Generated: up to 5 clients (more than the one caption slot) stall anywhere in the body (before it,
    in the part headers, in the image, before the closing boundary); a real client is captioned meanwhile,
    and each stalled client gets a JSON 408 within the idle limit."""
    body = multipart(painting)
    with ExitStack() as stack:
        stalled = [stack.enter_context(start_upload(small_server, body[: int(cut * (len(body) - 1))],
                                                    declared=len(body))) for cut in cuts]
        response = httpx.post(f"{small_server}/v1/captions", files={"image": ("p.jpg", painting)}, timeout=60)
        assert response.status_code == 200, response.text
        for sock in stalled:
            assert_one_line_json(*read_answer(sock, IDLE_S + 10), 408)
