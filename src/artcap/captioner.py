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

from .checkpoint import load_model_dir, read_encoder_state
from .decode import generate
from .encoders import Encoder, create_encoder
from .errors import ArtcapError
from .images import to_rgb_image
from .model import MergeDecoder
from .text import Vocabulary

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"

ImageInput = Image.Image | np.ndarray | str | Path
"""A path (str or Path), a PIL image, or a uint8 numpy array (HxWx3, HxW or HxWx4): see images.to_rgb_image."""


class Captioner:
    def __init__(self, encoder: Encoder, decoder: MergeDecoder, vocab: Vocabulary, config: dict[str, Any],
                 device: torch.device):
        self.encoder, self.decoder, self.vocab, self.config, self.device = encoder, decoder, vocab, config, device

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu") -> "Captioner":
        """Load a model folder (a run folder's `model/` works too, as does the run folder itself);
        None loads the model shipped inside the package."""
        path = Path(path) if path is not None else DEFAULT_MODEL_DIR
        if not path.exists():
            raise ArtcapError(f"{path}: no such model folder")
        if (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
            path = path / "model"  # a run folder: use its best model
        decoder, vocab, config = load_model_dir(path)
        enc = config["encoder"]
        weights = enc["weights"]
        encoder = create_encoder(enc["name"], weights="random" if weights == "file" else weights,
                                 image_size=enc.get("image_size"))
        if weights == "file":
            encoder.model.load_state_dict(read_encoder_state(path))
        dev = torch.device(device)
        # channels_last: the layout oneDNN's CPU convolutions (and cuDNN's) run fastest on
        encoder = encoder.to(dev, memory_format=torch.channels_last).eval()
        return cls(encoder, decoder.to(dev).eval(), vocab, {**config, "path": str(path)}, dev)

    @property
    def model_id(self) -> str:
        return self.config.get("model_id", "artcap")

    @property
    def max_len(self) -> int:
        return int(self.config["max_len"])

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

    @torch.inference_mode()
    def encode(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        """Images (or an already preprocessed uint8 batch) -> pooled features [B, F]."""
        batch = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        return self.encoder(batch.to(self.device).contiguous(memory_format=torch.channels_last)).pooled

    @torch.inference_mode()
    def caption_features(self, features: torch.Tensor, beam: int | None = None, max_len: int | None = None,
                         no_repeat_ngram: int | None = None) -> list[str]:
        decoding = self.config.get("decoding", {})
        beam = beam if beam is not None else decoding.get("beam", 1)
        if beam < 1:
            raise ArtcapError(f"beam must be 1 or more, got {beam}")
        max_len = max_len if max_len is not None else self.max_len
        if max_len < 1:
            raise ArtcapError(f"max_len must be 1 or more, got {max_len}")
        return generate(self.decoder, features.to(self.device), self.vocab, max_len, beam,
                        decoding.get("length_alpha", 0.7),
                        no_repeat_ngram if no_repeat_ngram is not None else decoding.get("no_repeat_ngram", 0))

    def caption(self, images: Sequence[ImageInput] | torch.Tensor, beam: int | None = None,
                max_len: int | None = None, no_repeat_ngram: int | None = None) -> list[str]:
        """One caption per image. Images: a list of paths, PIL images or uint8 arrays (HxWx3, HxW, or
        HxWx4 composited over white; see images.to_rgb_image); a single path or PIL image is one
        image (a list of one caption comes back). A bad image raises ImageLoadError naming it.
        beam=1 is greedy search; None uses the model's default."""
        if not isinstance(images, torch.Tensor):
            images = image_list(images)
            if not images:
                return []
        return self.caption_features(self.encode(images), beam, max_len, no_repeat_ngram)


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
