"""`artcap experiment steps-per-epoch`: the research report's study, reproduced and extended.

One training run per grid point (``DIR/steps-<n>/``), each evaluated on the test split, then the
report's table (runtime per epoch, final loss, BLEU) extended with val loss and every metric of
``artcap evaluate``, loss curves for all runs (the report's Figures 2 and 3), and a markdown report.

Resumable at every level: a finished run (history holds all epochs) is not retrained, an
interrupted one resumes from its checkpoint, and a run's evaluation (``steps-<n>/evaluation/``)
is reused while it is newer than the run's model. Running the command again therefore only
rebuilds ``report.md``, ``results.json`` and ``loss_curves.png``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from .config import TrainConfig, load_config
from .settings import bounded
from .errors import ArtcapError
from .io import atomic_write_json, atomic_write_text
from .metrics import COCO_KEYS, format_markdown_table

log = logging.getLogger("artcap")

# Scaled to artemis-mini (about 10,000 training captions = 160 batches of 64 per pass) so the whole
# study — 4 runs, their evaluation and the report — finishes in under 20 minutes on a 2-core CPU.
QUICK = {"grid": [10, 20, 40, 80], "epochs": 3}
MAX_STEPS, MAX_EPOCHS = 1_000_000, 100_000
CONFIG_FILE = "experiment.toml"  # the config every run of the study trained with (the report's Reproduce line)
PAPER = {"grid": [50, 100, 1000, 2000, 5000, 7000, 10000], "epochs": 10}
REPORT_COLUMNS = ["s/epoch", "final train loss", "final val loss", "best val loss", *COCO_KEYS, "paper BLEU-4",
                  "grounding", "distinct", "copied"]


def _history(run: Path) -> list[dict]:
    path = run / "history.json"
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())
    except ValueError:
        return []  # written atomically, so this only happens if someone edited it: retrain from checkpoint


def is_finished(run: Path, epochs: int) -> bool:
    return len(_history(run)) >= epochs and (run / "model" / "config.json").is_file()


def train_point(config: TrainConfig, steps: int, epochs: int, out: Path, progress: bool = True) -> tuple[Path, str]:
    """Train (or resume, or skip) one grid point; returns (run folder, what happened)."""
    from .train import train

    run = out / f"steps-{steps}"
    if is_finished(run, epochs):
        log.info("%s: finished (%d epochs), skipped", run, epochs)
        return run, "skipped"
    cfg = config.replaced({"optim.steps_per_epoch": steps, "optim.epochs": epochs, "run.out": str(run)})
    resume = (run / "checkpoint.pt").is_file()
    log.info("%s: %s (%d steps x %d epochs)", run, "resuming" if resume else "training", steps, epochs)
    train(cfg, resume=resume, progress=progress)
    return run, "resumed" if resume else "trained"


def evaluate_point(run: Path, config: TrainConfig, with_meteor: bool, progress: bool) -> dict:
    """The run's test-split scores, reused from ``run/evaluation/scores.json`` while still current."""
    from .evaluate import evaluate

    scores_path = run / "evaluation" / "scores.json"
    model_file = run / "model" / "model.safetensors"
    if scores_path.is_file() and scores_path.stat().st_mtime >= model_file.stat().st_mtime:
        try:
            return json.loads(scores_path.read_text())
        except ValueError:
            pass
    return evaluate(run, config.data.captions, config.data.images, split="test", with_meteor=with_meteor,
                    out_dir=run / "evaluation", feature_cache=config.encoder.feature_cache,
                    skip_missing=config.data.skip_missing, progress=progress)


def _row(steps: int, history: list[dict], scores: dict) -> dict:
    model = scores["systems"][scores["model"]]
    val = [h["val_loss"] for h in history if not math.isnan(h["val_loss"])]
    return {
        "steps_per_epoch": steps,
        "epochs": len(history),
        "s/epoch": sum(h["seconds"] for h in history) / len(history),
        "final train loss": history[-1]["train_loss"],
        "final val loss": history[-1]["val_loss"],
        "best val loss": min(val) if val else None,
        **model["coco"],
        "paper BLEU-4": model["paper_bleu"]["mean"],
        "grounding": model["grounding"],
        "distinct": model["diversity"]["distinct_captions"],
        "copied": model["diversity"].get("copied_from_training"),
    }


