"""Two versions of artcap side by side, interleaved on the same machine: the folder job (`caption_collection`
to a .jsonl) and the latency of one image, each in a fresh process, alternating rounds so that a shared
machine's load falls on both alike.

    git worktree add /tmp/artcap-before <old commit>
    python benchmarks/bench_before_after.py --before /tmp/artcap-before/src --after src [--model default] \\
        [--images 200] [--rounds 3] [--variant name=KEY=VALUE ...]

Each round runs every version once (start-up and model loading excluded from the figures) and prints images/s,
CPU-ms per image (all threads: less sensitive to other jobs than wall time) and the one-image latency
(median of 20), with the load average. A `--variant` runs the "after" version with a caption_paths keyword
or an environment setting changed, e.g. `--variant serial=overlap=0` or `--variant ort1=ARTCAP_ORT_THREADS=1`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "artemis-mini" / "wikiart"

CHILD = r"""
import json, os, statistics, sys, tempfile, time
from pathlib import Path
import torch
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
from artcap.captioner import Captioner
from artcap import collection
model, n, data, keywords = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
captioner = Captioner.load(model)
paths = sorted(Path(data).rglob("*.jpg"))[:n]
for p in paths:
    p.read_bytes()
captioner.caption(paths[:4])  # warm-up
times = []
for p in paths[:20]:
    start = time.perf_counter(); captioner.caption([p]); times.append(time.perf_counter() - start)
if keywords:  # caption_collection has no such keyword: run it through caption_paths' defaults
    original = collection.caption_paths
    collection.caption_paths = lambda *a, **k: original(*a, **{**k, **keywords})
with tempfile.TemporaryDirectory() as tmp:
    start, cpu = time.perf_counter(), time.process_time()
    summary = collection.caption_collection(captioner, [str(p) for p in paths], Path(tmp) / "out.jsonl",
                                            progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"images_per_s": summary.captioned / wall, "cpu_ms": 1000 * cpu / summary.captioned,
                  "latency_ms": 1000 * statistics.median(times), "load": os.getloadavg()[0]}))
"""


def run(src: str, model: str, images: int, keywords: dict, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(images), str(DATA), json.dumps(keywords)],
                         env={**os.environ, "PYTHONPATH": str(Path(src).resolve()), "OMP_WAIT_POLICY": "PASSIVE",
                              **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_variant(text: str) -> tuple[str, dict, dict]:
    """name=KEY=VALUE: a caption_paths keyword (lower case, an int) or an environment variable (upper case)."""
    name, key, value = text.split("=", 2)
    return (name, {}, {key: value}) if key.isupper() else (name, {key: int(value)}, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the old version's src folder")
    parser.add_argument("--after", default=str(Path(__file__).resolve().parents[1] / "src"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[])
    args = parser.parse_args()
    versions = [("before", args.before, {}, {}), ("after", args.after, {}, {})]
    versions += [(name, args.after, kw, env) for name, kw, env in map(parse_variant, args.variant)]
    results: dict[str, list[dict]] = {name: [] for name, *_ in versions}
    for round_ in range(args.rounds):
        for name, src, keywords, env in versions:
            result = run(src, args.model, args.images, keywords, env)
            results[name].append(result)
            print(f"round {round_ + 1} {name:>10}: {result['images_per_s']:6.1f} images/s, {result['cpu_ms']:5.1f} "
                  f"CPU-ms/image, one image {result['latency_ms']:5.1f} ms (load {result['load']:.1f})", flush=True)
    print(f"\nmodel {args.model}, {args.images} paintings, {args.rounds} interleaved rounds, medians:")
    base = {k: statistics.median(r[k] for r in results["before"]) for k in ("images_per_s", "cpu_ms", "latency_ms")}
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("images_per_s", "cpu_ms", "latency_ms", "load")}
        print(f"| {name} | {med['images_per_s']:.1f} images/s ({med['images_per_s'] / base['images_per_s']:.2f}x) | "
              f"{med['cpu_ms']:.1f} CPU-ms/image ({med['cpu_ms'] / base['cpu_ms']:.2f}x) | "
              f"{med['latency_ms']:.1f} ms one image ({med['latency_ms'] / base['latency_ms']:.2f}x) | "
              f"load {med['load']:.1f} |")


if __name__ == "__main__":
    main()
