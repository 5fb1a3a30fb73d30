"""Stage 3b, training: a plain loop (nanoGPT-style) over cached image features.

A run folder holds everything needed to resume, evaluate and reproduce:
    config.toml      the configuration as used          splits.json   train/val/test image ids
    vocab.json       the vocabulary                     history.json  per-epoch losses and timing
    checkpoint.pt    model + optimiser + position       model/        best-by-val model folder
    loss.png         loss curves
Run it data-parallel with `torchrun --nproc-per-node N -m artcap train ...` (gloo on CPU, NCCL on GPU):
the global batch is split across processes, so the curve matches one process within noise.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint, save_model_dir
from .config import TrainConfig
from .data import Annotation, CaptionData, prepare, read_annotations
from .encoders import create_encoder, load_state_dict_file
from .errors import ArtcapError
from .features import FeatureCache, FeatureView, default_cache_dir
from .io import atomic_write_json
from .model import DecoderConfig, MergeDecoder, caption_loss

log = logging.getLogger("artcap")


@dataclass
class Corpus:
    """The data of a run: annotations as read, the prepared captions, and their image features."""

    annotations: list[Annotation]
    data: CaptionData
    features: FeatureView
    image_row: dict[str, int]  # image id -> row of `features`


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ArtcapError(f"device {name!r} asked for, but CUDA is not available here; use --set device=cpu")
    return torch.device(name)


def load_corpus(config: TrainConfig, splits: dict[str, list[str]] | None = None, device: str | torch.device = "cpu",
                progress: bool = True, annotations: list[Annotation] | None = None) -> Corpus:
    """Read the annotations (unless given), prepare the preset, and extract (or reuse) every image's features."""
    if not config.data or not config.images:
        raise ArtcapError("no data given: set `data` (CSV) and `images` (folder) in the config or with --set")
    if annotations is None:
        annotations = read_annotations(config.data, config.images, skip_missing=config.skip_missing)
    data = prepare(annotations, config.preset, splits, seed=config.split_seed)
    encoder = create_encoder(config.encoder, weights=config.encoder_weights, image_size=config.image_size or None)
    cache = FeatureCache(config.feature_cache or default_cache_dir(), encoder.to(device))
    ids = sorted(data.paths)
    paths = [data.paths[i] for i in ids]
    failures = cache.extract(paths, batch_size=config.feature_batch_size, num_workers=config.num_workers,
                             progress=progress)
    if failures:
        first = next(iter(failures.values()))
        summary = f"{len(failures)} image(s) could not be read (first: {first})"
        if not config.skip_missing:
            raise ArtcapError(f"{summary}; fix or remove them, or pass --skip-missing")
        log.warning("%s; skipped them (--skip-missing)", summary)
        ids = [i for i in ids if data.paths[i] not in failures]
        for i in set(data.paths) - set(ids):
            del data.paths[i], data.captions[i], data.emotions[i]
        paths = [data.paths[i] for i in ids]
    return Corpus(annotations, data, cache.view(paths), {i: n for n, i in enumerate(ids)})


def _caption_table(corpus: Corpus, split: str, max_len: int) -> tuple[torch.Tensor, np.ndarray]:
    """All captions of a split as a padded id tensor [N, max_len+2] and their feature rows [N]."""
    data = corpus.data
    rows, seqs = [], []
    for image_id in data.split_ids(split):
        for tokens in data.captions[image_id]:
            seqs.append(data.vocab.encode(tokens[:max_len]))
            rows.append(corpus.image_row[image_id])
    table = torch.zeros((len(seqs), max_len + 2), dtype=torch.long)
    for n, seq in enumerate(seqs):
        table[n, : len(seq)] = torch.tensor(seq)
    return table, np.asarray(rows, dtype=np.int64)


