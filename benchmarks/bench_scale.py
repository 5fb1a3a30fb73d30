"""The full ArtEmis shape, measured: memory, time and disk of preparation and training at scale.

    python benchmarks/bench_scale.py --fraction 1 --steps 50 --read-all

Builds a synthetic corpus with the shape of the full ArtEmis release (at --fraction 1: 80,031 paintings,
454,684 utterances), drawn like the real mini data (../shared/data/artemis-mini): utterances per painting,
utterance lengths, emotions, art styles and word frequencies are sampled from its CSV, and words it never
saw come from a Zipf tail holding its Good-Turing unseen-word mass (hapaxes / tokens), so the vocabulary
grows with the corpus as real text does. Image files are empty placeholders; their features are written
straight into artcap's feature cache (pooled float32 [1280] and grid float16 [49, 1280], in shards of
2048 rows as extraction writes them), so no CNN runs. Then, per decoder (merge, sat), in a fresh process
so each has its own peak RSS:

  prepare   artcap.corpus.load_corpus (reads the CSV, prepares the preset, finds every feature cached)
            and the training caption table;
  read-all  (--read-all) every training caption's features read once, in the epoch's batch order:
            what a full epoch does to memory;
  train     artcap.train.train with epochs=1, steps_per_epoch=--steps (the real loop, then val loss
            and the model export). tokens/s is measured; seconds per full epoch are EXTRAPOLATED as
            training tokens per epoch / measured tokens/s.

Prints ONE JSON line. Peak RSS is getrusage's ru_maxrss (resident pages, file-backed ones included).
The data lives in a temporary folder (--workdir, removed afterwards unless --keep).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

FULL_IMAGES, FULL_UTTERANCES = 80_031, 454_684  # the ArtEmis release
MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "artemis-mini" / "artemis_mini.csv"
H200 = Path(__file__).resolve().parents[1] / "docs" / "measurements" / "gpu-h200.jsonl"
SHARD_ROWS = 2048  # FeatureCache.extract's chunk: one shard per chunk
DECODERS = ("merge", "sat")


# ---- the synthetic corpus -------------------------------------------------------------------------

def mini_shape(path: Path) -> dict:
    """What the synthetic corpus is drawn from: the real mini CSV's distributions."""
    from artcap.text import tokenize

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    per_painting = Counter((r["art_style"], r["painting"]) for r in rows)
    words = Counter(t for r in rows for t in tokenize(r["utterance"]))
    return {"lengths": np.array([len(tokenize(r["utterance"])) for r in rows]),
            "per_painting": np.array(list(per_painting.values())),
            "emotions": Counter(r["emotion"] for r in rows),
            "styles": Counter(r["art_style"] for r in rows),
            "words": words}


def word_distribution(words: Counter, tail_factor: int = 20) -> tuple[list[str], np.ndarray]:
    """The mini's words with their frequencies, then a Zipf (1/rank) tail of new words holding the
    Good-Turing probability of an unseen word (hapaxes / tokens)."""
    known = [w for w, _ in words.most_common()]
    counts = np.array([words[w] for w in known], float)
    unseen = sum(1 for c in counts if c == 1) / counts.sum()
    ranks = np.arange(len(known) + 1, len(known) * (1 + tail_factor) + 1, dtype=float)
    tail = 1.0 / ranks
    p = np.concatenate([counts / counts.sum() * (1 - unseen), tail / tail.sum() * unseen])
    return known + [_tail_word(n) for n in range(len(ranks))], p


def _tail_word(n: int) -> str:
    letters = ""
    n += 26 ** 2  # at least three letters
    while n:
        n, r = divmod(n, 26)
        letters += chr(ord("a") + r)
    return "zx" + letters


def _counts_per_painting(rng, shape: dict, images: int, utterances: int) -> np.ndarray:
    """Utterances per painting drawn from the mini's, nudged by one here and there to the exact total."""
    counts = rng.choice(shape["per_painting"], size=images)
    while (diff := utterances - int(counts.sum())) != 0:
        pick = rng.integers(0, images, size=abs(diff))
        if diff > 0:
            np.add.at(counts, pick, 1)
        else:
            pick = np.unique(pick[counts[pick] > 1])
            counts[pick] -= 1
    return counts


