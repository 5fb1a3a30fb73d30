"""Run the app: `serve` (the CLI's, blocking) and `serve_in_background` (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import ctypes
import socket
import threading
import time
from typing import Any, Iterator

from fastapi import FastAPI

from artcap import settings as settings_mechanism
from artcap.errors import ArtcapError
from artcap.server.app import create_app
from artcap.server.protocol import JsonErrorH11Protocol


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


def set_torch_threads(threads: int | None) -> None:
    """torch's intra-op threads for inference (None: torch's default, one per core)."""
    if threads is None:
        return
    settings_mechanism.checked_value(int, settings_mechanism.threads_spec(), "threads", threads, "--threads")
    import torch

    torch.set_num_threads(threads)


def return_freed_memory_to_the_os(threshold_bytes: int = 4 * 1024 * 1024) -> bool:
    """Make glibc hand big freed buffers back to the OS. By default glibc raises its mmap
    threshold each time a big mapping is freed, so later big buffers (a decoded image's 16 MB
    Pillow blocks, in whichever worker thread's arena) come from heaps it keeps: after a burst
    of large uploads the server stayed 0.5-1.3 GB bigger. A fixed threshold stops that. Returns
    False where there is no glibc (musl, macOS, Windows): nothing to fix there, or no way to."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, threshold_bytes))
    except (OSError, AttributeError):
        return False


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 8000, *, threads: int | None = None,
          backend: str = "auto", **limits: Any) -> None:
    """Load the model and serve the page and API with uvicorn until Ctrl-C. Binds localhost by
    default; `threads` sets torch's thread count; `limits` are ServerSettings fields
    (max_upload_bytes, max_pixels, ...)."""
    import uvicorn

    from artcap.captioner import Captioner
    from artcap.server.settings import ServerSettings

    settings = ServerSettings.from_keywords(**limits)  # bad limits fail before the model loads
    set_torch_threads(threads)
    return_freed_memory_to_the_os()
    _check_port_free(host, port)
    captioner = Captioner.load(model, backend=backend)
    app = create_app(captioner, settings)
    shown_host = f"[{host}]" if ":" in host else host
    print(f"artcap: serving model {captioner.model_id} at http://{shown_host}:{port}/ (API docs at /docs); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level="info", http=JsonErrorH11Protocol)


@contextlib.contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` under a real uvicorn server in a daemon thread; yield its base URL
    (port 0 = a free port picked by the OS). For tests, benchmarks and scripts."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", http=JsonErrorH11Protocol))
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
