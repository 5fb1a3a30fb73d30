"""Training speed: tokens/s of artcap's teacher-forced merge decoder vs the paper's Keras-style
generator (one (image, prefix) -> next-word sample per prefix, prefixes pre-padded to max length).

    python benchmarks/bench_train.py [--steps 40]
Both compute the same per-token loss; the figure is target tokens per second on this machine.
Needs ../shared/data/artemis-mini and its efficientnet-lite0 features (extracted on first use).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from artcap.config import config_from
from artcap.decoders import DecoderConfig, MergeDecoder, caption_loss
from artcap.corpus import caption_table, load_corpus

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "artemis-mini"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    config = config_from({"data.captions": str(DATA / "artemis_mini.csv"), "data.images": str(DATA / "wikiart"),
                          "encoder.image_size": 224})
    corpus = load_corpus(config, progress=True)
    captions = caption_table(corpus, "train", corpus.data.max_len)
    table, rows = captions.tokens, captions.rows
    torch.manual_seed(0)
    model = MergeDecoder(DecoderConfig(len(corpus.data.vocab), corpus.features.dim))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)

    def step(features, tokens):
        loss, n = caption_loss(model, features, tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return n

    # artcap: whole captions, teacher forcing.
    tokens_done, start = 0, time.perf_counter()
    for _ in range(args.steps):
        idx = rng.choice(len(table), args.batch_size, replace=False)
        tokens_done += step(torch.from_numpy(corpus.features[rows[idx]]), table[idx])
    ours = tokens_done / (time.perf_counter() - start)

    # The paper's generator: every prefix is its own sample, left-padded to max_len, last step predicts.
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
    paper = tokens_done / (time.perf_counter() - start)
    print(f"training tokens/s, batch {args.batch_size}, vocabulary {len(corpus.data.vocab)}:")
    print(f"  artcap (teacher forcing over whole captions): {ours:10,.0f} tokens/s")
    print(f"  baseline (paper's one-sample-per-prefix):      {paper:10,.0f} tokens/s  ({ours / paper:.1f}x)")


if __name__ == "__main__":
    main()
