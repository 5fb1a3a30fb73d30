"""A model folder and its `config.json`: the one module that reads and writes them.

    config = ModelConfig.read(folder)          # typed and checked: one line naming the file and field
    config.write(folder)                       # atomically; write -> read gives an equal ModelConfig
    model = ModelFolder.load(folder)           # decoder, vocabulary, encoder spec, emotion head, matcher
    model.text_judge                           # the text -> emotion classifier (loaded when first asked for)

A folder holds `config.json`, `vocab.json` and `model.safetensors` (the decoder); `encoder.safetensors`
when the encoder's weights are the user's own; `emotion.safetensors`, `matcher.safetensors` and
`text_emotion.{json,safetensors}` when it was trained with them (docs/model-folder.md has the schema).

Everything a folder names is bounded before anything is allocated: every size in config.json has a
range (the sections below declare them with `settings.setting`), and each module is first built on
PyTorch's "meta" device (shapes only, no memory) and compared with the safetensors header, so a
config.json that asks for a terabyte, or weights of another shape, is one line. Weights holding NaN or
infinity are refused when read.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import __version__, settings
from .data import EMOTIONS, PRESETS
from .decode import MAX_CAPTION_WORDS, DecodingConfig
from .encoders import EncoderSpec
from .errors import ArtcapError, first_line
from .features import FEATURE_KINDS, FeatureSpec
from .io import atomic_write_json, read_tensors
from .decoders import DecoderConfig, create_decoder, decoder_feature_kind
from .settings import setting
from .text import Vocabulary

FORMAT = "artcap-model"
FORMAT_VERSION = 1
CONFIG_FILE, VOCAB_FILE = "config.json", "vocab.json"
DECODER_FILE, ENCODER_FILE = "model.safetensors", "encoder.safetensors"
EMOTION_FILE, MATCHER_FILE = "emotion.safetensors", "matcher.safetensors"

# The bounds on what a model folder may ask for. Generous for any model artcap trains (the shipped ones use
# 2,208-8,477 words, 256-wide layers, 128-260 px), far below what would exhaust a machine.
MAX_VOCAB = 1_000_000
MAX_WIDTH = 16_384  # any layer's width, and the image features' size
MAX_IMAGE_SIZE = 1024  # pixels a side: a batch of 32 larger images would take gigabytes of activations
MAX_EMOTIONS = 64
MAX_NAME = 200


def _file_name(value: str) -> bool:
    """A plain file name inside the folder: a model file never points outside its folder."""
    return 0 < len(value) <= MAX_NAME and value == os.path.basename(value) and value not in (".", "..")


def _short_text(value: str) -> bool:
    return 0 < len(value) <= MAX_NAME and value.isprintable()


def _encoder_name(value: str) -> bool:
    from .encoders import ENCODER_PREFIXES, list_encoders

    return value in list_encoders() or (value.startswith(ENCODER_PREFIXES) and _short_text(value))


@dataclass(frozen=True)
class EncoderSection:
    name: str = setting("efficientnet-lite0", "the image network (encoders.list_encoders())", check=_encoder_name,
                        allowed="an encoder artcap knows (efficientnet-lite0, efficientnet-lite2, xception, "
                                "timm:NAME, open_clip:MODEL[:TAG])")
    weights: str = setting("imagenet", "the encoder's weights; file: encoder.safetensors in the folder",
                           choices=("imagenet", "random", "file"))
    image_size: int = setting(0, "input pixels a side; 0: the encoder's native size", off=0, low=16,
                              high=MAX_IMAGE_SIZE)

    def __post_init__(self) -> None:
        settings.check(self, prefix="encoder.")

    @classmethod
    def of(cls, spec: EncoderSpec) -> "EncoderSection":
        return cls(spec.name, spec.weights, spec.image_size or 0)

    def spec(self) -> EncoderSpec:
        return EncoderSpec(self.name, self.weights, self.image_size or None)


@dataclass(frozen=True)
class FeaturesSection:
    kind: str = setting("pooled", "what the decoder reads: pooled vectors or a grid", choices=FEATURE_KINDS)
    grid_size: int = setting(7, "the grid's side, for attention decoders", low=1, high=32)

    def __post_init__(self) -> None:
        settings.check(self, prefix="features.")

    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.kind, self.grid_size)


@dataclass(frozen=True)
class DecoderBounds:
    """The sizes and numbers of config.json's decoder section, checked before `DecoderConfig` builds anything.
    DecoderConfig owns the decoder's settings; these are only the limits a model file may ask for (a field
    missing here, e.g. one of a new decoder kind, is left to DecoderConfig)."""

    vocab_size: int = setting(5, "words in the vocabulary", low=5, high=MAX_VOCAB)
    feature_dim: int = setting(1, "image features' size", low=1, high=MAX_WIDTH)
    embed_dim: int = setting(1, "word embedding size", low=1, high=MAX_WIDTH)
    hidden_dim: int = setting(1, "LSTM width", low=1, high=MAX_WIDTH)
    attention_dim: int = setting(1, "attention's hidden size", low=1, high=MAX_WIDTH)
    emotion_dim: int = setting(1, "emotion features' size", low=1, high=MAX_WIDTH)
    num_emotions: int = setting(0, "emotions the decoder is grounded on", low=0, high=MAX_EMOTIONS)
    dropout: float = setting(0.0, "dropout", low=0, high=0.99)
    alpha_c: float = setting(0.0, "attention regulariser weight", low=0, high=1000)
    kind: str = setting("merge", "the decoder kind", check=_short_text, allowed="a decoder kind")
    emotion_in_output: bool = setting(False, "emotion features also feed the output layer")

    def __post_init__(self) -> None:
        settings.check(self, prefix="decoder.")

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        known = {f.name for f in fields(cls)}
        cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class EmotionSection:
    """The image -> emotion head (emotion.py): its sizes; `training` is its training report (free-form)."""

    feature_dim: int = setting(1280, "image features' size", low=1, high=MAX_WIDTH)
    hidden_dim: int = setting(64, "0: a linear head", low=0, high=MAX_WIDTH)
    members: int = setting(1, "MLPs in the ensemble", low=1, high=64)
    file: str = setting(EMOTION_FILE, "its weights, in the folder", check=_file_name, allowed="a file name")

    def __post_init__(self) -> None:
        settings.check(self, prefix="emotion.")


@dataclass(frozen=True)
class MatcherSection:
    """The image-caption matcher (rerank.py): its sizes; `settings` records how it was trained (free-form)."""

    feature_dim: int = setting(1280, "image features' size", low=1, high=MAX_WIDTH)
    vocab_size: int = setting(5, "words it embeds", low=5, high=MAX_VOCAB)
    dim: int = setting(256, "the shared space", low=1, high=MAX_WIDTH)
    file: str = setting(MATCHER_FILE, "its weights, in the folder", check=_file_name, allowed="a file name")

    def __post_init__(self) -> None:
        settings.check(self, prefix="matcher.")


@dataclass(frozen=True)
class ModelConfig:
    """config.json, typed. `decoder` is `DecoderConfig.to_dict()` (its sizes bounded by DecoderBounds);
    `training`, `emotion_training` and `matcher_settings` are reports, kept as written."""

    encoder: EncoderSection
    decoder: dict[str, Any]
    max_len: int
    decoding: DecodingConfig
    features: FeaturesSection = field(default_factory=FeaturesSection)
    model_id: str = "artcap"
    preset: str = "paper"  # folders from before presets were recorded were trained with the paper's
    summary: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    emotion: EmotionSection | None = None
    emotion_training: dict[str, Any] = field(default_factory=dict)
    matcher: MatcherSection | None = None
    matcher_settings: dict[str, Any] = field(default_factory=dict)
    artcap_version: str = __version__

    def __post_init__(self) -> None:
        # a report belongs to its part: without the part there is no report (so write -> read is equal)
        if self.emotion is None:
            object.__setattr__(self, "emotion_training", {})
        if self.matcher is None:
            object.__setattr__(self, "matcher_settings", {})

    def decoder_config(self, source: str = CONFIG_FILE) -> DecoderConfig:
        return DecoderConfig.from_dict(dict(self.decoder), source)

    def with_emotion(self, section: EmotionSection, training: dict[str, Any]) -> "ModelConfig":
        return replace(self, emotion=section, emotion_training=training)

    def with_matcher(self, section: MatcherSection, matcher_settings: dict[str, Any]) -> "ModelConfig":
        return replace(self, matcher=section, matcher_settings=matcher_settings)

    # ---- files ----
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                               "artcap_version": self.artcap_version, "model_id": self.model_id,
                               "encoder": asdict(self.encoder), "features": asdict(self.features),
                               "preset": self.preset, "max_len": self.max_len, "decoding": self.decoding.to_dict(),
                               "training": self.training, "decoder": dict(self.decoder)}
        if self.emotion is not None:
            e = self.emotion
            out["emotion"] = {"file": e.file, "emotions": list(EMOTIONS), "feature_dim": e.feature_dim,
                              "hidden_dim": e.hidden_dim, "members": e.members, "training": self.emotion_training}
        if self.matcher is not None:
            m = self.matcher
            out["matcher"] = {"file": m.file, "feature_dim": m.feature_dim, "vocab_size": m.vocab_size,
                              "settings": {**self.matcher_settings, "dim": m.dim}}
        if self.summary:
            out["summary"] = self.summary
        return out

    def write(self, folder: str | Path) -> None:
        atomic_write_json(Path(folder) / CONFIG_FILE, self.to_dict())

    @classmethod
    def read(cls, folder: str | Path) -> "ModelConfig":
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise ArtcapError(f"{Path(folder)}: not a model folder (no config.json); pass a run folder's model/ or "
                              f"a model folder")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ArtcapError(f"{path}: not valid JSON ({first_line(e)}); the model folder is damaged — re-copy it "
                              f"or export it again from its run") from None
        except OSError as e:
            raise ArtcapError(f"{path}: cannot read it ({e.strerror}); check its permissions") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = CONFIG_FILE) -> "ModelConfig":
        """config.json's object -> a checked ModelConfig, or one line naming `source` and the field."""
        try:
            return _parse(cls, raw, source)
        except ArtcapError as e:
            text = str(e)
            raise ArtcapError(text if text.startswith(source) else f"{source}: {text}") from None
        except (TypeError, ValueError) as e:  # a section's constructor refused the values
            raise ArtcapError(f"{source}: {first_line(e)}; the model folder is damaged") from None


