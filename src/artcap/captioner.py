"""The Python API that the CLI and the web app are thin layers over:

    from artcap import Captioner
    captioner = Captioner.load()                      # the model shipped inside the package
    captioner.caption(["painting.jpg"], beam=3)        # -> ["a painting of a woman ..."]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_model_dir
from .decode import DecodingConfig, generate
from .encoders import Encoder, EncoderSpec
from .errors import ArtcapError
from .features import FeatureSpec
from .images import to_rgb_image
from .onnx_backend import EncoderRunner, TorchRunner, create_runner
from .text import Vocabulary

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "default"


def shipped_models() -> dict[str, Path]:
    """The models inside the package, by name (`--model NAME`): default, paper, sat, ..."""
    return {p.name: p for p in sorted(MODELS_DIR.iterdir()) if (p / "config.json").is_file()}


def resolve_model_path(spec: str | os.PathLike | None) -> tuple[Path, str | None]:
    """A model spec -> (local model folder, source): None is the default model; a shipped model's name,
    a model or run folder, or hf:OWNER/NAME[@REVISION] (downloaded once, then cached; its source is
    hf:OWNER/NAME@COMMIT so a job records exactly which weights it used)."""
    from .hub import HubModel, is_hub_spec, resolve_model_source

    if spec is None:
        return DEFAULT_MODEL_DIR, None
    if is_hub_spec(spec):
        path, commit = resolve_model_source(str(spec))
        return path, f"hf:{HubModel.parse(str(spec)).repo_id}@{commit}"
    path = Path(spec)
    if not path.exists() and str(spec) in shipped_models():
        return shipped_models()[str(spec)], None
    if not path.exists():
        raise ArtcapError(f"{path}: no such model folder; pass a model or run folder, a shipped model "
                          f"({', '.join(shipped_models())}) or hf:OWNER/NAME")
    if (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
        path = path / "model"  # a run folder: use its best model
    return path, None

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
        """Load a model: None (the default shipped model), a shipped model's name ("paper", "sat"), a
        model folder, a run folder (its best model), or "hf:OWNER/NAME[@REVISION]" from the Hugging Face
        Hub. `backend` runs the image network: "auto" (ONNX Runtime on the CPU when installed and the
        export checks out, else torch), "torch" or "onnx"."""
        path, source = resolve_model_path(path)
        decoder, vocab, config = load_model_dir(path)
        encoder = EncoderSpec.from_dict(config["encoder"]).create(path)
        dev = torch.device(device)
        # channels_last: the layout oneDNN's CPU convolutions (and cuDNN's) run fastest on
        encoder = encoder.to(dev, memory_format=torch.channels_last).eval()
        runner = create_runner(encoder, backend, dev)
        return cls(encoder, decoder.to(dev).eval(), vocab, {**config, "path": str(path), "source": source}, dev,
                   runner)

    @property
    def model_id(self) -> str:
        return self.config.get("model_id", "artcap")

    @property
    def source(self) -> str:
        """What identifies these weights in a job's records: hf:OWNER/NAME@COMMIT for a Hub model, else the model id."""
        return self.config.get("source") or self.model_id

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
    def describe_features(self, features: torch.Tensor, beam: int | None = None, max_len: int | None = None, *,
                          decoding: DecodingConfig | None = None, with_attention: bool = False) -> list[Description]:
        """Everything artcap says about each image, from its features ([B, C] or [B, g*g, C]): the caption,
        its words and (with_attention, attention decoders only) where each word looked."""
        if with_attention and not self.has_attention:
            raise ArtcapError(f"model {self.model_id} ({self.decoder.kind} decoder) has no attention, so it cannot "
                              f"show where words come from; use an attention model, e.g. --model sat")
        decoding = self.resolve_decoding(decoding, beam=beam, max_len=max_len)
        captions = generate(self.decoder, features.to(self.device), self.vocab, decoding,
                            with_attention=with_attention)
        if not with_attention:
            return [Description(text, text.split(), None) for text in captions]
        return [Description(c.text, c.words, c.attention) for c in captions]

    def caption_features(self, features: torch.Tensor, beam: int | None = None, max_len: int | None = None, *,
                         decoding: DecodingConfig | None = None) -> list[str]:
        """Captions from features. `decoding` (default: the model's) with `beam`/`max_len` changed."""
        return [d.caption for d in self.describe_features(features, beam, max_len, decoding=decoding)]

    def describe(self, images: Sequence[ImageInput] | ImageInput | torch.Tensor, beam: int | None = None,
                 max_len: int | None = None, *, decoding: DecodingConfig | None = None,
                 with_attention: bool = False) -> list[Description]:
        """`describe_features` of images (see `caption` for what images may be)."""
        if not isinstance(images, torch.Tensor):
            images = image_list(images)
            if not images:
                return []
        return self.describe_features(self.encode(images), beam, max_len, decoding=decoding,
                                      with_attention=with_attention)

    def caption(self, images: Sequence[ImageInput] | ImageInput | torch.Tensor, beam: int | None = None,
                max_len: int | None = None, *, decoding: DecodingConfig | None = None) -> list[str]:
        """One caption per image. Images: a list of paths, PIL images or uint8 arrays (HxWx3, HxW, or
        HxWx4 composited over white; see images.to_rgb_image); a single path or PIL image is one
        image (a list of one caption comes back). A bad image raises ImageLoadError naming it.
        beam=1 is greedy search; None uses the model's default."""
        return [d.caption for d in self.describe(images, beam, max_len, decoding=decoding)]

    def explain(self, images: Sequence[ImageInput] | ImageInput | torch.Tensor, beam: int | None = None,
                max_len: int | None = None, *, decoding: DecodingConfig | None = None) -> list[Description]:
        """Captions with where each word looked: `Description.attention[i]` is word i's map over the
        g x g grid (row-major, summing to 1). Only attention decoders can say this."""
        return self.describe(images, beam, max_len, decoding=decoding, with_attention=True)


@dataclass
class Description:
    """What artcap says about one image."""

    caption: str
    words: list[str]
    attention: np.ndarray | None = None  # [len(words), g*g]: where each word looked (attention models only)

    def attention_maps(self, grid_size: int) -> list[list[list[float]]] | None:
        """Each word's map as a grid_size x grid_size nested list (JSON-ready), rows summing with the rest to 1."""
        if self.attention is None:
            return None
        return self.attention.reshape(len(self.words), grid_size, grid_size).round(5).tolist()


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
