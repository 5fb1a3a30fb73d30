"""The Python API that the CLI and the web app are thin layers over:

    from artcap import Captioner
    captioner = Captioner.load()                      # the model shipped inside the package
    captioner.caption(["painting.jpg"], beam=3)        # -> ["a painting of a woman ..."]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_model_dir
from .decode import Caption, DecodingConfig, generate
from .encoders import Encoder, EncoderSpec
from .errors import ArtcapError
from .features import FeatureSpec
from .images import to_rgb_image
from .onnx_backend import EncoderRunner, TorchRunner, create_runner
from .text import Vocabulary

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"

ImageInput = Image.Image | np.ndarray | str | Path
"""A path (str or Path), a PIL image, or a uint8 numpy array (HxWx3, HxW or HxWx4): see images.to_rgb_image."""


class Captioner:
    def __init__(self, encoder: Encoder, decoder: torch.nn.Module, vocab: Vocabulary, config: dict[str, Any],
                 device: torch.device, runner: EncoderRunner | None = None):
        self.encoder, self.decoder, self.vocab, self.config, self.device = encoder, decoder, vocab, config, device
        # What runs the image network: ONNX Runtime or torch (onnx_backend.create_runner); .name says which.
        self.runner = runner or TorchRunner(encoder, device)
        # What the decoder reads: pooled vectors, or a fixed grid for attention (older folders: pooled).
        self.feature_spec = FeatureSpec(**config.get("features", {"kind": decoder.feature_kind}))

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", backend: str = "auto") -> "Captioner":
        """Load a model folder (a run folder's `model/` works too, as does the run folder itself);
        None loads the model shipped inside the package. `backend` runs the image network: "auto"
        (ONNX Runtime on the CPU when installed and the export checks out, else torch), "torch" or "onnx"."""
        path = Path(path) if path is not None else DEFAULT_MODEL_DIR
        if not path.exists():
            raise ArtcapError(f"{path}: no such model folder")
        if (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
            path = path / "model"  # a run folder: use its best model
        decoder, vocab, config = load_model_dir(path)
        encoder = EncoderSpec.from_dict(config["encoder"]).create(path)
        dev = torch.device(device)
        # channels_last: the layout oneDNN's CPU convolutions (and cuDNN's) run fastest on
        encoder = encoder.to(dev, memory_format=torch.channels_last).eval()
        runner = create_runner(encoder, backend, dev)
        return cls(encoder, decoder.to(dev).eval(), vocab, {**config, "path": str(path)}, dev, runner)

    @property
    def model_id(self) -> str:
        return self.config.get("model_id", "artcap")

    @property
    def decoding(self) -> DecodingConfig:
        """The model's default decoding (config.json's "decoding"; older folders lack max_len)."""
        saved = self.config.get("decoding", {})
        return DecodingConfig.from_dict({"max_len": int(self.config["max_len"]), **saved},
                                        f"{self.config.get('path', 'model')}/config.json")

    def resolve_decoding(self, decoding: DecodingConfig | None = None, **overrides) -> DecodingConfig:
        """`decoding` (default: the model's) with any non-None keyword settings changed, checked."""
        return (decoding or self.decoding).with_overrides(**overrides)

    def preprocess(self, images: Sequence[ImageInput] | ImageInput) -> torch.Tensor:
        """Normalise every image the one way files are (images.to_rgb_image: paths, PIL images and
        arrays alike, so the same pixels give the same caption), resize and stack into the uint8
        batch the encoder reads. A bad image raises ImageLoadError naming it (path or images[i])."""
        size = self.encoder.image_size
        images = image_list(images)
        if not images:
            raise ArtcapError("no images given; pass a list of paths, PIL images or uint8 arrays")
        arrays = [self.encoder.to_array(to_rgb_image(image, name=_image_label(i, image), min_size=size))
                  for i, image in enumerate(images)]
        return self.encoder.preprocess(arrays)

    @property
    def has_attention(self) -> bool:
        return self.feature_spec.kind == "grid"

    @torch.inference_mode()
    def encode(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        """Images (or an already preprocessed uint8 batch) -> the features the decoder reads:
        pooled [B, C], or a grid [B, g*g, C] for attention decoders."""
        batch = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        return self.feature_spec.select(self.runner(batch)).to(self.device)

    @torch.inference_mode()
    def caption_features(self, features: torch.Tensor, beam: int | None = None, max_len: int | None = None, *,
                         decoding: DecodingConfig | None = None) -> list[str]:
        """Captions from features [B, F]. `decoding` (default: the model's) with `beam`/`max_len` changed."""
        decoding = self.resolve_decoding(decoding, beam=beam, max_len=max_len)
        return generate(self.decoder, features.to(self.device), self.vocab, decoding)

    def caption(self, images: Sequence[ImageInput] | torch.Tensor, beam: int | None = None,
                max_len: int | None = None, *, decoding: DecodingConfig | None = None) -> list[str]:
        """One caption per image. Images: a list of paths, PIL images or uint8 arrays (HxWx3, HxW, or
        HxWx4 composited over white; see images.to_rgb_image); a single path or PIL image is one
        image (a list of one caption comes back). A bad image raises ImageLoadError naming it.
        beam=1 is greedy search; None uses the model's default."""
        if not isinstance(images, torch.Tensor):
            images = image_list(images)
            if not images:
                return []
        return self.caption_features(self.encode(images), beam, max_len, decoding=decoding)

    @torch.inference_mode()
    def explain(self, images: Sequence[ImageInput] | torch.Tensor, beam: int | None = None,
                max_len: int | None = None, *, decoding: DecodingConfig | None = None) -> list[Caption]:
        """Captions with where each word looked: `Caption.attention[i]` is word i's map over the
        g x g grid (row-major, summing to 1). Only attention decoders can say this."""
        if not self.has_attention:
            raise ArtcapError(f"model {self.model_id} ({self.decoder.kind} decoder) has no attention, so it cannot show "
                              f"where words come from; use an attention model, e.g. --model sat")
        if not isinstance(images, torch.Tensor):
            images = image_list(images)
            if not images:
                return []
        decoding = self.resolve_decoding(decoding, beam=beam, max_len=max_len)
        return generate(self.decoder, self.encode(images), self.vocab, decoding, with_attention=True)


def image_list(images: Sequence[ImageInput] | ImageInput) -> list[ImageInput]:
    """The images of a call as a list: a single path, bytes or PIL image is one image (not a
    sequence of characters); a bare array is refused, as it could be one image or a batch."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        raise ArtcapError(
            f"got one numpy array of shape {'x'.join(map(str, images.shape))}: pass a list of images, "
            "e.g. [array] for one HxWx3 image, or list(batch) for a batch"
        )
    try:
        return list(images)
    except TypeError:
        raise ArtcapError(
            f"cannot caption a {type(images).__name__}; pass a list of paths, PIL images or uint8 arrays"
        ) from None


def _image_label(index: int, image: ImageInput) -> str | None:
    """How messages name an image: its path (load_image's default) or its place in the list."""
    return None if isinstance(image, (str, os.PathLike)) else f"images[{index}]"
