"""The decoder interface, the registry and the base config (timm's layout: one module per kind).

Every decoder kind is an `nn.Module` registered with `@register_decoder("<kind>", settings=...)` and built
from a `DecoderConfig` by `create_decoder(config)`; its settings (the `[decoder]` table of a training
config) are a `DecoderSettings` subclass declared next to it. Training (`caption_loss`) and decoding (decode.py) use
only the interface below, so a new kind is one new file plus one registry line in decoders/__init__.py.
The interface, as a Protocol (`Decoder`):

    feature_kind: "pooled" | "grid"
        what the decoder reads: pooled features [B, C], or a grid of features [B, h*w, C]
        (a [B, C, h, w] map from an encoder is accepted and flattened).
    has_attention: bool
        whether `step` returns an attention row (where each word looked); declared by the kind,
        not inferred from what it reads.
    init_memory(features, conditions=None) -> tuple of batch-first tensors
        the image side (and the conditions' features), computed once per caption; beam search
        repeat_interleave-s / index_select-s each tensor along dim 0.
    step(memory, token [B], state) -> (logits [B, V], state, attention [B, h*w] | None)
        one word; `state` is None before the first word, else a tuple of batch-first tensors;
        the attention row of an attention decoder is the weight of each grid cell (sums to 1).
    forward(features, tokens [B, T], mask=None, conditions=None) -> (logits, aux_loss)
        teacher forcing: next-word logits [B, T, V], or with a boolean mask [B, T] only the masked
        positions' logits [N, V]; aux_loss is a scalar added to the cross-entropy (0 when none).

Conditioning (artcap.conditions): `conditions` maps a condition's name to one value id per caption. Each
condition the config names (`condition_slots`: the emotion when `num_emotions > 0`, ArtEmis' emotion-grounded
speaker, then those of `conditions`) is encoded by its registered Condition (a one-hot), goes through
Linear(width -> dim) + ReLU (`ConditionNet`, a submodule named after the condition) and is appended to the LSTM
input at every step. With `in_output` (the emotion's `emotion_in_output`) the features also go, through
Linear(dim -> hidden_dim) (the submodule `<name>_out`), straight into the layer that picks the word (merge:
added to the image branch; sat: to the hidden state before the output layer): ArtEmis' input-only grounding
is mostly ignored by beam search (steerability 0.17 on val), a direct path lets an emotion change words.
"""


from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, ClassVar, Literal, Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..conditions import EMOTION, Conditions, get_condition
from ..data import EMOTIONS
from ..errors import ArtcapError
from ..settings import check as check_settings, checked_value, field_type, setting, spec_of

__all__ = ["EMOTIONS", "ConditionNet", "ConditionSlot", "Decoder", "DecoderConfig", "DecoderSettings", "caption_loss",
           "create_decoder", "decoder_kinds", "decoder_has_attention", "decoder_settings", "register_decoder",
           "settings_class"]

Memory = tuple[torch.Tensor, ...]
State = tuple[torch.Tensor, ...] | None


MAX_WIDTH = 16_384  # any layer's width (as a model folder may hold: model_folder.MAX_WIDTH)


@dataclass(frozen=True)
class ConditionSlot:
    """One condition as a decoder reads it: its name, the width of its encoded value (one-hot), the size of the
    features made of it, and whether they also feed the word-choosing layer."""

    name: str
    width: int
    dim: int
    in_output: bool


