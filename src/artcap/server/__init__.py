"""HTTP API and web page: a thin FastAPI layer over `Captioner`.

Uploads are read into memory (the server writes no file), bounded in bytes while they stream
and in pixels before decoding; at most `max_concurrent_decodes` images are decoded at once and
each is shrunk to the model's input right away; ONE inference thread captions the small arrays
that wait at the same moment as a batch, so torch never runs in many threads at once.

    settings.py  ServerSettings, the limits      upload.py   the multipart reader
    errors.py    JSON errors, nosniff            prepare.py  bytes -> model-size array
    routes.py    the endpoints                   batching.py the inference thread
    params.py    the request's parameters        protocol.py uvicorn's HTTP/1.1 with JSON 400s
    app.py       create_app                      running.py  serve, serve_in_background

Names are imported on first use, so `artcap.server.settings` (the CLI's flag bounds) loads
without FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ServerSettings": "artcap.server.settings", "create_app": "artcap.server.app",
            "serve": "artcap.server.running", "serve_in_background": "artcap.server.running"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'artcap.server' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
