"""Reading collections as museums publish them: IIIF Presentation 3 manifests (and Collections of
them), each canvas's image fetched over HTTP at the size the model reads, never larger.

    with IIIFClient() as client:
        for manifest in read_manifests("https://example.org/iiif/manifest.json", client):
            for canvas in manifest.canvases:
                image = fetch_canvas_image(canvas, client, min_side=260)

A canvas's image is its painting annotation's body. When that body has an Image API `service`,
the image is asked for at the model's size: level 2 `{service}/full/!W,H/0/default.jpg`, level 1
`{service}/full/W,/0/default.jpg`, level 0 the smallest of info.json's `sizes` that is big enough
(W, H chosen so that the shorter side reaches the model's input size; smaller images come whole).

Everything that can go wrong with one canvas (no image, a 404, a timeout, a body that is not an
image or is over the byte limit) is a `CanvasError`: one line naming the canvas. A manifest that
cannot be read at all is an ArtcapError naming it. Reading is a walk over the JSON for the few
fields captioning needs (canvas ids and labels, the painting body, its service), tolerant of what
real manifests do (labels in any language, `Choice` bodies, lists or single services, Image API 2
services). iiif-prezi3 was weighed for it: its pydantic models would add a dependency and turn a bad
field into a multi-line report rather than one line, while giving nothing this walk needs; they
validate artcap's output in the tests instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import __version__, settings
from .errors import ArtcapError
from .images import DEFAULT_MAX_PIXELS, load_image
from .settings import setting

MiB = 1024 * 1024
USER_AGENT = f"artcap/{__version__} (IIIF captioner; https://github.com/artcap/artcap)"
MAX_COLLECTION_DEPTH = 4  # a Collection of Collections of ... manifests; deeper is refused


class CanvasError(ArtcapError):
    """One canvas could not be captioned: `canvas` names it, the message says why in one line."""

    def __init__(self, canvas: str, reason: str) -> None:
        self.canvas, self.reason = canvas, " ".join(reason.split())
        super().__init__(f"canvas {canvas}: {self.reason}")


class TooManyCanvases(ArtcapError):
    """A manifest or collection with more canvases than the job's limit (refused before any fetch)."""


class FetchError(ArtcapError):
    """A URL could not be fetched (status, timeout, size, connection); the message is one line."""


@dataclass(frozen=True)
class FetchLimits:
    """How politely and how far a fetch may go (settings.setting fields: checked, one line each)."""

    timeout_s: float = setting(20.0, "seconds to connect, and for each read", low=0, open_low=True, high=3600)
    retries: int = setting(2, "more tries after a connection error, a 429 or a 5xx", low=0, high=10)
    backoff_s: float = setting(0.5, "the first wait between tries, doubled each time", low=0, high=60)
    concurrency: int = setting(4, "requests in flight to the servers at once", low=1, high=64)
    max_image_bytes: int = setting(20 * MiB, "one image body; larger is refused while it streams", low=1)
    max_manifest_bytes: int = setting(16 * MiB, "one manifest or collection document", low=1)
    max_canvases: int = setting(100_000, "canvases in one job; more is refused before any fetch", low=1)
    max_manifests: int = setting(1000, "manifests followed from a collection", low=1)

    def __post_init__(self) -> None:
        settings.check(self, prefix="IIIF ")


@dataclass(frozen=True)
class ImageService:
    """An Image API service: its base URL, compliance level (0-2) and API version (2 or 3)."""

    id: str
    level: int | None  # None: the manifest does not say; info.json will
    version: int = 3


@dataclass(frozen=True)
class Canvas:
    """One canvas and where its image is; `problem` says why it has none (captioned as an error)."""

    id: str
    label: str
    manifest: str  # the id (URL) of the manifest it belongs to
    image_url: str | None = None
    service: ImageService | None = None
    width: int | None = None  # the image's pixel size when the manifest says it
    height: int | None = None
    problem: str | None = None


@dataclass
class Manifest:
    id: str
    label: str
    source: str  # where it was read from (URL or path)
    canvases: list[Canvas] = field(default_factory=list)


