"""The JSON shapes of the API (they become the OpenAPI schema at /openapi.json)."""

from __future__ import annotations

from typing import Any

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


class Word(BaseModel):
    word: str
    attention: list[list[float]] = Field(description="Where the word looked: a grid over the painting (rows top to "
                                                      "bottom), summing to 1.")


class CaptionResponse(BaseModel):
    caption: str = Field(description="The best caption: the beam caption when beam > 1, else the greedy one.")
    captions: Captions
    model: str
    beam: int = Field(description="The beam width used: the request's, else the model's default.")
    max_len: int = Field(description="The maximum length in words used: the request's, else the model's default.")
    decoding: DecodingConfig = Field(description="Every decoding setting used for `caption`.")
    emotion: str | None = Field(None, description="The emotion the caption was grounded on (emotion-grounded models), "
                                                  "else null.")
    emotion_scores: dict[str, float] | None = Field(None, description="The emotion classifier's distribution over "
                                                                      "ArtEmis' 9 emotions (sums to 1), if the model has one.")
    words: list[Word] | None = Field(None, description="With explain=true (attention models): the caption's words and "
                                                       "each one's attention map.")
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
    default_decoding: DecodingConfig = Field(description="What a request that sets no decoding parameter gets: the "
                                                         "model's default.")
    parameters: dict[str, Any] = Field(description="Every parameter POST /v1/captions accepts, as a JSON schema "
                                                   "(type, minimum, maximum, description): the page's controls.")
    emotions: list[str] = Field(description="The emotion names `emotion` accepts (besides auto).")
    grounded: bool = Field(description="Whether the model captions under an emotion (`emotion` is accepted).")
    emotion_classifier: bool = Field(description="Whether answers carry emotion_scores.")
    attention: bool = Field(description="Whether explain=true is accepted (an attention model).")