def steps_per_epoch_experiment(config: TrainConfig, grid: list[int], epochs: int, out: str | Path,
                               with_meteor: bool = True, progress: bool = True) -> dict:
    """Train every grid point (skipping finished runs), evaluate each, write the report. Returns results."""
    from .plots import plot_losses

    if not grid or any(isinstance(n, bool) or not 1 <= n <= MAX_STEPS for n in grid):
        raise ArtcapError(f"--grid {grid}: give step counts from 1 to {MAX_STEPS}, e.g. --grid 50,100,1000")
    if not 1 <= epochs <= MAX_EPOCHS:
        raise ArtcapError(f"--epochs {epochs}: must be from 1 to {MAX_EPOCHS}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / CONFIG_FILE)  # what the Reproduce line names: --set and --quick's changes included
    started = time.perf_counter()
    actions = {}
    for steps in grid:
        _, actions[steps] = train_point(config, steps, epochs, out, progress)
    rows, histories, evaluations = {}, {}, {}
    for steps in grid:
        run = out / f"steps-{steps}"
        history = _history(run)[:epochs]
        scores = evaluate_point(run, config, with_meteor, progress)
        histories[f"{steps} steps"] = history
        evaluations[steps] = scores
        rows[steps] = _row(steps, history, scores)
    plot_losses(histories, out / "loss_curves.png", title="Steps per epoch: train (solid) and val (dashed) loss")
    results = {
        "experiment": "steps-per-epoch",
        "grid": grid,
        "epochs": epochs,
        "meteor": with_meteor,
        "config": {k: v for k, v in config.dotted().items()
                   if k not in ("run.out", "optim.steps_per_epoch", "optim.epochs")},
        "actions": {str(k): v for k, v in actions.items()},
        "rows": [rows[s] for s in grid],
        "histories": {str(s): _history(out / f"steps-{s}")[:epochs] for s in grid},
        "test_paintings": next(iter(evaluations.values()))["paintings"],
        "seconds": time.perf_counter() - started,
    }
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", render_report(results, out))
    return results


def render_report(results: dict, out: Path) -> str:
    c = results["config"]
    table = format_markdown_table({f"{r['steps_per_epoch']}": r for r in results["rows"]}, REPORT_COLUMNS,
                                  "steps/epoch")
    lines = [
        "# Steps per epoch: how much training per epoch does the merge decoder need?",
        "",
        f"One run per grid point, {results['epochs']} epochs each, batch {c['optim.batch_size']}, lr "
        f"{c['optim.lr']}, encoder `{c['encoder.name']}`, preset `{c['data.preset']}`, data `{c['data.captions']}`. "
        f"Every run is scored on the same {results['test_paintings']} held-out test paintings with `artcap evaluate` "
        f"(COCO caption metrics on PTB tokens, all references per painting; the model's own decoding defaults, "
        f"beam {c['decoding.beam']}).",
        "",
        table,
        "s/epoch: mean wall-clock seconds per epoch on this machine; losses: cross-entropy per token "
        "(val loss with dropout off); paper BLEU-4: mean per-painting smoothed BLEU-4 (the report's measure); "
        "grounding: CIDEr-D against own minus another painting's references; distinct: share of distinct "
        "captions; copied: share copied verbatim from training.",
        "",
        "## Loss curves (the report's Figures 2 and 3)",
        "",
        "![train and val loss per epoch for every run](loss_curves.png)",
        "",
    ]
    for steps in results["grid"]:
        if (out / f"steps-{steps}" / "loss.png").is_file():
            lines.append(f"- [{steps} steps per epoch](steps-{steps}/loss.png): "
                         f"[scores](steps-{steps}/evaluation/scores.md)")
    lines += ["", f"Reproduce: `{reproduce_command(results, out)}` (finished runs are skipped)."]
    return "\n".join(lines) + "\n"


def reproduce_command(results: dict, out: Path) -> str:
    """The command that ran this study: with the config it trained with (written beside the report),
    so it runs as printed."""
    import shlex

    command = ["artcap", "experiment", "steps-per-epoch", "--config", str(out / CONFIG_FILE),
               "--grid", ",".join(map(str, results["grid"])), "--epochs", str(results["epochs"]), "--out", str(out)]
    if not results.get("meteor", True):
        command.append("--no-meteor")
    return shlex.join(command)


def _parse_grid(text: str) -> list[int]:
    try:
        grid = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ArtcapError(f"--grid {text!r}: expected comma-separated integers, e.g. 50,100,1000") from None
    if not grid or min(grid) < 1:  # an empty grid must not mean "the default grid" (hours of training)
        raise ArtcapError(f"--grid {text!r}: expected one or more steps per epoch of 1 or more, e.g. 50,100,1000")
    return list(dict.fromkeys(grid))


# ---- CLI ----------------------------------------------------------------------------------------


def add_experiment_parser(sub) -> None:
    p = sub.add_parser("experiment", help="reproduce the report's experiments (steps per epoch)",
                       description="Run a training study, evaluate every run on the test split and write a "
                                   "markdown report with the table and loss curves. Finished runs are skipped, "
                                   "interrupted ones resumed, so re-running only rebuilds the report.")
    p.add_argument("study", choices=["steps-per-epoch"], help="which study")
    p.add_argument("--grid", default=None,
                   help=f"steps per epoch, comma-separated (default: {','.join(map(str, PAPER['grid']))}; "
                        f"--quick: {','.join(map(str, QUICK['grid']))})")
    p.add_argument("--epochs", type=bounded(int, 1, MAX_EPOCHS), default=None,
                   help=f"epochs per run (default: {PAPER['epochs']}; --quick: {QUICK['epochs']})")
    p.add_argument("--quick", action="store_true",
                   help="a preset scaled to artemis-mini that finishes in under 20 minutes on 2 CPU cores")
    p.add_argument("--config", type=Path, default=None, help="TOML training config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override a config setting (repeatable), e.g. --set decoder.hidden_dim=512")
    p.add_argument("--data", default=None, help="ArtEmis CSV (config key: data.captions)")
    p.add_argument("--images", default=None, help="image folder (config key: data.images)")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR in the evaluations")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the runs and the report")
    p.set_defaults(func=run_experiment)


def run_experiment(args) -> int:
    preset = QUICK if args.quick else PAPER
    grid = _parse_grid(args.grid) if args.grid is not None else preset["grid"]
    epochs = args.epochs if args.epochs is not None else preset["epochs"]
    overrides = list(args.overrides)
    for flag, key in (("data", "data.captions"), ("images", "data.images")):
        if getattr(args, flag):
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.quick:
        overrides = ["encoder.num_workers=0", *overrides]
    config = load_config(args.config, overrides)
    results = steps_per_epoch_experiment(config, grid, epochs, args.out, with_meteor=not args.no_meteor,
                                         progress=not getattr(args, "quiet", False))
    print(format_markdown_table({f"{r['steps_per_epoch']}": r for r in results["rows"]}, REPORT_COLUMNS,
                                "steps/epoch"), end="")
    log.info("report: %s (%.0f s)", Path(args.out) / "report.md", results["seconds"])
    return 0
