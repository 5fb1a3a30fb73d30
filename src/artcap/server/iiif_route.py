"""POST /v1/iiif: caption a IIIF manifest's canvases, bounded in canvases, bytes and time.

One IIIF job runs at a time (the rest get 503): it fetches up to `max_iiif_canvases` images of at
most `max_upload_bytes` each, in a worker thread, and answers 504 after `iiif_timeout_s` (the
thread then stops at the next canvas)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
from fastapi import FastAPI
from pydantic import BaseModel, Field, create_model

from artcap.captioner import emotion_name
from artcap.errors import ArtcapError
from artcap.server import params
from artcap.server.batching import Ask
from artcap.server.errors import ApiError, ErrorBody


def iiif_request_model(settings) -> type[BaseModel]:
    """{"manifest": URL} and the caption parameters of POST /v1/captions (every decoding setting and
    `emotion`), from the same settings fields: a manifest is captioned the way a painting would be."""
    return create_model("IIIFRequest", __base__=params.parameters_model(settings, "IIIFOptions", exclude=("explain",)),
                        manifest=(str, Field(max_length=2000,
                                             description="The http(s) URL of a IIIF Presentation 3 manifest.")))


class CanvasCaption(BaseModel):
    canvas: str = Field(description="The canvas id.")
    label: str
    caption: str | None = None
    emotion: str | None = None
    error: str | None = Field(None, description="One line: why this canvas has no caption.")


class IIIFResponse(BaseModel):
    manifest: str
    label: str
    model: str
    canvases: list[CanvasCaption]
    annotations: dict[str, Any] = Field(description="The W3C Web Annotation AnnotationPage (IIIF Presentation 3).")


def add_iiif_route(app: FastAPI, service) -> None:
    settings = service.settings
    busy = threading.Lock()
    IIIFRequest = iiif_request_model(settings)

    async def caption_manifest(ask) -> IIIFResponse:
        if not ask.manifest.lower().startswith(("http://", "https://")):
            raise ApiError(422, "'manifest' must be an http(s) URL of a IIIF Presentation 3 manifest")
        options = _options(service.captioner, ask)
        if not busy.acquire(blocking=False):
            raise ApiError(503, "the server is captioning another manifest; retry in a little while")
        stop = threading.Event()
        try:  # the worker thread releases `busy` when it ends, even after a timeout abandoned it
            with anyio.fail_after(settings.iiif_timeout_s):
                return await anyio.to_thread.run_sync(_caption, service, ask.manifest, options, stop, busy,
                                                      abandon_on_cancel=True)
        except TimeoutError:
            stop.set()
            raise ApiError(504, f"captioning the manifest took longer than {settings.iiif_timeout_s:g} s; "
                                "ask for a smaller manifest") from None

    # The request model is made per server (its caps), so the annotation is set here, not written above:
    # this module's annotations are strings, which FastAPI would look up among its globals.
    caption_manifest.__annotations__["ask"] = IIIFRequest
    app.post("/v1/iiif", response_model=IIIFResponse, summary="Caption a IIIF manifest's canvases",
             description=f"JSON `{{\"manifest\": URL}}`, and optionally the decoding parameters and `emotion` of "
                         f"POST /v1/captions. Up to {settings.max_iiif_canvases} canvases, images of "
                         f"at most {settings.max_upload_bytes} bytes each, {settings.iiif_timeout_s:g} s in all. "
                         "A canvas that cannot be captioned has `error` (one line); the others are captioned.",
             responses={code: {"model": ErrorBody} for code in (413, 422, 503, 504)})(caption_manifest)


def _options(captioner, ask: BaseModel) -> Ask:
    """The request's decoding (the model's, with what it set) and emotion, or a one-line 422."""
    try:
        decoding = captioner.resolve_decoding(**params.decoding_overrides(ask))
        emotion = emotion_name(ask.emotion) if ask.emotion is not None else None
    except ArtcapError as err:
        raise ApiError(422, str(err)) from None
    if emotion and not captioner.is_grounded:
        raise ApiError(422, f"model {captioner.model_id} is not emotion-grounded; leave 'emotion' out")
    return Ask(decoding, emotion)


def _through_batcher(batcher, ask: Ask):
    """The model step through the server's one inference thread (torch never runs in two threads at
    once), from this worker thread: the chunk's images are queued together and batched there."""

    async def describe_all(arrays):
        return await asyncio.gather(*(batcher.describe(array, ask) for array in arrays))

    def describe(arrays):
        return [description for description, _, _ in anyio.from_thread.run(describe_all, arrays)]
    return describe


def _caption(service, url: str, ask: Ask, stop: threading.Event, busy: threading.Lock) -> IIIFResponse:
    from artcap.iiif import FetchLimits, TooManyCanvases
    from artcap.iiif_job import caption_iiif

    settings, captioner = service.settings, service.captioner
    limits = FetchLimits(max_image_bytes=settings.max_upload_bytes, max_canvases=settings.max_iiif_canvases,
                         max_manifests=1, timeout_s=min(20.0, settings.iiif_timeout_s), retries=1)
    try:
        summary = caption_iiif(captioner, url, decoding=ask.decoding, emotion=ask.emotion, limits=limits, stop=stop,
                               describe=_through_batcher(service.batcher, ask))
    except TooManyCanvases:
        raise ApiError(413, f"{url}: more than this server's limit of {settings.max_iiif_canvases} canvases; "
                            "caption it with the command line (artcap caption --iiif)") from None
    except ArtcapError as e:
        raise ApiError(422, str(e)) from None
    finally:
        busy.release()
    if len(summary.manifests) != 1 or any(name == url for name, _ in summary.errors):
        raise ApiError(422, f"{url}: a collection of manifests; POST one of them")
    manifest = summary.manifests[0]
    return IIIFResponse(
        manifest=manifest.id, label=manifest.label, model=captioner.model_id,
        canvases=[CanvasCaption(canvas=c.id, label=c.label, caption=summary.records[c.id].get("caption"),
                                emotion=summary.records[c.id].get("emotion"), error=summary.records[c.id].get("error"))
                  for c in manifest.canvases],
        annotations=summary.annotation_page(manifest))
