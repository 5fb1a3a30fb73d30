"""Training configuration: one small dataclass, read from TOML, overridden with `--set key=value`."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .data import SPLIT_SEED
from .errors import ArtcapError
from .io import atomic_write_text


@dataclass
class TrainConfig:
    # data
    data: str = ""  # ArtEmis CSV or Flickr8k captions.txt
    images: str = ""  # the image folder (WikiArt layout for ArtEmis)
    preset: str = "paper"  # paper | artemis (see artcap.data.prepare)
    skip_missing: bool = False  # go on without bad rows / unreadable images instead of stopping
    split_seed: int = SPLIT_SEED
    # encoder and feature cache
    encoder: str = "efficientnet-lite0"  # xception | efficientnet-lite0 | efficientnet-lite2 | timm:<name>
    encoder_weights: str = "imagenet"  # imagenet | random | path to a state dict
    image_size: int = 0  # 0 = the encoder's default (paper: 128 for xception)
    feature_cache: str = ""  # "" = $ARTCAP_CACHE/features, else ~/.cache/artcap/features
    feature_batch_size: int = 16
    num_workers: int = 1  # image-decoding processes
    grid_size: int = 7  # attention decoders: features pooled to a grid_size x grid_size grid
    # decoder (the paper's sizes)
    decoder: str = "merge"  # merge (the report's) | sat (Show, Attend and Tell)
    embed_dim: int = 256
    hidden_dim: int = 256
    dropout: float = 0.5
    emotion_grounded: bool = False  # feed each caption's emotion to the decoder (ArtEmis' emotion-grounded speaker)
    emotion_dim: int = 9  # grounded: width of the emotion features (ArtEmis: 9)
    emotion_in_output: bool = False  # grounded: also feed the emotion to the word-choosing layer (decoders/)
    matcher: bool = False  # also train the image-caption matcher that reranks the beam (artcap.rerank)
    emotion_head: bool = False  # also train the image -> emotion classifier and ship it in the model folder
    # optimisation
    epochs: int = 10
    batch_size: int = 64  # captions per step (summed over processes)
    steps_per_epoch: int = 0  # 0 = one pass over the training captions
    lr: float = 1e-3
    warmup_steps: int = 0  # linear warmup from 0 to lr over these steps
    lr_schedule: str = "constant"  # constant (the paper's Adam) | cosine (decay to min_lr by the last step)
    min_lr: float = 0.0
    grad_clip: float = 0.0  # clip the gradient norm to this (0: off)
    init_from: str = ""  # a model folder to start from (fine-tuning); "" = scratch
    select_by: str = "val_loss"  # which validation measure picks the exported model: val_loss | bleu4 | cider |
    #   cider_distinct (CIDEr-D among epochs whose val captions are >= 60% distinct; see train._selection_score)
    objective: str = "xe"  # xe (cross-entropy, teacher forcing) | scst (self-critical, CIDEr-D reward; needs init_from)
    scst_samples: int = 5  # scst: captions sampled per image; each one's baseline is the mean reward of the others
    grounding_weight: float = 0.0  # scst: reward = CIDEr-D(own refs) - this x CIDEr-D(a random other painting's)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on CPU
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: only by time, see below)
    checkpoint_minutes: float = 5.0  # also checkpoint mid-epoch when this long has passed since the last one
    out: str = "runs/run"
    # decoding defaults saved with the model
    beam: int = 1
    length_alpha: float = 0.7
    no_repeat_ngram: int = 0
    max_word_repeats: int = 0  # 0 = off; 2 = no content word more than twice in a caption
    emotion_guidance: float = 0.0  # grounded models: favour words specific to the emotion (decode.EmotionContrast)
    rerank: bool = False  # rerank the beam with the matcher (needs matcher = true)
    coherent: bool = False  # no dangling end, no mixed genders, no broken caption kept over an unbroken one
    max_len: int = 0  # 0 = the longest kept caption

    def __post_init__(self) -> None:
        for key, check, allowed in _RULES:
            value = getattr(self, key)
            if not check(value):
                raise ArtcapError(f"config key {key} = {value!r} is out of range: must be {allowed}")
        if self.objective == "scst" and not self.init_from:
            raise ArtcapError("objective = scst fine-tunes a cross-entropy model: set init_from to its model folder "
                              "(e.g. --set init_from=runs/merge-xe/model)")

    def decoding(self, max_len: int) -> "DecodingConfig":
        """The decoding defaults saved with the model; `max_len` is the data's when the config says 0."""
        from .decode import DecodingConfig

        return DecodingConfig(beam=self.beam, max_len=self.max_len or max_len, length_alpha=self.length_alpha,
                              no_repeat_ngram=self.no_repeat_ngram, max_word_repeats=self.max_word_repeats,
                              emotion_guidance=self.emotion_guidance, rerank=self.rerank,
                              coherent=self.coherent)

    def to_toml(self) -> str:
        lines = []
        for key, value in asdict(self).items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f'{key} = "{_escape(value)}"')
            else:
                lines.append(f"{key} = {value}")
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_toml())


