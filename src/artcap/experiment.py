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
import random
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
MIN_FOLDS, MAX_FOLDS = 2, 20
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


def train_or_resume(config: TrainConfig, run: Path, progress: bool = True,
                    splits: dict[str, list[str]] | None = None) -> str:
    """Train the run `config` describes into `run`, resume it from its checkpoint, or skip it when finished;
    returns what happened ("trained", "resumed", "skipped")."""
    from .train import train

    if is_finished(run, config.optim.epochs):
        log.info("%s: finished (%d epochs), skipped", run, config.optim.epochs)
        return "skipped"
    resume = (run / "checkpoint.pt").is_file()
    log.info("%s: %s", run, "resuming" if resume else "training")
    train(config.replaced({"run.out": str(run)}), resume=resume, progress=progress, splits=splits)
    return "resumed" if resume else "trained"


def read_if_fresh(path: Path, source: Path) -> dict | None:
    """The JSON at `path` while it is at least as new as `source` (what it was computed from), else None."""
    if path.is_file() and path.stat().st_mtime >= source.stat().st_mtime:
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass  # written atomically: only a hand edit gets here; compute it again
    return None


def train_point(config: TrainConfig, steps: int, epochs: int, out: Path, progress: bool = True,
                fold: tuple[int, dict[str, list[str]]] | None = None) -> tuple[Path, str]:
    """Train (or resume, or skip) one grid point, or (`fold`: (k, its splits)) its k-th cross-validation run;
    returns (run folder, what happened)."""
    run = out / (f"steps-{steps}" if fold is None else f"steps-{steps}-fold-{fold[0]}")
    cfg = config.replaced({"optim.steps_per_epoch": steps, "optim.epochs": epochs})
    return run, train_or_resume(cfg, run, progress, None if fold is None else fold[1])


def training_shares(config: TrainConfig, folds: int) -> tuple[list[list[str]], dict[str, list[str]]]:
    """The training paintings of the split the data's seed makes, shuffled (seed split_seed + 1) and dealt into
    `folds` shares, and that split."""
    from .data import make_splits, read_annotations

    annotations = read_annotations(config.data.captions, config.data.images, skip_missing=config.data.skip_missing)
    splits = make_splits({a.image_id for a in annotations}, config.data.split_seed)
    train_ids = list(splits["train"])
    random.Random(config.data.split_seed + 1).shuffle(train_ids)
    return [sorted(train_ids[k::folds]) for k in range(folds)], splits


def fold_splits(config: TrainConfig, folds: int) -> list[dict[str, list[str]]]:
    """K-fold cross-validation by painting on the training paintings: fold k validates on the k-th share and trains
    on the rest; the test paintings stay out of every fold."""
    shares, splits = training_shares(config, folds)
    return [{"train": sorted(i for j, share in enumerate(shares) if j != k for i in share), "val": shares[k],
             "test": list(splits["test"])} for k in range(folds)]


def validation_measure(config: TrainConfig) -> str:
    """The history key of the measure that picks each run's exported epoch (cider_distinct reports its CIDEr-D)."""
    return {"val_loss": "val_loss", "cider_distinct": "cider"}.get(config.optim.select_by, config.optim.select_by)


def fold_score(config: TrainConfig, history: list[dict]) -> float:
    """The validation measure at the epoch the run exported (the one its selection rule scores best)."""
    from .train import _selection_score

    scored = [h for h in history if _selection_score(config, h) is not None]
    return float(max(scored, key=lambda h: _selection_score(config, h))[validation_measure(config)])


def cross_validation(scores: list[float]) -> dict:
    """Mean over the folds with its 95% Student-t interval (the folds are few: no bootstrap)."""
    from scipy import stats

    values = [float(v) for v in scores]
    mean = sum(values) / len(values)
    half = float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)) if len(set(values)) > 1 else 0.0
    return {"folds": values, "mean": mean, "low": mean - half, "high": mean + half}


