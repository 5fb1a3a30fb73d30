"""The JSON shapes of the API (they become the OpenAPI schema at /openapi.json)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from artcap.decode import DecodingConfig


class Captions(BaseModel):
    greedy: str = Field(description="Greedy decoding (beam 1), always present.")
    beam: str | None = Field(None, description="Beam-search decoding; present only when the beam used is > 1.")


class ImageInfo(BaseModel):
    width: int = Field(description="The upload's real width (after EXIF rotation), not the model's input size.")
    height: int
    format: str
    bytes: int


class CaptionResponse(BaseModel):
    caption: str = Field(description="The best caption: the beam caption when beam > 1, else the greedy one.")
    captions: Captions
    model: str
    beam: int = Field(description="The beam width used: the request's, else the model's default.")
    max_len: int = Field(description="The maximum length in words used: the request's, else the model's default.")
    decoding: DecodingConfig = Field(description="Every decoding setting used for `caption`.")
    image: ImageInfo
    timing_ms: dict[str, float] = Field(
        description="read (upload), decode, queue (waiting for the inference thread), inference, total."
    )


class Health(BaseModel):
    status: str
    model: str


class Limits(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    max_beam: int
    max_len_limit: int
    request_timeout_s: float
    formats: list[str]
    default_decoding: DecodingConfig = Field(description="What a request without beam/max_len gets: the model's default.")
