"""create_app: settings + error handlers + routes, around one batching inference thread."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, AsyncIterator

from fastapi import FastAPI

from artcap.server.batching import BatchingCaptioner
from artcap.server.errors import install_error_handlers
from artcap.server.routes import CaptionService, add_routes
from artcap.server.settings import ServerSettings

if TYPE_CHECKING:
    from artcap.captioner import Captioner


def create_app(captioner: Captioner, settings: ServerSettings | None = None, **limits: float) -> FastAPI:
    """The ASGI app: `GET|HEAD /` page, `/static/*` its assets, `GET /healthz`, `GET /v1/limits`,
    `POST /v1/captions`, OpenAPI at `/openapi.json` and `/docs`. Pass a ServerSettings, or its
    fields as keywords (max_upload_bytes=..., max_pixels=...); nonsense limits raise ArtcapError."""
    if settings is None:
        settings = ServerSettings.from_keywords(**limits)
    elif limits:
        settings = ServerSettings.from_keywords(**{**settings.__dict__, **limits})
    batcher = BatchingCaptioner(captioner, max_batch=settings.max_batch, max_queue=settings.max_queue)

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
    install_error_handlers(app)
    add_routes(app, CaptionService(captioner, settings, batcher))
    return app


def _version() -> str:
    from artcap import __version__

    return __version__
