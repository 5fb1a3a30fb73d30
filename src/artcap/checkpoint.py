"""Model folders (Hugging Face style) and training checkpoints, written atomically, read safely.

A model folder holds `config.json`, `vocab.json` and `model.safetensors` (the decoder), plus
`encoder.safetensors` when the encoder's weights are not the registry's standard ones.
Training checkpoints are torch files read with `weights_only=True`: no code runs on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import ArtcapError
from .io import atomic_path, atomic_write_json
from .model import DecoderConfig, MergeDecoder
from .text import Vocabulary

MODEL_FORMAT = "artcap-model"
MODEL_FORMAT_VERSION = 1
CHECKPOINT_VERSION = 1


def save_model_dir(path: str | Path, decoder: MergeDecoder, vocab: Vocabulary, config: dict[str, Any],
                   encoder_state: dict[str, torch.Tensor] | None = None) -> None:
    """`config` holds encoder/preset/max_len/decoding; the decoder's own sizes are added here."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}, str(tmp))
    if encoder_state is not None:
        with atomic_path(path / "encoder.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in encoder_state.items()}, str(tmp))
    vocab.save(path / "vocab.json")
    full = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "artcap_version": __version__,
            **config, "decoder": decoder.config.to_dict()}
    atomic_write_json(path / "config.json", full)


def read_model_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ArtcapError(f"{path}: not a model folder (no config.json); pass a run folder's model/ or a model folder")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as e:
        raise ArtcapError(f"{config_path}: not valid JSON ({e}); the model folder is damaged") from None
    if config.get("format") != MODEL_FORMAT:
        raise ArtcapError(f"{config_path}: not an artcap model config")
    if config.get("format_version") != MODEL_FORMAT_VERSION:
        raise ArtcapError(f"{config_path}: model format version {config.get('format_version')} is not supported by "
                          f"artcap {__version__} (expects {MODEL_FORMAT_VERSION}); upgrade artcap or retrain")
    return config


def load_model_dir(path: str | Path) -> tuple[MergeDecoder, Vocabulary, dict[str, Any]]:
    path = Path(path)
    config = read_model_config(path)
    vocab = Vocabulary.load(path / "vocab.json")
    decoder = MergeDecoder(DecoderConfig(**config["decoder"]))
    state = _read_safetensors(path / "model.safetensors")
    try:
        decoder.load_state_dict(state)
    except RuntimeError as e:
        raise ArtcapError(f"{path / 'model.safetensors'}: weights do not fit config.json ({str(e).splitlines()[0]})") from None
    if decoder.config.vocab_size != len(vocab):
        raise ArtcapError(f"{path}: vocab.json has {len(vocab)} words but the model expects {decoder.config.vocab_size}")
    return decoder.eval(), vocab, config


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ArtcapError(f"{path}: missing; the model folder is incomplete")
    try:
        return load_file(str(path))
    except Exception as e:  # truncated or not safetensors
        raise ArtcapError(f"{path}: unreadable weights ({type(e).__name__}); the file is truncated or not "
                          f"safetensors — re-copy the model folder or retrain") from None


def read_encoder_state(path: str | Path) -> dict[str, torch.Tensor]:
    return _read_safetensors(Path(path) / "encoder.safetensors")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"checkpoint_version": CHECKPOINT_VERSION, "artcap_version": __version__, **state}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtcapError(f"{path}: no checkpoint to resume from") from None
    except Exception as e:  # truncated zip, foreign pickle, ...
        raise ArtcapError(f"{path}: unreadable checkpoint ({type(e).__name__}); it is truncated or not an artcap "
                          f"checkpoint — delete it to restart the run") from None
    if not isinstance(state, dict) or state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise ArtcapError(f"{path}: checkpoint from another artcap version; start a new run")
    return state
