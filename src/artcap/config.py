"""Training configuration: one tree of small settings dataclasses, read from TOML, overridden with `--set`.

    [data]      captions, images, preset, ...        DataConfig
    [encoder]   name, weights, image_size, ...       EncoderConfig
    [decoder]   kind = "merge" | "sat" | ...         the kind's DecoderSettings subclass (decoders/)
    [optim]     objective, epochs, lr, ...           OptimConfig
    [decoding]  beam, max_len, ...                   decode.DecodingConfig (the model's decoding defaults)
    [emotion]   grounded, dim, in_output, head       EmotionConfig
    [scst]      samples, grounding_weight            ScstConfig
    [run]       out, init_from, seed, device, ...    RunConfig

Every field is declared once with `settings.setting` (type, default, range, help) in the dataclass that owns
it; a TOML table maps 1:1 to its dataclass and `--set table.field=value` reaches any field
(`--set decoder.kind=sat` picks that kind's dataclass). An unknown table or key, a wrong type or a value out
of range is one line naming the dotted field. Old flat configs (one key per line, no tables) are read
through `FLAT_KEYS` with one line on stderr saying how to convert them (`artcap config migrate`).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .data import SPLIT_SEED
from .decode import DecodingConfig
from .decoders import DecoderSettings, decoder_kinds, settings_class
from .errors import ArtcapError
from .io import atomic_write_text
from .settings import check, checked_value, field_type, setting, spec_of

MAX_SEED = 2**32 - 1  # numpy and torch take any seed up to here


def _text(value: str) -> bool:
    return bool(value.strip())


@dataclass
class DataConfig:
    captions: str = setting("", "ArtEmis CSV or Flickr8k captions.txt")
    images: str = setting("", "the image folder (WikiArt layout for ArtEmis)")
    preset: str = setting("paper", "caption preparation (artcap.data.prepare)", choices=("paper", "artemis"))
    skip_missing: bool = setting(False, "go on without bad rows / unreadable images instead of stopping")
    split_seed: int = setting(SPLIT_SEED, "seed of the paintings' train/val/test split", low=0, high=MAX_SEED)
    conditions: str = setting("", "further conditions the decoder reads besides the emotion, each from its column: "
                                  "registered names, comma-separated (artcap.conditions)")

    def __post_init__(self) -> None:
        check(self, prefix="data.")


@dataclass
class EncoderConfig:
    name: str = setting("efficientnet-lite0", "xception | efficientnet-lite0 | efficientnet-lite2 | timm:<name>",
                        check=_text, allowed="an encoder name (artcap.encoders.list_encoders())")
    weights: str = setting("imagenet", "imagenet | random | path to a state dict", check=_text,
                           allowed="imagenet, random or a file")
    image_size: int = setting(0, "input pixels a side; 0 = the encoder's default (paper: 128 for xception)",
                              off=0, low=32, high=2048)
    feature_cache: str = setting("", "feature cache folder; '' = $ARTCAP_CACHE/features, else "
                                     "~/.cache/artcap/features")
    feature_batch_size: int = setting(16, "images per feature-extraction batch", low=1, high=4096)
    num_workers: int = setting(1, "image-decoding processes", low=0, high=64)

    def __post_init__(self) -> None:
        check(self, prefix="encoder.")


@dataclass
class OptimConfig:
    objective: str = setting("xe", "xe (cross-entropy, teacher forcing) or scst (self-critical, CIDEr-D reward; "
                                   "needs run.init_from)", choices=("xe", "scst"))
    epochs: int = setting(10, "passes (or steps_per_epoch-step epochs) to train", low=1, high=100_000)
    batch_size: int = setting(64, "captions per step (summed over processes)", low=1, high=65_536)
    steps_per_epoch: int = setting(0, "steps per epoch; 0 = one pass over the training captions", low=0)
    lr: float = setting(1e-3, "Adam's learning rate", low=0, high=10, open_low=True)
    warmup_steps: int = setting(0, "linear warmup from 0 to lr over these steps", low=0)
    lr_schedule: str = setting("constant", "constant (the paper's Adam) or cosine (decay to min_lr by the last step)",
                               choices=("constant", "cosine"))
    min_lr: float = setting(0.0, "cosine: the learning rate at the last step", low=0, high=10)
    grad_clip: float = setting(0.0, "clip the gradient norm to this (0: off)", low=0, high=1e6)
    select_by: str = setting("val_loss", "which validation measure picks the exported model (cider_distinct: "
                                         "CIDEr-D among epochs whose val captions are >= 60% distinct)",
                             choices=("val_loss", "bleu4", "cider", "cider_distinct"))

    def __post_init__(self) -> None:
        check(self, prefix="optim.")


@dataclass
class EmotionConfig:
    grounded: bool = setting(False, "feed each caption's emotion to the decoder (ArtEmis' emotion-grounded speaker)")
    dim: int = setting(9, "grounded: width of the emotion features (ArtEmis: 9)", low=1, high=8192)
    in_output: bool = setting(False, "grounded: also feed the emotion to the word-choosing layer (decoders/)")
    head: bool = setting(False, "also train the image -> emotion classifier and ship it in the model folder")

    def __post_init__(self) -> None:
        check(self, prefix="emotion.")


@dataclass
class ScstConfig:
    samples: int = setting(5, "captions sampled per image; each one's baseline is the mean reward of the others",
                           low=2, high=64)
    grounding_weight: float = setting(0.0, "reward = CIDEr-D(own refs) - this x CIDEr-D(a random other "
                                           "painting's)", low=0, high=10)

    def __post_init__(self) -> None:
        check(self, prefix="scst.")


@dataclass
class RunConfig:
    out: str = setting("runs/run", "the run folder", check=_text, allowed="a folder path")
    init_from: str = setting("", "a model folder to start from (fine-tuning; scst needs one); '' = scratch")
    seed: int = setting(0, "weights, batches and dropout", low=0, high=MAX_SEED)
    device: str = setting("auto", "where to train", check=lambda v: bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v)),
                          allowed="auto, cpu, cuda, cuda:N or mps")
    amp: bool = setting(True, "bfloat16 autocast on CUDA; ignored on CPU")
    checkpoint_every: int = setting(0, "also checkpoint every N steps inside an epoch (0: only by time)", low=0)
    checkpoint_minutes: float = setting(5.0, "also checkpoint mid-epoch when this long has passed since the last one "
                                             "(0: off)", low=0, high=1e6)
    matcher: bool = setting(False, "also train the image-caption matcher that reranks the beam (artcap.rerank)")

    def __post_init__(self) -> None:
        check(self, prefix="run.")


# The tables of a config file, in the order a saved config lists them ("decoder" is the kind's own class).
SECTIONS: dict[str, type] = {"data": DataConfig, "encoder": EncoderConfig, "decoder": DecoderSettings,
                             "optim": OptimConfig, "decoding": DecodingConfig, "emotion": EmotionConfig,
                             "scst": ScstConfig, "run": RunConfig}


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    emotion: EmotionConfig = field(default_factory=EmotionConfig)
    scst: ScstConfig = field(default_factory=ScstConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # the dotted keys a file or --set gave: decoding.max_len only counts when given (else: the data's)
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ArtcapError(f"[{name}] must be a {cls.__name__}, got {getattr(self, name)!r}")
        if self.optim.objective == "scst" and not self.run.init_from:
            raise ArtcapError("optim.objective = scst fine-tunes a cross-entropy model: set run.init_from to its "
                              "model folder (e.g. --set run.init_from=runs/merge-xe/model)")

    def max_len(self, data_max_len: int) -> int:
        """The longest caption trained on and decoded: decoding.max_len when given, else the data's."""
        return self.decoding.max_len if "decoding.max_len" in self.given else data_max_len

    def replaced(self, values: Mapping[str, Any], source: str = "") -> "TrainConfig":
        """A copy with dotted settings changed (`{"optim.epochs": 3}`), checked like `--set`."""
        return build_config(_merge(_as_items(self), _items(values, source or "replaced", dotted=True)))

    def dotted(self) -> dict[str, Any]:
        """Every setting by its dotted name (`{"optim.lr": 0.001, ...}`); decoding.max_len only when given."""
        return {f"{table}.{key}": value for table, values in _as_items(self).items()
                for key, (value, _) in values.items()}

    def to_toml(self) -> str:
        blocks = []
        for name in SECTIONS:
            values = asdict(getattr(self, name))
            lines = [f"[{name}]"]
            for key, value in values.items():
                if name == "decoding" and key == "max_len" and "decoding.max_len" not in self.given:
                    lines.append("# max_len: not set, so the longest kept training caption")
                    continue
                lines.append(f"{key} = {_toml_value(value)}")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_toml())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # a JSON string is a TOML basic string, but for DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return repr(value)


