"""Model folders (Hugging Face style) and training checkpoints, written atomically, read safely.

A model folder holds `config.json`, `vocab.json` and `model.safetensors` (the decoder), plus
`encoder.safetensors` when the encoder's weights are not the registry's standard ones.
Training checkpoints are torch files read with `weights_only=True`: no code runs on load.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from . import __version__
from .errors import ArtcapError
from .io import atomic_write_bytes, atomic_write_json, save_tensors
from .decoders import DecoderConfig, create_decoder
from .text import Vocabulary

MODEL_FORMAT = "artcap-model"
MODEL_FORMAT_VERSION = 1
CHECKPOINT_VERSION = 1


def save_model_dir(path: str | Path, decoder: torch.nn.Module, vocab: Vocabulary, config: dict[str, Any],
                   encoder_state: dict[str, torch.Tensor] | None = None) -> None:
    """`config` holds encoder/preset/max_len/decoding; the decoder's own sizes are added here."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / "model.safetensors", decoder.state_dict())
    if encoder_state is not None:
        save_tensors(path / "encoder.safetensors", encoder_state)
    vocab.save(path / "vocab.json")
    full = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "artcap_version": __version__,
            **config, "decoder": decoder.config.to_dict()}
    atomic_write_json(path / "config.json", full)


# The keys a model folder's config.json must have, and the type of each.
REQUIRED_KEYS = {"encoder": dict, "max_len": int, "decoder": dict}
REQUIRED_ENCODER_KEYS = {"name": str, "weights": str}


def read_model_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ArtcapError(f"{path}: not a model folder (no config.json); pass a run folder's model/ or a model folder")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtcapError(f"{config_path}: not valid JSON ({e}); the model folder is damaged") from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise ArtcapError(f"{config_path}: not an artcap model config")
    if config.get("format_version") != MODEL_FORMAT_VERSION:
        raise ArtcapError(f"{config_path}: model format version {config.get('format_version')} is not supported by "
                          f"artcap {__version__} (expects {MODEL_FORMAT_VERSION}); upgrade artcap or retrain")
    for where, keys in (("", REQUIRED_KEYS), ("encoder.", REQUIRED_ENCODER_KEYS)):
        section = config if not where else config["encoder"]
        for key, kind in keys.items():
            if not isinstance(section.get(key), kind) or isinstance(section.get(key), bool):
                raise ArtcapError(f"{config_path}: key {where}{key} is missing or not a {kind.__name__}; the model "
                                  f"folder is damaged — re-copy it or export it again from its run")
    return config


def read_splits(path: str | Path) -> dict[str, list[str]]:
    """A splits.json: {"train": [...], "val": [...], "test": [...]} of image ids, checked."""
    path = Path(path)
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtcapError(f"{path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtcapError(f"{path}: not valid JSON ({e}); restore it from the run folder") from None
    ok = isinstance(splits, dict) and all(
        isinstance(splits.get(s), list) and all(isinstance(i, str) for i in splits[s]) for s in ("train", "val", "test"))
    if not ok:
        raise ArtcapError(f"{path}: not a splits file (expected lists of image ids under train, val and test); "
                          f"restore it from the run folder")
    return {s: splits[s] for s in ("train", "val", "test")}


def load_model_dir(path: str | Path) -> tuple[torch.nn.Module, Vocabulary, dict[str, Any]]:
    path = Path(path)
    config = read_model_config(path)
    vocab = Vocabulary.load(path / "vocab.json")
    decoder = create_decoder(DecoderConfig.from_dict(config["decoder"], str(path / "config.json")))
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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"checkpoint_version": CHECKPOINT_VERSION, "artcap_version": __version__, **state}, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


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


def export_model(path: Path, model: torch.nn.Module, data, config, max_len: int, history: list[dict]) -> None:
    """Write the model folder of a training run (`data`: the run's CaptionData, `config`: its TrainConfig)."""
    from .encoders import EncoderSpec

    spec = EncoderSpec.from_train_config(config)
    losses = [h["val_loss"] for h in history if h.get("val_loss") is not None]
    save_model_dir(path, model, data.vocab, {
        "model_id": f"artcap-{Path(config.out).name}",
        "encoder": spec.to_dict(),
        "features": {"kind": model.feature_kind, "grid_size": config.grid_size},
        "preset": config.preset,
        "max_len": max_len,
        "decoding": config.decoding(max_len).to_dict(),
        "training": {"epochs_done": len(history), "best_val_loss": min(losses) if losses else None,
                     "select_by": config.select_by, "data": data.counts(), "torch": torch.__version__},
    }, encoder_state=spec.state_to_ship())
    atomic_write_json(path / "splits.json", data.splits)  # so evaluation finds the held-out paintings
