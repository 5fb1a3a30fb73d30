"""Captioning many images: decoding in background workers overlaps inference, one bad file never
stops the others."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .captioner import Captioner
from .features import decoded_batches


@dataclass
class CaptionResult:
    path: Path
    caption: str | None  # None when the image could not be read
    error: str | None = None


def caption_paths(captioner: Captioner, paths: Sequence[Path], *, batch_size: int = 8, num_workers: int = 1,
                  beam: int | None = None, max_len: int | None = None) -> Iterator[CaptionResult]:
    """Yield one result per path, in order."""
    with torch.inference_mode():
        for indices, batch, errors in decoded_batches(paths, captioner.encoder, batch_size, num_workers):
            captions = captioner.caption(batch, beam=beam, max_len=max_len) if batch is not None else []
            by_index = dict(zip(indices, captions))
            for i in sorted([*indices, *errors]):
                if i in errors:
                    yield CaptionResult(paths[i], None, errors[i])
                else:
                    yield CaptionResult(paths[i], by_index[i])
