"""A IIIF publisher on 127.0.0.1 for tests and benchmarks: static files (manifests, images, a level-0
Image API tile set with its info.json) plus misbehaving endpoints: /slow/* answers late, /huge.jpg
streams 50 MB without a length, /huge-declared.jpg declares 50 MB, /flaky/* fails once with 503."""

from __future__ import annotations

import json
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

HUGE_BYTES = 50 * 1024 * 1024
P3 = "http://iiif.io/api/presentation/3/context.json"


class _Handler(SimpleHTTPRequestHandler):
    slow_s = 3.0

    def log_message(self, *args) -> None:  # quiet; the server keeps its own log
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("User-Agent", "")))
        if self.path.startswith("/slow/"):
            time.sleep(self.slow_s)
            self.path = self.path.removeprefix("/slow")
        elif self.path.startswith("/flaky/"):
            self.path = self.path.removeprefix("/flaky")
            if self.path not in self.server.failed_once:
                self.server.failed_once.add(self.path)
                self.send_error(503)
                return
        elif self.path in ("/huge.jpg", "/huge-declared.jpg"):
            self._send_huge(declared=self.path == "/huge-declared.jpg")
            return
        try:
            super().do_GET()
        except OSError:  # the client gave up (a timeout it was meant to hit)
            pass

    def _send_huge(self, declared: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if declared:
            self.send_header("Content-Length", str(HUGE_BYTES))
        self.end_headers()
        chunk = b"\xff" * 65536
        try:
            for _ in range(HUGE_BYTES // len(chunk)):
                self.wfile.write(chunk)
                self.server.huge_sent += len(chunk)
        except OSError:  # the client hung up, as it should
            pass
        self.close_connection = True


class Publisher:
    """Serves `root` on 127.0.0.1; `url(path)` is where a file is; `requests` what was asked (path, User-Agent)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
        self.server.daemon_threads = True
        self.server.requests, self.server.failed_once, self.server.huge_sent = [], set(), 0
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self.server.requests

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def write_json(self, path: str, data) -> str:
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_text(json.dumps(data))
        return self.url(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def canvas(publisher: Publisher, n: int, image_url: str | None, service: dict | None = None,
           size: tuple[int, int] = (400, 300), manifest: str = "m") -> dict:
    """A Presentation 3 canvas painted by the image at `image_url` (and its Image API `service`)."""
    cid = publisher.url(f"{manifest}/canvas/{n}")
    body = {"id": image_url, "type": "Image", "format": "image/jpeg", "width": size[0], "height": size[1]}
    if image_url is None:
        body.pop("id")
    if service is not None:
        body["service"] = [service]
    return {"id": cid, "type": "Canvas", "label": {"en": [f"Painting {n}"]}, "width": size[0], "height": size[1],
            "items": [{"id": f"{cid}/page", "type": "AnnotationPage", "items": [
                {"id": f"{cid}/page/1", "type": "Annotation", "motivation": "painting", "body": body, "target": cid}]}]}


def manifest(publisher: Publisher, name: str, canvases: list[dict]) -> str:
    """Write a manifest with these canvases under NAME/manifest.json; its URL."""
    url = publisher.url(f"{name}/manifest.json")
    return publisher.write_json(f"{name}/manifest.json", {"@context": P3, "id": url, "type": "Manifest",
                                                          "label": {"en": [name]}, "items": canvases})


def collection(publisher: Publisher, name: str, manifest_urls: list[str]) -> str:
    url = publisher.url(f"{name}.json")
    return publisher.write_json(f"{name}.json", {"@context": P3, "id": url, "type": "Collection",
                                                 "label": {"en": [name]},
                                                 "items": [{"id": u, "type": "Manifest", "label": {"en": [u]}}
                                                           for u in manifest_urls]})


def level0_tiles(publisher: Publisher, name: str, image: Path, scales=(8, 4, 2, 1)) -> dict:
    """A static Image API 3 level-0 tile set of `image` (full-region sizes 1/8 .. 1/1) and its service."""
    base = publisher.url(f"iiif/{name}")
    with Image.open(image) as picture:
        picture = picture.convert("RGB")
        width, height = picture.size
        sizes = []
        for scale in scales:
            w, h = max(1, width // scale), max(1, height // scale)
            target = publisher.root / "iiif" / name / "full" / f"{w},{h}" / "0" / "default.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            picture.resize((w, h)).save(target, quality=90)
            sizes.append({"width": w, "height": h})
        max_file = publisher.root / "iiif" / name / "full" / "max" / "0" / "default.jpg"
        max_file.parent.mkdir(parents=True, exist_ok=True)
        picture.save(max_file, quality=90)
    publisher.write_json(f"iiif/{name}/info.json", {
        "@context": "http://iiif.io/api/image/3/context.json", "id": base, "type": "ImageService3",
        "protocol": "http://iiif.io/api/image", "profile": "level0", "width": width, "height": height,
        "sizes": sizes})
    return {"id": base, "type": "ImageService3", "profile": "level0"}
