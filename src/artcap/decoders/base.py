"""The decoder interface, the registry and the base config (timm's layout: one module per kind).

Every decoder kind is an `nn.Module` registered with `@register_decoder("<kind>")` and built from a
`DecoderConfig` by `create_decoder(config)`. Training (`caption_loss`) and decoding (decode.py) use
only the interface below, so a new kind is one new file plus one registry line in decoders/__init__.py.
The interface, as a Protocol (`Decoder`):

    feature_kind: "pooled" | "grid"
        what the decoder reads: pooled features [B, C], or a grid of features [B, h*w, C]
        (a [B, C, h, w] map from an encoder is accepted and flattened).
    has_attention: bool
        whether `step` returns an attention row (where each word looked); declared by the kind,
        not inferred from what it reads.
    init_memory(features, emotions=None) -> tuple of batch-first tensors
        the image side (and the emotion features), computed once per caption; beam search
        repeat_interleave-s / index_select-s each tensor along dim 0.
    step(memory, token [B], state) -> (logits [B, V], state, attention [B, h*w] | None)
        one word; `state` is None before the first word, else a tuple of batch-first tensors;
        the attention row of an attention decoder is the weight of each grid cell (sums to 1).
    forward(features, tokens [B, T], mask=None, emotions=None) -> (logits, aux_loss)
        teacher forcing: next-word logits [B, T, V], or with a boolean mask [B, T] only the masked
        positions' logits [N, V]; aux_loss is a scalar added to the cross-entropy (0 when none).

Emotion grounding (the ArtEmis speaker's): when `num_emotions > 0`, every caption comes with an
emotion id (`EMOTIONS` order); its one-hot goes through Linear(num_emotions -> emotion_dim) + ReLU
and is appended to the LSTM input at every step. With `emotion_in_output` the emotion features also go,
through Linear(emotion_dim -> hidden_dim), straight into the layer that picks the word (merge: added to
the image branch; sat: to the hidden state before the output layer): ArtEmis' input-only grounding is
mostly ignored by beam search (steerability 0.17 on val), a direct path lets an emotion change words.
"""


from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import EMOTIONS
from ..errors import ArtcapError, check_known_keys

__all__ = ["EMOTIONS", "Decoder", "DecoderConfig", "EmotionNet", "MergeDecoder", "caption_loss", "create_decoder",
           "decoder_kinds", "decoder_has_attention", "emotion_ids", "register_decoder"]

Memory = tuple[torch.Tensor, ...]
State = tuple[torch.Tensor, ...] | None


@dataclass
class DecoderConfig:
    vocab_size: int
    feature_dim: int  # 2048 for Xception, 1280 for EfficientNet-Lite
    embed_dim: int = 256
    hidden_dim: int = 256
    dropout: float = 0.5
    kind: str = "merge"  # a registered decoder: "merge" (pooled features) or "sat" (attention over the grid)
    attention_dim: int = 256  # sat: size of the additive attention's hidden layer
    alpha_c: float = 1.0  # sat: weight of the doubly stochastic attention regulariser (Xu et al. use 1)
    num_emotions: int = 0  # 0 = not emotion-grounded; 9 = ArtEmis' emotions
    emotion_dim: int = 9  # width of the emotion features (the ArtEmis speaker's Linear(9, 9) + ReLU)
    emotion_in_output: bool = False  # also add the emotion features to the word-choosing layer's input

    def __post_init__(self) -> None:
        checks = [("vocab_size", self.vocab_size >= 5, "at least 5 (4 special tokens and a word)"),
                  ("feature_dim", self.feature_dim >= 1, "positive"),
                  ("embed_dim", self.embed_dim >= 1, "positive"),
                  ("hidden_dim", self.hidden_dim >= 1, "positive"),
                  ("dropout", 0 <= self.dropout < 1, "from 0 to below 1"),
                  ("kind", self.kind in _DECODERS, f"one of {', '.join(decoder_kinds())}"),
                  ("attention_dim", self.attention_dim >= 1, "positive"),
                  ("alpha_c", self.alpha_c >= 0, "0 or more"),
                  ("num_emotions", self.num_emotions >= 0, "0 (not grounded) or more"),
                  ("emotion_dim", self.emotion_dim >= 1, "positive")]
        for name, ok, allowed in checks:
            if not ok:
                raise ArtcapError(f"decoder {name} must be {allowed}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config.json") -> "DecoderConfig":
        """From a saved config; older configs lack the newer fields and get their defaults ("merge")."""
        check_known_keys(cls, values, source, "decoder")
        return cls(**values)


