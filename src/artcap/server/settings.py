"""The server's limits, in one typed, validated place (each declared with `artcap.settings.setting`:
its default, range and help; the same ranges bound `artcap serve`'s flags)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from artcap import settings
from artcap.decode import MAX_BEAM, MAX_CAPTION_WORDS
from artcap.errors import ArtcapError
from artcap.images import DEFAULT_MAX_PIXELS
from artcap.settings import setting

MiB = 1024 * 1024
MAX_UPLOAD_BYTES = 1024 * MiB  # uploads are held in memory: a server that allows more needs another design
MAX_PIXELS = 250_000_000  # a decoded 250 MP image is ~750 MB of RGB before it is shrunk
DAY_S = 86_400.0


@dataclass(frozen=True)
class ServerSettings:
    """Every limit of one server; `create_app(captioner, **kw)` builds one."""

    max_upload_bytes: int = setting(20 * MiB, "one upload; the body may add MULTIPART_OVERHEAD_BYTES",
                                    low=1, high=MAX_UPLOAD_BYTES)
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "refused from the image header, before decoding",
                              low=1, high=MAX_PIXELS)
    request_timeout_s: float = setting(30.0, "from the end of the upload to the answer (decode, queue, inference); "
                                             "then 504", low=0, open_low=True, high=DAY_S)
    max_beam: int = setting(10, "the widest beam a request may ask for", low=1, high=MAX_BEAM)
    max_len_limit: int = setting(100, "the largest max_len a request may ask for", low=1, high=MAX_CAPTION_WORDS)
    # Decoding a large image holds its full-size pixels (~120 MB for 40 MP) until it is shrunk to
    # the model's input: only this many at once, so a burst cannot multiply that memory.
    max_concurrent_decodes: int = setting(2, "images decoded at once", low=1, high=64)
    # Captions in progress: requests whose upload has arrived, being decoded, queued or captioned. More
    # get 503 at once. An upload still arriving does not count (it holds an upload slot instead), so
    # clients that stall mid-upload cannot keep others from being captioned.
    max_active_requests: int = setting(32, "captions in progress (uploads received, not yet answered)",
                                       low=1, high=4096)
    # Uploads being received at once, each within upload_timeout_s and never idle for upload_idle_s;
    # more get 503 at once. Their memory: at most this many times max_upload_bytes.
    max_uploads: int = setting(64, "uploads being received at once", low=1, high=4096)
    upload_timeout_s: float = setting(60.0, "the longest one upload may take to arrive; then 408",
                                      low=0, open_low=True, high=DAY_S)
    upload_idle_s: float = setting(10.0, "the longest an upload may send nothing; then 408",
                                   low=0, open_low=True, high=DAY_S)
    max_queue: int = setting(256, "jobs waiting for the inference thread (each a small model-size array)",
                             low=1, high=65_536)
    max_batch: int = setting(32, "images the inference thread captions in one call", low=1, high=1024)
    # POST /v1/iiif: canvases one request may caption, and its time (fetching included); then 413 / 504
    max_iiif_canvases: int = setting(50, "POST /v1/iiif: canvases one manifest may have", low=1, high=10_000)
    iiif_timeout_s: float = setting(120.0, "POST /v1/iiif: the whole request", low=0, open_low=True, high=DAY_S)

    def __post_init__(self) -> None:
        settings.check(self, prefix="server setting ")

    @classmethod
    def from_keywords(cls, **limits: float) -> "ServerSettings":
        """Like ServerSettings(**limits), but an unknown name is a one-line ArtcapError."""
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(limits) - known)
        if unknown:
            raise ArtcapError(f"unknown server setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**limits)

    def replace(self, **limits: float) -> "ServerSettings":
        return ServerSettings.from_keywords(**{**asdict(self), **limits})
