"""`artcap experiment steps-per-epoch`: one run per grid point, resumable, report rebuilt from finished runs."""

import json
import re
import shlex

import pytest

from conftest import tiny_config

from artcap.cli import main
from artcap.experiment import steps_per_epoch_experiment


@pytest.mark.slow
def test_experiment_trains_each_point_once_and_rebuilds_the_report(artemis_subset, feature_cache_dir, tmp_path):
    out = tmp_path / "study"
    config = tiny_config(artemis_subset, feature_cache_dir, tmp_path / "unused",
                         **{"decoder.embed_dim": 32, "decoder.hidden_dim": 32})
    first = steps_per_epoch_experiment(config, [2, 3], 1, out, with_meteor=False, progress=False)
    assert first["actions"] == {"2": "trained", "3": "trained"}
    assert [r["steps_per_epoch"] for r in first["rows"]] == [2, 3]
    assert [json.loads((out / f"steps-{n}" / "history.json").read_text())[0]["steps"] for n in (2, 3)] == [2, 3]
    for row in first["rows"]:
        assert row["s/epoch"] > 0 and row["final val loss"] > 0 and 0 <= row["BLEU-4"] <= 1
    for name in ("report.md", "results.json", "loss_curves.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "![train and val loss per epoch for every run](loss_curves.png)" in report
    assert "| 2 |" in report and "| 3 |" in report

    # The report's Reproduce line runs as printed: the config it trained with is beside it, so nothing retrains.
    line = re.search(r"Reproduce: `([^`]+)`", report).group(1)
    assert "--config" in line and main(shlex.split(line)[1:] + ["-q"]) == 0
    assert json.loads((out / "results.json").read_text())["actions"] == {"2": "skipped", "3": "skipped"}

    checkpoints = {n: (out / f"steps-{n}" / "checkpoint.pt").stat().st_mtime_ns for n in (2, 3)}
    evaluations = {n: (out / f"steps-{n}" / "evaluation" / "scores.json").stat().st_mtime_ns for n in (2, 3)}
    report_before = (out / "report.md").stat().st_mtime_ns
    (out / "report.md").unlink()
    second = steps_per_epoch_experiment(config, [2, 3], 1, out, with_meteor=False, progress=False)
    assert second["actions"] == {"2": "skipped", "3": "skipped"}
    assert {n: (out / f"steps-{n}" / "checkpoint.pt").stat().st_mtime_ns for n in (2, 3)} == checkpoints
    assert {n: (out / f"steps-{n}" / "evaluation" / "scores.json").stat().st_mtime_ns for n in (2, 3)} == evaluations
    assert (out / "report.md").stat().st_mtime_ns > report_before
    assert second["rows"] == first["rows"]

    # More epochs: the run resumes from its checkpoint instead of starting over.
    third = steps_per_epoch_experiment(config, [2], 2, out, with_meteor=False, progress=False)
    assert third["actions"] == {"2": "resumed"}
    history = json.loads((out / "steps-2" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == first["histories"]["2"][0]


@pytest.mark.slow
def test_folds_cross_validate_each_point_on_disjoint_shares_of_the_training_paintings(artemis_subset,
                                                                                      feature_cache_dir, tmp_path):
    out = tmp_path / "study"
    config = tiny_config(artemis_subset, feature_cache_dir, tmp_path / "unused", embed_dim=32, hidden_dim=32)
    results = steps_per_epoch_experiment(config, [2], 1, out, with_meteor=False, progress=False, folds=3)
    assert results["actions"] == {"2": "trained", "2-fold-0": "trained", "2-fold-1": "trained", "2-fold-2": "trained"}
    main_splits = json.loads((out / "steps-2" / "splits.json").read_text())
    folds = [json.loads((out / f"steps-2-fold-{k}" / "splits.json").read_text()) for k in range(3)]
    vals = [set(f["val"]) for f in folds]
    assert set().union(*vals) == set(main_splits["train"]) and sum(map(len, vals)) == len(main_splits["train"])
    for fold, val in zip(folds, vals):
        assert set(fold["train"]) == set(main_splits["train"]) - val and fold["test"] == main_splits["test"]

    cv = results["rows"][0]["cross-validation"]
    losses = [json.loads((out / f"steps-2-fold-{k}" / "history.json").read_text())[0]["val_loss"] for k in range(3)]
    assert cv["folds"] == pytest.approx(losses) and cv["mean"] == pytest.approx(sum(losses) / 3)
    assert cv["low"] < cv["mean"] < cv["high"]
    report = (out / "report.md").read_text()
    assert "## Cross-validation (3 folds of the training paintings)" in report and "--folds 3" in report


def test_folds_out_of_range_fail_in_one_line(capsys, tmp_path):
    assert main(["experiment", "steps-per-epoch", "--out", str(tmp_path / "x"), "--folds", "1"]) == 2
    err = capsys.readouterr().err
    assert "--folds" in err and err.strip().count("\n") <= 1 and not (tmp_path / "x").exists()