def write_corpus(root: Path, fraction: float, seed: int, shape: dict) -> tuple[Path, Path, list[Path]]:
    """The CSV (ArtEmis columns) and empty image files in the WikiArt layout; returns (csv, images, paths)
    with one path per painting, sorted by image id."""
    rng = np.random.default_rng(seed)
    images, utterances = max(20, round(FULL_IMAGES * fraction)), max(100, round(FULL_UTTERANCES * fraction))
    counts = _counts_per_painting(rng, shape, images, utterances)
    style_names = sorted(shape["styles"])
    style_p = np.array([shape["styles"][s] for s in style_names], float)
    styles = rng.choice(len(style_names), size=images, p=style_p / style_p.sum())
    emotion_names = sorted(shape["emotions"])
    emotion_p = np.array([shape["emotions"][e] for e in emotion_names], float)
    emotions = rng.choice(len(emotion_names), size=utterances, p=emotion_p / emotion_p.sum())
    lengths = rng.choice(shape["lengths"], size=utterances)
    vocab, p = word_distribution(shape["words"])
    vocab = np.array(vocab, dtype=object)
    words = vocab[rng.choice(len(vocab), size=int(lengths.sum()), p=p)]
    ends = np.cumsum(lengths)

    image_dir, csv_path = root / "wikiart", root / "artemis_synthetic.csv"
    paintings = [(style_names[styles[n]], f"synthetic-painting-{n:06d}") for n in range(images)]
    for style in style_names:
        (image_dir / style).mkdir(parents=True, exist_ok=True)
    paths = []
    for style, name in paintings:
        path = image_dir / style / f"{name}.jpg"
        path.touch()
        paths.append(path)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["art_style", "painting", "emotion", "utterance", "repetition"])
        u = 0
        for (style, name), count in zip(paintings, counts):
            for _ in range(count):
                text = " ".join(words[ends[u] - lengths[u] : ends[u]])
                writer.writerow([style, name, emotion_names[emotions[u]], text, int(count)])
                u += 1
    order = sorted(range(images), key=lambda n: f"{paintings[n][0]}/{paintings[n][1]}")  # prepare's image order
    return csv_path, image_dir, [paths[n] for n in order]


def write_features(cache_root: Path, paths: list[Path], seed: int) -> dict[str, int]:
    """Pooled and grid features for every path, straight in FeatureCache's layout (shards + index.json).
    Rows repeat a pool of 256 random rows: content does not matter here, shape and bytes do."""
    from artcap.config import TrainConfig
    from artcap.encoders import EncoderSpec
    from artcap.features import INDEX_VERSION, FeatureCache, FeatureSpec
    from artcap.io import atomic_write_json

    encoder = EncoderSpec.from_train_config(TrainConfig()).create()
    keys = [(str(p.resolve()), p.stat()) for p in paths]
    sizes = {}
    for spec in (FeatureSpec("pooled"), FeatureSpec("grid")):
        cache = FeatureCache(cache_root, encoder, spec)
        cache.dir.mkdir(parents=True, exist_ok=True)
        row_shape = spec.row_shape(encoder.feature_dim)
        pool = np.abs(np.random.default_rng(seed).standard_normal((256, *row_shape))).astype(spec.dtype)
        index = {"version": INDEX_VERSION, "feature_dim": encoder.feature_dim, "kind": spec.kind,
                 "row_shape": list(row_shape), "dtype": spec.dtype.name, "shards": [], "files": {}}
        for number, start in enumerate(range(0, len(paths), SHARD_ROWS)):
            rows = min(SHARD_ROWS, len(paths) - start)
            name = f"shard-{number:05d}-{os.getpid()}.npy"
            _write_shard(cache.dir / name, pool, start, rows)
            index["shards"].append({"name": name, "rows": rows, "bytes": (cache.dir / name).stat().st_size})
            for row in range(rows):
                key, st = keys[start + row]
                index["files"][key] = [number, row, st.st_size, st.st_mtime_ns]
        atomic_write_json(cache.index_path, index)
        sizes[spec.folder] = sum(s["bytes"] for s in index["shards"])
    return sizes


def _write_shard(path: Path, pool: np.ndarray, start: int, rows: int, block: int = 128) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(pool.dtype), "fortran_order": False,
              "shape": (rows, *pool.shape[1:])}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for s in range(0, rows, block):
            ids = (np.arange(start + s, start + min(rows, s + block)) * 2_654_435_761) % len(pool)
            f.write(pool[ids].tobytes())


# ---- one decoder, in its own process ----------------------------------------------------------------