_TOP_KEYS = {"format", "format_version", "artcap_version", "model_id", "encoder", "features", "preset", "max_len",
             "decoding", "training", "decoder", "emotion", "matcher", "summary"}


def _parse(cls: type[ModelConfig], raw: Any, source: str) -> ModelConfig:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ArtcapError(f"{source}: not an artcap model config (no \"format\": \"{FORMAT}\")")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ArtcapError(f"{source}: model format version {raw.get('format_version')!r} is not supported by "
                          f"artcap {__version__} (format_version must be {FORMAT_VERSION}); upgrade artcap or retrain")
    _refuse_unknown(raw, _TOP_KEYS, "")
    max_len = _value(raw, "max_len", int, required=True)
    if not 1 <= max_len <= MAX_CAPTION_WORDS:
        raise ArtcapError(f"max_len must be from 1 to {MAX_CAPTION_WORDS}, got {max_len!r}")
    decoder = _mapping(raw, "decoder", required=True)
    for key in ("vocab_size", "feature_dim"):
        if key not in decoder:
            raise ArtcapError(f"key decoder.{key} is missing; the model folder is damaged")
    DecoderBounds.check(decoder)
    decoder = DecoderConfig.from_dict(dict(decoder), source).to_dict()  # the decoder's own checks; its defaults
    reads = decoder_feature_kind(decoder["kind"])
    features = _mapping(raw, "features") or {"kind": reads}
    if features.get("kind") != reads:
        raise ArtcapError(f"features.kind is {features.get('kind')!r} but a {decoder['kind']} decoder reads {reads} "
                          f"features; the model folder is damaged")
    emotion, emotion_training = _emotion_section(raw)
    matcher, matcher_settings = _matcher_section(raw)
    preset = _value(raw, "preset", str) or "paper"
    if preset not in PRESETS:
        raise ArtcapError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    encoder = _section(EncoderSection, _encoder_values(raw), "encoder", optional=("image_size",))
    return cls(encoder=encoder, decoder=decoder, max_len=max_len,
               decoding=DecodingConfig.from_dict({"max_len": max_len, **_mapping(raw, "decoding")}, source),
               features=_section(FeaturesSection, features, "features", optional=("grid_size",)),
               model_id=_value(raw, "model_id", str) or "artcap", preset=preset,
               summary=_value(raw, "summary", str) or "", training=_mapping(raw, "training"),
               emotion=emotion, emotion_training=emotion_training, matcher=matcher, matcher_settings=matcher_settings,
               artcap_version=_value(raw, "artcap_version", str) or "")


