"""A caption request's parameters: one pydantic model, made from the settings fields of
`DecodingConfig` and `RequestOptions`, reads them from the query string and the form alike and
gives their OpenAPI schema, so a parameter means the same, and is refused with the same one line,
wherever it is sent.

Rules (the same for the query string and the form): every name is a known parameter; each is
given once (twice in the query, twice in the form, or in both is refused: no silent precedence);
a value is at most MAX_PARAMETER_BYTES long and inside its field's range; an empty value is
refused (leave the parameter out to get the model's default, or `emotion=auto`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from artcap import settings
from artcap.captioner import emotion_name
from artcap.data import EMOTIONS
from artcap.decode import DecodingConfig
from artcap.errors import ArtcapError
from artcap.server.errors import ApiError, one_line
from artcap.server.settings import ServerSettings
from artcap.settings import setting

MAX_PARAMETER_BYTES = 64  # every known value is far shorter; the form reader stops a longer field as it streams
IMAGE_FIELD = "image"


def _is_emotion(text: str) -> bool:
    try:
        emotion_name(text)
        return True
    except ArtcapError:
        return False


@dataclass(frozen=True)
class RequestOptions:
    """A caption request's parameters that are not decoding settings."""

    emotion: str = setting("auto", "emotion-grounded models: caption under this emotion, or auto (the emotion "
                                   "classifier's choice)", check=_is_emotion,
                           allowed=f"auto or one of: {', '.join(EMOTIONS)}")
    explain: bool = setting(False, "attention models: return each word's attention map")


PARAMETER_CLASSES = (DecodingConfig, RequestOptions)
PARAMETERS = tuple(f.name for cls in PARAMETER_CLASSES for f in fields(cls))
DECODING_FIELDS = frozenset(f.name for f in fields(DecodingConfig))


def parameters_model(limits: ServerSettings, name: str = "CaptionParameters",
                     exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """This server's request model: the settings' ranges, with beam and max_len capped by its limits."""
    return settings.request_model(name, *PARAMETER_CLASSES, exclude=exclude,
                                  caps={"beam": limits.max_beam, "max_len": limits.max_len_limit})


def unknown_parameter(name: str) -> ApiError:
    return ApiError(422, f"unknown parameter {one_line(name, 40)!r}; send the painting as form field "
                         f"'{IMAGE_FIELD}' and optionally any of: {', '.join(PARAMETERS)} (see /docs)")


def repeated_parameter(name: str) -> ApiError:
    return ApiError(422, f"parameter '{name}' is given more than once (a query parameter and a form field "
                         f"count alike); give it once")


def too_long(name: str) -> ApiError:
    return ApiError(422, f"parameter '{name}' is longer than {MAX_PARAMETER_BYTES} bytes; see /docs for what "
                         f"it accepts")


def check_name(name: str, seen: Iterable[str]) -> None:
    """A parameter's name, as it arrives from the query string or a form part's header."""
    if name not in PARAMETERS:
        raise unknown_parameter(name)
    if name in seen:
        raise repeated_parameter(name)


def query_parameters(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The query string's (name, value) pairs -> {name: value}, checked as form fields are."""
    found: dict[str, str] = {}
    for name, value in items:
        check_name(name, found)
        if len(value.encode("utf-8", "surrogatepass")) > MAX_PARAMETER_BYTES:
            raise too_long(name)
        found[name] = value
    return found


def read_parameters(model: type[BaseModel], values: dict[str, str]) -> BaseModel:
    """Raw text values (query and form together) -> the typed, range-checked parameters, or a one-line 422."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        problem = err.errors()[0]
        name = str(problem["loc"][0]) if problem.get("loc") else "?"
        if problem["type"] == "extra_forbidden":
            raise unknown_parameter(name) from None
        error = problem.get("ctx", {}).get("error")
        raise ApiError(422, one_line(str(error) if error else f"{name}: {problem['msg']}", 300)) from None


def decoding_overrides(parameters: BaseModel) -> dict[str, Any]:
    """The DecodingConfig fields the request set (the rest stay the model's)."""
    return {name: value for name, value in parameters.model_dump().items()
            if name in DECODING_FIELDS and value is not None}


def openapi_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The model's fields as OpenAPI query parameters (the same schema the form fields have)."""
    schema = model.model_json_schema()
    return [{"name": name, "in": "query", "required": False, "description": prop.get("description", ""),
             "schema": {k: v for k, v in prop.items() if k not in ("title", "description")}}
            for name, prop in schema["properties"].items()]


def openapi_form(model: type[BaseModel], image_description: str) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"type": "object", "required": [IMAGE_FIELD],
            "properties": {IMAGE_FIELD: {"type": "string", "format": "binary", "description": image_description},
                           **{name: {k: v for k, v in prop.items() if k != "title"}
                              for name, prop in schema["properties"].items()}}}
