"""Bootstrap intervals and paired comparisons on real ArtEmis captions: the per-painting statistics give back
pycocoevalcap's corpus scores exactly, intervals hold their point estimate and narrow as the set grows, a system
compared with itself differs by exactly 0, and a real difference is found."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from artcap import bootstrap
from artcap.compare import NO_DIFFERENCE, verdict
from artcap.evaluate import TABLE_COLUMNS, score_system, table_row
from artcap.metrics import COCO_KEYS, evaluate_captions, java_available, meteor_from_sums, tokenize_for_scoring


def _utterances(shared_data) -> dict[str, list[str]]:
    csv_path = shared_data / "artemis-mini" / "artemis_mini.csv"
    utterances: dict[str, list[str]] = defaultdict(list)
    with csv_path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            utterances[f"{row['art_style']}/{row['painting']}"].append(row["utterance"])
    return utterances


@pytest.fixture(scope="module")
def two_people(shared_data):
    """Real paintings spread over the CSV, each with two "systems" (its first and its second annotator) and the
    remaining utterances as references."""
    utterances = _utterances(shared_data)
    candidates = [k for k, v in utterances.items() if len(v) >= 5]
    chosen = sorted(candidates[:: max(1, len(candidates) // 60)][:60])
    references = {k: utterances[k][2:] for k in chosen}
    return {k: utterances[k][0] for k in chosen}, {k: utterances[k][1] for k in chosen}, references


def _pycocoevalcap(systems: dict[str, dict], references: dict, with_meteor: bool) -> dict[str, dict[str, float]]:
    """Each system's corpus scores as pycocoevalcap's own scorer classes give them, on the COCO protocol's tokens
    (one tokenisation and one METEOR process for all systems)."""
    keys = {name: {k: f"{name}/{k}" for k in predictions} for name, predictions in systems.items()}
    captions = {keys[name][k]: [v] for name, predictions in systems.items() for k, v in predictions.items()}
    captions.update({k: [r for r in refs if r.strip()] for k, refs in references.items()})
    tokens = tokenize_for_scoring(captions)
    gts = {k: tokens[k] for k in references}
    meteor = Meteor() if with_meteor else None
    out = {}
    for name, predictions in systems.items():
        res = {k: tokens[keys[name][k]] for k in predictions}
        scores = dict(zip([f"BLEU-{n}" for n in range(1, 5)], Bleu(4).compute_score(gts, res, verbose=0)[0]))
        scores["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
        scores["CIDEr-D"] = Cider().compute_score(gts, res)[0]
        if meteor is not None:
            scores["METEOR"] = meteor.compute_score(gts, res)[0]
        out[name] = scores
    return out


@pytest.fixture(scope="module")
def scored(two_people):
    """For both annotators: artcap's scores with per-painting statistics, and pycocoevalcap's corpus scores."""
    first, second, references = two_people
    systems = {"first": first, "second": second}
    expected = _pycocoevalcap(systems, references, java_available())
    return {name: (evaluate_captions(predictions, references, training_captions=[], with_meteor=java_available(),
                                     statistics=True), expected[name]) for name, predictions in systems.items()}


def test_per_painting_statistics_give_back_pycocoevalcaps_corpus_scores(scored):
    for name, (result, expected) in scored.items():
        statistics = result["statistics"]
        assert set(expected) <= set(statistics)
        for key, value in expected.items():
            assert statistics[key].value() == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
            assert result["coco"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
        # The rest of the table: each statistic's value is the number evaluate reports.
        row = table_row({**result, "paper_bleu": {"mean": result["paper_bleu"]["mean"]}, "top_caption_share": None})
        for key in ("paper BLEU-4", "grounding", "distinct", "vocabulary", "mean_length", "copied"):
            assert statistics[key].value() == pytest.approx(row[key], rel=1e-9, abs=1e-12), (name, key)
    # Two different systems on the same paintings: different scores, each equal to pycocoevalcap's.
    assert scored["first"][1]["CIDEr-D"] != scored["second"][1]["CIDEr-D"]


@pytest.mark.skipif(not java_available(), reason="METEOR needs java")
def test_meteor_corpus_score_is_its_summed_statistics_not_the_mean_of_paintings(scored):
    result, expected = scored["first"]
    statistic = result["statistics"]["METEOR"]
    per_painting = meteor_from_sums(statistic.parts)
    assert statistic.value() == pytest.approx(expected["METEOR"], rel=1e-12)
    assert abs(statistic.value() - per_painting.mean()) > 1e-6  # a plain mean would be a different number


def test_intervals_hold_the_point_estimate_and_self_comparison_is_exactly_zero(two_people):
    first, _, references = two_people
    ids = sorted(first)
    scores = score_system(ids, [first[i] for i in ids], references, [], with_meteor=False)
    again = score_system(ids, [first[i] for i in ids], references, [], with_meteor=False)
    weights = bootstrap.resample_weights(len(ids), 500)
    row = table_row(scores)
    for name, statistic in scores["statistics"].items():
        low, high = bootstrap.interval(statistic, weights)
        assert low <= statistic.value() <= high, name
        assert statistic.value() == pytest.approx(row[name], rel=1e-9, abs=1e-12), name
        same = bootstrap.paired(statistic, again["statistics"][name], weights)
        assert same == {"difference": 0.0, "interval": [0.0, 0.0], "p_value": 1.0}, name
        assert verdict(name, same["interval"], "A", "B") == NO_DIFFERENCE


def test_intervals_narrow_as_the_set_of_paintings_grows(shared_data):
    utterances = _utterances(shared_data)
    paintings = sorted(k for k, v in utterances.items() if len(v) >= 4)[::4][:240]
    widths = {}
    for size in (30, 240):
        ids = paintings[:: len(paintings) // size][:size]
        scores = score_system(ids, [utterances[i][0] for i in ids], {i: utterances[i][1:] for i in ids}, None,
                              with_meteor=False)
        weights = bootstrap.resample_weights(size, 500)
        widths[size] = {name: np.diff(bootstrap.interval(scores["statistics"][name], weights))[0]
                        for name in ("BLEU-4", "ROUGE-L", "CIDEr-D", "grounding", "mean_length")}
    for name in widths[30]:
        assert widths[240][name] < widths[30][name], (name, widths)


def test_a_real_difference_is_found_and_swapping_the_systems_mirrors_it(two_people):
    first, _, references = two_people
    ids = sorted(first)
    people = score_system(ids, [first[i] for i in ids], references, [], with_meteor=False)
    stock = score_system(ids, ["the colors are bright and the woman looks happy"] * len(ids), references, [],
                         with_meteor=False)
    weights = bootstrap.resample_weights(len(ids), 1000)
    for name in ("distinct", "top caption share", "vocabulary"):
        forward = bootstrap.paired(people["statistics"][name], stock["statistics"][name], weights)
        backward = bootstrap.paired(stock["statistics"][name], people["statistics"][name], weights)
        assert bootstrap.excludes_zero(forward["interval"]), (name, forward)
        assert verdict(name, forward["interval"], "people", "stock") == "people better", name
        assert backward["difference"] == -forward["difference"]
        assert backward["interval"] == pytest.approx([-forward["interval"][1], -forward["interval"][0]])
        assert forward["p_value"] == backward["p_value"] < 0.01


def test_the_human_row_has_an_interval_for_every_column(two_people):
    from artcap.evaluate import COHERENCE_COLUMNS, human_leave_one_out

    first, second, references = two_people
    refs = {k: [first[k], second[k], *references[k]] for k in first}
    human = human_leave_one_out(sorted(refs), refs, with_meteor=False, resamples=200)
    for column in [*TABLE_COLUMNS, *COHERENCE_COLUMNS]:
        if column in ("METEOR", "copied"):
            continue
        low, high = human["intervals"][column]
        assert low <= human["row"][column] + 1e-12 and human["row"][column] <= high + 1e-12, column


def test_resample_weights_draw_every_painting_set_of_the_right_size():
    weights = bootstrap.resample_weights(37, 200, seed=5)
    assert weights.shape == (200, 37) and (weights.sum(axis=1) == 37).all() and (weights >= 0).all()
    assert np.array_equal(weights, bootstrap.resample_weights(37, 200, seed=5))
    assert set(COCO_KEYS) <= set(TABLE_COLUMNS)
