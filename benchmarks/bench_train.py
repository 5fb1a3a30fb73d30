"""Training speed: tokens/s of artcap's teacher-forced merge decoder vs the paper's Keras-style
generator (one (image, prefix) -> next-word sample per prefix, prefixes pre-padded to max length).

    python benchmarks/bench_train.py [--steps 40] [--rounds 2]
All compute the same per-token loss; the figure is target tokens per second on this machine, each method
run in turn --rounds times (interleaved: a shared machine's load falls on all alike), medians printed.
Needs ../shared/data/artemis-mini and its efficientnet-lite0 features (extracted on first use).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from artcap.config import config_from
from artcap.decoders import DecoderConfig, MergeDecoder, caption_loss
from artcap.corpus import caption_table, load_corpus

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "artemis-mini"


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    config = config_from({"data.captions": str(DATA / "artemis_mini.csv"), "data.images": str(DATA / "wikiart"),
                          "encoder.image_size": 224})
    corpus = load_corpus(config, progress=True)
    captions = caption_table(corpus, "train", corpus.data.max_len)
    table, rows = captions.tokens, captions.rows
    lengths = (table != 0).sum(dim=1).numpy()
    torch.manual_seed(0)
    model = MergeDecoder(DecoderConfig(len(corpus.data.vocab), corpus.features.dim))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    packed_lstm = model._lstm_over_captions

    def step(features, tokens):
        loss, n = caption_loss(model, features, tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return n

    def random_batches():
        return [rng.choice(len(table), args.batch_size, replace=False) for _ in range(args.steps)]

    def bucketed_batches():
        """Length bucketing: pools of 8 batches' worth of random captions, sorted by length, cut into batches."""
        batches = []
        while len(batches) < args.steps:
            pool = rng.choice(len(table), 8 * args.batch_size, replace=False)
            pool = pool[np.argsort(lengths[pool], kind="stable")]
            batches += [pool[i : i + args.batch_size] for i in range(0, len(pool), args.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))[: args.steps]]

    def artcap(packed: bool, bucketed: bool) -> float:
        model._lstm_over_captions = packed_lstm if packed else (lambda x, mask: model.lstm(x)[0])
        tokens_done, start = 0, time.perf_counter()
        for idx in (bucketed_batches() if bucketed else random_batches()):
            tokens_done += step(torch.from_numpy(corpus.features[rows[idx]]), table[idx])
        return tokens_done / (time.perf_counter() - start)

    def per_prefix() -> float:
        """The paper's generator: every prefix is its own sample, left-padded to max_len, last step predicts."""
        max_len = table.size(1)
        tokens_done, start = 0, time.perf_counter()
        for _ in range(max(2, args.steps // 4)):
            idx = rng.choice(len(table), 8, replace=False)  # 8 captions -> about 100 prefix samples
            prefixes, targets, feats = [], [], []
            for i in idx:
                seq = table[i][table[i] != 0]
                for t in range(1, len(seq)):
                    prefixes.append(F.pad(seq[:t], (max_len - t, 0)))
                    targets.append(seq[t])
                    feats.append(rows[i])
            prefixes, targets = torch.stack(prefixes), torch.stack(targets)
            text, _ = model.lstm(model.text_dropout(model.embed(prefixes)))
            image = model.init_memory(torch.from_numpy(corpus.features[np.array(feats)]))[0]
            logits = model._logits(image, text[:, -1])
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tokens_done += len(targets)
        return tokens_done / (time.perf_counter() - start)

    methods = {"padded (whole captions, the LSTM over the batch's longest)": lambda: artcap(False, False),
               "packed (each caption's LSTM over its own length): artcap's": lambda: artcap(True, False),
               "packed + length bucketing (not shipped: changes batches)": lambda: artcap(True, True),
               "baseline: the report's one-sample-per-prefix": per_prefix}
    results: dict[str, list[float]] = {name: [] for name in methods}
    print(f"training tokens/s, batch {args.batch_size}, vocabulary {len(corpus.data.vocab)}, {args.steps} steps, "
          f"{args.rounds} interleaved rounds, {torch.get_num_threads()} threads; {load_average()}")
    for _ in range(args.rounds):
        for name, method in methods.items():
            results[name].append(method())
    baseline = statistics.median(results["baseline: the report's one-sample-per-prefix"])
    for name, rates in results.items():
        rate = statistics.median(rates)
        print(f"  {name:<62} {rate:10,.0f} tokens/s  ({rate / baseline:.1f}x the baseline)")
    print(load_average())


if __name__ == "__main__":
    main()