@dataclass
class DecoderSettings:
    """The `[decoder]` table of a training config: the kind and the sizes every kind has. A kind with
    settings of its own subclasses this in its module and names the subclass when it registers
    (`@register_decoder("sat", settings=SatSettings)`); each field's range and help live here, once."""

    kind: str = setting("merge", "the decoder kind (a module in decoders/)", choices=lambda: decoder_kinds())
    embed_dim: int = setting(256, "word embedding width", low=1, high=MAX_WIDTH)
    hidden_dim: int = setting(256, "LSTM state width", low=1, high=MAX_WIDTH)
    dropout: float = setting(0.5, "dropout on the decoder's inputs", low=0, high=0.95)

    # fields that choose the image features rather than the decoder's layers: not saved with the decoder
    feature_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check_settings(self, prefix="decoder.")
        wanted = settings_class(self.kind)
        if type(self) is not wanted:
            raise ArtcapError(f"decoder.kind = {self.kind!r} is configured by {wanted.__name__}, not "
                              f"{type(self).__name__}; build it with decoder_settings({{'kind': {self.kind!r}}})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decoder_settings(values: Mapping[str, Any], source: str = "") -> DecoderSettings:
    """The settings of the kind `values["kind"]` names (default merge) from values or text (TOML, `--set`):
    an unknown kind or key, a wrong type or a value out of range is one line naming `decoder.<field>`."""
    kind, where = values.get("kind", "merge"), f"{source}: " if source else ""
    if kind not in _DECODERS:
        raise ArtcapError(f"{where}decoder.kind must be one of {', '.join(decoder_kinds())}, got {kind!r}")
    cls = settings_class(kind)
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ArtcapError(f"{where}unknown key decoder.{unknown[0]}; decoder kind {kind!r} keys: {', '.join(known)}")
    return cls(**{k: checked_value(field_type(cls, known[k]), spec_of(known[k]), f"decoder.{k}", v, source)
                  for k, v in values.items()})


@dataclass(init=False)
class DecoderConfig:
    """What builds a decoder: its kind's settings (the training config's `[decoder]` table) and what the
    data and the emotion table decide. A setting reads through: `config.hidden_dim`, `config.kind`.
    `DecoderConfig(V, C, kind="sat", attention_dim=64)` builds the settings from keywords."""

    vocab_size: int
    feature_dim: int  # 2048 for Xception, 1280 for EfficientNet-Lite
    settings: DecoderSettings
    num_emotions: int = 0  # 0 = not emotion-grounded; 9 = ArtEmis' emotions
    emotion_dim: int = 9  # width of the emotion features (the ArtEmis speaker's Linear(9, 9) + ReLU)
    emotion_in_output: bool = False  # also add the emotion features to the word-choosing layer's input
    # further conditions (artcap.conditions) the decoder reads, each with the size of its features; written
    # to config.json only when there are some, so an emotion-only model's config stays what it always was
    conditions: dict[str, int] | None = None

    def __init__(self, vocab_size: int, feature_dim: int, settings: DecoderSettings | None = None,
                 num_emotions: int = 0, emotion_dim: int = 9, emotion_in_output: bool = False,
                 conditions: dict[str, int] | None = None, **decoder: Any):
        if settings is not None and decoder:
            raise ArtcapError(f"decoder: give the settings or {', '.join(decoder)}, not both")
        self.vocab_size, self.feature_dim = vocab_size, feature_dim
        self.settings = settings if settings is not None else decoder_settings(decoder)
        self.num_emotions, self.emotion_dim, self.emotion_in_output = num_emotions, emotion_dim, emotion_in_output
        self.conditions = {} if conditions is None else conditions
        self.__post_init__()

    def __post_init__(self) -> None:
        checks = [("vocab_size", self.vocab_size >= 5, "at least 5 (4 special tokens and a word)"),
                  ("feature_dim", self.feature_dim >= 1, "positive"),
                  ("settings", isinstance(self.settings, DecoderSettings), "a DecoderSettings"),
                  ("num_emotions", self.num_emotions in (0, EMOTION.width), f"0 (not grounded) or {EMOTION.width}"),
                  ("emotion_dim", self.emotion_dim >= 1, "positive")]
        for name, ok, allowed in checks:
            if not ok:
                raise ArtcapError(f"decoder {name} must be {allowed}, got {getattr(self, name)!r}")
        bad = {k: v for k, v in dict(self.conditions).items() if k == EMOTION.name or not isinstance(k, str)
               or not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 8192}
        if bad or not isinstance(self.conditions, dict):
            raise ArtcapError(f"decoder conditions must map condition names (not emotion: it has num_emotions) to "
                              f"feature sizes from 1 to 8192, got {self.conditions!r}")

    def condition_slots(self) -> list[ConditionSlot]:
        """The conditions this decoder reads, in the order their features are concatenated: the emotion first."""
        slots = [ConditionSlot(EMOTION.name, self.num_emotions, self.emotion_dim, self.emotion_in_output)] \
            if self.num_emotions else []
        return slots + [ConditionSlot(name, get_condition(name).width, dim, False)
                        for name, dim in sorted(self.conditions.items())]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "settings":  # copy/pickle probe before __init__ ran
            raise AttributeError(name)
        return getattr(self.settings, name)

    def to_dict(self) -> dict[str, Any]:
        own = {k: v for k, v in self.settings.to_dict().items() if k not in self.settings.feature_fields}
        values = {"vocab_size": self.vocab_size, "feature_dim": self.feature_dim, **own,
                  "num_emotions": self.num_emotions, "emotion_dim": self.emotion_dim,
                  "emotion_in_output": self.emotion_in_output}
        if self.conditions:  # an emotion-only model's config.json stays what it always was
            values["conditions"] = dict(self.conditions)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config.json") -> "DecoderConfig":
        """From a saved config; older configs lack the newer fields and get their defaults ("merge"). Saved
        configs of merge models also hold sat's attention fields (one config once served every kind): dropped."""
        model_keys = ("vocab_size", "feature_dim", "num_emotions", "emotion_dim", "emotion_in_output", "conditions")
        kind = values.get("kind", "merge")
        if kind not in _DECODERS:
            raise ArtcapError(f"{source}: decoder.kind must be one of {', '.join(decoder_kinds())}, got {kind!r}")
        own = {f.name for f in fields(settings_class(kind))}
        other_kinds = {f.name for k in _DECODERS for f in fields(settings_class(k))} - own
        unknown = sorted(set(values) - own - other_kinds - set(model_keys))
        if unknown:
            raise ArtcapError(f"{source}: unknown decoder setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(own | set(model_keys)))}")
        missing = [k for k in model_keys[:2] if k not in values]
        if missing:
            raise ArtcapError(f"{source}: decoder.{missing[0]} is missing")
        settings = decoder_settings({k: v for k, v in values.items() if k in own}, source)
        return cls(**{k: values[k] for k in model_keys if k in values}, settings=settings)


class Decoder(Protocol):
    """What every registered decoder provides (see the module docstring)."""

    config: DecoderConfig
    feature_kind: Literal["pooled", "grid"]
    has_attention: bool

    def init_memory(self, features: torch.Tensor, conditions: Conditions | None = None) -> Memory: ...

    def step(self, memory: Memory, token: torch.Tensor, state: State
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]: ...

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                conditions: Conditions | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


_DECODERS: dict[str, Callable[[DecoderConfig], nn.Module]] = {}
_SETTINGS: dict[str, type[DecoderSettings]] = {}


def register_decoder(kind: str, settings: type[DecoderSettings] = DecoderSettings):
    """Class decorator: `@register_decoder("sat", settings=SatSettings)` makes `kind = "sat"` buildable and
    its `[decoder]` table read by `settings` (a DecoderSettings subclass with the kind's own fields)."""
    def wrap(cls):
        if kind in _DECODERS:
            raise ValueError(f"decoder kind {kind!r} is registered twice")
        if not isinstance(getattr(cls, "has_attention", None), bool):
            raise ValueError(f"decoder kind {kind!r} must declare has_attention = True or False")
        if not (isinstance(settings, type) and issubclass(settings, DecoderSettings)):
            raise ValueError(f"decoder kind {kind!r}: settings must be a DecoderSettings subclass")
        _DECODERS[kind], _SETTINGS[kind] = cls, settings
        cls.kind = kind
        return cls
    return wrap


def settings_class(kind: str) -> type[DecoderSettings]:
    """The dataclass of a decoder kind's `[decoder]` table."""
    decoder_feature_kind(kind)  # the one-line error for an unknown kind
    return _SETTINGS[kind]


def decoder_kinds() -> list[str]:
    return sorted(_DECODERS)


def decoder_feature_kind(kind: str) -> str:
    """Which features a decoder kind reads ("pooled" or "grid"), before building one."""
    if kind not in _DECODERS:
        raise ArtcapError(f"unknown decoder kind {kind!r}; choose one of {', '.join(decoder_kinds())}")
    return _DECODERS[kind].feature_kind


def decoder_has_attention(kind: str) -> bool:
    """Whether a decoder kind says where each word looked, before building one."""
    decoder_feature_kind(kind)  # the one-line error for an unknown kind
    return bool(_DECODERS[kind].has_attention)


def create_decoder(config: DecoderConfig) -> nn.Module:
    """The decoder that `config.kind` names, with fresh weights."""
    return _DECODERS[config.kind](config)


class ConditionNet(nn.Module):
    """A condition's value -> features: its encoding (the Condition's one-hot) -> Linear -> ReLU (for the emotion,
    the ArtEmis speaker's `auxiliary` net)."""

    def __init__(self, slot: ConditionSlot):
        super().__init__()
        self.slot = slot
        self.proj = nn.Linear(slot.width, slot.dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        encoded = get_condition(self.slot.name).encode(ids, self.proj.weight.dtype)
        return F.relu(self.proj(encoded))


def add_condition_layers(decoder: nn.Module, config: DecoderConfig) -> int:
    """Give `decoder` a `ConditionNet` per condition it reads (submodule `<name>`) and, for those with `in_output`,
    the direct path to the word-choosing layer (`<name>_out`: Linear(dim -> hidden_dim)). Named after the condition,
    so the emotion's weights keep the names every saved model has. -> the width the conditions add to the LSTM
    input."""
    decoder.condition_slots = config.condition_slots()
    for slot in decoder.condition_slots:
        for name in (slot.name, f"{slot.name}_out"):
            if hasattr(decoder, name):
                raise ArtcapError(f"condition {slot.name!r}: decoder {config.kind!r} already has a part named "
                                  f"{name!r}; register the condition under another name")
        decoder.add_module(slot.name, ConditionNet(slot))
        decoder.add_module(f"{slot.name}_out", nn.Linear(slot.dim, config.hidden_dim) if slot.in_output else None)
    return sum(slot.dim for slot in decoder.condition_slots)


def condition_features(decoder: nn.Module, conditions: Conditions | None, batch: int) -> list[torch.Tensor]:
    """[features [B, dim] of each condition the decoder reads, in its order]; a missing, extra or out-of-range
    value is a one-line error."""
    conditions = conditions or {}
    slots = decoder.condition_slots
    extra = sorted(set(conditions) - {slot.name for slot in slots})
    if extra:
        reads = ", ".join(slot.name for slot in slots) or "none"
        raise ArtcapError(f"this model is not conditioned on {', '.join(extra)} (it reads: {reads}): "
                          f"do not pass {'it' if len(extra) == 1 else 'them'}")
    features = []
    for slot in slots:
        ids = conditions.get(slot.name)
        if ids is None:
            raise ArtcapError(f"this model is conditioned on {slot.name}: give one {slot.name} per caption "
                              f"({', '.join(get_condition(slot.name).values)})")
        if ids.shape != (batch,):
            raise ArtcapError(f"{slot.name} must hold one id per caption ({batch}), got shape {tuple(ids.shape)}")
        if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < slot.width):
            raise ArtcapError(f"{slot.name} ids must be from 0 to {slot.width - 1}, got {sorted(set(ids.tolist()))}")
        features.append(getattr(decoder, slot.name)(ids))
    return features


def condition_output(decoder: nn.Module, features: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The sum of the direct paths (`in_output`) of the conditions' features to the word-choosing layer, or None."""
    total = None
    for slot, feature in zip(decoder.condition_slots, features):
        if slot.in_output:
            path = getattr(decoder, f"{slot.name}_out")(feature)
            total = path if total is None else total + path
    return total


def check_features(decoder: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Features in the decoder's layout ([B, C] pooled, [B, h*w, C] grid), or a one-line error."""
    dim = decoder.config.feature_dim
    if decoder.feature_kind == "grid" and features.dim() == 4 and features.size(1) == dim:
        features = features.flatten(2).transpose(1, 2)  # an encoder's [B, C, h, w] map
    want = 2 if decoder.feature_kind == "pooled" else 3
    if features.dim() != want or features.size(-1) != dim:
        layout = "[B, C]" if want == 2 else "[B, h*w, C]"
        raise ArtcapError(f"decoder {decoder.kind!r} reads {decoder.feature_kind} features {layout} with "
                          f"C = {dim}, got shape {tuple(features.shape)}; extract features with the "
                          f"{decoder.feature_kind} layout of the encoder the model was trained on")
    return features


def lstm_cell(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step with torch's gate order (i, f, g, o): shared by hand-written `step`s."""
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def caption_loss(model: nn.Module, features: torch.Tensor, tokens: torch.Tensor,
                 conditions: Conditions | None = None) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of predicting tokens[:, 1:] from each prefix, padding excluded, plus the
    decoder's auxiliary loss; also returns the number of target tokens. `model` may be wrapped (DDP
    hooks live in its forward), so it is only ever called, never asked for its parts."""
    length = int((tokens != 0).sum(dim=1).max())  # trim the batch to its longest caption
    inputs, targets = tokens[:, : length - 1], tokens[:, 1:length]
    mask = targets != 0
    logits, aux_loss = model(features, inputs, mask, conditions)
    return F.cross_entropy(logits.float(), targets[mask]) + aux_loss.float(), int(mask.sum())
