"""Read one multipart/form-data upload into memory, bounded while it streams: in bytes, in time
(a deadline for the whole upload, and a shorter one for a pause: a client that stalls is answered
408 and its slot freed) and in fields (the caption parameters of params.py, each once).

python-multipart's streaming `MultipartParser` does the parsing; this module only collects its
parts. Why not Starlette's `request.form()`: it bounds text fields but not file size, spools
files over 1 MB to the system temp dir (this server writes no file), and hands back a partial
form for a body cut off before its closing boundary. Here a body that never reaches its closing
boundary is a 400, never a half image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Collection

import anyio
from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from artcap.server.errors import ApiError, one_line
from artcap.server.params import IMAGE_FIELD, MAX_PARAMETER_BYTES, PARAMETERS, check_name, too_long
from artcap.server.settings import MiB, ServerSettings

# Room for the multipart boundaries, part headers and the small parameter fields.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
FORM_FIELDS = (IMAGE_FIELD, *PARAMETERS)  # the one list (params.py): what the reader accepts and errors name
MAX_FORM_PARTS = len(FORM_FIELDS)  # the image and each parameter once
MAX_PART_HEADER_BYTES = 8 * 1024


@dataclass
class Upload:
    image: bytes | None
    filename: str | None
    fields: dict[str, str]
    read_ms: float


@dataclass
class _Part:
    name: str
    filename: str | None
    data: bytearray = field(default_factory=bytearray)


def mib(n_bytes: int) -> str:
    return f"{n_bytes / MiB:g} MiB"


def too_big(max_upload_bytes: int) -> ApiError:
    return ApiError(413, f"upload is larger than this server's limit of {mib(max_upload_bytes)}; send a smaller image")


class _FormCollector:
    """The parser's callbacks: collect the parts, refusing unknown, repeated or oversized ones."""

    def __init__(self, max_upload_bytes: int, in_query: Collection[str] = ()) -> None:
        self.max_upload_bytes = max_upload_bytes
        self.in_query = in_query  # parameters the query string already gave: the form may not repeat them
        self.parts: list[_Part] = []
        self.ended = False  # set only by the closing boundary
        self._header_bytes = 0
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        if len(self.parts) >= MAX_FORM_PARTS:
            raise ApiError(422, f"the form has more than {MAX_FORM_PARTS} fields; send only {', '.join(FORM_FIELDS)}, "
                                f"each once")
        self._headers, self._header_bytes = {}, 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._add_header_bytes(end - start)
        self._field.extend(data[start:end])

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._add_header_bytes(end - start)
        self._value.extend(data[start:end])

    def _add_header_bytes(self, count: int) -> None:
        self._header_bytes += count
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise ApiError(400, f"a form part's headers are longer than {MAX_PART_HEADER_BYTES} bytes; resend the form")

    def on_header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        _, disposition = parse_options_header(self._headers.get(b"content-disposition"))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        seen = [*self.in_query, *(part.name for part in self.parts)]
        if name == IMAGE_FIELD:
            if IMAGE_FIELD in seen:
                raise ApiError(422, f"form field '{IMAGE_FIELD}' is given more than once; send one painting")
        else:
            check_name(name, seen)
        filename = disposition.get(b"filename")
        # The name shows up in one-line error messages: no control characters, bounded length.
        shown = one_line(filename.decode("utf-8", "replace"), 100) if filename is not None else None
        self.parts.append(_Part(name, shown))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.parts:  # data before any part's headers: the parser forbids it, but be sure
            raise ApiError(400, "form data before any part header; resend the form")
        part = self.parts[-1]
        limit = self.max_upload_bytes if part.name == IMAGE_FIELD else MAX_PARAMETER_BYTES
        if len(part.data) + (end - start) > limit:
            if part.name == IMAGE_FIELD:
                raise too_big(self.max_upload_bytes)
            raise too_long(part.name)
        part.data.extend(data[start:end])

    def on_end(self) -> None:
        self.ended = True


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(
            415,
            "send the painting as multipart/form-data with a field named 'image' "
            "(e.g. curl -F image=@painting.jpg http://HOST/v1/captions)",
        )
    return boundary


async def read_multipart(request: Request, limits: ServerSettings, in_query: Collection[str] = ()) -> Upload:
    """Stream the body into memory, rejecting it (413) as soon as it grows past the limit: the
    Content-Length is checked first, then the bytes actually received. An upload that takes longer
    than `upload_timeout_s`, or sends nothing for `upload_idle_s`, is answered 408."""
    started = time.perf_counter()
    boundary = _boundary(request)
    max_upload_bytes = limits.max_upload_bytes
    max_body = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise too_big(max_upload_bytes)
    collector = _FormCollector(max_upload_bytes, in_query)
    received = 0
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async for chunk in _timed_chunks(request, limits, started):
            received += len(chunk)
            if received > max_body:
                raise too_big(max_upload_bytes)
            parser.write(chunk)
    except ApiError:
        raise
    except Exception as err:  # python-multipart's parse errors, or the client going away mid-upload
        reason = one_line(f"{type(err).__name__}: {err}", 200)
        raise ApiError(400, f"could not read the multipart upload ({reason}); resend the form") from None
    if not collector.ended:
        raise ApiError(400, "the multipart body ended before its closing boundary (truncated upload); resend the form")
    return _upload(collector.parts, started)


async def _timed_chunks(request: Request, limits: ServerSettings, started: float):
    """The body's chunks, each within the idle limit and all within the upload's deadline (else 408)."""
    chunks = request.stream().__aiter__()
    deadline = started + limits.upload_timeout_s
    while True:
        left = deadline - time.perf_counter()
        wait = min(limits.upload_idle_s, left)
        try:
            with anyio.fail_after(max(0.0, wait)):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            what = (f"sent nothing for {limits.upload_idle_s:g} s" if wait < left
                    else f"took longer than {limits.upload_timeout_s:g} s")
            raise ApiError(408, f"the upload {what}, this server's limit; resend it in one go") from None
        yield chunk


def _upload(parts: list[_Part], started: float) -> Upload:
    image = next((part for part in parts if part.name == IMAGE_FIELD), None)
    return Upload(
        image=bytes(image.data) if image is not None else None,
        filename=image.filename if image is not None else None,
        fields={part.name: part.data.decode("utf-8", "replace") for part in parts if part.name != IMAGE_FIELD},
        read_ms=(time.perf_counter() - started) * 1000,
    )
