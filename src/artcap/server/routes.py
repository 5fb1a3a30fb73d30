"""The page, its assets, /healthz, /v1/limits and POST /v1/captions."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from artcap.errors import ArtcapError
from artcap.captioner import Description, emotion_name
from artcap.data import EMOTIONS
from artcap.server.batching import Ask, BatchingCaptioner
from artcap.server.errors import ApiError, ErrorBody
from artcap.images import ACCEPTED_FORMATS_TEXT
from artcap.server.prepare import ACCEPTED_FORMATS, PreparedImage, prepare_image
from artcap.server.schemas import CaptionResponse, Captions, Health, ImageInfo, Limits, Word
from artcap.server.settings import ServerSettings
from artcap.server.upload import FORM_FIELDS, Upload, mib, read_multipart

if TYPE_CHECKING:
    from artcap.captioner import Captioner

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
# The page's security policy: our own files only; previews are blob: URLs.
# The share of request_timeout_s a request may wait for a decode slot before it answers 503.
DECODE_WAIT_SHARE = 0.5
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


class CaptionService:
    """One caption request, from the upload to the response, within the server's limits."""

    def __init__(self, captioner: Captioner, settings: ServerSettings, batcher: BatchingCaptioner) -> None:
        self.captioner, self.settings, self.batcher = captioner, settings, batcher
        self._decode_limiter = anyio.CapacityLimiter(settings.max_concurrent_decodes)
        self._active = 0  # requests between arrival and answer (one event loop: a plain int is safe)

    async def answer(self, request: Request, query: dict[str, Any]) -> CaptionResponse:
        if self._active >= self.settings.max_active_requests:
            raise ApiError(503, f"the server is busy ({self._active} captions in progress); retry in a few seconds")
        self._active += 1
        try:
            return await asyncio.wait_for(self._caption(request, query), self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(
                504,
                f"captioning took longer than this server's {self.settings.request_timeout_s:g} s limit; "
                "the server is busy or the upload slow, retry later or with a smaller image",
            ) from None
        finally:
            self._active -= 1

    async def _caption(self, request: Request, query: dict[str, Any]) -> CaptionResponse:
        started = time.perf_counter()
        upload = await read_multipart(request, self.settings.max_upload_bytes)
        ask = self._ask(upload, query)
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

    def _ask(self, upload: Upload, query: dict[str, Any]) -> Ask:
        """Form fields override query parameters; what neither gives is the model's default."""
        limits, fields = self.settings, upload.fields
        beam = _int_param("beam", fields.get("beam"), 1, limits.max_beam)
        max_len = _int_param("max_len", fields.get("max_len"), 1, limits.max_len_limit)
        emotion = fields.get("emotion") or query["emotion"]
        explain = _bool_param("explain", fields.get("explain"))
        try:
            decoding = self.captioner.resolve_decoding(beam=beam if beam is not None else query["beam"],
                                                       max_len=max_len if max_len is not None else query["max_len"])
            ask = Ask(decoding, emotion_name(emotion) if emotion else None,
                      explain if explain is not None else query["explain"])
        except ArtcapError as err:
            raise ApiError(422, str(err)) from None
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


def _bool_param(name: str, raw: str | None) -> bool | None:
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(422, f"'{name}' must be true or false, got {raw[:20]!r}")
    return value in ("true", "1")


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

    @app.post(
        "/v1/captions",
        response_model=CaptionResponse,
        summary="Caption one painting",
        description=(
            "multipart/form-data with field `image`; optional `beam`, `max_len`, `emotion` and `explain`, as form "
            "fields (which win) or query parameters. Omitted, beam and max_len are the model's defaults (see "
            "`default_decoding` in /v1/limits). `emotion` (models with `grounded` in /v1/limits): one of the 9 "
            "emotions or auto (the default: the emotion classifier's choice). `explain=true` (models with "
            "`attention`): the answer's `words` carry each word's attention map. `captions.greedy` is always the "
            "beam-1 caption; `captions.beam` is present when the beam used is > 1."
        ),
        responses=_error_responses(settings),
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _form_schema(settings)}}}},
    )
    async def create_caption(
        request: Request,
        beam: int | None = Query(None, ge=1, le=settings.max_beam, description="Beam width; 1 = greedy only."),
        max_len: int | None = Query(None, ge=1, le=settings.max_len_limit, description="Maximum caption length in words."),
        emotion: str | None = Query(None, max_length=40, description="Emotion-grounded models: an emotion name or auto."),
        explain: bool = Query(False, description="Attention models: return each word's attention map."),
    ) -> CaptionResponse:
        return await service.answer(request, {"beam": beam, "max_len": max_len, "emotion": emotion, "explain": explain})


def _form_schema(settings: ServerSettings) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "format": "binary", "description": f"The painting: {ACCEPTED_FORMATS_TEXT}."},
            "beam": {"type": "integer", "minimum": 1, "maximum": settings.max_beam, "description": "Overrides ?beam."},
            "max_len": {"type": "integer", "minimum": 1, "maximum": settings.max_len_limit,
                        "description": "Overrides ?max_len."},
            "emotion": {"type": "string", "maxLength": 40, "description": "Overrides ?emotion."},
            "explain": {"type": "boolean", "description": "Overrides ?explain."},
        },
    }


def _error_responses(settings: ServerSettings) -> dict[int | str, dict[str, Any]]:
    return {
        code: {"model": ErrorBody, "description": text}
        for code, text in {
            400: "Malformed or truncated multipart body",
            413: f"Upload over {mib(settings.max_upload_bytes)} or image over {settings.max_pixels:,} pixels",
            415: "Not multipart/form-data, or not a JPEG/PNG/WebP/BMP/TIFF/GIF image",
            422: f"Bad {'/'.join(FORM_FIELDS[1:])}, missing 'image' field, an unknown or repeated field, "
                 "or an image that cannot be decoded",
            503: "Too many captions in progress, caption queue full, or server shutting down",
            504: f"The request took longer than {settings.request_timeout_s:g} s",
        }.items()
    }
