"""GPU figures, one prepared run (speed and scale). Prints one JSON line per measurement.

    python benchmarks/bench_gpu.py [--quick] [--out DIR]

1. Feature extraction images/s: EfficientNet-Lite0 at 224 px through artcap's FeatureCache (real JPEG
   decoding in DataLoader workers, pooled and 7x7 grid), next to the encoder alone on a resident batch
   (fp32 and bf16 autocast).
2. Decoder training tokens/s, merge and SAT, fp32 vs bf16 autocast, at batch 64 and 512, with the
   ArtEmis preset's shape (vocabulary 2,208, 30 words, 7x7x1280 grid).
3. The real `artcap train` under torchrun with NCCL on the GPUs present, merge and SAT, bf16 autocast,
   on a synthetic ArtEmis-format corpus (random captions over a small vocabulary, generated JPEGs):
   the end-to-end path, its tokens/s from history.json, and that it exports a model that captions.
Everything is synthetic (no data set travels to the GPU machine); on a CPU use --quick to check it runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from artcap.data import EMOTIONS
from artcap.encoders import create_encoder
from artcap.features import FeatureCache, FeatureSpec
from artcap.decoders import DecoderConfig, caption_loss, create_decoder

WORDS = ("the colors make me feel calm and happy because sky water woman man dark light painting looks like "
         "she he is in a of with bright sad tree house red blue green yellow face eyes").split()


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def make_corpus(folder: Path, paintings: int, seed: int = 0) -> Path:
    """An ArtEmis-format CSV with 5 random utterances per painting, and one generated JPEG per painting."""
    rng = random.Random(seed)
    (folder / "wikiart" / "Synthetic").mkdir(parents=True, exist_ok=True)
    with open(folder / "artemis.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["art_style", "painting", "emotion", "utterance", "repetition"])
        for n in range(paintings):
            pixels = np.random.default_rng(n).integers(0, 255, (48, 48, 3), dtype=np.uint8)
            image = Image.fromarray(pixels).resize((320, 320), Image.BICUBIC).filter(ImageFilter.GaussianBlur(3))
            image.save(folder / "wikiart" / "Synthetic" / f"p{n:05d}.jpg", quality=90)
            for _ in range(5):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20)))
                writer.writerow(["Synthetic", f"p{n:05d}", rng.choice(EMOTIONS), text, 5])
    return folder


def bench_extraction(corpus: Path, device: torch.device, quick: bool) -> None:
    encoder = create_encoder("efficientnet-lite0", image_size=224).to(device, memory_format=torch.channels_last)
    batch = torch.randint(0, 255, (128 if not quick else 8, 3, 224, 224), dtype=torch.uint8, device=device)
    for amp in (False, True):
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            encoder(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, reps = time.perf_counter(), 3 if quick else 20
            for _ in range(reps):
                encoder(batch.contiguous(memory_format=torch.channels_last))
            if device.type == "cuda":
                torch.cuda.synchronize()
        emit(stage="encoder alone", amp=amp, batch=len(batch),
             images_per_s=round(reps * len(batch) / (time.perf_counter() - start), 1))
    paths = sorted((corpus / "wikiart" / "Synthetic").glob("*.jpg"))
    for kind in ("pooled", "grid"):
        with tempfile.TemporaryDirectory() as cache_dir:
            cache = FeatureCache(cache_dir, encoder, FeatureSpec(kind, 7))
            start = time.perf_counter()
            cache.extract(paths, batch_size=128, num_workers=min(8, os.cpu_count() or 1), progress=False)
            emit(stage="FeatureCache.extract (JPEG decode in workers)", kind=kind, images=len(paths),
                 images_per_s=round(len(paths) / (time.perf_counter() - start), 1))


def bench_decoders(device: torch.device, quick: bool) -> None:
    vocab, length, grid, channels = 2208, 30, 49, 1280
    for kind in ("merge", "sat"):
        for batch in ((8,) if quick else (64, 512)):
            for amp in (False, True):
                torch.manual_seed(0)
                model = create_decoder(DecoderConfig(vocab, channels, kind=kind)).to(device)
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
                shape = (batch, channels) if model.feature_kind == "pooled" else (batch, grid, channels)
                features = torch.randn(shape, device=device)
                tokens = torch.randint(4, vocab, (batch, length + 2), device=device)
                tokens[:, 0], tokens[:, -1] = 1, 2
                steps, done = (2 if quick else 30), 0
                for step in range(steps + 3):
                    if step == 3:  # after warm-up
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        start, done = time.perf_counter(), 0
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        loss, n = caption_loss(model, features, tokens)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    done += n
                if device.type == "cuda":
                    torch.cuda.synchronize()
                emit(stage="decoder training step", decoder=kind, batch=batch, amp=amp,
                     tokens_per_s=round(done / (time.perf_counter() - start)))


def bench_torchrun(corpus: Path, out: Path, quick: bool) -> None:
    torchrun = shutil.which("torchrun") or shutil.which("torchrun", path=os.path.dirname(sys.executable))
    gpus = max(1, torch.cuda.device_count())
    for kind in ("merge", "sat"):
        run = out / f"run-{kind}"
        shutil.rmtree(run, ignore_errors=True)
        command = [torchrun, "--nproc-per-node", str(gpus), "-m", "artcap", "-q", "train",
                   "--data", str(corpus / "artemis.csv"), "--images", str(corpus / "wikiart"),
                   "--cache", str(out / "cache"), "--set", f"out={run}", "--set", f"decoder={kind}",
                   "--set", "preset=artemis", "--set", f"epochs={1 if quick else 3}", "--set", "batch_size=128",
                   "--set", f"device={'cuda' if torch.cuda.is_available() else 'cpu'}", "--set", "num_workers=4"]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            emit(stage="torchrun train", decoder=kind, ok=False, error=result.stderr[-1500:])
            continue
        history = json.loads((run / "history.json").read_text())
        from artcap import Captioner

        caption = Captioner.load(run, backend="torch").caption(
            sorted((corpus / "wikiart" / "Synthetic").glob("*.jpg"))[:1])[0]
        emit(stage="torchrun train", decoder=kind, ok=True, processes=gpus,
             backend="nccl" if torch.cuda.is_available() else "gloo", seconds=round(seconds, 1),
             tokens_per_s=[round(h["tokens_per_s"]) for h in history],
             val_loss=[round(h["val_loss"], 3) for h in history], caption=caption)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the script runs (CPU)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "artcap-bench-gpu")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    emit(stage="device", name=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
         torch=torch.__version__, gpus=torch.cuda.device_count())
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(args.out / "corpus", 64 if args.quick else 2000)
    bench_extraction(corpus, device, args.quick)
    bench_decoders(device, args.quick)
    bench_torchrun(corpus, args.out, args.quick)


if __name__ == "__main__":
    main()