def rss_mb() -> dict[str, float]:
    """Peak RSS so far (ru_maxrss) and the current resident split into anonymous and file-backed pages."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 ** 2)
    out = {"peak_rss_mb": round(peak, 1)}
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        for field, name in (("RssAnon", "rss_anon_mb"), ("RssFile", "rss_file_mb")):
            out[name] = round(int(status[field].split()[0]) / 1024, 1)
    except (OSError, KeyError, ValueError):  # not Linux
        pass
    return out


def run_decoder(args) -> dict:
    """prepare, read-all, train for one decoder; returns its measurements."""
    import torch

    from artcap.config import config_from
    from artcap.corpus import caption_table, load_corpus
    from artcap.train import epoch_batches, train

    work = Path(args.workdir)
    config = config_from({"data.captions": str(work / "artemis_synthetic.csv"), "data.images": str(work / "wikiart"),
                          "data.preset": "artemis", "encoder.feature_cache": str(work / "features"),
                          "decoder.kind": args.child, "optim.epochs": 1, "optim.steps_per_epoch": args.steps,
                          "optim.batch_size": args.batch_size, "run.device": "cpu", "encoder.num_workers": 0,
                          "run.checkpoint_minutes": 0, "run.out": str(work / "runs" / args.child)})
    torch.set_num_threads(args.threads)
    out: dict = {}
    t = time.perf_counter()
    corpus = load_corpus(config, progress=False)
    table = caption_table(corpus, "train", config.max_len(corpus.data.max_len))
    out["prepare_s"] = round(time.perf_counter() - t, 2)
    out["after_prepare"] = rss_mb()
    out["vocabulary"] = len(corpus.data.vocab)
    out["train_captions"] = len(table)
    tokens_per_epoch = int((table.tokens[:, 1:] != corpus.data.vocab.pad_id).sum())  # the loss's targets
    out["train_tokens_per_epoch"] = tokens_per_epoch
    if args.read_all:
        t, read = time.perf_counter(), 0
        for idx in epoch_batches(len(table), args.batch_size, 0, 0, config.run.seed):
            read += corpus.features[table.rows[idx]].nbytes
        out["read_all_s"] = round(time.perf_counter() - t, 2)
        out["read_all_gb_float32"] = round(read / 1e9, 2)
        out["after_read_all"] = rss_mb()
    del corpus, table
    t = time.perf_counter()
    run = train(config, progress=False)
    out["train_call_s"] = round(time.perf_counter() - t, 2)  # its own load_corpus, the N steps, val loss, export
    record = json.loads((run / "history.json").read_text())[-1]
    out["train_steps"] = record["steps"]
    out["train_loop_s"] = round(record["seconds"], 2)
    out["tokens_per_s"] = round(record["tokens_per_s"], 1)
    out["extrapolated_epoch_s"] = round(tokens_per_epoch / record["tokens_per_s"], 1)
    out["after_train"] = rss_mb()
    out["peak_rss_mb"] = out["after_train"]["peak_rss_mb"]
    return out


def h200_tokens_per_s() -> dict[str, float]:
    """The H200's steady tokens/s through the real loop (torchrun train, batch 128, one GPU)."""
    rates = {}
    if H200.is_file():
        for line in H200.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if row.get("stage") == "torchrun train" and row.get("ok"):
                rates[row["decoder"]] = float(max(row["tokens_per_s"]))
    return rates


# ---- the whole run ----------------------------------------------------------------------------------

def disk_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20, 1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.1, help="of the full ArtEmis (1 = 80,031 paintings)")
    parser.add_argument("--steps", type=int, default=50, help="training steps measured (one epoch of N steps)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--decoders", default=",".join(DECODERS))
    parser.add_argument("--read-all", action="store_true", help="also read every training row once, in batch order")
    parser.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--mini", type=Path, default=MINI, help="the real CSV the shape is drawn from")
    parser.add_argument("--workdir", help="where the synthetic data goes (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one decoder in this process
    args = parser.parse_args(argv)
    if args.child:
        result = run_decoder(args)
        print(json.dumps(result))
        return result
    if not 0 < args.fraction <= 1:
        parser.error("--fraction must be in (0, 1]")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="artcap-scale-"))
    try:
        return _measure(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _measure(args, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    shape = mini_shape(args.mini)
    csv_path, _, paths = write_corpus(work, args.fraction, args.seed, shape)
    feature_bytes = write_features(work / "features", paths, args.seed)
    result = {"fraction": args.fraction, "images": len(paths),
              "utterances": sum(1 for _ in open(csv_path, encoding="utf-8")) - 1,
              "generate_s": round(time.perf_counter() - t, 2), "steps": args.steps, "batch_size": args.batch_size,
              "threads": args.threads, "disk_mb": {"csv": round(csv_path.stat().st_size / 2 ** 20, 1),
                                                    **{k: round(v / 2 ** 20, 1) for k, v in feature_bytes.items()}}}
    gpu = h200_tokens_per_s()
    for decoder in args.decoders.split(","):
        command = [sys.executable, __file__, "--child", decoder, "--workdir", str(work), "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        if args.read_all:
            command.append("--read-all")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{decoder}: the measuring process failed:\n{done.stderr[-3000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        if decoder in gpu:  # computed from the H200's measured rate, not run
            measured["h200_tokens_per_s"] = gpu[decoder]
            measured["computed_h200_epoch_s"] = round(measured["train_tokens_per_epoch"] / gpu[decoder], 1)
        result[decoder] = measured
    result["disk_mb"]["total"] = disk_mb(work)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
