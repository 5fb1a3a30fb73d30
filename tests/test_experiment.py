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
