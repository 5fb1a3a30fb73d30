"""`open_clip:<model>[:<pretrained tag>]`: the image tower of an OpenCLIP model as an artcap encoder.

    create_encoder("open_clip:ViT-B-32:laion2b_s34b_b79k")                  # downloads the tag's weights
    create_encoder("open_clip:ViT-B-32:laion2b_s34b_b79k", weights="open_clip_model.safetensors")  # offline

The grid is the tower's last feature map before pooling and projection: a vision transformer's patch
tokens after its final LayerNorm (`ln_post`), laid out h x w without the class token; a conv tower's
(ModifiedResNet, timm trunks such as MobileCLIP's FastViT) last map. The pooled vector is the grid's
mean, as for every artcap encoder: an attention decoder's emotion head and caption matcher read the
grid's mean in place of the pooled vector, and CLIP's own image embedding (the class token or
attention pool, projected) is not the mean of any grid. The projection is a linear map trained for
text matching; the decoder learns its own, so the full pre-projection width is kept.

Only the image tower is built (no text tower to allocate, no text-model config to download). Weights
come from open_clip's download for the tag (Hugging Face hub cache) or from a local file: a full CLIP
state dict (`visual.*` tensors are taken, the text tower's ignored) or the image tower's alone.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import torch
from PIL import Image
from torch import nn

from .encoders import Encoder, _weights_id, load_state_dict_file
from .errors import ArtcapError, first_line

PREFIX = "open_clip:"
EXTRA_HINT = "pip install 'artcap[clip]' (the open_clip_torch package)"
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


class OpenClipTower(nn.Module):
    """The image tower under the attribute name a CLIP state dict uses (`visual.*`), so a full CLIP
    checkpoint loads into it unchanged; `forward_features` gives the last feature map [B, C, h, w]."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(images, indices=1, normalize_intermediates=True,
                                                intermediates_only=True)
        return out["image_intermediates"][-1]


def parse_name(name: str) -> tuple[str, str | None]:
    """`open_clip:<model>[:<tag>]` -> (model, tag or None)."""
    model, _, tag = name.removeprefix(PREFIX).partition(":")
    if not model or (":" in name.removeprefix(PREFIX) and not tag):
        raise ArtcapError(f"encoder {name!r}: spell it open_clip:<model> or open_clip:<model>:<pretrained tag>, "
                          f"e.g. open_clip:ViT-B-32:laion2b_s34b_b79k")
    return model, tag or None


def _import_open_clip(name: str):
    try:
        import open_clip
    except ImportError:
        raise ArtcapError(f"encoder {name} needs OpenCLIP, which is not installed; run: {EXTRA_HINT}") from None
    return open_clip


@contextlib.contextmanager
def _quiet_library():
    """open_clip reports through the root logger (e.g. "initialized randomly", a failed download) and
    timm may print: keep that off stdout and the console, so a failure is our one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        logging.disable(previous)


def open_clip_encoder(name: str, weights: str, image_size: int | None) -> Encoder:
    open_clip = _import_open_clip(name)
    model, tag = parse_name(name)
    config = open_clip.get_model_config(model)
    if model in ("hf-hub", "local-dir"):
        raise ArtcapError(f"encoder {name}: artcap takes OpenCLIP's own model names (open_clip.list_models()); "
                          f"for a hub repo, pass its checkpoint with --encoder-weights FILE")
    if config is None:
        raise ArtcapError(f"open_clip has no model {model!r} (encoder {name}); see open_clip.list_models()")
    tag_config = _tag_config(open_clip, name, model, tag)
    if weights == "imagenet" and tag is None:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model))
        choose = f"use {name}:<tag> (tags: {tags}), or pass" if tags else "open_clip publishes none for it; pass"
        raise ArtcapError(f"encoder {name} names no pretrained weights: {choose} "
                          f"--encoder-weights FILE (a local checkpoint) or random")
    weights_id = "pretrained" if weights == "imagenet" else _weights_id(weights)  # a missing file: one line now
    vision_cfg = dict(config["vision_cfg"])
    native_size = _side(vision_cfg["image_size"])
    is_vit = "timm_model_name" not in vision_cfg and not isinstance(vision_cfg.get("layers"), (list, tuple))
    if image_size and is_vit:
        vision_cfg["image_size"] = image_size  # built for this size; position embeddings are resampled on load
    tower = _build_tower(name, config["embed_dim"], vision_cfg,
                         config.get("quick_gelu", False) or tag_config.get("quick_gelu", False))
    if weights == "imagenet":
        _load_tower(tower, _download(open_clip, name, tag_config), name, open_clip)
    elif weights != "random":
        _load_tower(tower, weights, name, open_clip)
    if image_size and "timm_model_name" in vision_cfg:
        _resize_timm_trunk(tower, name, image_size)
    return _as_encoder(name, tower, image_size or native_size, tag_config, weights_id)


def _build_tower(name: str, embed_dim: int, vision_cfg: dict[str, Any], quick_gelu: bool) -> OpenClipTower:
    """The image tower exactly as open_clip's CLIP builds it (conv towers keep their native size: the
    attention pool that depends on it is never run)."""
    from open_clip.model import _build_vision_tower

    try:
        with _quiet_library():
            return OpenClipTower(_build_vision_tower(embed_dim, vision_cfg, quick_gelu))
    except Exception as e:  # noqa: BLE001 - e.g. a timm trunk this timm does not have: one line
        raise ArtcapError(f"cannot build encoder {name} ({type(e).__name__}: {first_line(e)[:150]}); "
                          f"upgrade open_clip_torch and timm, or choose another model") from None


def _resize_timm_trunk(tower: OpenClipTower, name: str, image_size: int) -> None:
    """A timm trunk (e.g. a SigLIP ViT) that needs it resamples its position embeddings; conv trunks skip it."""
    try:
        with _quiet_library():
            tower.visual.set_input_size(image_size)
    except Exception as e:  # noqa: BLE001 - a size the trunk cannot take: one line
        raise ArtcapError(f"{name}: cannot encode {image_size} px images ({type(e).__name__}: {first_line(e)[:150]}); "
                          f"set image_size to its native size or choose another encoder") from None


def _tag_config(open_clip, name: str, model: str, tag: str | None) -> dict[str, Any]:
    """The tag's record (download location, mean/std, interpolation, quick_gelu); {} without a tag."""
    if tag is None:
        return {}
    found = open_clip.get_pretrained_cfg(model, tag)
    if not found:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none published"
        raise ArtcapError(f"open_clip has no pretrained weights {tag!r} for {model} (encoder {name}); tags: {tags}")
    return found


