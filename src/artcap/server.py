"""HTTP API and web page: a thin FastAPI layer over `Captioner`.

Uploads are decoded from memory (nothing is written to disk), bounded in bytes while they
stream and in pixels before decoding, and captioned by ONE inference thread that batches the
requests waiting at the same moment, so torch never runs in many threads at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException

from artcap.errors import ArtcapError
from artcap.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image

if TYPE_CHECKING:
    from artcap.captioner import Captioner

log = logging.getLogger("artcap.server")

STATIC_DIR = Path(__file__).resolve().parent / "static"
MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 20 * MiB
ACCEPTED_FORMATS_TEXT = "JPEG, PNG, WebP, BMP, TIFF or GIF"
# Room for the multipart boundaries, part headers and the small beam/max_len fields.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_FORM_PARTS = 8
FORM_FIELDS = ("image", "beam", "max_len")
MAX_TEXT_FIELD_BYTES = 64
# The page's security policy: our own files only; previews are blob: URLs.
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


class ApiError(Exception):
    """An HTTP error whose JSON body is {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------- response models
class ErrorBody(BaseModel):
    error: str = Field(description="One line: what was wrong and what to do.")


class Captions(BaseModel):
    greedy: str = Field(description="Greedy decoding (always present).")
    beam: str | None = Field(None, description="Beam-search decoding; present only when beam > 1.")


class ImageInfo(BaseModel):
    width: int
    height: int
    format: str
    bytes: int


class CaptionResponse(BaseModel):
    caption: str = Field(description="The best caption: the beam caption when beam > 1, else the greedy one.")
    captions: Captions
    model: str
    beam: int
    max_len: int | None = Field(description="The requested maximum length in words; null = the model's default.")
    image: ImageInfo
    timing_ms: dict[str, float] = Field(
        description="read (upload), decode, queue (waiting for the inference thread), inference, total."
    )


class Health(BaseModel):
    status: str
    model: str


class Limits(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    max_beam: int
    max_len_limit: int
    request_timeout_s: float
    formats: list[str]


# ----------------------------------------------------------------------------- batching worker
@dataclass
class _Job:
    image: Image.Image
    beam: int
    max_len: int | None
    future: asyncio.Future[tuple[str, float, float]]


class BatchingCaptioner:
    """Feeds one inference thread from an asyncio queue; requests that wait at the same time
    and ask for the same (beam, max_len) go to `Captioner.caption` as one batch."""

    def __init__(self, captioner: Captioner, *, max_batch: int = 32, max_queue: int = 256) -> None:
        self.captioner = captioner
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="artcap-inference")
        self._worker: asyncio.Task[None] | None = None
        self._in_flight: list[_Job] = []

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="artcap-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            self._in_flight.append(self._queue.get_nowait())
        for job in self._in_flight:
            if not job.future.done():
                job.future.set_exception(ApiError(503, "the server is shutting down; retry in a moment"))
        self._executor.shutdown(wait=True)

    async def caption(self, image: Image.Image, beam: int, max_len: int | None) -> tuple[str, float, float]:
        """Return (caption, started, finished): perf_counter() times of the batch that captioned it."""
        job = _Job(image, beam, max_len, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ApiError(503, "the server is busy (caption queue full); retry in a few seconds") from None
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            groups: dict[tuple[int, int | None], list[_Job]] = defaultdict(list)
            for job in batch:
                if not job.future.done():  # done = its request timed out or went away
                    groups[(job.beam, job.max_len)].append(job)
            self._in_flight = batch
            for (beam, max_len), jobs in groups.items():
                started = time.perf_counter()
                try:
                    captions = await loop.run_in_executor(
                        self._executor, self._caption_batch, [j.image for j in jobs], beam, max_len
                    )
                except Exception as err:  # hand every failure to its request instead of killing the worker
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(err)
                    continue
                finished = time.perf_counter()
                for job, text in zip(jobs, captions):
                    if not job.future.done():
                        job.future.set_result((text, started, finished))

    def _caption_batch(self, images: list[Image.Image], beam: int, max_len: int | None) -> list[str]:
        captions = self.captioner.caption(images, beam=beam, max_len=max_len)
        if len(captions) != len(images):
            raise RuntimeError(f"captioner returned {len(captions)} captions for {len(images)} images")
        return list(captions)


# ----------------------------------------------------------------------------- upload parsing
@dataclass
class _Upload:
    image: bytes | None
    filename: str | None
    fields: dict[str, str]
    read_ms: float


async def _read_multipart(request: Request, max_upload_bytes: int) -> _Upload:
    """Stream a multipart/form-data body into memory, rejecting it (413) as soon as it grows
    past the limit: the Content-Length is checked first, then the bytes actually received."""
    started = time.perf_counter()
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(
            415,
            "send the painting as multipart/form-data with a field named 'image' "
            "(e.g. curl -F image=@painting.jpg http://HOST/v1/captions)",
        )
    max_body = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    too_big = ApiError(413, f"upload is larger than this server's limit of {_mib(max_upload_bytes)}; send a smaller image")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise too_big

    parts: list[dict[str, Any]] = []
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        if len(parts) >= MAX_FORM_PARTS:
            raise ApiError(422, f"the form has more than {MAX_FORM_PARTS} fields; send only image, beam and max_len")
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1]["headers"][bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(parts[-1]["headers"].get(b"content-disposition"))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name not in FORM_FIELDS:
            raise ApiError(422, f"unknown form field {name[:40]!r}; send the painting as field 'image' (optional: beam, max_len)")
        parts[-1]["name"] = name
        filename = disposition.get(b"filename")
        # The name shows up in one-line error messages: no control characters, bounded length.
        parts[-1]["filename"] = _one_line(filename.decode("utf-8", "replace"), 100) if filename is not None else None

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        limit = max_upload_bytes if part["name"] == "image" else MAX_TEXT_FIELD_BYTES
        if len(part["data"]) + (end - start) > limit:
            if part["name"] == "image":
                raise too_big
            raise ApiError(422, f"form field '{part['name']}' is longer than {limit} bytes; send a small integer")
        part["data"].extend(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body:
                raise too_big
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        raise
    except Exception as err:  # python-multipart's parse errors, or the client going away mid-upload
        reason = _one_line(f"{type(err).__name__}: {err}", 200)
        raise ApiError(400, f"could not read the multipart upload ({reason}); resend the form") from None

    image = next((p for p in parts if p.get("name") == "image"), None)
    fields = {p["name"]: p["data"].decode("utf-8", "replace") for p in parts if p.get("name") != "image"}
    return _Upload(
        image=bytes(image["data"]) if image is not None else None,
        filename=image["filename"] if image is not None else None,
        fields=fields,
        read_ms=(time.perf_counter() - started) * 1000,
    )


def _one_line(text: str, max_chars: int) -> str:
    return " ".join(text.split())[:max_chars]


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / MiB:g} MiB"


def _int_param(name: str, raw: str | None, low: int, high: int) -> int | None:
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ApiError(422, f"'{name}' must be an integer from {low} to {high}, got {raw[:20]!r}") from None
    if not low <= value <= high:
        raise ApiError(422, f"'{name}' must be from {low} to {high}, got {value}")
    return value


def _sniff_format(data: bytes) -> str | None:
    """The format named by the file's magic bytes, if it is one we accept (the file name and
    the client's Content-Type are not trusted)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def _decode(data: bytes, filename: str | None, max_pixels: int) -> tuple[Image.Image, str]:
    """Check the format, then decode from memory; load_image refuses too many pixels from the
    header before decoding any. Return the RGB image and its format name."""
    label = filename or "the upload"
    image_format = _sniff_format(data)
    if image_format is None:
        raise ApiError(415, f"{label} is not a {ACCEPTED_FORMATS_TEXT} image; send one of those formats")
    try:
        # Full size, not a reduced JPEG draft: the response reports the upload's real dimensions.
        return load_image(data, max_pixels=max_pixels, name=label), image_format
    except ImageLoadError as err:
        status = 413 if err.reason.startswith("too many pixels") else 422
        raise ApiError(status, str(err)) from None


# ----------------------------------------------------------------------------- the app
def create_app(
    captioner: Captioner,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    request_timeout_s: float = 30.0,
    max_beam: int = 10,
    max_len_limit: int = 100,
) -> FastAPI:
    """The ASGI app: `GET /` page, `/static/*` its assets, `GET /healthz`, `POST /v1/captions`,
    OpenAPI at `/openapi.json` and `/docs`."""
    for name, value in [
        ("max_upload_bytes", max_upload_bytes),
        ("max_pixels", max_pixels),
        ("request_timeout_s", request_timeout_s),
        ("max_beam", max_beam),
        ("max_len_limit", max_len_limit),
    ]:
        if not value > 0:
            raise ArtcapError(f"server setting {name} must be > 0, got {value}; pass a positive value")

    batcher = BatchingCaptioner(captioner)
    # Decoding big images is memory-hungry: decode at most two at a time.
    decode_limiter = anyio.CapacityLimiter(2)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="artcap",
        summary="Describe artworks in words.",
        description="Upload a painting, get its caption. Every error body is `{\"error\": \"...\"}`.",
        version=_version(),
        lifespan=lifespan,
    )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = {
            404: f"nothing at {request.url.path}; the page is at /, the API at POST /v1/captions (see /docs)",
            405: f"{request.method} is not allowed on {request.url.path}; see /docs for the API",
        }.get(err.status_code, str(err.detail))
        return JSONResponse({"error": message}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{' '.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in err.errors()
        )
        return JSONResponse({"error": f"bad request parameter ({problems}); see /docs"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request")
        return JSONResponse(
            {"error": f"internal error ({type(err).__name__}); the server log has details, please report it"},
            status_code=500,
        )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html",
            headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", response_model=Health, summary="Liveness and the loaded model")
    async def healthz() -> Health:
        return Health(status="ok", model=captioner.model_id)

    @app.get("/v1/limits", response_model=Limits, summary="This server's limits (the page checks sizes with them)")
    async def limits() -> Limits:
        return Limits(
            max_upload_bytes=max_upload_bytes,
            max_pixels=max_pixels,
            max_beam=max_beam,
            max_len_limit=max_len_limit,
            request_timeout_s=request_timeout_s,
            formats=["JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF"],
        )

    form_schema = {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "format": "binary", "description": f"The painting: {ACCEPTED_FORMATS_TEXT}."},
            "beam": {"type": "integer", "minimum": 1, "maximum": max_beam, "description": "Overrides ?beam."},
            "max_len": {"type": "integer", "minimum": 1, "maximum": max_len_limit, "description": "Overrides ?max_len."},
        },
    }
    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": text}
        for code, text in {
            400: "Malformed multipart body",
            413: f"Upload over {_mib(max_upload_bytes)} or image over {max_pixels:,} pixels",
            415: "Not multipart/form-data, or not a JPEG/PNG/WebP/BMP/TIFF/GIF image",
            422: "Bad beam/max_len, missing 'image' field, or an image that cannot be decoded",
            503: "Caption queue full or server shutting down",
            504: f"The request took longer than {request_timeout_s:g} s",
        }.items()
    }

    @app.post(
        "/v1/captions",
        response_model=CaptionResponse,
        summary="Caption one painting",
        description=(
            "multipart/form-data with field `image`; optional `beam` (1 = greedy only; >1 also returns the "
            "beam-search caption) and `max_len`, as form fields or query parameters."
        ),
        responses=error_responses,
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form_schema}}}},
    )
    async def create_caption(
        request: Request,
        beam: int | None = Query(None, ge=1, le=max_beam, description="Beam width; 1 = greedy only."),
        max_len: int | None = Query(None, ge=1, le=max_len_limit, description="Maximum caption length in words."),
    ) -> CaptionResponse:
        try:
            return await asyncio.wait_for(_caption_request(request, beam, max_len), timeout=request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(
                504,
                f"captioning took longer than this server's {request_timeout_s:g} s limit; "
                "the server is busy or the upload slow, retry later or with a smaller image",
            ) from None

    async def _caption_request(request: Request, beam: int | None, max_len: int | None) -> CaptionResponse:
        started = time.perf_counter()
        upload = await _read_multipart(request, max_upload_bytes)
        beam = _int_param("beam", upload.fields.get("beam"), 1, max_beam) or beam or 1
        max_len = _int_param("max_len", upload.fields.get("max_len"), 1, max_len_limit) or max_len
        if upload.image is None:
            raise ApiError(422, "the form has no 'image' field; send the painting as multipart field 'image'")
        if not upload.image:
            raise ApiError(422, f"{upload.filename or 'the image'} is empty (0 bytes); send the image file itself")

        decode_started = time.perf_counter()
        image, image_format = await anyio.to_thread.run_sync(
            _decode, upload.image, upload.filename, max_pixels, limiter=decode_limiter
        )
        decode_ms = (time.perf_counter() - decode_started) * 1000

        jobs = [batcher.caption(image, 1, max_len)]
        if beam > 1:
            jobs.append(batcher.caption(image, beam, max_len))
        try:
            results = await asyncio.gather(*jobs)
        except ArtcapError as err:
            raise ApiError(422, str(err)) from None
        greedy, beam_caption = results[0][0], (results[1][0] if beam > 1 else None)
        inference_started = min(started for _, started, _ in results)
        inference_finished = max(finished for _, _, finished in results)
        queued_at = decode_started + decode_ms / 1000
        return CaptionResponse(
            caption=beam_caption if beam_caption is not None else greedy,
            captions=Captions(greedy=greedy, beam=beam_caption),
            model=captioner.model_id,
            beam=beam,
            max_len=max_len,
            image=ImageInfo(width=image.width, height=image.height, format=image_format, bytes=len(upload.image)),
            timing_ms={
                "read": round(upload.read_ms, 1),
                "decode": round(decode_ms, 1),
                "queue": round((inference_started - queued_at) * 1000, 1),
                "inference": round((inference_finished - inference_started) * 1000, 1),
                "total": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    return app


def _version() -> str:
    from artcap import __version__

    return __version__


# ----------------------------------------------------------------------------- running it
def _check_port_free(host: str, port: int) -> None:
    """Fail with one line instead of uvicorn's log-and-exit when the address is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ArtcapError(f"--host {host!r} is not a usable address ({err}); try 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise ArtcapError(f"cannot listen on {host}:{port} ({err.strerror}); pick another --port") from None


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 8000, **limits: Any) -> None:
    """Load the model and serve the page and API with uvicorn until Ctrl-C. Binds localhost by
    default; `limits` are create_app's keyword arguments (max_upload_bytes, max_pixels, ...)."""
    import uvicorn

    from artcap.captioner import Captioner

    _check_port_free(host, port)
    captioner = Captioner.load(model)
    app = create_app(captioner, **limits)
    shown_host = f"[{host}]" if ":" in host else host
    print(f"artcap: serving model {captioner.model_id} at http://{shown_host}:{port}/ (API docs at /docs); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level="info")


@contextlib.contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` under a real uvicorn server in a daemon thread; yield its base URL
    (port 0 = a free port picked by the OS). For tests, benchmarks and scripts."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="artcap-uvicorn")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn server did not start; see its log above")
            time.sleep(0.02)
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