def _finite(low: float, high: float, *, open_low: bool = False) -> Callable[[float], bool]:
    return lambda v: math.isfinite(v) and (v > low if open_low else v >= low) and v <= high


# (key, check, what is allowed): every key with a range, checked when a config is made, before any work.
_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("preset", lambda v: v in ("paper", "artemis"), "paper or artemis"),
    ("encoder", lambda v: bool(v.strip()), "an encoder name (artcap.encoders.list_encoders())"),
    ("image_size", lambda v: v == 0 or 32 <= v <= 2048, "0 (the encoder's) or from 32 to 2048"),
    ("feature_batch_size", lambda v: 1 <= v <= 4096, "from 1 to 4096"),
    ("num_workers", lambda v: 0 <= v <= 64, "from 0 to 64"),
    ("grid_size", lambda v: 1 <= v <= 32, "from 1 to 32"),
    ("decoder", lambda v: v in _decoder_kinds(), "a registered decoder kind: merge or sat"),
    ("embed_dim", lambda v: 1 <= v <= 8192, "from 1 to 8192"),
    ("hidden_dim", lambda v: 1 <= v <= 8192, "from 1 to 8192"),
    ("emotion_dim", lambda v: 1 <= v <= 8192, "from 1 to 8192"),
    ("dropout", _finite(0.0, 0.95), "from 0 to 0.95"),
    ("epochs", lambda v: 1 <= v <= 100_000, "from 1 to 100000"),
    ("batch_size", lambda v: 1 <= v <= 65_536, "from 1 to 65536"),
    ("steps_per_epoch", lambda v: 0 <= v, "0 (one pass) or more"),
    ("lr", _finite(0.0, 10.0, open_low=True), "a number above 0 and at most 10"),
    ("warmup_steps", lambda v: 0 <= v, "0 or more"),
    ("lr_schedule", lambda v: v in ("constant", "cosine"), "constant or cosine"),
    ("min_lr", _finite(0.0, 10.0), "from 0 to 10"),
    ("grad_clip", _finite(0.0, 1e6), "0 (off) or a positive number"),
    ("select_by", lambda v: v in ("val_loss", "bleu4", "cider", "cider_distinct"),
     "val_loss, bleu4, cider or cider_distinct"),
    ("objective", lambda v: v in ("xe", "scst"), "xe (cross-entropy) or scst (self-critical)"),
    ("scst_samples", lambda v: 2 <= v <= 64, "from 2 to 64"),
    ("grounding_weight", _finite(0.0, 10.0), "from 0 to 10"),
    ("seed", lambda v: 0 <= v < 2**63, "0 or more"),
    ("device", lambda v: bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v)), "auto, cpu, cuda, cuda:N or mps"),
    ("checkpoint_every", lambda v: 0 <= v, "0 (off) or more"),
    ("checkpoint_minutes", _finite(0.0, 1e6), "0 (off) or a positive number of minutes"),
    ("out", lambda v: bool(v.strip()), "a folder path"),
    ("beam", lambda v: 1 <= v <= 20, "from 1 to 20"),
    ("length_alpha", _finite(0.0, 5.0), "from 0 to 5"),
    ("emotion_guidance", _finite(0.0, 10.0), "from 0 (off) to 10"),
    ("no_repeat_ngram", lambda v: v == 0 or 2 <= v <= 10, "0 (off) or from 2 to 10"),
    ("max_word_repeats", lambda v: 0 <= v <= 10, "0 (off) or from 1 to 10"),
    ("max_len", lambda v: 0 <= v <= 200, "0 (the data's) or from 1 to 200"),
]


def _decoder_kinds() -> list[str]:
    from .decoders import decoder_kinds

    return decoder_kinds()


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _coerce(key: str, raw: Any, kind: type, source: str) -> Any:
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if kind is bool:
                if text.lower() in ("true", "1", "yes"):
                    return True
                if text.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return kind(text)
        except ValueError:
            pass
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    raise ArtcapError(f"{source}: {key} must be {kind.__name__}, got {raw!r}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults <- TOML file <- `key=value` overrides, each checked against the field's type."""
    types = {f.name: f.type for f in fields(TrainConfig)}
    kinds = {name: {"str": str, "int": int, "float": float, "bool": bool}[t] for name, t in types.items()}
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtcapError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ArtcapError(f"{path}: invalid TOML ({e})") from None
        for key, value in raw.items():
            if key not in kinds:
                raise ArtcapError(f"{path}: unknown key {key!r}; known keys: {', '.join(kinds)}")
            values[key] = _coerce(key, value, kinds[key], str(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in kinds:
            raise ArtcapError(f"--set {item!r}: expected key=value with key one of: {', '.join(kinds)}")
        values[key] = _coerce(key, value, kinds[key], f"--set {key}")
    return TrainConfig(**values)
