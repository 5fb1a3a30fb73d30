"""`artcap experiment recipes`: choose between training recipes by k-fold cross-validation by painting.

Why: the val split (119 paintings of artemis-mini) is too small to tell recipes apart; choices made on it flipped
on test. Here every recipe (a training config, with `--seeds` once per seed) is trained K times. Run k trains on
K - 1 of K shares of the training paintings, picks its epoch on the val split as a normal run does, and captions
share k, which it never saw. Pooled over the K runs, every training painting (about 2,000 on artemis-mini, 17 times
val) is captioned once per recipe by a model that did not train on it. Recipes are then compared painting by
painting with the paired bootstrap of `artcap compare`, and a recipe is called better only when the paired interval
excludes 0. The test paintings stay out of every run. Two seeds of one recipe give the stability check: each must
land inside the other's interval.

Layout: ``DIR/<recipe>/fold-<k>/`` (a run folder; its splits.json names share k "test"), with
``out_of_fold.json`` (share k's captions, plain and under each emotion) beside its model; ``DIR/report.md`` and
``DIR/results.json``. Finished runs are skipped, interrupted ones resumed, captions reused while newer than the
model, so running the command again only rebuilds the report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import bootstrap
from .config import TrainConfig, load_config
from .errors import ArtcapError
from .io import atomic_write_json, atomic_write_text

log = logging.getLogger("artcap")

CAPTIONS_FILE = "out_of_fold.json"
# A challenger must not lose these to win on CIDEr-D: what makes the default steerable and varied. (The absolute
# gates, >= 60% each, are for a model trained on every training painting: docs/models.md.)
GUARDED = ("steerability", "distinct")
CHOICE_MEASURE = "CIDEr-D"


@dataclass(frozen=True)
class Recipe:
    name: str  # as reports show it: the config's stem, with " (seed N)" when several seeds run
    folder: str  # its folder under DIR
    config: TrainConfig
    config_name: str  # the config's stem: the seeds of one config are one recipe


def recipes_from(paths: list[Path], seeds: list[int], overrides: list[str]) -> list[Recipe]:
    """One Recipe per config and seed (`seeds` empty: each config's own seed)."""
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) < len(stems):
        raise ArtcapError(f"--config: two configs share a name ({', '.join(stems)}); rename one, since its name "
                          f"names its folder and its row")
    recipes = []
    for path, stem in zip(paths, stems):
        config = load_config(path, overrides)
        for seed in seeds or [config.run.seed]:
            # The folder names the seed either way, so runs of one seed are shared by the studies that name it.
            name = stem if not seeds else f"{stem} (seed {seed})"
            recipes.append(Recipe(name, f"{stem}-seed{seed}", config.replaced({"run.seed": seed}), stem))
    return recipes


def out_of_fold_splits(config: TrainConfig, folds: int) -> list[dict[str, list[str]]]:
    """Fold k: train on all shares of the training paintings but the k-th, validate on the data's val split,
    caption ("test") the k-th share. The data's test paintings are in none of them."""
    from .experiment import training_shares

    shares, splits = training_shares(config, folds)
    return [{"train": sorted(i for j, share in enumerate(shares) if j != k for i in share),
             "val": list(splits["val"]), "test": share} for k, share in enumerate(shares)]


def caption_share(run: Path, config: TrainConfig, progress: bool) -> dict[str, Any]:
    """The run's captions of its held-out share: {"ids", "captions", "steered": {emotion: captions}}, written to
    run/out_of_fold.json and reused while newer than the model."""
    from .captioner import Captioner
    from .data import EMOTIONS
    from .evaluate import caption_all, load_evaluation_set
    from .experiment import read_if_fresh

    path = run / CAPTIONS_FILE
    earlier = read_if_fresh(path, run / "model" / "model.safetensors")
    if earlier is not None:
        return earlier
    captioner = Captioner.load(run / "model")
    evalset = load_evaluation_set(captioner, config.data.captions, config.data.images, "test",
                                  config.encoder.feature_cache, config.data.skip_missing, progress)
    decoding = captioner.resolve_decoding()
    result = {"ids": evalset.ids,
              "captions": caption_all(captioner, evalset.features, progress=progress, decoding=decoding,
                                      desc=f"captioning {run}"),
              "steered": ({e: caption_all(captioner, evalset.features, progress=False, decoding=decoding, emotion=e)
                           for e in EMOTIONS} if captioner.is_grounded else {})}
    atomic_write_json(path, result)
    return result


def pool(shares: list[dict[str, Any]]) -> dict[str, Any]:
    """The K shares' captions as one set over every training painting."""
    ids = [i for s in shares for i in s["ids"]]
    if len(set(ids)) != len(ids):
        raise ArtcapError("the folds' shares overlap: their runs were made with different split seeds or fold "
                          "counts; use a fresh --out")
    emotions = set.intersection(*(set(s["steered"]) for s in shares))
    return {"ids": ids, "captions": [c for s in shares for c in s["captions"]],
            "steered": {e: [c for s in shares for c in s["steered"][e]] for e in sorted(emotions)}}