# ---- old flat configs --------------------------------------------------------------------------------

# Every key of the flat config (before tables) and where it lives now.
FLAT_KEYS: dict[str, str] = {
    "data": "data.captions", "images": "data.images", "preset": "data.preset", "skip_missing": "data.skip_missing",
    "split_seed": "data.split_seed", "encoder": "encoder.name", "encoder_weights": "encoder.weights",
    "image_size": "encoder.image_size", "feature_cache": "encoder.feature_cache",
    "feature_batch_size": "encoder.feature_batch_size", "num_workers": "encoder.num_workers",
    "grid_size": "decoder.grid_size", "decoder": "decoder.kind", "embed_dim": "decoder.embed_dim",
    "hidden_dim": "decoder.hidden_dim", "dropout": "decoder.dropout", "emotion_grounded": "emotion.grounded",
    "emotion_dim": "emotion.dim", "emotion_in_output": "emotion.in_output", "emotion_head": "emotion.head",
    "matcher": "run.matcher", "epochs": "optim.epochs", "batch_size": "optim.batch_size",
    "steps_per_epoch": "optim.steps_per_epoch", "lr": "optim.lr", "warmup_steps": "optim.warmup_steps",
    "lr_schedule": "optim.lr_schedule", "min_lr": "optim.min_lr", "grad_clip": "optim.grad_clip",
    "init_from": "run.init_from", "select_by": "optim.select_by", "objective": "optim.objective",
    "scst_samples": "scst.samples", "grounding_weight": "scst.grounding_weight", "seed": "run.seed",
    "device": "run.device", "amp": "run.amp", "checkpoint_every": "run.checkpoint_every",
    "checkpoint_minutes": "run.checkpoint_minutes", "out": "run.out", "beam": "decoding.beam",
    "length_alpha": "decoding.length_alpha", "no_repeat_ngram": "decoding.no_repeat_ngram",
    "max_word_repeats": "decoding.max_word_repeats", "emotion_guidance": "decoding.emotion_guidance",
    "rerank": "decoding.rerank", "coherent": "decoding.coherent", "max_len": "decoding.max_len",
}
# Flat keys that every old config wrote but only grid-reading decoder kinds read: dropped for the others.
_FLAT_KIND_ONLY = {"grid_size"}


