"""Stage 1b, corpus assembly: annotations + preset + cached image features, as training and evaluation see them.

    corpus = load_corpus(config)                     # reads the data, extracts (or reuses) features
    table = caption_table(corpus, "train", max_len)  # every caption of a split as padded ids + feature rows
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .config import TrainConfig
from .conditions import NO_VALUE, condition_names, get_condition
from .data import Annotation, CaptionData, prepare, read_annotations
from .encoders import EncoderSpec
from .errors import ArtcapError
from .features import DEFAULT_GRID_SIZE, FeatureCache, FeatureSpec, FeatureView, default_cache_dir

log = logging.getLogger("artcap")


@dataclass
class Corpus:
    """The data of a run: annotations as read, the prepared captions, and their image features."""

    annotations: list[Annotation]
    data: CaptionData
    features: FeatureView
    image_row: dict[str, int]  # image id -> row of `features`


@dataclass
class CaptionTable:
    """All captions of one split, ready for batching: nothing per caption lives in Python objects."""

    tokens: torch.Tensor  # [N, max_len + 2] word ids (<bos> ... <eos>, then <pad>)
    rows: np.ndarray  # [N] row of each caption's image in the corpus features
    # condition name -> [N] each caption's value id (conditions.NO_VALUE when it has none), for every registered
    # condition (artcap.conditions): reading them is cheap next to the tokens
    conditions: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.rows)


def feature_spec(config: TrainConfig) -> FeatureSpec:
    """The features a decoder kind reads: pooled vectors, or a grid for attention."""
    from .decoders import decoder_feature_kind

    kind = decoder_feature_kind(config.decoder.kind)
    return FeatureSpec(kind, getattr(config.decoder, "grid_size", DEFAULT_GRID_SIZE)) if kind == "grid" \
        else FeatureSpec(kind)


def load_corpus(config: TrainConfig, splits: dict[str, list[str]] | None = None, device: str | torch.device = "cpu",
                progress: bool = True, annotations: list[Annotation] | None = None,
                spec: FeatureSpec | None = None, backend: str = "auto") -> Corpus:
    """Read the annotations (unless given), prepare the preset, and extract (or reuse) every image's features
    (`backend` runs the image network: onnx_backend.create_runner)."""
    source, encoding = config.data, config.encoder
    if not source.captions or not source.images:
        raise ArtcapError("no data given: set [data] captions (CSV) and images (folder) in the config, or --data "
                          "and --images")
    if annotations is None:
        annotations = read_annotations(source.captions, source.images, skip_missing=source.skip_missing)
    data = prepare(annotations, source.preset, splits, seed=source.split_seed)
    from .onnx_backend import create_runner

    encoder = EncoderSpec.from_train_config(config).create().to(device)
    cache = FeatureCache(encoding.feature_cache or default_cache_dir(), encoder, spec or feature_spec(config),
                         runner=create_runner(encoder, backend, torch.device(device)))
    ids = sorted(data.paths)
    failures = cache.extract([data.paths[i] for i in ids], batch_size=encoding.feature_batch_size,
                             num_workers=encoding.num_workers, progress=progress)
    if failures:
        first = next(iter(failures.values()))
        summary = f"{len(failures)} image(s) could not be read (first: {first})"
        if not source.skip_missing:
            raise ArtcapError(f"{summary}; fix or remove them, or pass --skip-missing")
        log.warning("%s; skipped them (--skip-missing)", summary)
        ids = [i for i in ids if data.paths[i] not in failures]
        for i in set(data.paths) - set(ids):
            data.drop(i)
    return Corpus(annotations, data, cache.view([data.paths[i] for i in ids]), {i: n for n, i in enumerate(ids)})


def caption_table(corpus: Corpus, split: str, max_len: int) -> CaptionTable:
    """Every caption of a split as padded ids, with its image's feature row and its value of every registered
    condition. Written straight into numpy arrays: at the full ArtEmis' 386K training captions, a Python list
    per caption costs ~250 MB."""
    data = corpus.data
    registered = [get_condition(name) for name in condition_names()]
    ids = data.split_ids(split)
    count = sum(len(data.captions[i]) for i in ids)
    tokens = np.zeros((count, max_len + 2), np.int64)  # 0 is <pad>
    rows = np.empty(count, np.int64)
    values = np.full((len(registered), count), NO_VALUE, np.int64)
    n = 0
    for image_id in ids:
        for k, caption in enumerate(data.captions[image_id]):
            seq = data.vocab.encode(caption[:max_len])
            tokens[n, : len(seq)] = seq
            rows[n] = corpus.image_row[image_id]
            if image_id in data.sources:
                row = data.sources[image_id][k]
                values[:, n] = [condition.id_of(condition.read(row)) for condition in registered]
            n += 1
    conditions = {c.name: torch.from_numpy(values[j]) for j, c in enumerate(registered)}
    return CaptionTable(torch.from_numpy(tokens), rows, conditions)
