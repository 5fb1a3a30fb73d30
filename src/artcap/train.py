"""Stage 3b, training: a plain loop (nanoGPT-style) over cached image features.

A run folder holds everything needed to resume, evaluate and reproduce:
    config.toml      the configuration as used          splits.json   train/val/test image ids
    vocab.json       the vocabulary                     history.json  per-epoch losses and timing
    checkpoint.pt    model + optimiser + position       model/        best-by-val model folder
    loss.png         loss curves                        .artcap-run.json  says artcap made the folder
A new run goes only into a missing or empty folder, or an artcap run folder (check_new_run_folder).
Run it data-parallel with `torchrun --nproc-per-node N -m artcap train ...` (gloo on CPU, NCCL on GPU):
the global batch is split across processes, so the curve matches one process within noise.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .checkpoint import export_model, load_checkpoint, read_splits, save_checkpoint
from .conditions import EMOTION, NO_VALUE, Conditions, get_condition, parse_condition_names
from .config import TrainConfig
from .corpus import CaptionTable, Corpus, caption_table, load_corpus
from .errors import ArtcapError
from .features import FeatureView
from .io import atomic_write_json
from .decoders import DecoderConfig, caption_loss, create_decoder
from .model_folder import load_decoder

log = logging.getLogger("artcap")


@dataclass
class Batch:
    features: torch.Tensor  # [B, C] or [B, g*g, C]
    tokens: torch.Tensor  # [B, T]
    conditions: Conditions  # {condition name: [B] value ids}: the ones the decoder reads (artcap.conditions)
    rows: np.ndarray | None = None  # [B] each caption's image row in the corpus features (SCST's reference key)


LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, int]]


def cross_entropy_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Teacher forcing: the mean cross-entropy of every next word (plus the decoder's own regulariser)."""
    return caption_loss(model, batch.features, batch.tokens, batch.conditions)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ArtcapError(f"device {name!r} asked for, but CUDA is not available here; use --set device=cpu")
    return torch.device(name)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warmup to `lr`, then constant or cosine decay to `min_lr` at the last step (nanoGPT's get_lr)."""
    optim = config.optim
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.lr_schedule == "constant":
        return optim.lr
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
    return optim.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (optim.lr - optim.min_lr)


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
def evaluate_loss(model: torch.nn.Module, table: CaptionTable, features: FeatureView, device: torch.device,
                  batch_size: int = 256) -> float | None:
    """Token-weighted mean cross-entropy over a split, with dropout off; None for an empty split."""
    if len(table) == 0:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(table), batch_size):
        batch = _batch(table, np.arange(s, min(s + batch_size, len(table))), features, device, read_by(model))
        loss, n = cross_entropy_loss(model, batch)
        total, count = total + float(loss) * n, count + n
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def validation_scores(model: torch.nn.Module, corpus: Corpus, max_len: int, device: torch.device) -> dict[str, float]:
    """Greedy captions of the val paintings scored by BLEU-4 and CIDEr-D (artcap tokens), for `select_by`, and
    how collapsed they are (distinct share, vocabulary, top caption share: metrics.collapse_scores)."""
    from .decode import DecodingConfig, generate
    from .metrics import collapse_scores, selection_scores

    data = corpus.data
    ids = data.split_ids("val")
    if len(ids) < 2:
        return {}
    rows = np.asarray([corpus.image_row[i] for i in ids])
    conditions = {name: dominant_values(data, ids, name) for name in read_by(model)}
    was_training = model.training
    captions = []
    for s in range(0, len(ids), 128):
        features = torch.from_numpy(corpus.features[rows[s : s + 128]]).to(device)
        asked = {name: values[s : s + 128].to(device) for name, values in conditions.items()}
        captions += generate(model, features, data.vocab, DecodingConfig(beam=1, max_len=max_len), asked)
    model.train(was_training)
    references = {i: [" ".join(t) for t in data.captions[i]] for i in ids}
    predictions = dict(zip(ids, captions))
    return {**selection_scores(predictions, references), **collapse_scores(predictions)}


