"""Training checkpoints, written atomically, read safely, and a run's export to a model folder
(model_folder.py owns the folder's format). Checkpoints are torch files read with
`weights_only=True`: no code runs on load.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import ArtcapError
from .io import atomic_write_bytes, atomic_write_json

CHECKPOINT_VERSION = 1


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
    from .corpus import feature_spec
    from .encoders import EncoderSpec
    from .model_folder import EncoderSection, FeaturesSection, ModelConfig, save_model_folder

    spec = EncoderSpec.from_train_config(config)
    losses = [h["val_loss"] for h in history if h.get("val_loss") is not None]
    model_config = ModelConfig(
        model_id=f"artcap-{Path(config.run.out).name}", encoder=EncoderSection.of(spec),
        features=FeaturesSection(model.feature_kind, feature_spec(config).grid_size), preset=config.data.preset,
        max_len=max_len, decoding=replace(config.decoding, max_len=max_len), decoder=model.config.to_dict(),
        training={"epochs_done": len(history), "best_val_loss": min(losses) if losses else None,
                  "select_by": config.optim.select_by, "data": data.counts(), "torch": torch.__version__})
    save_model_folder(path, model_config, model, data.vocab, encoder_state=spec.state_to_ship())
    atomic_write_json(path / "splits.json", data.splits)  # so evaluation finds the held-out paintings
