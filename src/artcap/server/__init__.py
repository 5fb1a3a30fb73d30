"""HTTP API and web page: a thin FastAPI layer over `Captioner`.

Uploads are read into memory (the server writes no file), bounded in bytes while they stream
and in pixels before decoding; at most `max_concurrent_decodes` images are decoded at once and
each is shrunk to the model's input right away; ONE inference thread captions the small arrays
that wait at the same moment as a batch, so torch never runs in many threads at once.

    settings.py  ServerSettings, the limits      upload.py   the multipart reader
    errors.py    JSON errors, nosniff            prepare.py  bytes -> model-size array
    routes.py    the endpoints                   batching.py the inference thread
    app.py       create_app                      running.py  serve, serve_in_background
"""

from artcap.server.app import create_app
from artcap.server.running import serve, serve_in_background
from artcap.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve", "serve_in_background"]
