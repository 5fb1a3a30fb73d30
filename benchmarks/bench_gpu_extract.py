"""Feature extraction with JPEGs decoded on the CPU (Pillow, in DataLoader workers) against decoded on the GPU
(nvJPEG through torchvision.io.decode_jpeg, resized there): `FeatureCache.extract(device_decode=False/True)`.

    python benchmarks/bench_gpu_extract.py [--images 2000] [--size 1024x768] [--batch-size 128] [--rounds 2]

Self-contained: it generates its JPEGs (painting-like: smooth colour fields and noise, quality 90) in a
temporary folder, so no data set has to travel to the GPU machine. Prints one JSON line per measurement
(images/s, the two paths interleaved `--rounds` times) and the largest relative difference between the
two paths' pooled features. Without a GPU it says so and times both paths on the CPU (the device path then
runs torchvision's CPU decoder: a check that it works, not a speed-up).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from artcap.encoders import create_encoder
from artcap.features import FeatureCache
from artcap.gpu_decode import device_decoding_available


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def make_jpegs(folder: Path, count: int, width: int, height: int) -> list[Path]:
    paths = []
    for n in range(count):
        rng = np.random.default_rng(n)
        coarse = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
        noise = rng.normal(0, 4, (height, width, 3))  # brush texture, not white noise
        pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        path = folder / f"p{n:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not device_decoding_available(device):
        print("no CUDA device (or no torchvision): GPU decoding is not measured here; both paths run on the CPU",
              flush=True)
    width, height = map(int, args.size.lower().split("x"))
    encoder = create_encoder("efficientnet-lite0", image_size=224).to(device, memory_format=torch.channels_last)
    encoder.eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images, width, height)
        features: dict[bool, np.ndarray] = {}
        for round_ in range(args.rounds):
            for on_device in (False, True):
                cache = FeatureCache(Path(tmp) / f"cache-{round_}-{on_device}", encoder)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                failures = cache.extract(paths, batch_size=args.batch_size, num_workers=args.workers,
                                         progress=False, device_decode=on_device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                features[on_device] = cache.view(paths)[np.arange(len(paths))]
                emit(decode="GPU (nvJPEG)" if on_device and device.type == "cuda" else
                     ("CPU, tensor path" if on_device else "CPU, Pillow in workers"),
                     device=str(device), round=round_ + 1, images=len(paths), size=args.size,
                     batch=args.batch_size, workers=args.workers, failures=len(failures),
                     images_per_s=round(len(paths) / seconds, 1), load=round(os.getloadavg()[0], 2))
        a, b = features[False], features[True]
        relative = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
        emit(feature_difference="relative L2, pooled", max=round(float(relative.max()), 5),
             mean=round(float(relative.mean()), 5))


if __name__ == "__main__":
    main()