def _encoder_values(raw: dict) -> dict:
    values = dict(_mapping(raw, "encoder", required=True))
    if "image_size" in values and values["image_size"] is None:  # EncoderSpec's "the encoder's native size"
        values["image_size"] = 0
    return values


def _emotion_section(raw: dict) -> tuple[EmotionSection | None, dict]:
    values = _mapping(raw, "emotion")
    if "emotion" not in raw:
        return None, {}
    if values.get("emotions") != list(EMOTIONS):
        raise ArtcapError("emotion.emotions: not an emotion head of the 9 ArtEmis emotions; the model folder is "
                          "damaged — re-copy it or train the head again")
    training = _mapping(values, "training", where="emotion.")
    rest = {k: v for k, v in values.items() if k not in ("emotions", "training")}
    return _section(EmotionSection, rest, "emotion"), training


def _matcher_section(raw: dict) -> tuple[MatcherSection | None, dict]:
    values = _mapping(raw, "matcher")
    if "matcher" not in raw:
        return None, {}
    trained = _mapping(values, "settings", where="matcher.", required=True)
    rest = {k: v for k, v in values.items() if k != "settings"}
    if "dim" not in trained:
        raise ArtcapError("key matcher.settings.dim is missing; the model folder is damaged")
    section = _section(MatcherSection, {**rest, "dim": trained["dim"]}, "matcher")
    return section, {k: v for k, v in trained.items() if k != "dim"}


