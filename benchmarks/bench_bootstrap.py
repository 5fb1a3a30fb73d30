"""What the bootstrap intervals cost, and what their two simplifications change, on an evaluation's captions.

    artcap evaluate --data ... --images ... --split test --out eval/
    python benchmarks/bench_bootstrap.py eval/predictions.json [--resamples 1000]

Reads the captions and references `artcap evaluate --out` wrote and reports:
- the time to score once (tokenising, METEOR's alignments: once per evaluation) and the time for every interval
  of the table from the per-painting statistics (the part the bootstrap adds);
- CIDEr-D with document frequencies fixed on the whole set (what artcap does) against recounting them on every
  resample (pycocoevalcap run on the resampled set, duplicates included), as 95% intervals;
- METEOR's corpus score (from summed statistics, what pycocoevalcap reports) against the plain mean of the
  per-painting METEOR scores.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from pycocoevalcap.cider.cider import Cider

from artcap import bootstrap
from artcap.evaluate import score_system
from artcap.metrics import java_available, meteor_from_sums, tokenize_for_scoring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", help="predictions.json written by artcap evaluate --out")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--recount-resamples", type=int, default=200,
                        help="resamples for the recounted-idf CIDEr-D interval (pycocoevalcap per resample: slow)")
    args = parser.parse_args()
    records = json.load(open(args.predictions, encoding="utf-8"))
    ids = [r["image"] for r in records]
    captions = [r["caption"] for r in records]
    refs = {r["image"]: r["references"] for r in records}

    started = time.perf_counter()
    scores = score_system(ids, captions, refs, None, with_meteor=java_available())
    scored = time.perf_counter() - started
    started = time.perf_counter()
    weights = bootstrap.resample_weights(len(ids), args.resamples)
    intervals = {name: bootstrap.interval(s, weights) for name, s in scores["statistics"].items()}
    resampled = time.perf_counter() - started
    print(f"{len(ids)} paintings: scoring once {scored:.1f} s; {len(intervals)} intervals x {args.resamples} "
          f"resamples {resampled:.3f} s")

    fixed = intervals["CIDEr-D"]
    gts = tokenize_for_scoring({i: refs[i] for i in ids})
    res = tokenize_for_scoring({i: [c] for i, c in zip(ids, captions)})
    order = sorted(ids, key=str)
    recounted = []
    for row in weights[: args.recount_resamples]:
        drawn = [order[n] for n in np.repeat(np.arange(len(order)), row.astype(int))]
        keys = [f"{k}#{j}" for j, k in enumerate(drawn)]  # a painting drawn twice is two entries
        recounted.append(Cider().compute_score({key: gts[k] for key, k in zip(keys, drawn)},
                                               {key: res[k] for key, k in zip(keys, drawn)})[0])
    low, high = np.percentile(recounted, [2.5, 97.5])
    print(f"CIDEr-D {scores['coco']['CIDEr-D']:.4f}: fixed idf [{fixed[0]:.4f}, {fixed[1]:.4f}]; idf recounted per "
          f"resample [{low:.4f}, {high:.4f}] (mean {np.mean(recounted):.4f}, {len(recounted)} resamples)")
    if "METEOR" in scores["statistics"]:
        meteor = scores["statistics"]["METEOR"]
        print(f"METEOR corpus (summed statistics) {meteor.value():.4f}; mean of per-painting METEOR "
              f"{meteor_from_sums(meteor.parts).mean():.4f}")


if __name__ == "__main__":
    main()