def evaluate_point(run: Path, config: TrainConfig, with_meteor: bool, progress: bool) -> dict:
    """The run's test-split scores, reused from ``run/evaluation/scores.json`` while still current."""
    from .evaluate import evaluate

    scores = read_if_fresh(run / "evaluation" / "scores.json", run / "model" / "model.safetensors")
    if scores is not None:
        return scores
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
                               with_meteor: bool = True, progress: bool = True, folds: int = 0) -> dict:
    """Train every grid point (skipping finished runs), evaluate each, write the report. Returns results.
    `folds` K >= 2: each point is also trained K times, once per cross-validation fold of the training paintings
    (fold_splits), and its row gets the validation measure's mean over the folds with a 95% interval."""
    from .plots import plot_losses

    if not grid or any(isinstance(n, bool) or not 1 <= n <= MAX_STEPS for n in grid):
        raise ArtcapError(f"--grid {grid}: give step counts from 1 to {MAX_STEPS}, e.g. --grid 50,100,1000")
    if not 1 <= epochs <= MAX_EPOCHS:
        raise ArtcapError(f"--epochs {epochs}: must be from 1 to {MAX_EPOCHS}")
    if folds and not MIN_FOLDS <= folds <= MAX_FOLDS:
        raise ArtcapError(f"--folds {folds}: must be from {MIN_FOLDS} to {MAX_FOLDS}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / CONFIG_FILE)  # what the Reproduce line names: --set and --quick's changes included
    started = time.perf_counter()
    actions = {}
    fold_list = list(enumerate(fold_splits(config, folds))) if folds else []
    for steps in grid:
        _, actions[steps] = train_point(config, steps, epochs, out, progress)
        for fold in fold_list:
            _, actions[f"{steps}-fold-{fold[0]}"] = train_point(config, steps, epochs, out, progress, fold)
    rows, histories, evaluations = {}, {}, {}
    for steps in grid:
        run = out / f"steps-{steps}"
        history = _history(run)[:epochs]
        scores = evaluate_point(run, config, with_meteor, progress)
        histories[f"{steps} steps"] = history
        evaluations[steps] = scores
        rows[steps] = _row(steps, history, scores)
        if folds:
            rows[steps]["cross-validation"] = cross_validation(
                [fold_score(config, _history(out / f"steps-{steps}-fold-{k}")[:epochs]) for k in range(folds)])
    plot_losses(histories, out / "loss_curves.png", title="Steps per epoch: train (solid) and val (dashed) loss")
    results = {
        "experiment": "steps-per-epoch",
        "grid": grid,
        "epochs": epochs,
        "meteor": with_meteor,
        "config": {k: v for k, v in config.dotted().items()
                   if k not in ("run.out", "optim.steps_per_epoch", "optim.epochs")},
        "folds": folds,
        "validation_measure": validation_measure(config),
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
    lines += cross_validation_lines(results)
    lines += ["", f"Reproduce: `{reproduce_command(results, out)}` (finished runs are skipped)."]
    return "\n".join(lines) + "\n"


def cross_validation_lines(results: dict) -> list[str]:
    """The report's cross-validation table: per grid point, the validation measure over the folds."""
    folds, measure = results.get("folds", 0), results.get("validation_measure", "val_loss")
    if not folds:
        return []
    lines = ["", f"## Cross-validation ({folds} folds of the training paintings)", "",
             f"Each point trained {folds} more times, each time validating on one of {folds} shares of the training "
             f"paintings and training on the others (split by painting; the test paintings stay out). `{measure}` "
             f"at the epoch each run exported, mean over the folds with a 95% Student-t interval.", "",
             f"| steps/epoch | {measure} mean | 95% interval | folds |", "|---:|---:|---:|---|"]
    for row in results["rows"]:
        cv = row["cross-validation"]
        lines.append(f"| {row['steps_per_epoch']} | {cv['mean']:.4f} | [{cv['low']:.4f}, {cv['high']:.4f}] | "
                     f"{', '.join(f'{v:.4f}' for v in cv['folds'])} |")
    return lines


def reproduce_command(results: dict, out: Path) -> str:
    """The command that ran this study: with the config it trained with (written beside the report),
    so it runs as printed."""
    import shlex

    command = ["artcap", "experiment", "steps-per-epoch", "--config", str(out / CONFIG_FILE),
               "--grid", ",".join(map(str, results["grid"])), "--epochs", str(results["epochs"]), "--out", str(out)]
    if not results.get("meteor", True):
        command.append("--no-meteor")
    if results.get("folds"):
        command += ["--folds", str(results["folds"])]
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
    p = sub.add_parser("experiment", help="training studies: the report's steps per epoch; recipes compared by "
                                          "cross-validation",
                       description="steps-per-epoch: run the report's study, evaluate every run on the test split "
                                   "and write a markdown report with the table and loss curves. recipes: train each "
                                   "--config on K folds of the training paintings, caption each held-out share and "
                                   "compare the recipes on the pooled paintings with paired intervals. Finished runs "
                                   "are skipped, interrupted ones resumed, so re-running only rebuilds the report.")
    p.add_argument("study", choices=["steps-per-epoch", "recipes"], help="which study")
    p.add_argument("--grid", default=None,
                   help=f"steps-per-epoch: steps per epoch, comma-separated (default: "
                        f"{','.join(map(str, PAPER['grid']))}; --quick: {','.join(map(str, QUICK['grid']))})")
    p.add_argument("--epochs", type=bounded(int, 1, MAX_EPOCHS), default=None,
                   help=f"steps-per-epoch: epochs per run (default: {PAPER['epochs']}; --quick: {QUICK['epochs']})")
    p.add_argument("--quick", action="store_true",
                   help="steps-per-epoch: a preset scaled to artemis-mini that finishes in under 20 minutes on 2 "
                        "CPU cores")
    p.add_argument("--config", type=Path, action="append", default=[],
                   help="TOML training config (see configs/); recipes: one per recipe, the first is the incumbent")
    p.add_argument("--seeds", default=None, metavar="N,N",
                   help="recipes: train every recipe once per seed, e.g. 0,1 (the stability check: two seeds of one "
                        "recipe must land inside each other's interval)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override a config setting (repeatable), e.g. --set decoder.hidden_dim=512")
    p.add_argument("--data", default=None, help="ArtEmis CSV (config key: data.captions)")
    p.add_argument("--images", default=None, help="image folder (config key: data.images)")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR in the evaluations")
    p.add_argument("--folds", type=bounded(int, MIN_FOLDS, MAX_FOLDS), default=0, metavar="K",
                   help="steps-per-epoch: also train each point on K cross-validation folds and report the "
                        "validation measure's mean with a 95%% interval; recipes: the number of folds (default 5)")
    p.add_argument("--resamples", type=bounded(int, 1, 100_000), default=1000,
                   help="recipes: bootstrap resamples of the paintings (default 1000)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the runs and the report")
    p.set_defaults(func=run_experiment)


def _overrides(args) -> list[str]:
    overrides = list(args.overrides)
    for flag, key in (("data", "data.captions"), ("images", "data.images")):
        if getattr(args, flag):
            overrides.append(f"{key}={getattr(args, flag)}")
    return overrides


def run_experiment(args) -> int:
    if args.study == "recipes":
        return run_recipes(args)
    if len(args.config) > 1:
        raise ArtcapError("experiment steps-per-epoch: give one --config (several are for experiment recipes)")
    preset = QUICK if args.quick else PAPER
    grid = _parse_grid(args.grid) if args.grid is not None else preset["grid"]
    epochs = args.epochs if args.epochs is not None else preset["epochs"]
    overrides = _overrides(args)
    if args.quick:
        overrides = ["encoder.num_workers=0", *overrides]
    config = load_config(args.config[0] if args.config else None, overrides)
    results = steps_per_epoch_experiment(config, grid, epochs, args.out, with_meteor=not args.no_meteor,
                                         progress=not getattr(args, "quiet", False), folds=args.folds)
    print(format_markdown_table({f"{r['steps_per_epoch']}": r for r in results["rows"]}, REPORT_COLUMNS,
                                "steps/epoch"), end="")
    log.info("report: %s (%.0f s)", Path(args.out) / "report.md", results["seconds"])
    return 0


def run_recipes(args) -> int:
    from .recipes import recipe_experiment, recipes_from

    for flag in ("grid", "epochs"):
        if getattr(args, flag) is not None:
            raise ArtcapError(f"experiment recipes: --{flag} is for steps-per-epoch; set a recipe's epochs in its "
                              f"config or with --set optim.epochs=N")
    if args.quick:
        raise ArtcapError("experiment recipes: --quick is for steps-per-epoch; use --set optim.epochs=N for short runs")
    seeds = _parse_seeds(args.seeds) if args.seeds is not None else []
    recipes = recipes_from(args.config, seeds, _overrides(args))
    results = recipe_experiment(recipes, args.folds or 5, args.out, with_meteor=not args.no_meteor,
                                resamples=args.resamples, progress=not getattr(args, "quiet", False),
                                command=_recipes_command(args))
    print(Path(args.out, "report.md").read_text(), end="")
    log.info("report: %s (%.0f s); chosen: %s", Path(args.out) / "report.md", results["seconds"],
             results["choice"]["chosen"])
    return 0


def _recipes_command(args) -> list[str]:
    """The command line that reruns this study as given (the Reproduce line): finished runs are skipped."""
    command = ["artcap", "experiment", "recipes"]
    for config in args.config:
        command += ["--config", str(config)]
    for flag in ("seeds", "data", "images"):
        if getattr(args, flag) is not None:
            command += [f"--{flag}", str(getattr(args, flag))]
    for override in args.overrides:
        command += ["--set", override]
    command += ["--folds", str(args.folds or 5), "--resamples", str(args.resamples), "--out", str(args.out)]
    return command + (["--no-meteor"] if args.no_meteor else [])


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise ArtcapError(f"--seeds {text!r}: expected distinct comma-separated integers of 0 or more, e.g. 0,1")
    return seeds
