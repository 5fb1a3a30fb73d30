"""Conditioning: what a caption is asked for besides the image, e.g. the emotion it should convey.

A condition is a named, finite set of values. It declares

    name        how the pipeline, the decoder's config and its weights call it ("emotion");
    values      its values in a fixed order: a value's id is its place here, its one-hot is the
                vector (width = len(values)) the decoder's input layer reads, and guidance contrasts
                the asked value against all of them;
    read        how a training example (a corpus row, `data.Annotation`) gives its value, None when it has none;
    parse       how a value written by a user (a flag, a form field, a Python string) becomes one of `values`;
    dim         the size of the features a decoder makes of it (Linear(width, dim) + ReLU), unless the
                training config says otherwise.

The pipeline hands ONE mapping `conditions: {name: LongTensor [B] of value ids}` from the batches through
the decoders' `forward` / `init_memory`, decode.py's searches, SCST and the Captioner; only the decoder
turns ids into vectors. A decoder reads the conditions its config names (DecoderConfig.condition_slots).

Adding one is a registry call, e.g. a painting's period read from a `period` column of the CSV:

    register_condition(Condition("period", ("renaissance", "baroque", "modern"),
                                 read=lambda row: row.column("period")))

then `conditions = "period"` in the training config's [data] table. Emotion (ArtEmis' emotion-grounded speaker) is
registered below; its settings keep their own table (emotion.grounded, emotion.dim, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .data import EMOTIONS, Annotation
from .errors import ArtcapError

Conditions = Mapping[str, torch.Tensor]
"""{condition name: value ids [B]}: what the decoder is asked for, one value per caption row."""

NO_VALUE = -1  # the id of a training caption without a value of a condition (e.g. Flickr8k's emotion)
DEFAULT_DIM = 16


def normalised(text: str) -> str:
    """A value as users write it ("Something-Else", "something_else") -> its lower-case, single-spaced form."""
    return " ".join(text.strip().lower().replace("-", " ").replace("_", " ").split())


@dataclass(frozen=True)
class Condition:
    name: str
    values: tuple[str, ...]
    read: Callable[[Annotation], str | None] = field(compare=False)
    parse_text: Callable[["Condition", str], str] | None = field(default=None, compare=False)
    dim: int = DEFAULT_DIM

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"condition name {self.name!r} must be a lower-case identifier")
        if len(self.values) < 2 or len(set(self.values)) != len(self.values):
            raise ValueError(f"condition {self.name!r} needs at least 2 distinct values, got {self.values!r}")

    @property
    def width(self) -> int:
        """The size of the vector a value is encoded into (its one-hot)."""
        return len(self.values)

    def parse(self, text: str) -> str:
        """A user's value -> one of `values`, or a one-line error naming the condition and its values."""
        if self.parse_text is not None:
            return self.parse_text(self, text)
        name = normalised(text)
        if name not in self.values:
            raise ArtcapError(f"unknown {self.name} {text!r}; use one of: {', '.join(self.values)}")
        return name

    def ids(self, names: Sequence[str]) -> torch.Tensor:
        """Values (their `values` spelling) -> the LongTensor of ids a decoder reads."""
        unknown = sorted({n for n in names if n not in self.values})
        if unknown:
            raise ArtcapError(f"unknown {self.name}(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(self.values)}")
        return torch.tensor([self.values.index(n) for n in names], dtype=torch.long)

    def id_of(self, value: str | None) -> int:
        """A training example's value -> its id; NO_VALUE when it has none (or one outside `values`)."""
        try:
            return self.values.index(value) if value is not None else NO_VALUE
        except ValueError:
            return NO_VALUE

    def encode(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """ids [B] -> the vectors [B, width] the decoder's input layer reads (one-hot)."""
        return F.one_hot(ids.long(), self.width).to(dtype)

    def dominant(self, values: Iterable[str | None]) -> int:
        """The id of the most frequent value (ties: `values` order; a painting's value for validation captions)."""
        counts = [0] * self.width
        for value in values:
            if (i := self.id_of(value)) != NO_VALUE:
                counts[i] += 1
        return max(range(self.width), key=counts.__getitem__)


_CONDITIONS: dict[str, Condition] = {}


def register_condition(condition: Condition) -> Condition:
    """Make a condition known by name (to decoders, training and decoding); registering the same one again is a
    no-op, another one under a taken name is an error."""
    known = _CONDITIONS.get(condition.name)
    if known is not None and known != condition:
        raise ValueError(f"condition {condition.name!r} is registered twice, with different values")
    _CONDITIONS.setdefault(condition.name, condition)
    return _CONDITIONS[condition.name]


def get_condition(name: str) -> Condition:
    if name not in _CONDITIONS:
        raise ArtcapError(f"unknown condition {name!r}; registered: {', '.join(condition_names())} "
                          f"(a new one is registered with artcap.conditions.register_condition)")
    return _CONDITIONS[name]


def condition_names() -> list[str]:
    return list(_CONDITIONS)


def parse_condition_names(text: str) -> list[str]:
    """The training config's `conditions` ("period, school") -> registered names, checked, in the given order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        get_condition(name)
        if name == EMOTION.name:
            raise ArtcapError("conditions: emotion has its own settings; set emotion.grounded = true instead")
    if len(set(names)) != len(names):
        raise ArtcapError(f"conditions: {text!r} names a condition twice")
    return names


def repeat_rows(conditions: Conditions, times: int) -> dict[str, torch.Tensor]:
    """Each row's values `times` times in a row (as features.repeat_interleave(times, 0) does to the images)."""
    return {name: ids.repeat_interleave(times, dim=0) for name, ids in conditions.items()}


def _parse_emotion(condition: Condition, text: str) -> str:
    """An emotion as users write it -> its EMOTIONS spelling, or "auto" (the emotion head's choice)."""
    name = normalised(text)
    if not name:  # the same everywhere (flag, form field, query parameter, Python): leave it out for auto
        raise ArtcapError(f"emotion is empty; leave it out or say auto for the classifier's choice, or use one of: "
                          f"{', '.join(condition.values)}")
    if name != "auto" and name not in condition.values:
        raise ArtcapError(f"unknown emotion {text!r}; use auto or one of: {', '.join(condition.values)}")
    return name


EMOTION = register_condition(Condition("emotion", EMOTIONS, read=lambda row: row.emotion, parse_text=_parse_emotion,
                                       dim=9))
