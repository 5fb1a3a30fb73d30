"""`artcap experiment recipes`: recipes trained on K folds of the training paintings, each fold's held-out share
captioned by a model that never saw it, the pooled captions compared with paired intervals."""

import json
import re
import shlex

from pathlib import Path

import pytest

from conftest import tiny_config

from artcap.cli import main
from artcap.recipes import choose, recipe_experiment, recipes_from


def _write_recipe(tmp_path, name, artemis_subset, feature_cache_dir, **overrides):
    config = tiny_config(artemis_subset, feature_cache_dir, tmp_path / "unused",
                         **{"optim.epochs": 1, "decoder.embed_dim": 32, "decoder.hidden_dim": 32,
                            "emotion.grounded": True, "emotion.head": True, **overrides})
    path = tmp_path / f"{name}.toml"
    config.save(path)
    return path


@pytest.mark.slow
def test_recipes_caption_every_training_painting_once_with_a_model_that_never_saw_it(artemis_subset,
                                                                                    feature_cache_dir, tmp_path):
    same = _write_recipe(tmp_path, "incumbent", artemis_subset, feature_cache_dir)
    twin = tmp_path / "twin.toml"
    twin.write_text(same.read_text())
    small = _write_recipe(tmp_path, "small", artemis_subset, feature_cache_dir, **{"decoder.hidden_dim": 16})
    out = tmp_path / "study"
    recipes = recipes_from([same, twin, small], [], [])
    results = recipe_experiment(recipes, 2, out, with_meteor=False, resamples=200, progress=False,
                                command=["artcap", "experiment", "recipes", "--config", str(same), "--config",
                                         str(twin), "--config", str(small), "--folds", "2", "--resamples", "200",
                                         "--out", str(out), "--no-meteor"])
    assert set(results["actions"].values()) == {"trained"} and len(results["actions"]) == 6

    # The shares: disjoint, together the data's training paintings; test paintings in no run; val as the data's.
    from artcap.data import make_splits, read_annotations

    data_splits = make_splits({a.image_id for a in read_annotations(*artemis_subset)}, 2021)
    folds = [json.loads((out / "incumbent-seed0" / f"fold-{k}" / "splits.json").read_text()) for k in (1, 2)]
    held_out = [set(f["test"]) for f in folds]
    every_training = set(folds[0]["train"]) | held_out[0]
    assert every_training == set(data_splits["train"])
    assert sum(map(len, held_out)) == len(every_training) == results["paintings"]
    for fold, share in zip(folds, held_out):
        assert not set(fold["train"]) & share and set(fold["train"]) | share == every_training
        assert set(fold["val"]) == set(data_splits["val"]) and not set(fold["test"]) & set(data_splits["test"])
    captioned = [json.loads((out / "incumbent-seed0" / f"fold-{k}" / "out_of_fold.json").read_text())
                 for k in (1, 2)]
    assert [set(c["ids"]) for c in captioned] == held_out
    assert all(len(c["steered"]) == 9 and all(len(v) == len(c["ids"]) for v in c["steered"].values())
               for c in captioned)

    # Training is deterministic, so a copy of the incumbent's recipe differs by exactly 0 on every measure.
    twin_result, small_result = results["against_incumbent"]
    assert all(m["difference"] in (0.0, None) and m["verdict"] == "no difference shown"
               for m in twin_result["measures"].values())
    assert any(m["difference"] for m in small_result["measures"].values())
    for name, scores in results["scores"].items():
        for measure in ("CIDEr-D", "BLEU-4", "grounding", "distinct", "steerability"):
            low, high = scores[measure]["interval"]
            assert low <= scores[measure]["value"] <= high, (name, measure)
    assert results["choice"]["reasons"][0] == "twin: CIDEr-D no difference shown"
    assert results["choice"]["chosen"] in ("incumbent", "small")

    # Running it again only rebuilds the report; the Reproduce line runs as printed.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/fold-*/out_of_fold.json")}
    line = re.search(r"Reproduce: `([^`]+)`", (out / "report.md").read_text()).group(1)
    assert main(shlex.split(line)[1:] + ["-q"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert set(again["actions"].values()) == {"skipped"} and again["scores"] == results["scores"]
    assert re.search(r"Reproduce: `([^`]+)`", (out / "report.md").read_text()).group(1) == line
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.slow
def test_seeds_train_one_recipe_twice_and_report_whether_each_lands_in_the_others_interval(
        artemis_subset, feature_cache_dir, tmp_path):
    path = _write_recipe(tmp_path, "recipe", artemis_subset, feature_cache_dir)
    recipes = recipes_from([path], [0, 1], [])
    assert [r.name for r in recipes] == ["recipe (seed 0)", "recipe (seed 1)"]
    results = recipe_experiment(recipes, 2, tmp_path / "study", with_meteor=False, resamples=200, progress=False)
    (pair,) = results["seeds"]
    assert (pair["a"], pair["b"]) == ("recipe (seed 0)", "recipe (seed 1)")
    assert any(m["difference"] for m in pair["measures"].values())  # two seeds: two different models
    report = (tmp_path / "study" / "report.md").read_text()
    assert "## The same recipe trained with two seeds" in report
    assert re.search(r"\*\*recipe \(seed 0\) against recipe \(seed 1\)\*\*: (each lands inside|outside)", report)


def _comparison(name, cider, steerability=(0.0, [-0.01, 0.01]), distinct=(0.0, [-0.01, 0.01])):
    """A paired comparison incumbent - `name`: (difference, interval) per measure, verdicts as compare gives them."""
    measures = {}
    for measure, value in (("CIDEr-D", cider), ("steerability", steerability), ("distinct", distinct)):
        if value is None:
            continue
        difference, interval = value
        verdict = "no difference shown" if interval[0] <= 0 <= interval[1] else (
            f"{name} better" if difference < 0 else "incumbent better")
        measures[measure] = {"a": 0.6, "b": 0.6 - difference, "difference": difference, "interval": interval,
                             "verdict": verdict}
    return {"a": "incumbent", "b": name, "measures": measures}


def test_choice_needs_a_cider_interval_that_excludes_zero_and_no_loss_on_steering_or_variety():
    results = {"against_incumbent": [
        _comparison("unsteerable", (-0.05, [-0.07, -0.03]), steerability=None),
        _comparison("less steerable", (-0.05, [-0.07, -0.03]), steerability=(0.05, [0.02, 0.08])),
        _comparison("noise", (-0.01, [-0.02, 0.005])),
        _comparison("better", (-0.02, [-0.03, -0.01])),
        _comparison("best", (-0.03, [-0.04, -0.02]), distinct=(0.01, [-0.01, 0.03]))]}
    choice = choose(results, "incumbent")
    assert choice["chosen"] == "best"
    assert choice["reasons"][0] == "unsteerable: steerability not measured (the recipe cannot be steered)"
    assert choice["reasons"][1].startswith("less steerable: steerability worse")
    assert choice["reasons"][2] == "noise: CIDEr-D no difference shown"
    results["against_incumbent"] = results["against_incumbent"][:3]
    assert choose(results, "incumbent")["chosen"] == "incumbent"


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("args, named", [
    (["--config", str(CONFIGS / "default.toml")], "two or more"),
    (["--config", str(CONFIGS / "default.toml"), "--seeds", "0,x"], "--seeds"),
    (["--config", str(CONFIGS / "default.toml"), "--seeds", "1,1"], "--seeds"),
    (["--config", str(CONFIGS / "default.toml"), "--config", str(CONFIGS / "default.toml")], "share a name"),
    (["--config", str(CONFIGS / "default.toml"), "--config", str(CONFIGS / "fast.toml"), "--grid", "5"], "--grid"),
    (["--config", str(CONFIGS / "default.toml"), "--config", str(CONFIGS / "fast.toml"), "--quick"], "--quick"),
    (["--config", str(CONFIGS / "default.toml"), "--config", str(CONFIGS / "missing.toml")], "missing.toml"),
])
def test_bad_recipe_arguments_fail_in_one_line_before_any_training(args, named, capsys, tmp_path):
    out = tmp_path / "study"
    assert main(["experiment", "recipes", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert named in err and err.strip().count("\n") == 0 and not out.exists()