def flat_to_dotted(key: str, value: Any) -> str | None:
    """The dotted key of an old flat key (None: a "use the data's" 0 that the tree says by leaving it out)."""
    if key == "max_len" and value in (0, "0"):
        return None
    return FLAT_KEYS[key]


# ---- reading ---------------------------------------------------------------------------------------------

Items = dict[str, dict[str, tuple[Any, str]]]  # table -> key -> (value, where it came from)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults <- TOML file <- `table.key=value` overrides, each checked against its field's type and range.
    Flat keys (the old layout) are read too, with one line on stderr saying how to convert."""
    notes: list[str] = []
    items: Items = {}
    if path is not None:
        items = _items(read_toml(path), str(path), notes=notes)
    pairs = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ArtcapError(f"--set {item!r}: expected table.key=value, e.g. --set optim.epochs=2")
        pairs[key.strip()] = value
    items = _merge(items, _items(pairs, "--set", dotted=True, notes=notes))
    config = build_config(items)
    _say(notes)
    return config


def _say(notes: list[str]) -> None:
    """The migration note: one line on stderr, after the config has loaded (a refused one says only why)."""
    if notes:
        print(f"artcap: {'; '.join(notes)}", file=sys.stderr)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtcapError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArtcapError(f"{path}: cannot read the config ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ArtcapError(f"{path}: invalid TOML ({e})") from None


def config_from(values: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """A config from nested tables ({"data": {"captions": ...}}) or dotted keys ({"data.captions": ...})."""
    notes: list[str] = []
    config = build_config(_items(values, source, dotted=True, notes=notes))
    _say(notes)
    return config


def _items(raw: Mapping[str, Any], source: str, dotted: bool = False, notes: list[str] | None = None) -> Items:
    """Tables (or dotted keys, or old flat keys) -> {table: {key: (value, source)}}; unknown tables refused."""
    items: Items = {}
    flat = False
    for key, value in raw.items():
        table, dot, name = key.partition(".") if dotted else (key, "", "")
        if dot and table in SECTIONS:
            items.setdefault(table, {})[name] = (value, source)
        elif not dot and table in SECTIONS and isinstance(value, Mapping):
            for name, inner in value.items():
                items.setdefault(table, {})[name] = (inner, source)
        elif not dot and key in FLAT_KEYS:
            flat = True
            target = flat_to_dotted(key, value)
            if target is not None:
                table, _, name = target.partition(".")
                items.setdefault(table, {})[name] = (value, f"{source} (flat key {key})")
        elif not dot and table in SECTIONS:
            raise ArtcapError(f"{source}: {key} must be a [{key}] table, got {repr(value)[:40]}")
        else:
            what = "table" if dot or isinstance(value, Mapping) else "key (neither a table nor an old flat key)"
            raise ArtcapError(f"{source}: unknown {what} {table!r}; tables: {', '.join(SECTIONS)}")
    if flat and notes is not None:
        notes.append(f"{source} uses the old flat keys (read as tables; convert a file with "
                     f"`artcap config migrate OLD.toml > NEW.toml`, write --set as table.key=value)")
    return items


def _merge(base: Items, top: Items) -> Items:
    merged = {table: dict(values) for table, values in base.items()}
    for table, values in top.items():
        merged.setdefault(table, {}).update(values)
    return merged


def _as_items(config: TrainConfig) -> Items:
    items: Items = {}
    for name in SECTIONS:
        items[name] = {k: (v, "config") for k, v in asdict(getattr(config, name)).items()
                       if f"{name}.{k}" in config.given or (name, k) != ("decoding", "max_len")}
    return items


def build_config(items: Items) -> TrainConfig:
    """The checked tree from {table: {key: (value, source)}}: each value converted and range-checked where
    it is read, naming `table.key` and where it came from."""
    sections: dict[str, Any] = {}
    given = set()
    for name, cls in SECTIONS.items():
        values = dict(items.get(name, {}))
        if name == "decoder":
            cls = _decoder_class(values)
            _drop_no_effect(cls, values)
        what = f"decoder kind {values.get('kind', ('merge',))[0]!r}" if name == "decoder" else f"[{name}]"
        sections[name] = cls(**_checked(cls, name, values, what))
        given |= {f"{name}.{k}" for k in values}
    return TrainConfig(**sections, given=frozenset(given))


def _decoder_class(values: dict[str, tuple[Any, str]]) -> type:
    kind, source = values.get("kind", ("merge", "config"))
    if not isinstance(kind, str) or kind not in decoder_kinds():
        raise ArtcapError(f"{source}: decoder.kind must be one of {', '.join(decoder_kinds())}, got {kind!r}")
    return settings_class(kind)


def _drop_no_effect(cls: type, values: dict[str, tuple[Any, str]]) -> None:
    """Old flat configs wrote grid_size for every kind; it only ever did something for grid-reading ones."""
    own = {f.name for f in fields(cls)}
    for key in list(values):
        if key not in own and key in _FLAT_KIND_ONLY and values[key][1].endswith(f"(flat key {key})"):
            del values[key]


def _checked(cls: type, table: str, values: dict[str, tuple[Any, str]], what: str) -> dict[str, Any]:
    known = {f.name: f for f in fields(cls)}
    out = {}
    for key, (value, source) in values.items():
        if key not in known:
            raise ArtcapError(f"{source}: unknown key {table}.{key}; {what} keys: {', '.join(known)}")
        f = known[key]
        out[key] = checked_value(field_type(cls, f), spec_of(f), f"{table}.{key}", value, source)
    return out


def migrate_text(path: str | Path) -> str:
    """An old flat config file (or a nested one) as nested TOML; the file's comments are not carried."""
    raw = read_toml(path)
    config = build_config(_items(raw, str(path)))
    flat = [k for k, v in raw.items() if not isinstance(v, Mapping)]
    header = f"# {Path(path).name} in tables (artcap config migrate)\n\n" if flat else ""
    return header + config.to_toml()