def read_by(model: torch.nn.Module) -> list[str]:
    """The conditions a (bare) decoder reads, by name."""
    config = getattr(model, "config", None)
    return [slot.name for slot in config.condition_slots()] if config is not None else []


def dominant_values(data, ids: list[str], name: str) -> torch.Tensor:
    """Each painting's most frequent value of a condition among its captions (ties: the condition's order),
    e.g. its most frequent human emotion: a conditioned decoder's input for the painting's validation caption."""
    condition = get_condition(name)
    return torch.tensor([condition.dominant(condition.read(row) for row in data.sources[i]) for i in ids])


def _batch(table: CaptionTable, idx: np.ndarray, features: FeatureView, device: torch.device,
           conditions: Sequence[str]) -> Batch:
    return Batch(torch.from_numpy(features[table.rows[idx]]).to(device, non_blocking=True),
                 table.tokens[idx].to(device, non_blocking=True),
                 {name: table.conditions[name][idx].to(device) for name in conditions}, table.rows[idx])


@dataclass
class RunState:
    """Everything a checkpoint restores: where the run is and what it has learned."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    history: list[dict] = field(default_factory=list)
    best: float = -math.inf  # the selection score of the exported model (higher is better)
    epoch: int = 0
    step: int = 0  # within `epoch`
    partial: tuple[float, int] = (0.0, 0)  # (loss sum, tokens) of `epoch` so far

    def save(self, path: Path) -> None:
        save_checkpoint(path, {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                               "history": self.history, "best": self.best, "epoch": self.epoch, "step": self.step,
                               "partial_loss": self.partial[0], "partial_tokens": self.partial[1]})

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history, self.best = state["history"], state["best"]
        self.epoch, self.step = state["epoch"], state["step"]
        self.partial = (state["partial_loss"], state["partial_tokens"])


def build_decoder(config: TrainConfig, corpus: Corpus) -> torch.nn.Module:
    """A fresh decoder, or (init_from) the decoder of a model folder, whose vocabulary the corpus then uses."""
    init_from = config.run.init_from
    if init_from:
        vocab, decoder = load_decoder(init_from)
        if decoder.config.feature_dim != corpus.features.dim or decoder.config.kind != config.decoder.kind:
            raise ArtcapError(f"run.init_from {init_from}: its decoder ({decoder.config.kind}, "
                              f"{decoder.config.feature_dim}-d features) does not fit this config "
                              f"({config.decoder.kind}, {corpus.features.dim}-d); use the same decoder and encoder")
        if (decoder.config.num_emotions > 0) != config.emotion.grounded:
            raise ArtcapError(f"run.init_from {init_from}: its decoder is {'' if decoder.config.num_emotions else 'not '}"
                              f"emotion-grounded; set emotion.grounded = "
                              f"{'true' if decoder.config.num_emotions else 'false'} to fine-tune it")
        if sorted(decoder.config.conditions) != sorted(parse_condition_names(config.data.conditions)):
            raise ArtcapError(f"run.init_from {init_from}: its decoder reads the conditions "
                              f"{', '.join(sorted(decoder.config.conditions)) or 'none'} besides the emotion; set "
                              f"data.conditions = \"{','.join(sorted(decoder.config.conditions))}\" to fine-tune it")
        corpus.data.vocab = vocab
        return decoder.train()
    emotions = EMOTION.width if config.emotion.grounded else 0
    extra = {name: get_condition(name).dim for name in parse_condition_names(config.data.conditions)}
    return create_decoder(DecoderConfig(len(corpus.data.vocab), corpus.features.dim, config.decoder,
                                        num_emotions=emotions, emotion_dim=config.emotion.dim,
                                        emotion_in_output=config.emotion.in_output, conditions=extra))


MIN_DISTINCT = 0.6  # select_by = "cider_distinct": the share of distinct val captions an epoch must reach


def _selection_score(config: TrainConfig, record: dict) -> float | None:
    if config.optim.select_by == "val_loss":
        return -record["val_loss"] if record["val_loss"] is not None else None
    if config.optim.select_by == "cider_distinct":
        return _cider_distinct(record)
    return record.get(config.optim.select_by)


def _cider_distinct(record: dict) -> float | None:
    """CIDEr-D if at least MIN_DISTINCT of the val captions are distinct; below that, distinct - 1 (< 0 <= any
    CIDEr-D): every epoch that meets the rule beats every one that does not, and until one does, the most
    varied epoch is kept rather than the best-scoring collapsed one."""
    if record.get("cider") is None or record.get("distinct") is None:
        return None
    return record["cider"] if record["distinct"] >= MIN_DISTINCT else record["distinct"] - 1.0


def objective_loss(config: TrainConfig, corpus: Corpus, max_len: int) -> LossFn:
    """The loss `config.optim.objective` names: teacher-forced cross-entropy, or self-critical training (artcap.scst)
    rewarded by CIDEr-D against the training references (call after build_decoder: init_from sets the vocabulary)."""
    if config.optim.objective == "scst":
        from .scst import ScstLoss

        return ScstLoss.from_corpus(corpus, max_len, config.scst.samples, config.scst.grounding_weight)
    return cross_entropy_loss


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          loss_fn: LossFn | None = None, splits: dict[str, list[str]] | None = None) -> Path:
    """Train (or resume) the run in `config.run.out`; returns the run folder. `loss_fn` None: the loss
    `config.optim.objective` names (objective_loss). `splits` (train/val/test painting ids, e.g. a cross-validation
    fold) replaces the split the data's seed makes; a resumed run keeps the one in its splits.json."""
    rank, world = _distributed()
    device = resolve_device(config.run.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    run = Path(config.run.out)
    checkpoint_path = run / "checkpoint.pt"
    if not resume:
        check_new_run_folder(run)
    if config.optim.batch_size % world:
        raise ArtcapError(f"batch_size {config.optim.batch_size} must be divisible by the {world} processes")

    if resume and (run / "splits.json").exists():
        splits = read_splits(run / "splits.json")
    # Rank 0 extracts features first; the others then find them in the cache.
    if rank == 0:
        corpus = load_corpus(config, splits, device, progress)
    if world > 1:
        dist.barrier()
    if rank != 0:
        corpus = load_corpus(config, splits, device, progress=False)
    _check_splits(corpus)
    max_len = config.max_len(corpus.data.max_len)

    torch.manual_seed(config.run.seed)
    model = build_decoder(config, corpus).to(device)
    loss_fn = loss_fn or objective_loss(config, corpus, max_len)
    state = RunState(model, torch.optim.Adam(model.parameters(), lr=config.optim.lr))
    if resume and checkpoint_path.exists():
        state.restore(load_checkpoint(checkpoint_path))
        if rank == 0:
            log.info("resuming %s at epoch %d, step %d", run, state.epoch + 1, state.step)
    elif resume and rank == 0:
        log.warning("%s: no checkpoint yet (stopped before the first one was written): starting the run over", run)
    if rank == 0:
        _write_run_files(run, config, corpus)
    trainable = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    train_table = caption_table(corpus, "train", max_len)
    val_table = caption_table(corpus, "val", max_len)
    _check_condition_values(config, train_table, read_by(model))
    for epoch in range(state.epoch, config.optim.epochs):
        _train_epoch(config, state, trainable, loss_fn, train_table, corpus.features, device, rank, world, progress,
                     checkpoint_path)
        record = state.history[-1]
        record["val_loss"] = evaluate_loss(model, val_table, corpus.features, device)
        if config.optim.select_by != "val_loss" or config.optim.objective != "xe":  # SCST: watch for collapse every epoch
            record.update(validation_scores(model, corpus, max_len, device))
        if rank == 0:
            _end_epoch(config, state, record, run, corpus, max_len)
        state.epoch, state.step, state.partial = epoch + 1, 0, (0.0, 0)
        if rank == 0:
            state.save(checkpoint_path)
            atomic_write_json(run / "history.json", state.history)
    if rank == 0:
        from .plots import plot_losses

        plot_losses({run.name: state.history}, run / "loss.png")
        if config.emotion.head or config.run.matcher:
            add_image_extras(config, corpus, run / "model", device, progress)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return run


def add_image_extras(config: TrainConfig, corpus: Corpus, model_dir: Path, device: torch.device,
                     progress: bool) -> None:
    """What reads the training paintings' pooled features, shipped in the model folder after the decoder's last
    export (that rewrites config.json): the image -> emotion classifier with its text judge (`emotion.head`), the
    image-caption matcher that reranks the beam (`run.matcher`)."""
    from .features import FeatureSpec

    pooled = corpus
    if len(corpus.features.row_shape) > 1:  # an attention decoder's grid: these read pooled vectors
        pooled = load_corpus(config, corpus.data.splits, device, progress, annotations=corpus.annotations,
                             spec=FeatureSpec("pooled"))
    if config.emotion.head:
        add_emotion_head(pooled, model_dir)
    if config.run.matcher:
        from .rerank import matcher_for, save_matcher

        save_matcher(model_dir, matcher_for(pooled))


def add_emotion_head(pooled: Corpus, model_dir: Path) -> None:
    """Train the image -> emotion classifier on pooled features and ship it, with the text judge, in the folder."""
    from .emotion import save_emotion_head, train_emotion_head
    from .text_emotion import text_classifier_for

    head, report = train_emotion_head(pooled)
    save_emotion_head(model_dir, head, report)
    # The judge of emotional alignment travels with the model, so its scores do not depend on the installed sklearn.
    text_classifier_for(pooled.annotations, pooled.data.splits).save(model_dir)
    log.info("emotion head: val KL %.3f (prior %.3f)", report.get("val", {}).get("kl", math.nan),
             report.get("val", {}).get("prior_kl", math.nan))


def _check_condition_values(config: TrainConfig, table: CaptionTable, conditions: Sequence[str]) -> None:
    """Every training caption must give a value of every condition the decoder reads."""
    for name in conditions:
        missing = int((table.conditions[name] == NO_VALUE).sum())
        if missing and name == EMOTION.name:
            raise ArtcapError(f"{config.data.captions}: emotion.grounded needs an emotion for every caption (ArtEmis "
                              f"data); "
                              f"this data has captions without one")
        if missing:
            raise ArtcapError(f"{config.data.captions}: the decoder is conditioned on {name}, but {missing} training "
                              f"caption(s) have no value of it (one of: {', '.join(get_condition(name).values)}); "
                              f"fill in the {name} of every row or drop it from data.conditions")


def _check_splits(corpus: Corpus) -> None:
    corpus.data.require_splits("train")  # images dropped by --skip-missing may have emptied it
    if corpus.data.split_sizes().val == 0:  # prepare() has said so already
        log.warning("without validation paintings, the last epoch's model is exported")


# Written first into every run folder: a folder without it that holds anything is not artcap's to write into.
RUN_MARKER = ".artcap-run.json"


def check_new_run_folder(run: Path) -> None:
    """A new run goes only into a folder that is missing, empty, or an artcap run folder without a
    checkpoint (one stopped before its first: it starts over); anything else is refused in one line, so
    a file artcap did not write (a config.toml, vocab.json or model/ of someone's) is never replaced."""
    if (run / "checkpoint.pt").exists():
        raise ArtcapError(f"{run}: a run already exists there; continue it with --resume {run}, "
                          f"or choose another folder with --set run.out=...")
    if run.exists() and not run.is_dir():
        raise ArtcapError(f"{run}: is a file, not a folder; choose another folder with --set run.out=...")
    try:
        entries = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
    except OSError as e:
        raise ArtcapError(f"{run}: cannot read the folder ({e.strerror or e}); choose another with --set run.out=...") from None
    if entries and RUN_MARKER not in entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ArtcapError(f"{run}: holds files artcap did not write ({shown}), so no run is started there; "
                          f"choose a new or empty folder with --set run.out=...")


def _write_run_files(run: Path, config: TrainConfig, corpus: Corpus) -> None:
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / RUN_MARKER, {"format": "artcap-run", "version": 1})
    config.save(run / "config.toml")
    atomic_write_json(run / "splits.json", corpus.data.splits)
    corpus.data.vocab.save(run / "vocab.json")
    atomic_write_json(run / "data.json", {**corpus.data.counts(), "preset": corpus.data.preset})


