"""The server's limits, in one typed, validated place."""

from __future__ import annotations

from dataclasses import dataclass, fields

from artcap.decode import MAX_BEAM, MAX_CAPTION_WORDS
from artcap.errors import ArtcapError
from artcap.images import DEFAULT_MAX_PIXELS

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """Every limit of one server. All must be > 0; `create_app(captioner, **kw)` builds one."""

    max_upload_bytes: int = 20 * MiB  # one upload; the body may add MULTIPART_OVERHEAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS  # refused from the image header, before decoding
    request_timeout_s: float = 30.0  # upload + decode + queue + inference; then 504
    max_beam: int = 10
    max_len_limit: int = 100  # the largest max_len a request may ask for
    # Decoding a large image holds its full-size pixels (~120 MB for 40 MP) until it is shrunk to
    # the model's input: only this many at once, so a burst cannot multiply that memory.
    max_concurrent_decodes: int = 2
    # Caption requests being read, decoded or captioned at once; more get 503 at once instead of
    # each holding an upload buffer (up to max_upload_bytes) while it waits.
    max_active_requests: int = 32
    max_queue: int = 256  # jobs waiting for the inference thread (each a small model-size array)
    max_batch: int = 32  # images the inference thread captions in one call
    # POST /v1/iiif: canvases one request may caption, and its time (fetching included); then 413 / 504
    max_iiif_canvases: int = 50
    iiif_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ArtcapError(f"server setting {spec.name} must be > 0, got {value!r}; pass a positive value")
        if self.max_beam > MAX_BEAM:
            raise ArtcapError(f"server setting max_beam must be at most {MAX_BEAM}, got {self.max_beam}")
        if self.max_len_limit > MAX_CAPTION_WORDS:
            raise ArtcapError(
                f"server setting max_len_limit must be at most {MAX_CAPTION_WORDS}, got {self.max_len_limit}"
            )

    @classmethod
    def from_keywords(cls, **limits: float) -> "ServerSettings":
        """Like ServerSettings(**limits), but an unknown name is a one-line ArtcapError."""
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(limits) - known)
        if unknown:
            raise ArtcapError(f"unknown server setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**limits)