class Decoder(Protocol):
    """What every registered decoder provides (see the module docstring)."""

    config: DecoderConfig
    feature_kind: Literal["pooled", "grid"]
    has_attention: bool

    def init_memory(self, features: torch.Tensor, emotions: torch.Tensor | None = None) -> Memory: ...

    def step(self, memory: Memory, token: torch.Tensor, state: State
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]: ...

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                emotions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


_DECODERS: dict[str, Callable[[DecoderConfig], nn.Module]] = {}


def register_decoder(kind: str):
    """Class decorator: `@register_decoder("sat")` makes `DecoderConfig(kind="sat")` buildable."""
    def wrap(cls):
        if kind in _DECODERS:
            raise ValueError(f"decoder kind {kind!r} is registered twice")
        if not isinstance(getattr(cls, "has_attention", None), bool):
            raise ValueError(f"decoder kind {kind!r} must declare has_attention = True or False")
        _DECODERS[kind] = cls
        cls.kind = kind
        return cls
    return wrap


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


class EmotionNet(nn.Module):
    """The ArtEmis speaker's `auxiliary` net: emotion id -> one-hot -> Linear -> ReLU."""

    def __init__(self, num_emotions: int, emotion_dim: int):
        super().__init__()
        self.num_emotions = num_emotions
        self.proj = nn.Linear(num_emotions, emotion_dim)

    def forward(self, emotions: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(emotions.long(), self.num_emotions).to(self.proj.weight.dtype)
        return F.relu(self.proj(one_hot))


def emotion_output_layer(config: DecoderConfig) -> nn.Linear | None:
    """The direct path from emotion features to the word-choosing layer (`emotion_in_output`)."""
    if not (config.num_emotions and config.emotion_in_output):
        return None
    return nn.Linear(config.emotion_dim, config.hidden_dim)


def emotion_ids(names: Sequence[str]) -> torch.Tensor:
    """Emotion names (EMOTIONS spelling) -> the LongTensor of ids a grounded decoder reads."""
    unknown = sorted({n for n in names if n not in EMOTIONS})
    if unknown:
        raise ArtcapError(f"unknown emotion(s) {', '.join(map(repr, unknown))}; known: {', '.join(EMOTIONS)}")
    return torch.tensor([EMOTIONS.index(n) for n in names], dtype=torch.long)


def emotion_features(net: EmotionNet | None, emotions: torch.Tensor | None, batch: int) -> list[torch.Tensor]:
    """[emotion features [B, E]] for a grounded decoder, [] otherwise; wrong use is a clear error."""
    if net is None:
        if emotions is not None:
            raise ArtcapError("this model is not emotion-grounded (num_emotions = 0): do not pass emotions")
        return []
    if emotions is None:
        raise ArtcapError(f"this model is emotion-grounded: give one emotion per caption ({', '.join(EMOTIONS)})")
    if emotions.shape != (batch,):
        raise ArtcapError(f"emotions must hold one id per caption ({batch}), got shape {tuple(emotions.shape)}")
    if emotions.numel() and not (0 <= int(emotions.min()) and int(emotions.max()) < net.num_emotions):
        raise ArtcapError(f"emotion ids must be from 0 to {net.num_emotions - 1}, "
                          f"got {sorted(set(emotions.tolist()))}")
    return [net(emotions)]


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
                 emotions: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of predicting tokens[:, 1:] from each prefix, padding excluded, plus the
    decoder's auxiliary loss; also returns the number of target tokens. `model` may be wrapped (DDP
    hooks live in its forward), so it is only ever called, never asked for its parts."""
    length = int((tokens != 0).sum(dim=1).max())  # trim the batch to its longest caption
    inputs, targets = tokens[:, : length - 1], tokens[:, 1:length]
    mask = targets != 0
    logits, aux_loss = model(features, inputs, mask, emotions)
    return F.cross_entropy(logits.float(), targets[mask]) + aux_loss.float(), int(mask.sum())