def _download(open_clip, name: str, tag_config: dict[str, Any]) -> str:
    """The tag's checkpoint through open_clip's download (cached by the Hugging Face hub); offline, one line."""
    hub = tag_config.get("hf_hub", "").rstrip("/")
    source = f"the Hugging Face repo {hub}" if hub else tag_config.get("url") or "its download address"
    try:
        with _quiet_library():
            path = open_clip.download_pretrained(tag_config)
    except Exception as e:  # noqa: BLE001 - offline, hub down, gated: one line, never random weights
        raise ArtcapError(
            f"could not download the weights of {name} from {source} ({type(e).__name__}); you may be offline — "
            f"copy its checkpoint (e.g. open_clip_model.safetensors) here and pass --encoder-weights FILE, "
            f"same encoder name"
        ) from None
    if not path:
        raise ArtcapError(f"open_clip gives no download for {name}; pass --encoder-weights FILE")
    return str(path)


def visual_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower's tensors as `visual.*`, from a full CLIP state dict (DDP's `module.` prefix
    dropped, the text tower left out) or from the tower's own state dict."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        return {k: v for k, v in state.items() if k.startswith("visual.")}
    return {f"visual.{k}": v for k, v in state.items()}


def _load_tower(tower: OpenClipTower, path: str, name: str, open_clip) -> None:
    state = visual_state(load_state_dict_file(path))
    try:
        open_clip.model.resize_pos_embed(state, tower)  # a checkpoint made for another image size
        result = tower.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError) as e:  # tensors of the wrong shapes: weights of another model
        raise ArtcapError(f"{path}: not weights of encoder {name} ({_mismatch(e)[:200]})") from None
    if result.missing_keys:
        raise ArtcapError(f"{path}: not weights of encoder {name} ({len(result.missing_keys)} missing tensors, "
                          f"e.g. {result.missing_keys[0]})")


def _mismatch(error: Exception) -> str:
    """The informative line of a failed load: torch's first line only says that loading failed."""
    lines = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
    return lines[0] if lines else first_line(error)


def _side(size) -> int:
    return int(size if isinstance(size, int) else size[-1])


def _as_encoder(name: str, tower: OpenClipTower, image_size: int, tag_config: dict[str, Any],
                weights_id: str) -> Encoder:
    """The tower with the normalisation its weights were trained with (the tag's, else OpenCLIP's default)."""
    from open_clip.transform import PreprocessCfg

    defaults = PreprocessCfg()
    mean, std = tag_config.get("mean", defaults.mean), tag_config.get("std", defaults.std)
    tower.eval()
    try:
        with torch.inference_mode():
            channels = tower.forward_features(torch.zeros(1, 3, image_size, image_size)).shape[1]
    except Exception as e:  # noqa: BLE001 - e.g. a size the patches do not divide: one line
        raise ArtcapError(f"{name}: cannot encode {image_size} px images ({type(e).__name__}: "
                          f"{first_line(e)[:150]}); set image_size to its native size or choose another encoder"
                          ) from None
    encoder = Encoder(name, tower, "forward_features", channels, image_size, mean, std, weights_id)
    encoder.resample = _RESAMPLE.get(tag_config.get("interpolation", defaults.interpolation), Image.BICUBIC)
    return encoder