# ---- fetching --------------------------------------------------------------------------------------

class IIIFClient:
    """httpx with timeouts, retries with backoff, a byte cap while streaming and a User-Agent.
    Thread-safe (one httpx.Client): the caller bounds concurrency (FetchLimits.concurrency)."""

    def __init__(self, limits: FetchLimits | None = None) -> None:
        try:
            import httpx
        except ImportError:
            raise ArtcapError("reading IIIF needs httpx: pip install 'artcap[iiif]'") from None

        self.limits = limits or FetchLimits()
        self._httpx = httpx
        self._client = httpx.Client(timeout=self.limits.timeout_s, follow_redirects=True,
                                    headers={"User-Agent": USER_AGENT},
                                    limits=httpx.Limits(max_connections=self.limits.concurrency))

    def get(self, url: str, max_bytes: int) -> tuple[bytes, str]:
        """(body, content type) of `url`; FetchError (one line) when it cannot be had within the limits."""
        if not url.lower().startswith(("http://", "https://")):
            raise FetchError(f"{url}: not an http(s) URL")
        for attempt in range(self.limits.retries + 1):
            try:
                return self._get_once(url, max_bytes)
            except _Retry as retry:
                if attempt == self.limits.retries:
                    raise FetchError(f"{url}: {retry} (after {attempt + 1} tries)") from None
                time.sleep(self.limits.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def _get_once(self, url: str, max_bytes: int) -> tuple[bytes, str]:
        httpx = self._httpx
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Retry(f"HTTP {response.status_code} {response.reason_phrase}")
                if response.status_code != 200:
                    raise FetchError(f"{url}: HTTP {response.status_code} {response.reason_phrase}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError(f"{url}: {int(declared) / MiB:.1f} MiB is over the limit of {max_bytes / MiB:g} MiB")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:  # a server that lies about (or omits) its length
                        raise FetchError(f"{url}: more than the limit of {max_bytes / MiB:g} MiB; stopped reading")
                return bytes(body), response.headers.get("content-type", "")
        except httpx.TimeoutException:
            raise FetchError(f"{url}: no answer within {self.limits.timeout_s:g} s (timed out)") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError) as e:
            raise _Retry(f"cannot connect ({type(e).__name__}: {e})") from None
        except httpx.HTTPError as e:
            raise FetchError(f"{url}: {type(e).__name__}: {e}") from None

    def get_json(self, source: str, max_bytes: int | None = None) -> Any:
        """A JSON document from an http(s) URL or a local file."""
        max_bytes = max_bytes or self.limits.max_manifest_bytes
        if source.lower().startswith(("http://", "https://")):
            data, _ = self.get(source, max_bytes)
        else:
            try:
                data = Path(source).read_bytes()
            except OSError as e:
                raise ArtcapError(f"{source}: cannot read the manifest ({e.strerror or e}); check the path or URL") from None
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ArtcapError(f"{source}: not JSON ({str(e).splitlines()[0][:80]}); a IIIF manifest is a JSON "
                              f"document: check the URL") from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "IIIFClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Retry(Exception):
    """A failure worth another try (connection error, 429, 5xx)."""


# ---- reading manifests and collections --------------------------------------------------------------

def read_manifests(source: str, client: IIIFClient) -> Iterator[Manifest | ArtcapError]:
    """The manifests at `source` (a manifest, or a Collection followed to its manifests), in order.
    A collection member that cannot be read comes as its ArtcapError, the others still come; a
    `source` that cannot be read raises."""
    yield from _read(source, client, depth=0, budget=[client.limits.max_manifests])


def _read(source: str, client: IIIFClient, depth: int, budget: list[int]) -> Iterator[Manifest | ArtcapError]:
    document = client.get_json(source)
    kind = _presentation_type(document, source)
    if kind == "Manifest":
        yield parse_manifest(document, source)
        return
    if depth >= MAX_COLLECTION_DEPTH:
        raise ArtcapError(f"{source}: collections nested more than {MAX_COLLECTION_DEPTH} deep; pass an inner one")
    for item in _list(document.get("items")):
        if not isinstance(item, dict) or item.get("type") not in ("Manifest", "Collection") or not isinstance(
                item.get("id"), str):
            continue
        if budget[0] <= 0:
            yield ArtcapError(f"{source}: more than {client.limits.max_manifests} manifests; the rest are left out")
            return
        budget[0] -= 1 if item["type"] == "Manifest" else 0
        try:
            yield from _read(_named_location(item["id"], source), client, depth + 1, budget)
        except ArtcapError as e:
            yield e


def _named_location(location: str, named_by: str) -> str:
    """A document named inside another is on the web: a local file is read only when the user names it (a
    remote collection naming /home/... or ../secret.json must not make artcap read it)."""
    if not location.lower().startswith(("http://", "https://")):
        raise ArtcapError(f"{location}: named by {named_by}, and not an http(s) URL; artcap reads a local file "
                          f"only when you name it yourself")
    return location


def _presentation_type(document: Any, source: str) -> str:
    """'Manifest' or 'Collection'; ArtcapError (one line) for anything else, Presentation 2 included."""
    if not isinstance(document, dict):
        raise ArtcapError(f"{source}: not a IIIF manifest (a JSON {type(document).__name__}, not an object)")
    context = json.dumps(document.get("@context", ""))
    if "presentation/2" in context or str(document.get("@type", "")).startswith("sc:"):
        raise ArtcapError(f"{source}: a IIIF Presentation 2 manifest; artcap reads Presentation 3: upgrade it "
                          f"(e.g. with https://github.com/IIIF/prezi-2-to-3) and pass the result")
    kind = document.get("type")
    if kind not in ("Manifest", "Collection") or "presentation/3" not in context:
        raise ArtcapError(f"{source}: not a IIIF Presentation 3 manifest or collection (type {kind!r}, @context "
                          f"{context[:60]}); pass a manifest's URL")
    if not isinstance(document.get("id"), str):
        raise ArtcapError(f"{source}: the {kind} has no 'id'; it is not a valid IIIF document")
    return kind


def parse_manifest(document: dict, source: str) -> Manifest:
    """A Presentation 3 manifest's canvases and where each one's image is."""
    manifest = Manifest(document["id"], label_text(document.get("label")) or document["id"], source)
    for index, item in enumerate(_list(document.get("items"))):
        if not isinstance(item, dict) or item.get("type") != "Canvas":
            continue
        canvas_id = item.get("id") if isinstance(item.get("id"), str) else f"{manifest.id}#canvas-{index + 1}"
        label = label_text(item.get("label")) or f"canvas {index + 1}"
        manifest.canvases.append(_canvas(item, canvas_id, label, manifest.id))
    if not manifest.canvases:
        raise ArtcapError(f"{source}: the manifest has no canvases ('items' of type Canvas); nothing to caption")
    return manifest


def _canvas(item: dict, canvas_id: str, label: str, manifest_id: str) -> Canvas:
    body = _painting_body(item)
    if body is None:
        return Canvas(canvas_id, label, manifest_id, problem="no painting annotation with an image")
    url = body.get("id")
    service = _image_service(body.get("service"))
    if not isinstance(url, str) and service is None:
        return Canvas(canvas_id, label, manifest_id, problem="its image has no 'id' (URL) and no Image API service")
    return Canvas(canvas_id, label, manifest_id, image_url=url if isinstance(url, str) else None, service=service,
                  width=_positive_int(body.get("width")), height=_positive_int(body.get("height")))


def _painting_body(canvas: dict) -> dict | None:
    """The first Image painted on the canvas (the first choice of a Choice)."""
    for page in _list(canvas.get("items")):
        for annotation in _list(page.get("items") if isinstance(page, dict) else None):
            if not isinstance(annotation, dict) or annotation.get("motivation") not in ("painting", ["painting"]):
                continue
            for body in _list(annotation.get("body")):
                if isinstance(body, dict) and body.get("type") == "Choice":
                    body = next((b for b in _list(body.get("items")) if isinstance(b, dict)), None)
                if isinstance(body, dict) and body.get("type") == "Image":
                    return body
    return None


def _image_service(services: Any) -> ImageService | None:
    for service in _list(services):
        if not isinstance(service, dict):
            continue
        kind = str(service.get("type") or service.get("@type") or "")
        context = json.dumps(service.get("@context", ""))
        version = 2 if ("ImageService2" in kind or "image/2" in context) else 3
        if not (kind.startswith("ImageService") or "iiif.io/api/image" in context):
            continue
        base = service.get("id") or service.get("@id")
        if isinstance(base, str):
            return ImageService(base.rstrip("/"), _level(service.get("profile")), version)
    return None


def _level(profile: Any) -> int | None:
    for value in _list(profile):
        text = str(value)
        for level in (0, 1, 2):
            if text.endswith((f"level{level}", f"level{level}.json")):
                return level
    return None


def label_text(label: Any) -> str:
    """A language map ({"en": ["Title"]}) or a plain string as one line: English first, else any."""
    if isinstance(label, str):
        return " ".join(label.split())
    if isinstance(label, dict):
        for key in ("en", "none", *label):
            values = [str(v) for v in _list(label.get(key))]
            if values:
                return " ".join(" ".join(values).split())
    return ""


def _list(value: Any) -> list:
    return value if isinstance(value, list) else ([] if value is None else [value])


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# ---- the image at the model's size -----------------------------------------------------------------

def fetch_canvas_image(canvas: Canvas, client: IIIFClient, min_side: int, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The canvas's image decoded to RGB (images.load_image: the same formats and pixel bounds as
    files), asked for so that its shorter side is about `min_side`. CanvasError (one line) otherwise."""
    if canvas.problem:
        raise CanvasError(canvas.id, canvas.problem)
    try:
        url = image_request_url(canvas, client, min_side)
        data, _ = client.get(url, client.limits.max_image_bytes)
    except ArtcapError as e:
        raise CanvasError(canvas.id, str(e)) from None
    try:
        return load_image(data, name=url, max_pixels=max_pixels, min_size=min_side)
    except ArtcapError as e:
        raise CanvasError(canvas.id, str(e)) from None


def image_request_url(canvas: Canvas, client: IIIFClient, min_side: int) -> str:
    """Where to get the canvas's image with the fewest pixels that still give `min_side`."""
    service = canvas.service
    if service is None:
        return canvas.image_url  # type: ignore[return-value]  # _canvas made sure one of the two is there
    level, width, height, sizes = service.level, canvas.width, canvas.height, []
    if level is None or level == 0 or width is None or height is None:
        info = client.get_json(_named_location(f"{service.id}/info.json", canvas.id), max_bytes=1 * MiB)
        if not isinstance(info, dict):
            raise FetchError(f"{service.id}/info.json: not an Image API info.json")
        level = _level(info.get("profile")) if level is None else level
        width, height = _positive_int(info.get("width")), _positive_int(info.get("height"))
        sizes = [(s["width"], s["height"]) for s in _list(info.get("sizes"))
                 if isinstance(s, dict) and _positive_int(s.get("width")) and _positive_int(s.get("height"))]
    whole = "max" if service.version == 3 else "full"
    if width is None or height is None:
        return _image_url(service, whole)
    short = min(width, height)
    if short <= min_side:
        return _image_url(service, whole)  # already small: never ask a server to upscale
    # Integer ceilings: the shorter side becomes exactly min_side (float scaling can round it up to one more).
    target = (-(-width * min_side // short), -(-height * min_side // short))
    if level == 2:
        return _image_url(service, f"!{target[0]},{target[1]}")
    if level == 1:
        return _image_url(service, f"{target[0]},")
    return _image_url(service, _level0_size(sizes, min_side, whole))


def _level0_size(sizes: list[tuple[int, int]], min_side: int, whole: str) -> str:
    """Level 0 serves only the sizes info.json lists: the smallest big enough, else the full image."""
    big_enough = sorted((w * h, w, h) for w, h in sizes if min(w, h) >= min_side)
    if big_enough:
        _, w, h = big_enough[0]
        return f"{w},{h}"
    return whole


def _image_url(service: ImageService, size: str) -> str:
    return f"{service.id}/full/{size}/0/default.jpg"