def _train_epoch(config: TrainConfig, state: RunState, trainable: torch.nn.Module, loss_fn: LossFn,
                 table: CaptionTable, features: FeatureView, device: torch.device, rank: int, world: int,
                 progress: bool, checkpoint_path: Path) -> None:
    """One epoch from `state.step` on; checkpoints inside it by step count and by time. Appends its history record."""
    if len(table) == 0:
        raise ArtcapError("the training split has no captions")
    epoch = state.epoch
    batches = epoch_batches(len(table), config.optim.batch_size, config.optim.steps_per_epoch, epoch, config.run.seed)
    total_steps = config.optim.epochs * len(batches)
    first = state.step
    loss_sum, token_count = state.partial
    tokens_before = token_count  # counted by an earlier (interrupted) process
    torch.manual_seed(config.run.seed * 100_003 + epoch * 1009 + first * 7 + rank)  # dropout, reproducibly
    trainable.train()
    use_amp = config.run.amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
    started = last_save = time.perf_counter()
    bar = tqdm(total=len(batches), initial=first, desc=f"epoch {epoch + 1}/{config.optim.epochs}", unit="step",
               disable=not progress or rank != 0, dynamic_ncols=True)
    for step in range(first, len(batches)):
        lr = learning_rate(config, epoch * len(batches) + step, total_steps)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            batch = _batch(table, batches[step][rank::world], features, device, read_by(state.model))
            loss, n = loss_fn(trainable, batch)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.optim.grad_clip)
        state.optimizer.step()
        loss_sum, token_count = loss_sum + loss.item() * n, token_count + n
        bar.update(1)
        if step % 10 == 0 or step == len(batches) - 1:
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / max(token_count, 1):.3f}", lr=f"{lr:.2e}",
                            tok_s=f"{(token_count - tokens_before) * world / elapsed:,.0f}")
        due = (config.run.checkpoint_every and (step + 1) % config.run.checkpoint_every == 0) or (
            config.run.checkpoint_minutes and time.perf_counter() - last_save >= 60 * config.run.checkpoint_minutes)
        if due and step + 1 < len(batches) and rank == 0:
            state.step, state.partial = step + 1, (loss_sum, token_count)
            state.save(checkpoint_path)
            last_save = time.perf_counter()
    bar.close()
    seconds = time.perf_counter() - started
    total_loss, total_tokens = _all_sum([loss_sum, token_count], device)
    state.history.append({"epoch": epoch + 1, "train_loss": total_loss / max(total_tokens, 1), "val_loss": None,
                          "seconds": seconds, "steps": len(batches), "tokens": int(total_tokens),
                          "tokens_per_s": (total_tokens - tokens_before * world) / max(seconds, 1e-9), "lr": lr})


def _end_epoch(config: TrainConfig, state: RunState, record: dict, run: Path, corpus: Corpus, max_len: int) -> None:
    """Export the model when the selection measure improved (or when there is none to go by)."""
    score = _selection_score(config, record)
    if score is None or score > state.best:
        state.best = score if score is not None else state.best
        export_model(run / "model", state.model, corpus.data, config, max_len, state.history)
    shown = {k: record[k] for k in ("train_loss", "val_loss", "bleu4", "cider", "distinct", "vocabulary",
                                    "top_caption_share") if record.get(k) is not None}
    log.info("epoch %d: %s, %.1f s", record["epoch"], ", ".join(f"{k} {v:.4f}" for k, v in shown.items()),
             record["seconds"])
