"""Where a folder job's time goes: each stage of `caption_collection`, timed on its own, on real paintings.

    python benchmarks/profile_stages.py [--model default] [--images 200] [--batch-size 2] [--decode-batch 32]

Runs the stages one after the other on one thread of control, exactly as the folder job calls them
(the same functions, the same batch sizes), and prints ms/image and each stage's share:

    read      the file's bytes (the page cache is warmed first, as on a second pass over a folder)
    decode    JPEG decode (Pillow, with draft mode) + EXIF/colour handling, from those bytes
    resize    the encoder's resize to its input size (Encoder.to_array) + stacking the uint8 batch
    encoder   the image network (ONNX Runtime or torch: the model's runner), `batch-size` images a call
    emotion   the emotion head on the pooled features
    beam      beam search (decode.search_n_best) on `decode-batch` images at once
    rerank    the caption matcher choosing among each image's beam (rerank.CaptionMatcher.choose)
    records   to_caption + one record appended to a .jsonl record file (records.RecordFile)

and, for comparison, the real `caption_collection` over the same images (its wall time per image).
The load average is printed: on a shared machine, compare shares, not absolute figures.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from artcap.captioner import Captioner
from artcap.collection import JobIdentity, RecordFile, caption_collection, _now
from artcap.decode import search_n_best, to_caption
from artcap.conditions import EMOTION
from artcap.features import pooled_vectors
from artcap.images import load_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "artemis-mini" / "wikiart"
STAGES = ("read", "decode", "resize", "encoder", "emotion", "beam", "rerank", "records")


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


class Stopwatch:
    """Wall time and CPU time (all threads of the process) per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        start, cpu = time.perf_counter(), time.process_time()
        yield
        self.seconds[stage] += time.perf_counter() - start
        self.cpu[stage] += time.process_time() - cpu


def profile(captioner: Captioner, paths: list[Path], batch_size: int, decode_batch: int, out: Path) -> Stopwatch:
    """Each stage of the folder job on `paths`, timed separately (same calls as collection.caption_paths)."""
    clock, encoder, decoding = Stopwatch(), captioner.encoder, captioner.decoding
    identity = JobIdentity(captioner.source, decoding, "auto" if captioner.is_grounded else "")
    pooled_all = []
    with torch.inference_mode(), RecordFile(out, identity) as records:
        for start in range(0, len(paths), batch_size):
            arrays = []
            for path in paths[start : start + batch_size]:
                with clock("read"):
                    data = path.read_bytes()
                with clock("decode"):
                    image = load_image(io.BytesIO(data), min_size=encoder.image_size, name=str(path))
                with clock("resize"):
                    arrays.append(encoder.to_array(image))
            with clock("resize"):
                batch = encoder.preprocess(arrays)
            with clock("encoder"):
                pooled_all.append(captioner.feature_spec.select(captioner.runner(batch)))
        features = torch.cat(pooled_all)
        for start in range(0, len(paths), decode_batch):
            chunk = features[start : start + decode_batch]
            with clock("emotion"):
                scores = captioner._emotion_scores(chunk) if captioner.emotion_head is not None else None
                grounded = captioner._grounding(None, len(chunk), scores)
                conditions = {EMOTION.name: EMOTION.ids(grounded)} if grounded else None
            with clock("beam"):
                n_best = search_n_best(captioner.decoder, chunk, captioner.vocab, decoding, conditions)
            with clock("rerank"):
                if decoding.rerank and captioner.matcher is not None:
                    chosen = captioner.matcher.choose(pooled_vectors(chunk), [[h.ids for h in hs] for hs in n_best])
                else:
                    chosen = [0] * len(n_best)
            with clock("records"):
                for i, (hs, k) in enumerate(zip(n_best, chosen)):
                    caption = to_caption(hs[k], captioner.vocab)
                    records.append({"path": str(paths[start + i]), "caption": caption.text,
                                    "emotion": grounded[i] if grounded else None, "emotion_scores": None,
                                    **records.job, "time": _now(), "error": None})
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    captioner = Captioner.load(args.model)
    paths = sorted(DATA.rglob("*.jpg"))[: args.images]
    for p in paths:  # warm the page cache: "read" then measures a second pass, not the disk
        p.read_bytes()
    print(f"model {args.model} ({captioner.encoder.key}, runner {captioner.runner.name}), {len(paths)} paintings, "
          f"CNN batch {args.batch_size}, decode batch {args.decode_batch}, {args.threads} threads; {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        profile(captioner, paths[:8], args.batch_size, args.decode_batch, Path(tmp) / "warm.jsonl")  # warm-up
        clock = profile(captioner, paths, args.batch_size, args.decode_batch, Path(tmp) / "stages.jsonl")
        start = time.perf_counter()
        caption_collection(captioner, [str(p) for p in paths], Path(tmp) / "job.jsonl", progress=False)
        job = time.perf_counter() - start
    total, total_cpu, n = sum(clock.seconds.values()), sum(clock.cpu.values()), len(paths)
    print(f"\n| stage | wall ms/image | share | CPU-ms/image | share |\n|---|---:|---:|---:|---:|")
    for stage in STAGES:
        wall, cpu = clock.seconds.get(stage, 0.0), clock.cpu.get(stage, 0.0)
        print(f"| {stage} | {1000 * wall / n:.2f} | {100 * wall / total:.1f}% | {1000 * cpu / n:.2f} | "
              f"{100 * cpu / total_cpu:.1f}% |")
    print(f"| **sum of stages** | **{1000 * total / n:.2f}** | 100% | **{1000 * total_cpu / n:.2f}** | 100% |")
    print(f"| `caption_collection` | {1000 * job / n:.2f} ({n / job:.1f} images/s) | | | |")
    print(load_average())


if __name__ == "__main__":
    main()
