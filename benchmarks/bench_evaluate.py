"""How long `artcap evaluate` takes per 1,000 paintings on this machine, by stage.

    python benchmarks/bench_evaluate.py [--model DIR] [--count 500]

Stages, each reported as seconds per 1,000 paintings: decoding from cached features (greedy and
the model's beam), then the metrics (COCO protocol + paper BLEU + diversity + grounding) without
and with METEOR. The baseline line is the metrics alone on the same captions: the part of the cost
that does not depend on the model. Feature extraction is not included (cached once per data set:
see bench_features.py). Needs ../shared/data/artemis-mini and the shipped model (or --model).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from artcap.captioner import Captioner
from artcap.evaluate import caption_all, load_evaluation_set, score_system
from artcap.metrics import java_available

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "artemis-mini"


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="model or run folder (default: the shipped model)")
    parser.add_argument("--count", type=int, default=500, help="paintings to caption and score")
    args = parser.parse_args()

    captioner = Captioner.load(args.model)
    evalset = load_evaluation_set(captioner, DATA / "artemis_mini.csv", DATA / "wikiart", "all", progress=True)
    ids, features = evalset.ids[: args.count], evalset.features[: args.count]
    refs = {i: evalset.references[i] for i in ids}
    training = [c for cs in evalset.train_captions for c in cs]
    per_k = 1000 / len(ids)
    beam = captioner.decoding.beam
    print(f"{len(ids)} paintings of artemis-mini, {sum(len(r) for r in refs.values()) / len(ids):.1f} references "
          f"each, model {captioner.model_id}; seconds per 1,000 paintings:")

    greedy, t_greedy = timed(lambda: caption_all(captioner, features, progress=False, beam=1))
    captions, t_beam = timed(lambda: caption_all(captioner, features, progress=False, beam=beam))
    _, t_metrics = timed(lambda: score_system(ids, captions, refs, training, with_meteor=False))
    print(f"  baseline: metrics alone, no METEOR     {t_metrics * per_k:8.1f} s")
    if java_available():
        _, t_meteor = timed(lambda: score_system(ids, captions, refs, training, with_meteor=True))
        print(f"  baseline: metrics alone, with METEOR   {t_meteor * per_k:8.1f} s")
    else:
        t_meteor = None
        print("  (java not found: METEOR not measured)")
    print(f"  decoding, greedy                       {t_greedy * per_k:8.1f} s")
    print(f"  decoding, beam {beam}                        {t_beam * per_k:8.1f} s")
    print(f"  evaluate (beam {beam} + metrics, no METEOR) {(t_beam + t_metrics) * per_k:8.1f} s")
    if t_meteor is not None:
        print(f"  evaluate (beam {beam} + metrics + METEOR)   {(t_beam + t_meteor) * per_k:8.1f} s")


if __name__ == "__main__":
    main()
