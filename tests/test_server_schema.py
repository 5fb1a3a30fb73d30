"""Generated requests against a real server on 127.0.0.1 with the shipped model: schemathesis from
the server's own OpenAPI schema, and hypothesis with random and broken multipart bodies. No
request may get a 5xx, and every error answer is JSON {"error": "one line"}."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artcap.server import create_app, serve_in_background

pytestmark = pytest.mark.slow  # starts a server and runs the real model

FIELDS = ["image", "beam", "max_len", "file", ""]


@pytest.fixture(scope="module")
def base_url(captioner):
    app = create_app(captioner, max_upload_bytes=256 * 1024, request_timeout_s=60)
    with serve_in_background(app) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(base_url):
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


def assert_no_5xx_and_json_errors(status: int, content_type: str, body: bytes) -> None:
    import json

    assert status < 500, body[:300]
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type)
        error = json.loads(body)
        assert set(error) == {"error"} and isinstance(error["error"], str), error
        assert error["error"].strip() and "\n" not in error["error"], error


def test_generated_requests_never_get_a_5xx(api_schema, base_url):
    """schemathesis's pytest plugin does not load under this pytest, so its strategies are driven
    by hypothesis directly: a few generated requests per operation (positive and negative)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/captions", "GET /v1/limits", "GET /healthz"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def no_server_error(case):
            response = case.call(base_url=base_url, timeout=60)
            content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: lists
            assert_no_5xx_and_json_errors(response.status_code, content_type, response.content)
            if response.status_code == 200:
                case.validate_response(response, checks=[schemathesis.checks.response_schema_conformance])

        no_server_error()


@given(body=st.binary(max_size=2048), boundary=st.sampled_from(["XYZ", "b0undary", "-", "a" * 70]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_bytes_as_a_multipart_body_never_get_a_5xx(http, body, boundary):
    response = http.post("/v1/captions", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_no_5xx_and_json_errors(response.status_code, response.headers.get("content-type", ""), response.content)


@st.composite
def multipart_bodies(draw) -> bytes:
    """Well-formed, nearly well-formed and cut-off multipart bodies with the boundary XYZ."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(FIELDS))
        filename = draw(st.one_of(st.none(), st.text(max_size=20)))
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        headers = draw(st.sampled_from([f"Content-Disposition: {disposition}", "Content-Type: text/plain", "X:"]))
        content = draw(st.one_of(st.binary(max_size=200), st.sampled_from([b"1", b"5", b"0", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"])))
        parts.append(b"--XYZ\r\n" + headers.encode("utf-8", "replace") + b"\r\n\r\n" + content + b"\r\n")
    body = b"".join(parts) + draw(st.sampled_from([b"--XYZ--\r\n", b"--XYZ--", b"--XYZ", b"", b"--XYZ\r\n"]))
    cut = draw(st.integers(0, len(body)))
    return body[:cut] if draw(st.booleans()) else body


@given(body=multipart_bodies())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_multipart_bodies_never_get_a_5xx(http, body):
    response = http.post("/v1/captions", content=body, headers={"content-type": "multipart/form-data; boundary=XYZ"})
    assert_no_5xx_and_json_errors(response.status_code, response.headers.get("content-type", ""), response.content)
