"""Feature extraction speed per encoder: batched (with decoding in a worker) vs one image at a time.

    python benchmarks/bench_features.py [--images 64]
Prints images/s for each encoder next to its one-at-a-time baseline. Uses real paintings from
../shared/data/artemis-mini (required).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from artcap.encoders import create_encoder
from artcap.features import decoded_batches
from artcap.images import load_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "artemis-mini" / "wikiart"
ENCODERS = [("efficientnet-lite0", "imagenet", 224), ("efficientnet-lite0", "imagenet", 128),
            ("efficientnet-lite2", "imagenet", 260), ("xception", "random", 128)]


def one_at_a_time(encoder, paths) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            encoder(encoder.preprocess([load_image(p)]))
    return len(paths) / (time.perf_counter() - start)


def batched(encoder, paths, batch_size: int, workers: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for _, batch, _ in decoded_batches(paths, encoder, batch_size, workers):
            encoder(batch)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    paths = sorted(DATA.rglob("*.jpg"))[: args.images]
    print(f"{len(paths)} real paintings, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'encoder':34} {'one at a time':>14} {'batch 4, 1 worker':>18} {'batch 16, 1 worker':>19}")
    for name, weights, size in ENCODERS:
        encoder = create_encoder(name, weights=weights, image_size=size)
        one_at_a_time(encoder, paths[:4])  # warm-up
        base = one_at_a_time(encoder, paths)
        b4 = batched(encoder, paths, 4, 1)
        b16 = batched(encoder, paths, 16, 1)
        print(f"{encoder.key:34} {base:11.1f}/s {b4:15.1f}/s {b16:16.1f}/s")


if __name__ == "__main__":
    main()