def score_pooled(pooled: dict[str, Any], references: dict[str, list[str]], annotations, judge,
                 with_meteor: bool) -> dict[str, bootstrap.Statistic]:
    """Every measure of `artcap evaluate` (but copied-from-training: each run trained on other paintings) as a
    bootstrap statistic over the pooled paintings, plus alignment and steerability when the data has emotions."""
    from .compare import model_emotion_statistics
    from .evaluate import score_system

    scores = score_system(pooled["ids"], pooled["captions"], references, None, with_meteor)
    statistics = dict(scores["statistics"])
    if judge is not None:
        statistics.update(model_emotion_statistics(judge, annotations, pooled["ids"], pooled["captions"],
                                                   pooled["steered"] or None))
    return statistics


def _judge_and_references(recipe: Recipe, out: Path, ids: list[str]):
    """One text emotion judge for every recipe (the first recipe's first run's: the same judge for all, so
    alignment and steerability differ only by the captions), the data's rows, and the references of `ids`."""
    from .captioner import Captioner
    from .checkpoint import read_splits
    from .data import read_annotations, references
    from .evaluate_emotion import text_judge

    config, run = recipe.config, out / recipe.folder / "fold-1"
    annotations = read_annotations(config.data.captions, config.data.images, skip_missing=config.data.skip_missing)
    captioner = Captioner.load(run / "model")
    judge = None
    if all(a.emotion is not None for a in annotations):
        judge = text_judge(captioner, annotations, read_splits(run / "splits.json"), None)
    return judge, annotations, references(annotations, captioner.config.preset, ids)


