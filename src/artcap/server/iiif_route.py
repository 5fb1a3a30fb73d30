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
from pydantic import BaseModel, Field

from artcap.errors import ArtcapError
from artcap.server.errors import ApiError, ErrorBody


class IIIFRequest(BaseModel):
    manifest: str = Field(max_length=2000, description="The http(s) URL of a IIIF Presentation 3 manifest.")


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

    @app.post("/v1/iiif", response_model=IIIFResponse, summary="Caption a IIIF manifest's canvases",
              description=f"JSON `{{\"manifest\": URL}}`. Up to {settings.max_iiif_canvases} canvases, images of "
                          f"at most {settings.max_upload_bytes} bytes each, {settings.iiif_timeout_s:g} s in all. "
                          "A canvas that cannot be captioned has `error` (one line); the others are captioned.",
              responses={code: {"model": ErrorBody} for code in (413, 422, 503, 504)})
    async def caption_manifest(ask: IIIFRequest) -> IIIFResponse:
        if not ask.manifest.lower().startswith(("http://", "https://")):
            raise ApiError(422, "'manifest' must be an http(s) URL of a IIIF Presentation 3 manifest")
        if not busy.acquire(blocking=False):
            raise ApiError(503, "the server is captioning another manifest; retry in a little while")
        stop = threading.Event()
        try:  # the worker thread releases `busy` when it ends, even after a timeout abandoned it
            with anyio.fail_after(settings.iiif_timeout_s):
                return await anyio.to_thread.run_sync(_caption, service, ask.manifest, stop, busy,
                                                      abandon_on_cancel=True)
        except TimeoutError:
            stop.set()
            raise ApiError(504, f"captioning the manifest took longer than {settings.iiif_timeout_s:g} s; "
                                "ask for a smaller manifest") from None


def _through_batcher(batcher):
    """The model step through the server's one inference thread (torch never runs in two threads at
    once), from this worker thread: the chunk's images are queued together and batched there."""
    from artcap.server.batching import Ask

    ask = Ask(batcher.captioner.decoding)

    async def describe_all(arrays):
        return await asyncio.gather(*(batcher.describe(array, ask) for array in arrays))

    def describe(arrays):
        return [description for description, _, _ in anyio.from_thread.run(describe_all, arrays)]
    return describe


def _caption(service, url: str, stop: threading.Event, busy: threading.Lock) -> IIIFResponse:
    from artcap.iiif import FetchLimits, TooManyCanvases
    from artcap.iiif_job import caption_iiif

    settings, captioner = service.settings, service.captioner
    limits = FetchLimits(max_image_bytes=settings.max_upload_bytes, max_canvases=settings.max_iiif_canvases,
                         max_manifests=1, timeout_s=min(20.0, settings.iiif_timeout_s), retries=1)
    try:
        summary = caption_iiif(captioner, url, limits=limits, stop=stop, describe=_through_batcher(service.batcher))
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