def _section(cls: type, values: dict, where: str, optional: tuple[str, ...] = ("file",)):
    """A checked section; every field but the `optional` ones must be there (a default would hide damage)."""
    _refuse_unknown(values, {f.name for f in fields(cls)}, where + ".")
    missing = [f.name for f in fields(cls) if f.name not in values and f.name not in optional]
    if missing:
        raise ArtcapError(f"key {where}.{missing[0]} is missing; the model folder is damaged — re-copy it or "
                          f"export it again from its run")
    return cls(**values)


def _refuse_unknown(values: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ArtcapError(f"unknown key(s) {', '.join(where + k for k in unknown)}; known: "
                          f"{', '.join(sorted(known))} — was the folder written by a newer artcap? upgrade artcap")


def _mapping(values: dict, key: str, where: str = "", required: bool = False) -> dict:
    value = values.get(key)
    if value is None and not required and key not in values:
        return {}
    if not isinstance(value, dict):
        raise ArtcapError(f"key {where}{key} is {'missing' if value is None else 'not an object'}; the model folder "
                          f"is damaged — re-copy it or export it again from its run")
    return value


def _value(values: dict, key: str, kind: type, required: bool = False) -> Any:
    value = values.get(key)
    if value is None and not required and key not in values:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ArtcapError(f"key {key} is missing or not a{'n' if kind is int else ''} {kind.__name__} "
                          f"(got {value!r}); the model folder is damaged — re-copy it or export it again from its "
                          f"run")
    return value


# ---- weights -------------------------------------------------------------------------------------------

def load_module(build: Callable[[], nn.Module], path: Path, fits: str) -> nn.Module:
    """`build()`'s module with the weights in `path`. The module is first built on the meta device (shapes, no
    memory) and compared with the file's header, so sizes that do not fit (or would not fit in memory) are
    one line before anything is allocated; `fits` says what the shapes come from (e.g. "config.json's decoder")."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    state = read_tensors(path, expected, fits)
    module = build()
    module.load_state_dict(state)
    return module.eval()


def folder_of(path: str | Path) -> Path:
    """A model folder as users name it: the folder itself, or a run folder (then its best model, `model/`)."""
    path = Path(path)
    if (path / "model" / CONFIG_FILE).is_file() and not (path / CONFIG_FILE).is_file():
        return path / "model"
    return path


def write_part(folder: str | Path, module: nn.Module, file: str, update: Callable[[ModelConfig], ModelConfig]) -> None:
    """A part's weights, then its section of config.json: `update` changes only that section of the config as read,
    so parts written in any order give the same folder."""
    from .io import save_tensors

    config = ModelConfig.read(folder)
    save_tensors(Path(folder) / file, module.state_dict())
    update(config).write(folder)


def load_part(folder: str | Path, section: Any, build: Callable[[Any], nn.Module], name: str) -> nn.Module | None:
    """The part a config.json section describes (`build(section)` with the weights in `section.file`), or None."""
    if section is None:
        return None
    return load_module(lambda: build(section), Path(folder) / section.file, f"config.json's {name} section")


@dataclass
class ModelFolder:
    """Everything a model folder holds, loaded and checked together (on the CPU)."""

    path: Path
    config: ModelConfig
    vocab: Vocabulary
    decoder: nn.Module
    emotion_head: nn.Module | None = None  # image -> the 9 emotions' distribution (emotion.EmotionHead)
    matcher: nn.Module | None = None  # the image-caption matcher that reranks the beam (rerank.CaptionMatcher)
    source: str | None = None  # hf:OWNER/NAME@COMMIT for a Hub model: what a job records

    @classmethod
    def load(cls, path: str | Path, source: str | None = None) -> "ModelFolder":
        from .emotion import load_emotion_head
        from .rerank import load_matcher

        path = Path(path)
        config = ModelConfig.read(path)
        _check_parts_agree(config, path / CONFIG_FILE)
        return cls(path, config, *load_decoder(path, config), load_emotion_head(path, config),
                   load_matcher(path, config), source)

    @property
    def encoder_spec(self) -> EncoderSpec:
        return self.config.encoder.spec()

    @property
    def feature_spec(self) -> FeatureSpec:
        return self.config.features.spec()

    @cached_property
    def text_judge(self):
        """The folder's text -> emotion classifier (text_emotion.TextEmotionClassifier), or None; loaded when
        first asked for (it needs scikit-learn, which captioning does not)."""
        from .text_emotion import VOCAB_FILE as JUDGE_FILE, TextEmotionClassifier

        return TextEmotionClassifier.load(self.path) if (self.path / JUDGE_FILE).is_file() else None


def _check_parts_agree(config: ModelConfig, source: Path) -> None:
    """The emotion head and the matcher read the decoder's image features (and the matcher its words)."""
    features, words = config.decoder["feature_dim"], config.decoder["vocab_size"]
    pairs = [("emotion.feature_dim", config.emotion and config.emotion.feature_dim, features),
             ("matcher.feature_dim", config.matcher and config.matcher.feature_dim, features),
             ("matcher.vocab_size", config.matcher and config.matcher.vocab_size, words)]
    for name, value, expected in pairs:
        if value is not None and value != expected:
            raise ArtcapError(f"{source}: {name} is {value} but the decoder's is {expected}; the parts of the model "
                              f"folder come from different runs — re-copy it")
    if config.decoding.rerank and config.matcher is None:
        raise ArtcapError(f"{source}: decoding.rerank is true but there is no matcher section to rerank with; set "
                          f"it to false or re-copy the model folder")


def load_decoder(path: str | Path, config: ModelConfig | None = None) -> tuple[Vocabulary, nn.Module]:
    """A model folder's vocabulary and decoder (in eval mode), checked against each other and config.json."""
    path = Path(path)
    config = config or ModelConfig.read(path)
    decoder_config = config.decoder_config(str(path / CONFIG_FILE))
    vocab = Vocabulary.load(path / VOCAB_FILE)
    if decoder_config.vocab_size != len(vocab):
        raise ArtcapError(f"{path / VOCAB_FILE}: has {len(vocab)} words but config.json's decoder.vocab_size is "
                          f"{decoder_config.vocab_size}; re-copy the model folder")
    decoder = load_module(lambda: create_decoder(decoder_config), path / DECODER_FILE, "config.json's decoder")
    _check_first_word(decoder, config, path / DECODER_FILE)
    return vocab, decoder


@torch.inference_mode()
def _check_first_word(decoder: nn.Module, config: ModelConfig, path: Path) -> None:
    """Finite weights can still overflow (a weight of 1e30): one step on a plain input must give finite scores."""
    dim = decoder.config.feature_dim
    shape = (1, dim) if decoder.feature_kind == "pooled" else (1, config.features.grid_size ** 2, dim)
    conditions = {slot.name: torch.zeros(1, dtype=torch.long) for slot in decoder.config.condition_slots()}
    memory = decoder.init_memory(torch.ones(shape), conditions)
    logits, _, _ = decoder.step(memory, torch.full((1,), Vocabulary.bos_id, dtype=torch.long), None)
    if not bool(torch.isfinite(logits).all()):
        raise ArtcapError(f"{path}: the decoder's word scores come out NaN or infinite, so it cannot produce a "
                          f"caption; the weights are damaged (or training diverged) — re-copy the model folder or "
                          f"retrain")


def save_model_folder(path: str | Path, config: ModelConfig, decoder: nn.Module, vocab: Vocabulary,
                      encoder_state: dict[str, torch.Tensor] | None = None) -> None:
    """Write a model folder's decoder, vocabulary, own encoder weights and config.json (last)."""
    from .io import save_tensors

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / DECODER_FILE, decoder.state_dict())
    if encoder_state is not None:
        save_tensors(path / ENCODER_FILE, encoder_state)
    vocab.save(path / VOCAB_FILE)
    config.write(path)
