"""Training configuration: one small dataclass, read from TOML, overridden with `--set key=value`."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ArtcapError
from .io import atomic_write_text


@dataclass
class TrainConfig:
    # data
    data: str = ""  # ArtEmis CSV or Flickr8k captions.txt
    images: str = ""  # the image folder (WikiArt layout for ArtEmis)
    preset: str = "paper"  # paper | artemis (see artcap.data.prepare)
    skip_missing: bool = False  # go on without bad rows / unreadable images instead of stopping
    split_seed: int = 2021
    # encoder and feature cache
    encoder: str = "efficientnet-lite0"  # xception | efficientnet-lite0 | efficientnet-lite2 | timm:<name>
    encoder_weights: str = "imagenet"  # imagenet | random | path to a state dict
    image_size: int = 0  # 0 = the encoder's default (paper: 128 for xception)
    feature_cache: str = ""  # "" = $ARTCAP_CACHE or ~/.cache/artcap/features
    feature_batch_size: int = 16
    num_workers: int = 1  # image-decoding processes
    # decoder (the paper's sizes)
    embed_dim: int = 256
    hidden_dim: int = 256
    dropout: float = 0.5
    # optimisation
    epochs: int = 10
    batch_size: int = 64  # captions per step (summed over processes)
    steps_per_epoch: int = 0  # 0 = one pass over the training captions
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on CPU
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: at epoch ends only)
    out: str = "runs/run"
    # decoding defaults saved with the model
    beam: int = 1
    length_alpha: float = 0.7
    no_repeat_ngram: int = 0
    max_len: int = 0  # 0 = the longest kept caption

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
