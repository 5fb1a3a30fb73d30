"""Captioning image files in batches: decoding in background workers overlaps inference, and one bad
file never stops the others.

    for result in caption_paths(captioner, paths, beam=3):
        print(result.path, result.caption or result.error)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .captioner import Captioner, Description
from .decode import DecodingConfig
from .errors import ArtcapError
from .features import encoded_batches

# Chosen by measurement (benchmarks/bench_caption.py): small batches keep the CNN's activations in
# cache. A decoding process overlaps decoding with inference, which pays once there are cores to
# spare; on 2 cores torch already uses both and a worker only competes (44-50 img/s without one,
# 33-42 with one, on 224-500 px images).
DEFAULT_BATCH_SIZE = 2
DEFAULT_NUM_WORKERS = 0 if (os.cpu_count() or 1) <= 2 else min(4, (os.cpu_count() or 1) // 2)
DEFAULT_DECODE_BATCH_SIZE = 32
OVERLAP_AHEAD = DEFAULT_DECODE_BATCH_SIZE  # CNN batches the background thread may encode ahead of the decoder


@dataclass
class CaptionResult:
    path: Path
    description: Description | None  # None when the image could not be read
    error: str | None = None

    @property
    def caption(self) -> str | None:
        return self.description.caption if self.description else None


def caption_paths(captioner: Captioner, paths: Sequence[Path], *, batch_size: int = DEFAULT_BATCH_SIZE,
                  num_workers: int = DEFAULT_NUM_WORKERS, decode_batch_size: int = DEFAULT_DECODE_BATCH_SIZE,
                  decoding: DecodingConfig | None = None, emotion: str | None = None,
                  with_attention: bool = False, overlap: bool = True, **overrides: Any) -> Iterator[CaptionResult]:
    """Yield one result per path, in the order of `paths`, captioned with `decoding` (default: the
    model's) with any DecodingConfig field given as a keyword changed, under `emotion` (grounded models; None = the model's "auto");
    `with_attention`: with each word's attention map.

    The CNN runs on `batch_size` images at a time (small batches stay in cache and are fastest on a
    CPU); their features are pooled until `decode_batch_size` images are waiting, then captioned
    together (each decoding step reads the whole vocabulary projection, so it pays to share it).
    `overlap`: the CNN runs in a background thread, ahead of decoding (False: in this thread, one after
    the other; the captions are the same either way).
    """
    if batch_size < 1:
        raise ArtcapError(f"batch size must be 1 or more, got {batch_size}")
    if decode_batch_size < 1:
        raise ArtcapError(f"decode batch size must be 1 or more, got {decode_batch_size}")
    if num_workers < 0:
        raise ArtcapError(f"number of workers must be 0 or more, got {num_workers}")
    decoding = captioner.resolve_decoding(decoding, **overrides)
    if not paths:
        return
    pending: list[tuple[int, torch.Tensor | str]] = []  # (index, features [F] or error), in index order
    waiting = 0  # features in `pending`

    def flush() -> Iterator[CaptionResult]:
        features = [f for _, f in pending if isinstance(f, torch.Tensor)]
        captions = iter(captioner.describe(torch.stack(features), decoding, emotion=emotion,
                                           with_attention=with_attention) if features else [])
        for i, item in pending:
            yield CaptionResult(paths[i], None, item) if isinstance(item, str) else CaptionResult(paths[i], next(captions))
        pending.clear()

    with torch.inference_mode():
        # The DataLoader keeps batches in order and each batch is handled in index order, so the
        # results come out in exactly the order of `paths` (a resumed job depends on it).
        # The image network runs ahead in a background thread while this one decodes captions
        # (features.encoded_batches; `overlap` False: one after the other, in this thread).
        for indices, pooled, errors in encoded_batches(paths, captioner.encoder, captioner.encode, batch_size,
                                                       num_workers, ahead=OVERLAP_AHEAD if overlap else 0):
            features = dict(zip(indices, pooled)) if pooled is not None else {}
            for i in sorted([*indices, *errors]):
                pending.append((i, errors[i] if i in errors else features[i]))
            waiting += len(features)
            if waiting >= decode_batch_size:
                yield from flush()
                waiting = 0
        yield from flush()
