"""The multipart reader's refusals name exactly the form fields the API accepts.

One list, `artcap.server.upload.FORM_FIELDS` (the image and `artcap.server.params.PARAMETERS`), is what the
reader accepts, what its error messages name and what the OpenAPI form schema declares; these tests feed real multipart bodies through the real reader (python-multipart)
inside a real Starlette request, so a message that drifts from the list fails here."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("fastapi")
from starlette.requests import Request  # noqa: E402

from artcap.server.errors import ApiError  # noqa: E402
from artcap.server.params import MAX_PARAMETER_BYTES, openapi_form, parameters_model  # noqa: E402
from artcap.server.settings import ServerSettings  # noqa: E402
from artcap.server.upload import FORM_FIELDS, read_multipart  # noqa: E402

BOUNDARY = "artcap-test-boundary"
# Names a client can put in Content-Disposition without quoting trouble.
field_names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_-."), min_size=1, max_size=30)


def multipart(parts: list[tuple[str, bytes]]) -> bytes:
    body = b""
    for name, value in parts:
        body += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def refusal(body: bytes) -> ApiError:
    """Read `body` as POST /v1/captions would; the ApiError it raises."""
    scope = {"type": "http", "method": "POST", "path": "/v1/captions", "query_string": b"",
             "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
                         (b"content-length", str(len(body)).encode())]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    with pytest.raises(ApiError) as refused:
        asyncio.run(read_multipart(Request(scope, receive), ServerSettings(max_upload_bytes=1 << 20)))
    return refused.value


@settings(max_examples=40, deadline=None)
@given(name=field_names.filter(lambda n: n not in FORM_FIELDS))
def test_an_unknown_field_is_refused_naming_every_accepted_field(name):
    error = refusal(multipart([("beam", b"3"), (name, b"x")]))
    assert error.status == 422
    assert name[:40] in str(error) and all(field in str(error) for field in FORM_FIELDS), str(error)


@settings(max_examples=20, deadline=None)
@given(field=st.sampled_from(FORM_FIELDS[1:]), extra=st.integers(1, 200))
def test_an_oversized_text_field_is_refused_naming_it(field, extra):
    error = refusal(multipart([(field, b"7" * (MAX_PARAMETER_BYTES + extra))]))
    assert error.status == 422
    assert f"'{field}'" in str(error) and str(MAX_PARAMETER_BYTES) in str(error), str(error)


def test_the_openapi_form_declares_exactly_the_accepted_fields():
    form = openapi_form(parameters_model(ServerSettings()), "the painting")
    assert set(form["properties"]) == set(FORM_FIELDS)