def recipe_experiment(recipes: list[Recipe], folds: int, out: str | Path, with_meteor: bool = True,
                      resamples: int = bootstrap.DEFAULT_RESAMPLES, progress: bool = True,
                      command: list[str] | None = None) -> dict[str, Any]:
    """Train every recipe on every fold, caption each held-out share, score the pooled captions and compare every
    recipe with the first (the incumbent) and each seed with the recipe's first seed. Writes DIR/report.md and
    DIR/results.json (`command`: the Reproduce line's arguments); returns the results."""
    from .compare import finite_or_none, method, paired_measures
    from .experiment import train_or_resume
    from .metrics import java_available

    if len(recipes) < 2:
        raise ArtcapError("experiment recipes: give two or more --config files (or one with --seeds 0,1)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if with_meteor and not java_available():
        log.warning("java not found on PATH: METEOR is left out (install a Java runtime to get it)")
        with_meteor = False
    started = time.perf_counter()
    pooled, actions = {}, {}
    for recipe in recipes:
        shares = []
        for k, splits in enumerate(out_of_fold_splits(recipe.config, folds), start=1):
            run = out / recipe.folder / f"fold-{k}"
            actions[f"{recipe.folder}/fold-{k}"] = train_or_resume(recipe.config, run, progress, splits)
            shares.append(caption_share(run, recipe.config, progress))
        pooled[recipe.name] = pool(shares)
    ids = pooled[recipes[0].name]["ids"]
    if any(sorted(p["ids"]) != sorted(ids) for p in pooled.values()):
        raise ArtcapError("the recipes' folds hold different paintings (their data or data.split_seed differ), so "
                          "no paired comparison; give recipes on the same data and split seed")
    judge, annotations, refs = _judge_and_references(recipes[0], out, ids)
    statistics = {name: score_pooled(p, refs, annotations, judge, with_meteor) for name, p in pooled.items()}
    weights = bootstrap.resample_weights(len(ids), resamples)
    results = {
        "experiment": "recipes", "folds": folds, "paintings": len(ids), "meteor": with_meteor,
        "method": method(resamples),
        "recipes": {r.name: r.folder for r in recipes}, "command": command or [],
        "scores": {name: {m: {"value": finite_or_none(s.value()), "interval": bootstrap.interval(s, weights)}
                          for m, s in stats.items()} for name, stats in statistics.items()},
        "against_incumbent": [paired_measures(statistics[recipes[0].name], statistics[r.name], recipes[0].name,
                                              r.name, weights)
                              for r in recipes[1:] if r.config_name != recipes[0].config_name],
        "seeds": [paired_measures(statistics[a.name], statistics[b.name], a.name, b.name, weights)
                  for a, b in seed_pairs(recipes)],
        "actions": actions,
    }
    results["choice"] = choose(results, recipes[0].name)
    results["seconds"] = time.perf_counter() - started
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", render_report(results, out))
    return results


def seed_pairs(recipes: list[Recipe]) -> list[tuple[Recipe, Recipe]]:
    """(first seed, other seed) of each config trained with several seeds."""
    by_config: dict[str, list[Recipe]] = {}
    for r in recipes:
        by_config.setdefault(r.config_name, []).append(r)
    return [(group[0], other) for group in by_config.values() for other in group[1:]]


def gate_failures(comparison: dict) -> list[str]:
    """Why a challenger may not replace the incumbent whatever its CIDEr-D: a kept measure (GUARDED) it lacks (an
    ungrounded recipe cannot be steered) or on which the paired interval shows it worse."""
    failures = []
    for measure in GUARDED:
        result = comparison["measures"].get(measure)
        if result is None or result["difference"] is None:
            failures.append(f"{measure} not measured (the recipe cannot be steered)" if measure == "steerability"
                            else f"{measure} not measured")
        elif result["verdict"] == f"{comparison['a']} better":
            failures.append(f"{measure} worse: {result['b']:.3f} against {result['a']:.3f}, difference "
                            f"[{-result['interval'][1]:+.3f}, {-result['interval'][0]:+.3f}]")
    return failures


def choose(results: dict, incumbent: str) -> dict[str, Any]:
    """The rule: a challenger replaces the incumbent only when its CIDEr-D is higher with a paired interval that
    excludes 0 and it is not worse on a GUARDED measure; among several, the largest CIDEr-D gain wins; otherwise the
    incumbent stays."""
    best, best_gain, reasons = incumbent, 0.0, []
    for comparison in results["against_incumbent"]:
        name, failures = comparison["b"], gate_failures(comparison)
        measure = comparison["measures"].get(CHOICE_MEASURE)
        if failures:
            reasons.append(f"{name}: {'; '.join(failures)}")
        elif measure and measure["verdict"] == f"{name} better":
            gain = -measure["difference"]
            reasons.append(f"{name}: {CHOICE_MEASURE} better by {gain:.3f} "
                           f"[{-measure['interval'][1]:.3f}, {-measure['interval'][0]:.3f}]")
            if gain > best_gain:
                best, best_gain = name, gain
        else:
            reasons.append(f"{name}: {CHOICE_MEASURE} {measure['verdict'] if measure else 'not measured'}")
    return {"chosen": best, "incumbent": incumbent, "reasons": reasons}


def stability_lines(comparison: dict, scores: dict[str, dict]) -> list[str]:
    """Whether each seed's value lies inside the other seed's interval, and where the paired interval excludes 0."""
    a, b = comparison["a"], comparison["b"]
    outside = [m for m in comparison["measures"]
               if not (_inside(scores[a].get(m), scores[b].get(m)) and _inside(scores[b].get(m), scores[a].get(m)))]
    differing = [m for m, v in comparison["measures"].items() if v["verdict"] != "no difference shown"]
    return [f"- **{a} against {b}**: "
            + ("each lands inside the other's 95% interval on every measure" if not outside else
               f"outside the other's interval on {', '.join(outside)}")
            + ("; no paired difference excludes 0." if not differing else
               f"; paired differences that exclude 0: {', '.join(differing)}.")]


def _inside(score: dict | None, other: dict | None) -> bool:
    if not score or not other or score["value"] is None or None in other["interval"]:
        return True
    low, high = other["interval"]
    return low - 1e-12 <= score["value"] <= high + 1e-12


def render_report(results: dict, out: Path) -> str:
    from .compare import MEASURE_ORDER, render_markdown
    from .metrics import format_markdown_table

    scores = results["scores"]
    columns = [m for m in MEASURE_ORDER if any(m in s for s in scores.values()) and not m.startswith("steerability:")]
    rows = {name: {m: v["value"] for m, v in s.items()} for name, s in scores.items()}
    intervals = {name: {m: v["interval"] for m, v in s.items()} for name, s in scores.items()}
    choice = results["choice"]
    lines = [f"# Recipes compared by {results['folds']}-fold cross-validation by painting", "",
             f"Each recipe was trained {results['folds']} times, each run on all but one share of the training "
             f"paintings, and captioned the share it did not see: {results['paintings']} paintings, each captioned "
             f"once per recipe by a model that never trained on it (test paintings left out). Every value with its "
             f"95% bootstrap interval over the paintings; {results['method']}.", "",
             format_markdown_table(rows, columns, "recipe", intervals=intervals)]
    if results["against_incumbent"]:
        lines += [f"## Choice: **{choice['chosen']}**", "",
                  f"Rule: a challenger replaces {choice['incumbent']} only when its {CHOICE_MEASURE} is higher with a "
                  f"paired interval that excludes 0 and it is not worse (paired) on {' or '.join(GUARDED)}.", "",
                  *[f"- {r}" for r in choice["reasons"]], ""]
    for comparison in results["against_incumbent"]:
        lines += [f"## {comparison['a']} against {comparison['b']} (paired)", "", render_markdown(comparison)]
    if results["seeds"]:
        lines += ["## The same recipe trained with two seeds", ""]
        for comparison in results["seeds"]:
            lines += stability_lines(comparison, scores) + ["", render_markdown(comparison)]
    if results["command"]:
        import shlex

        lines.append(f"Reproduce: `{shlex.join(results['command'])}` (finished runs are skipped; each run's "
                     f"config.toml holds what it trained with).")
    return "\n".join(lines) + "\n"
