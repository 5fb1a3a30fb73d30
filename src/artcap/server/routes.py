"""The page, its assets, /healthz, /v1/limits and POST /v1/captions."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from artcap.errors import ArtcapError
from artcap.captioner import Description, emotion_name
from artcap.data import EMOTIONS
from artcap.server import params
from artcap.server.batching import Ask, BatchingCaptioner
from artcap.server.errors import ApiError, ErrorBody
from artcap.images import ACCEPTED_FORMATS_TEXT
from artcap.server.prepare import ACCEPTED_FORMATS, PreparedImage, prepare_image
from artcap.server.schemas import CaptionResponse, Captions, Health, ImageInfo, Limits, Word
from artcap.server.settings import ServerSettings
from artcap.server.upload import Upload, mib, read_multipart

if TYPE_CHECKING:
    from artcap.captioner import Captioner

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
# The share of request_timeout_s a request may wait for a decode slot before it answers 503.
DECODE_WAIT_SHARE = 0.5
# The page's security policy: our own files only; previews are blob: URLs.
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


class CaptionService:
    """One caption request, from the upload to the response, within the server's limits."""

    def __init__(self, captioner: Captioner, settings: ServerSettings, batcher: BatchingCaptioner) -> None:
        self.captioner, self.settings, self.batcher = captioner, settings, batcher
        self.parameters = params.parameters_model(settings)
        self._decode_limiter = anyio.CapacityLimiter(settings.max_concurrent_decodes)
        # One event loop: plain ints are safe. Uploads still arriving and captions in progress are counted
        # apart, so clients that stall mid-upload hold upload slots (bounded in time), never caption slots.
        self._uploads = 0
        self._active = 0

    async def answer(self, request: Request) -> CaptionResponse:
        query = params.query_parameters(request.query_params.multi_items())
        params.read_parameters(self.parameters, query)  # a bad query parameter is refused before the upload
        upload = await self._receive(request, query)
        if self._active >= self.settings.max_active_requests:
            raise ApiError(503, f"the server is busy ({self._active} captions in progress); retry in a few seconds")
        self._active += 1
        try:
            return await asyncio.wait_for(self._caption(upload, query), self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(
                504,
                f"captioning took longer than this server's {self.settings.request_timeout_s:g} s limit; "
                "the server is busy, retry later or with a smaller image",
            ) from None
        finally:
            self._active -= 1

    async def _receive(self, request: Request, query: dict[str, str]) -> Upload:
        """The upload, read in one of `max_uploads` slots within its deadlines (408 past them)."""
        if self._uploads >= self.settings.max_uploads:
            raise ApiError(503, f"the server is receiving {self._uploads} uploads at once, its limit; retry in a "
                                f"few seconds")
        self._uploads += 1
        try:
            return await read_multipart(request, self.settings, in_query=query)
        finally:
            self._uploads -= 1

    async def _caption(self, upload: Upload, query: dict[str, str]) -> CaptionResponse:
        started = time.perf_counter()
        ask = self._ask({**query, **upload.fields})
        decoding = ask.decoding
        image_bytes = _take_image_bytes(upload)
        upload_size = len(image_bytes)
        decode_started = time.perf_counter()
        prepared = await self._prepare(image_bytes, upload.filename, started)
        queued_at = time.perf_counter()
        del image_bytes  # the upload goes now: only the small model-size array waits for the model
        results = await self._run_model(prepared, ask)
        greedy, beam = results[0][0], (results[1][0] if len(results) > 1 else None)
        best = beam or greedy
        inference_started = min(started for _, started, _ in results)
        inference_finished = max(finished for _, _, finished in results)
        grid = self.captioner.feature_spec.grid_size
        return CaptionResponse(
            caption=best.caption,
            captions=Captions(greedy=greedy.caption, beam=beam.caption if beam else None),
            model=self.captioner.model_id,
            beam=decoding.beam,
            max_len=decoding.max_len,
            decoding=decoding,
            emotion=best.emotion,
            emotion_scores=best.emotion_scores,
            words=[Word(word=w, attention=m) for w, m in zip(best.words, best.attention_maps(grid))]
            if ask.explain else None,
            image=ImageInfo(width=prepared.width, height=prepared.height, format=prepared.format,
                            bytes=upload_size),
            timing_ms=_timings(started, upload.read_ms, decode_started, queued_at, inference_started,
                               inference_finished),
        )

    async def _prepare(self, data: bytes, filename: str | None, started: float) -> PreparedImage:
        """Decode in a worker thread once one of the few decode slots is free. A request that
        waits for a slot longer than half its time answers 503 at once: better than a 504 later."""
        give_up_at = started + self.settings.request_timeout_s * DECODE_WAIT_SHARE
        try:
            self._decode_limiter.acquire_nowait()  # a free slot is taken however long the upload took
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(max(0.0, give_up_at - time.perf_counter())):
                    await self._decode_limiter.acquire()
            except TimeoutError:
                raise ApiError(
                    503, "the server is busy decoding other uploads; retry in a few seconds"
                ) from None
        try:
            return await anyio.to_thread.run_sync(
                prepare_image, data, filename, self.settings.max_pixels, self.captioner.encoder
            )
        finally:
            self._decode_limiter.release()

    def _ask(self, values: dict[str, str]) -> Ask:
        """The query's and the form's parameters (each given once) -> what to ask the model; what they
        leave out is the model's default."""
        given = params.read_parameters(self.parameters, values)
        try:
            decoding = self.captioner.resolve_decoding(**params.decoding_overrides(given))
        except ArtcapError as err:
            raise ApiError(422, str(err)) from None
        ask = Ask(decoding, emotion_name(given.emotion) if given.emotion is not None else None, bool(given.explain))
        if ask.explain and not self.captioner.has_attention:
            raise ApiError(422, f"explain=true needs an attention model; {self.captioner.model_id} has none")
        if ask.emotion and not self.captioner.is_grounded:
            raise ApiError(422, f"model {self.captioner.model_id} is not emotion-grounded; leave 'emotion' out")
        return ask

    async def _run_model(self, prepared: PreparedImage, ask: Ask) -> list[tuple[Description, float, float]]:
        """The greedy caption always; the beam caption too when the beam is wider than 1 (the best one explained)."""
        greedy = Ask(ask.decoding.with_overrides(beam=1), ask.emotion, ask.explain and ask.decoding.beam == 1)
        jobs = [self.batcher.describe(prepared.pixels, greedy)]
        if ask.decoding.beam > 1:
            jobs.append(self.batcher.describe(prepared.pixels, ask))
        try:
            return list(await asyncio.gather(*jobs))
        except ArtcapError as err:
            raise ApiError(422, str(err)) from None

    def limits(self) -> Limits:
        limits = self.settings
        return Limits(
            max_upload_bytes=limits.max_upload_bytes,
            max_pixels=limits.max_pixels,
            max_beam=limits.max_beam,
            max_len_limit=limits.max_len_limit,
            request_timeout_s=limits.request_timeout_s,
            formats=list(ACCEPTED_FORMATS),
            default_decoding=self.captioner.decoding,
            parameters=_parameter_schemas(self.parameters),
            emotions=list(EMOTIONS),
            grounded=self.captioner.is_grounded,
            emotion_classifier=self.captioner.emotion_head is not None,
            attention=self.captioner.has_attention,
        )


def _take_image_bytes(upload: Upload) -> bytes:
    """The image's bytes, removed from `upload` so that the caller holds the only reference."""
    data, upload.image = upload.image, None
    if data is None:
        raise ApiError(422, "the form has no 'image' field; send the painting as multipart field 'image'")
    if not data:
        raise ApiError(422, f"{upload.filename or 'the image'} is empty (0 bytes); send the image file itself")
    return data


def _timings(started: float, read_ms: float, decode_started: float, queued_at: float,
             inference_started: float, inference_finished: float) -> dict[str, float]:
    return {
        "read": round(read_ms, 1),
        "decode": round((queued_at - decode_started) * 1000, 1),
        "queue": round(max(0.0, inference_started - queued_at) * 1000, 1),
        "inference": round((inference_finished - inference_started) * 1000, 1),
        "total": round((time.perf_counter() - started) * 1000, 1),
    }


# ----------------------------------------------------------------------------- routes
def add_routes(app: FastAPI, service: CaptionService) -> None:
    app.add_api_route("/", _page, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", response_model=Health, summary="Liveness and the loaded model")
    async def healthz() -> Health:
        return Health(status="ok", model=service.captioner.model_id)

    @app.get("/v1/limits", response_model=Limits,
             summary="This server's limits and the model's default decoding (the page reads both)")
    async def limits() -> Limits:
        return service.limits()

    _add_caption_route(app, service)
    from artcap.server.iiif_route import add_iiif_route

    add_iiif_route(app, service)


async def _page() -> FileResponse:
    # FileResponse answers HEAD with the headers only.
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Content-Security-Policy": PAGE_CSP})


def _add_caption_route(app: FastAPI, service: CaptionService) -> None:
    settings = service.settings
    names = ", ".join(f"`{name}`" for name in params.PARAMETERS)

    @app.post(
        "/v1/captions",
        response_model=CaptionResponse,
        summary="Caption one painting",
        description=(
            f"multipart/form-data with field `image`; optional parameters {names}, each given once, as a query "
            "parameter or a form field (the same names, types and ranges either way; both at once is refused). "
            "Decoding parameters left out are the model's defaults (`default_decoding` in /v1/limits); the answer's "
            "`decoding` says what was used. `emotion` (models with `grounded` in /v1/limits): one of the 9 "
            "emotions or auto (left out: auto, the emotion classifier's choice; empty is refused). `explain=true` "
            "(models with `attention`): the answer's `words` carry each word's attention map. `captions.greedy` "
            "is always the beam-1 caption; `captions.beam` is present when the beam used is > 1."
        ),
        responses=_error_responses(settings),
        openapi_extra={
            "parameters": params.openapi_parameters(service.parameters),
            "requestBody": {"required": True, "content": {"multipart/form-data": {
                "schema": params.openapi_form(service.parameters, f"The painting: {ACCEPTED_FORMATS_TEXT}.")}}},
        },
    )
    async def create_caption(request: Request) -> CaptionResponse:
        return await service.answer(request)


def _parameter_schemas(model: type[BaseModel]) -> dict[str, Any]:
    """{name: JSON schema} of every request parameter: what the page builds its controls from."""
    return {name: {k: v for k, v in prop.items() if k != "title"}
            for name, prop in model.model_json_schema()["properties"].items()}


def _error_responses(settings: ServerSettings) -> dict[int | str, dict[str, Any]]:
    return {
        code: {"model": ErrorBody, "description": text}
        for code, text in {
            400: "Malformed HTTP request (e.g. Content-Length twice), or a malformed or truncated multipart body",
            408: "The upload took longer than upload_timeout_s, or sent nothing for upload_idle_s",
            413: f"Upload over {mib(settings.max_upload_bytes)} or image over {settings.max_pixels:,} pixels",
            415: "Not multipart/form-data, or not a JPEG/PNG/WebP/BMP/TIFF/GIF image",
            422: "An unknown, repeated, empty or out-of-range parameter, no 'image' field, or an image that cannot "
                 "be decoded",
            503: "Too many uploads arriving or captions in progress, caption queue full, or server shutting down",
            504: f"Captioning (after the upload) took longer than {settings.request_timeout_s:g} s",
        }.items()
    }
