"""The Python API that the CLI and the web app are thin layers over:

    from artcap import Captioner
    captioner = Captioner.load()                      # the model shipped inside the package
    captioner.caption(["painting.jpg"], beam=3)        # -> ["a painting of a woman ..."]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .conditions import EMOTION, Conditions, get_condition
from .data import EMOTIONS
from .decode import Caption, DecodingConfig, best_of, generate, search_n_best, to_caption
from .encoders import Encoder
from .errors import ArtcapError
from .features import pooled_vectors
from .images import to_rgb_image
from .model_folder import ModelFolder, folder_of
from .onnx_backend import EncoderRunner, TorchRunner, create_runner

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
    return folder_of(path), None

ImageInput = Image.Image | np.ndarray | str | Path
"""A path (str or Path), a PIL image, or a uint8 numpy array (HxWx3, HxW or HxWx4): see images.to_rgb_image."""
Inputs = Sequence[ImageInput] | ImageInput | torch.Tensor
"""Images, a preprocessed uint8 batch [B, 3, H, W], or features (a float tensor [B, C] or [B, g*g, C])."""


class Captioner:
    """A thin facade over a `ModelFolder` and the image network that feeds it. Two entry points:
    `describe(inputs)` (everything artcap says about each image) and `caption(inputs)` (just the text).
    `inputs` are images (paths, PIL images, uint8 arrays, or a preprocessed uint8 batch [B, 3, H, W])
    or features (a float tensor from `encode` or a feature cache: [B, C], or [B, g*g, C] for attention)."""

    def __init__(self, folder: ModelFolder, encoder: Encoder, device: torch.device,
                 runner: EncoderRunner | None = None):
        self.folder, self.encoder, self.device = folder, encoder, device
        # What runs the image network: ONNX Runtime or torch (onnx_backend.create_runner); .name says which.
        self.runner = runner or TorchRunner(encoder, device)
        folder.decoder.to(device).eval()

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", backend: str = "auto") -> "Captioner":
        """Load a model: None (the default shipped model), a shipped model's name ("paper", "sat"), a
        model folder, a run folder (its best model), or "hf:OWNER/NAME[@REVISION]" from the Hugging Face
        Hub. `backend` runs the image network: "auto" (ONNX Runtime on the CPU when installed and the
        export checks out, else torch), "torch" or "onnx"."""
        path, source = resolve_model_path(path)
        folder = ModelFolder.load(path, source)
        dev = torch.device(device)
        # channels_last: the layout oneDNN's CPU convolutions (and cuDNN's) run fastest on
        encoder = folder.encoder_spec.create(path).to(dev, memory_format=torch.channels_last).eval()
        return cls(folder, encoder, dev, create_runner(encoder, backend, dev))

    # ---- what the folder holds ----
    config = property(lambda self: self.folder.config, doc="the model's config.json (ModelConfig)")
    decoder = property(lambda self: self.folder.decoder)
    vocab = property(lambda self: self.folder.vocab)
    emotion_head = property(lambda self: self.folder.emotion_head, doc="image -> the 9 emotions, or None")
    matcher = property(lambda self: self.folder.matcher, doc="the caption matcher that reranks the beam, or None")
    feature_spec = property(lambda self: self.folder.feature_spec, doc="what the decoder reads: pooled or a grid")

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @property
    def source(self) -> str:
        """What identifies these weights in a job's records: hf:OWNER/NAME@COMMIT for a Hub model, else the model id."""
        return self.folder.source or self.model_id

    @property
    def decoding(self) -> DecodingConfig:
        """The model's default decoding (config.json's "decoding")."""
        return self.config.decoding

    def resolve_decoding(self, decoding: DecodingConfig | None = None, **overrides) -> DecodingConfig:
        """`decoding` (default: the model's) with any non-None keyword settings changed, checked."""
        known = [f.name for f in fields(DecodingConfig)]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ArtcapError(f"unknown decoding setting {unknown[0]!r}; known: {', '.join(known)}")
        return (decoding or self.decoding).with_overrides(**overrides)

    @property
    def has_attention(self) -> bool:
        return bool(self.decoder.has_attention)

    @property
    def is_grounded(self) -> bool:
        """Does the decoder take an emotion (ArtEmis' emotion-grounded speaker)?"""
        return self.decoder.config.num_emotions > 0

    @property
    def conditions(self) -> list[str]:
        """The conditions the decoder reads, by name (artcap.conditions): "emotion" for a grounded model, ..."""
        return [slot.name for slot in self.decoder.config.condition_slots()]

    # ---- images -> features ----
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
        """Images (or an already preprocessed uint8 batch) -> the features the decoder reads:
        pooled [B, C], or a grid [B, g*g, C] for attention decoders."""
        batch = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        features = self.feature_spec.select(self.runner(batch)).to(self.device)
        if not bool(torch.isfinite(features).all()):
            raise ArtcapError(f"model {self.model_id}: its image network produced NaN or infinity, so no caption "
                              f"can be made; its encoder weights are damaged — re-copy the model folder")
        return features

    def _features(self, inputs: Inputs) -> torch.Tensor | None:
        """Features of `inputs` (see the class docstring); None for an empty list of images."""
        if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
            return inputs.to(self.device)
        if not isinstance(inputs, torch.Tensor):
            inputs = image_list(inputs)
            if not inputs:
                return None
        return self.encode(inputs)

    # ---- the two entry points ----
    @torch.inference_mode()
    def describe(self, inputs: Inputs, decoding: DecodingConfig | None = None, *,
                 emotion: str | Sequence[str] | None = None, with_attention: bool = False,
                 conditions: Mapping[str, str | Sequence[str]] | None = None, **overrides: Any) -> list[Description]:
        """Everything artcap says about each image: the caption, its words, (with_attention, attention
        decoders only) where each word looked, the emotion a grounded model captioned it under (`emotion`:
        a name, "auto" = the classifier's, or one per image) and the classifier's emotion distribution.
        `conditions` {name: value, or one per image}: the values of the model's other conditions.
        `decoding` (default: the model's) with any DecodingConfig field given as a keyword (beam=3) changed."""
        if with_attention and not self.has_attention:
            raise ArtcapError(f"model {self.model_id} ({self.decoder.kind} decoder) has no attention, so it cannot "
                              f"show where words come from; use an attention model, e.g. --model sat")
        decoding = self.resolve_decoding(decoding, **overrides)
        features = self._features(inputs)
        if features is None:
            return []
        scores = self._emotion_scores(features) if self.emotion_head is not None else None
        grounded_on = self._grounding(emotion, len(features), scores)
        asked = {EMOTION.name: grounded_on} if grounded_on else {}
        asked.update(self._other_conditions(conditions or {}, len(features)))
        ids = {name: get_condition(name).ids(values).to(self.device) for name, values in asked.items()}
        captions = self._generate(features, decoding, ids)
        return [Description(c.text, c.words, c.attention if with_attention else None,
                            grounded_on[i] if grounded_on else None,
                            _rounded_scores(scores[i]) if scores is not None else None)
                for i, c in enumerate(captions)]

    def caption(self, inputs: Inputs, decoding: DecodingConfig | None = None, *,
                emotion: str | Sequence[str] | None = None,
                conditions: Mapping[str, str | Sequence[str]] | None = None, **overrides: Any) -> list[str]:
        """One caption per image. Images: a list of paths, PIL images or uint8 arrays (HxWx3, HxW, or
        HxWx4 composited over white; see images.to_rgb_image); a single path or PIL image is one
        image (a list of one caption comes back). A bad image raises ImageLoadError naming it.
        beam=1 is greedy search; None uses the model's default. `emotion` (grounded models): one of the
        9 ArtEmis emotions to caption under, or "auto" (the default: the emotion classifier's choice).
        `conditions`: the values of the model's other conditions (see describe)."""
        return [d.caption for d in self.describe(inputs, decoding, emotion=emotion, conditions=conditions,
                                                 **overrides)]

    def emotions(self, inputs: Inputs) -> list[dict[str, float]]:
        """For each image, how people are likely to feel about it: {emotion: probability} over ArtEmis' 9."""
        features = self._features(inputs)
        return [] if features is None else [_rounded_scores(row) for row in self._emotion_scores(features)]

    # ---- the parts ----
    def _emotion_scores(self, features: torch.Tensor) -> np.ndarray:
        """[B, 9]: the emotion classifier's distribution for each image (EMOTIONS order)."""
        if self.emotion_head is None:
            raise ArtcapError(f"model {self.model_id} has no emotion classifier; use a model trained with "
                              f"emotion_head = true (the default model has one)")
        return self.emotion_head.predict(pooled_vectors(features))

    def _grounding(self, emotion: str | Sequence[str] | None, batch: int,
                   scores: np.ndarray | None) -> list[str] | None:
        """The emotion each caption is grounded on: the one asked for, or ("auto") the classifier's dominant one."""
        if not self.is_grounded:
            if emotion is not None:
                raise ArtcapError(f"model {self.model_id} is not emotion-grounded, so it cannot caption under an "
                                  f"emotion; drop --emotion or use a grounded model (the default model is)")
            return None
        names = ["auto" if emotion is None else emotion] * batch if emotion is None or isinstance(emotion, str) \
            else list(emotion)
        if len(names) != batch:
            raise ArtcapError(f"{len(names)} emotions given for {batch} images; give one, or one per image")
        names = [emotion_name(n) for n in names]
        if "auto" in names and scores is None:
            raise ArtcapError(f"model {self.model_id} has no emotion classifier to choose an emotion; pass one of: "
                              f"{', '.join(EMOTIONS)}")
        dominant = self.emotion_head.dominant(scores) if scores is not None else []
        return [EMOTIONS[int(dominant[i])] if n == "auto" else n for i, n in enumerate(names)]

    def _other_conditions(self, given: Mapping[str, str | Sequence[str]], batch: int) -> dict[str, list[str]]:
        """The values of the conditions other than the emotion, one per image, parsed the condition's way."""
        wanted = [name for name in self.conditions if name != EMOTION.name]
        unread = sorted(set(given) - set(wanted))
        if unread:
            raise ArtcapError(f"model {self.model_id} is not conditioned on {', '.join(unread)} (it reads: "
                              f"{', '.join(self.conditions) or 'no condition'}); leave {unread[0]} out"
                              + ("; the emotion has its own argument" if EMOTION.name in unread else ""))
        asked: dict[str, list[str]] = {}
        for name in wanted:
            condition = get_condition(name)
            if name not in given:
                raise ArtcapError(f"model {self.model_id} is conditioned on {name}: give conditions={{{name!r}: "
                                  f"VALUE}} with one of: {', '.join(condition.values)}")
            values = [given[name]] * batch if isinstance(given[name], str) else list(given[name])
            if len(values) != batch:
                raise ArtcapError(f"{len(values)} {name} values given for {batch} images; give one, or one per image")
            asked[name] = [condition.parse(v) for v in values]
        return asked

    def _generate(self, features: torch.Tensor, decoding: DecodingConfig, conditions: Conditions) -> list[Caption]:
        """The beam's best captions, or with `rerank` the ones the image-caption matcher prefers among them (with
        `coherent`, never a broken one over an unbroken one)."""
        if not decoding.rerank:
            return generate(self.decoder, features, self.vocab, decoding, conditions, with_attention=True)
        if self.matcher is None:
            raise ArtcapError(f"model {self.model_id} has no caption matcher to rerank with (train it with "
                              f"matcher = true); drop --rerank / set rerank = false")
        self.decoder.eval()
        n_best = search_n_best(self.decoder, features, self.vocab, decoding, conditions)
        matches = self.matcher.scores(pooled_vectors(features).cpu(), [[h.ids for h in hs] for hs in n_best])
        return [to_caption(best_of(hs, self.vocab, decoding, match), self.vocab) for hs, match in zip(n_best, matches)]


@dataclass
class Description:
    """What artcap says about one image."""

    caption: str
    words: list[str]
    attention: np.ndarray | None = None  # [len(words), g*g]: where each word looked (attention models only)
    emotion: str | None = None  # the emotion a grounded model captioned under; None for ungrounded models
    emotion_scores: dict[str, float] | None = None  # the emotion classifier's distribution (sums to 1)

    def attention_maps(self, grid_size: int) -> list[list[list[float]]] | None:
        """Each word's map as a grid_size x grid_size nested list (JSON-ready), rows summing with the rest to 1."""
        if self.attention is None:
            return None
        return self.attention.reshape(len(self.words), grid_size, grid_size).round(5).tolist()


def _rounded_scores(row: np.ndarray) -> dict[str, float]:
    """{emotion: probability} to 4 decimals: the last digits depend on how images were batched, and a resumed
    folder job must write the same records as an uninterrupted one."""
    return {e: round(float(p), 4) for e, p in zip(EMOTIONS, row)}


def emotion_name(text: str) -> str:
    """An emotion as users write it ("Awe", "something-else", "something else") -> its EMOTIONS spelling, or "auto"."""
    return EMOTION.parse(text)


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
