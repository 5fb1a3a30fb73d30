"""`artcap evaluate` on a real trained model and real artemis-mini paintings."""

import json
import math

import pytest

from artcap.evaluate import TABLE_COLUMNS, evaluate, score_system
from artcap.errors import ArtcapError
from artcap.metrics import COCO_KEYS, java_available


@pytest.mark.slow
def test_evaluate_scores_a_trained_model_and_both_baselines(tiny_run, artemis_subset, feature_cache_dir, tmp_path):
    csv_path, images = artemis_subset
    out = tmp_path / "eval"
    result = evaluate(tiny_run, csv_path, images, split="test", baselines=True, out_dir=out,
                      feature_cache=str(feature_cache_dir), progress=False)
    test_ids = json.loads((tiny_run / "splits.json").read_text())["test"]
    assert result["paintings"] == len(test_ids) > 2
    assert result["split_source"].endswith("splits.json")
    expected = [k for k in COCO_KEYS if k != "METEOR" or java_available()]
    assert set(result["systems"]) == {result["model"], "nearest-neighbour", "constant"}
    for name, scores in result["systems"].items():
        assert sorted(scores["coco"]) == sorted(expected), name
        assert all(math.isfinite(v) and v >= 0 for v in scores["coco"].values()), name
        assert 0 <= scores["paper_bleu"]["mean"] <= 1
        assert len(scores["paper_bleu"]["first_20"]) == min(20, len(test_ids))
        assert set(scores["diversity"]) == {"distinct_captions", "vocabulary", "mean_length", "copied_from_training"}
        assert math.isfinite(scores["grounding"])
    # Every measure of every row (systems and people) comes with a 95% interval around its value.
    from artcap.evaluate import COHERENCE_COLUMNS, table_row

    rows = {name: (table_row(scores), scores["intervals"]) for name, scores in result["systems"].items()}
    rows["human"] = (result["human_leave_one_out"]["row"], result["human_leave_one_out"]["intervals"])
    for name, (row, intervals) in rows.items():
        for column in [*TABLE_COLUMNS, *COHERENCE_COLUMNS]:
            if row.get(column) is None:
                continue
            low, high = intervals[column]
            assert low - 1e-12 <= row[column] <= high + 1e-12, (name, column, row[column], intervals[column])
    assert set(result["systems"][result["model"]]["coherence"]) == set(COHERENCE_COLUMNS)
    assert set(result["emotion"]["intervals"]) >= {f"alignment: {result['model']}", "alignment: human"}
    # One sentence for every painting is, by construction, perfectly ungrounded and always "copied".
    constant = result["systems"]["constant"]
    assert constant["grounding"] == pytest.approx(0.0, abs=1e-9)
    assert constant["diversity"]["copied_from_training"] == 1.0
    assert result["systems"]["nearest-neighbour"]["diversity"]["copied_from_training"] == 1.0

    predictions = json.loads((out / "predictions.json").read_text())
    assert [p["image"] for p in predictions] == sorted(test_ids)
    for p in predictions:
        assert p["caption"].strip() and p["references"] and set(p["baselines"]) == {"nearest-neighbour", "constant"}
    assert json.loads((out / "scores.json").read_text())["systems"] == json.loads(json.dumps(result["systems"]))
    table = (out / "scores.md").read_text()
    assert "| system | BLEU-1 |" in table and "| nearest-neighbour |" in table and "| constant |" in table
    assert "| system | mixed genders | dangling end | repeated clause | unfinished clause |" in table


def test_an_empty_prediction_is_scored_zero_not_a_crash():
    refs = {"a": ["a woman in a red dress", "the woman wears red"], "b": ["a dark stormy sea", "waves in a storm"],
            "c": ["bright yellow flowers", "a vase of yellow flowers"]}
    ids = sorted(refs)
    scores = score_system(ids, ["", "a dark stormy sea", "yellow flowers in a vase"], refs, None, with_meteor=False)
    assert scores["per_image_bleu4"]["a"] == 0.0
    assert scores["per_image_bleu4"]["b"] > 0.5
    assert scores["coco"]["BLEU-1"] > 0
    nothing = score_system(ids, ["", "", ""], refs, ["a dark stormy sea"], with_meteor=False)
    assert all(v == 0 for v in nothing["coco"].values())
    assert nothing["paper_bleu"]["mean"] == 0 and nothing["grounding"] == 0
    assert nothing["diversity"]["mean_length"] == 0 and nothing["diversity"]["copied_from_training"] == 0


@pytest.mark.slow
def test_cli_prints_json_and_refuses_a_split_the_data_does_not_have(tiny_run, artemis_subset, feature_cache_dir,
                                                                     tmp_path, capsys):
    from artcap.cli import build_parser

    csv_path, images = artemis_subset
    args = build_parser().parse_args(["evaluate", str(tiny_run), "--data", str(csv_path), "--images", str(images),
                              "--split", "val", "--beam", "2", "--max-len", "6", "--no-meteor", "--format", "json",
                              "--cache", str(feature_cache_dir), "-q"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["split"] == "val" and printed["decoding"]["beam"] == 2 and printed["decoding"]["max_len"] == 6
    assert "METEOR" not in printed["systems"][printed["model"]]["coco"]

    # A data set that shares no painting with the model's training split has no "test" split of it.
    foreign = tmp_path / "foreign.csv"
    rows = csv_path.read_text().splitlines()
    test_ids = set(json.loads((tiny_run / "splits.json").read_text())["test"])
    kept = [r for r in rows[1:] if "/".join(r.split(",")[:2]) in test_ids]
    foreign.write_text("\n".join([rows[0], *kept]) + "\n")
    with pytest.raises(ArtcapError, match="--split all"):
        evaluate(tiny_run, foreign, images, split="test", feature_cache=str(feature_cache_dir), progress=False)
    result = evaluate(tiny_run, foreign, images, split="all", with_meteor=False,
                      feature_cache=str(feature_cache_dir), progress=False)
    assert result["paintings"] == len({"/".join(r.split(",")[:2]) for r in kept})
