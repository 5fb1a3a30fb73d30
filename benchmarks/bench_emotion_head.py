"""The image -> emotion classifier against its baselines (docs/emotions.md, "Results: the emotion classifier").

    python benchmarks/bench_emotion_head.py [--config configs/default.toml]

Trains the head as `emotion_head = true` does (epoch and prior correction chosen on val) on the config's encoder
features, and the logistic-regression probe (C chosen on val), then prints, for val and test: accuracy and macro
recall over paintings whose dominant emotion has more than half the votes, and mean KL(human histogram || predicted),
next to the majority guess and the training prior. Needs ../shared/data/artemis-mini; features come from (or go to)
the config's feature cache.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from artcap.checkpoint import read_splits
from artcap.config import load_config
from artcap.corpus import load_corpus
from artcap.emotion import benchmark_emotion_head
from artcap.features import FeatureSpec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.toml"))
    parser.add_argument("--splits", default=str(ROOT / "src" / "artcap" / "models" / "default" / "splits.json"),
                        help="the model's splits.json (default: the shipped default model's)")
    args = parser.parse_args()
    config = load_config(args.config)
    corpus = load_corpus(config, read_splits(args.splits), spec=FeatureSpec("pooled"))
    result = benchmark_emotion_head(corpus)
    print(f"encoder {config.encoder.name} {config.encoder.image_size or ''} px, probe C = {result['probe_C']}")
    print("| split | classifier | accuracy | macro recall | KL(human || predicted) |")
    print("|---|---|---:|---:|---:|")
    for split in ("val", "test"):
        rows = result[split]
        head = rows["head"]
        print(f"| {split} | majority guess / training prior | {head['majority_accuracy']:.3f} | "
              f"{head['majority_macro_recall']:.3f} | {head['prior_kl']:.3f} |")
        for name in ("probe", "head_argmax", "head"):
            r = rows[name]
            print(f"| {split} | {name} | {r['accuracy']:.3f} | {r['macro_recall']:.3f} | {r['kl']:.3f} |")


if __name__ == "__main__":
    main()