def epoch_batches(n: int, batch_size: int, steps: int, epoch: int, seed: int) -> list[np.ndarray]:
    """The batches of one epoch. steps=0: one shuffled pass. Otherwise `steps` batches drawn from an
    endless stream of shuffled passes, continuing where the previous epoch stopped (as the paper's
    generator did). Deterministic from (seed, epoch), so a resumed run sees the same batches."""
    if steps <= 0:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    start, stop = epoch * steps * batch_size, (epoch + 1) * steps * batch_size
    stream = np.concatenate([np.random.default_rng([seed, 1_000_000 + p]).permutation(n)
                             for p in range(start // n, (stop - 1) // n + 1)])
    offset = (start // n) * n
    return [stream[s - offset : s - offset + batch_size] for s in range(start, stop, batch_size)]


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate_loss(model: MergeDecoder, table: torch.Tensor, rows: np.ndarray, features: FeatureView,
                  device: torch.device, batch_size: int = 256) -> float:
    """Token-weighted mean cross-entropy over a split, with dropout off."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(table), batch_size):
        feats = torch.from_numpy(features[rows[s : s + batch_size]]).to(device)
        loss, n = caption_loss(model, feats, table[s : s + batch_size].to(device))
        total, count = total + float(loss) * n, count + n
    model.train(was_training)
    return total / max(count, 1)


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) the run in `config.out`; returns the run folder."""
    rank, world = _distributed()
    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    run = Path(config.out)
    checkpoint_path = run / "checkpoint.pt"
    if not resume and checkpoint_path.exists():
        raise ArtcapError(f"{run}: a run already exists there; continue it with --resume {run}, "
                          f"or choose another folder with --set out=...")
    if config.batch_size % world:
        raise ArtcapError(f"batch_size {config.batch_size} must be divisible by the {world} processes")

    splits = None
    if resume and (run / "splits.json").exists():
        splits = json.loads((run / "splits.json").read_text())
    # Rank 0 extracts features first; the others then find them in the cache.
    if rank == 0:
        corpus = load_corpus(config, splits, device, progress)
    if world > 1:
        dist.barrier()
    if rank != 0:
        corpus = load_corpus(config, splits, device, progress=False)
    data = corpus.data
    max_len = config.max_len or data.max_len

    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        config.save(run / "config.toml")
        atomic_write_json(run / "splits.json", data.splits)
        data.vocab.save(run / "vocab.json")
        atomic_write_json(run / "data.json", {**data.counts(), "preset": data.preset})

    torch.manual_seed(config.seed)
    model = MergeDecoder(DecoderConfig(len(data.vocab), corpus.features.dim, config.embed_dim,
                                       config.hidden_dim, config.dropout)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[dict] = []
    start_epoch, start_step, partial = 0, 0, (0.0, 0)
    best_val = math.inf
    if resume:
        state = load_checkpoint(checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, best_val = state["history"], state["best_val"]
        start_epoch, start_step = state["epoch"], state["step"]
        partial = (state["partial_loss"], state["partial_tokens"])
        if rank == 0:
            log.info("resuming %s at epoch %d, step %d", run, start_epoch + 1, start_step)
    trainable = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    train_table, train_rows = _caption_table(corpus, "train", max_len)
    val_table, val_rows = _caption_table(corpus, "val", max_len)
    if len(train_table) == 0:
        raise ArtcapError("the training split has no captions")
    use_amp = config.amp and device.type == "cuda" and torch.cuda.is_bf16_supported()

    def save(epoch: int, step: int, loss_sum: float, tokens: int) -> None:
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
            "best_val": best_val, "epoch": epoch, "step": step, "partial_loss": loss_sum, "partial_tokens": tokens,
        })

    for epoch in range(start_epoch, config.epochs):
        batches = epoch_batches(len(train_table), config.batch_size, config.steps_per_epoch, epoch, config.seed)
        first = start_step if epoch == start_epoch else 0
        loss_sum, token_count = partial if epoch == start_epoch else (0.0, 0)
        torch.manual_seed(config.seed * 100_003 + epoch * 1009 + first * 7 + rank)  # dropout, reproducibly
        model.train()
        started = time.perf_counter()
        bar = tqdm(total=len(batches), initial=first, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                   disable=not progress or rank != 0, dynamic_ncols=True)
        window_tokens, window_start = 0, time.perf_counter()
        for step in range(first, len(batches)):
            idx = batches[step][rank::world]
            feats = torch.from_numpy(corpus.features[train_rows[idx]]).to(device, non_blocking=True)
            tokens = train_table[idx].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, n = caption_loss(trainable, feats, tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, token_count = loss_sum + loss.item() * n, token_count + n
            window_tokens += n * world
            bar.update(1)
            if step % 10 == 0 or step == len(batches) - 1:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                bar.set_postfix(loss=f"{loss_sum / max(token_count, 1):.3f}", tok_s=f"{window_tokens / elapsed:,.0f}")
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < len(batches):
                if rank == 0:
                    save(epoch, step + 1, loss_sum, token_count)
        bar.close()
        seconds = time.perf_counter() - started
        total_loss, total_tokens = _all_sum([loss_sum, token_count], device)
        val_loss = evaluate_loss(model, val_table, val_rows, corpus.features, device) if len(val_table) else math.nan
        history.append({"epoch": epoch + 1, "train_loss": total_loss / max(total_tokens, 1), "val_loss": val_loss,
                        "seconds": seconds, "steps": len(batches), "tokens": int(total_tokens)})
        if rank == 0:
            if val_loss < best_val or math.isnan(val_loss):
                best_val = val_loss if not math.isnan(val_loss) else best_val
                export_model(run / "model", model, corpus, config, max_len, history)
            save(epoch + 1, 0, 0.0, 0)
            atomic_write_json(run / "history.json", history)
            log.info("epoch %d: train loss %.4f, val loss %.4f, %.1f s", epoch + 1,
                     history[-1]["train_loss"], val_loss, seconds)
    if rank == 0:
        from .plots import plot_losses

        plot_losses({run.name: history}, run / "loss.png")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return run


def export_model(path: Path, model: MergeDecoder, corpus: Corpus, config: TrainConfig, max_len: int,
                 history: list[dict]) -> None:
    """Write a model folder that `Captioner.load` reads."""
    custom = config.encoder_weights not in ("imagenet", "random")
    save_model_dir(path, model, corpus.data.vocab, {
        "model_id": f"artcap-{Path(config.out).name}",
        "encoder": {"name": config.encoder, "weights": "file" if custom else config.encoder_weights,
                    "image_size": config.image_size or None},
        "preset": config.preset,
        "max_len": max_len,
        "decoding": {"beam": config.beam, "length_alpha": config.length_alpha, "no_repeat_ngram": config.no_repeat_ngram},
        "training": {"epochs_done": len(history), "best_val_loss": min(h["val_loss"] for h in history),
                     "data": corpus.data.counts(), "torch": torch.__version__},
    }, encoder_state=load_state_dict_file(config.encoder_weights) if custom else None)
    atomic_write_json(path / "splits.json", corpus.data.splits)  # so evaluation finds the held-out paintings
