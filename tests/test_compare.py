"""`artcap compare` on real models and real artemis-mini paintings: a model compared with itself differs by exactly
0, two shipped models are each scored as pycocoevalcap scores them, and models that saw different paintings are
refused in one line."""

from __future__ import annotations

import json

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from artcap.cli import main
from artcap.compare import MEASURE_ORDER, NO_DIFFERENCE, compare, render_markdown, render_text
from artcap.data import read_annotations, references
from artcap.evaluate import TABLE_COLUMNS
from artcap.metrics import tokenize_for_scoring


@pytest.mark.slow
def test_a_model_compared_with_itself_differs_by_exactly_zero(tiny_run, artemis_subset, feature_cache_dir, capsys):
    csv_path, images = artemis_subset
    code = main(["compare", str(tiny_run), str(tiny_run), "--data", str(csv_path), "--images", str(images),
                 "--no-meteor", "--resamples", "200", "--cache", str(feature_cache_dir), "--format", "json", "-q"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["paintings"] > 2 and "captions" not in printed
    measures = printed["measures"]
    assert set(TABLE_COLUMNS) - {"METEOR"} <= set(measures)
    assert {"mixed genders", "dangling end", "repeated clause", "unfinished clause", "alignment"} <= set(measures)
    assert list(measures) == [m for m in MEASURE_ORDER if m in measures]
    for name, m in measures.items():
        if m["difference"] is None:  # a measure undefined on these paintings (e.g. no dominant emotion)
            continue
        assert m["a"] == m["b"] and m["difference"] == 0.0, name
        assert m["interval"] == [0.0, 0.0] and m["p_value"] == 1.0 and m["verdict"] == NO_DIFFERENCE, name


@pytest.mark.slow
def test_one_model_under_two_decodings(tiny_run, artemis_subset, feature_cache_dir, capsys):
    csv_path, images = artemis_subset
    code = main(["compare", str(tiny_run), str(tiny_run), "--data", str(csv_path), "--images", str(images),
                 "--decoding-a", "coherent=true", "--decoding-b", "coherent=false", "--decoding-b", "beam=2",
                 "--no-meteor", "--resamples", "100", "--cache", str(feature_cache_dir), "--format", "json", "-q"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["decoding"]["a"]["coherent"] and printed["decoding"]["a"]["beam"] != 2
    assert not printed["decoding"]["b"]["coherent"] and printed["decoding"]["b"]["beam"] == 2
    assert printed["a"].endswith(", coherent=true") and printed["b"].endswith(", coherent=false, beam=2")


@pytest.mark.parametrize("flag, message", [
    ("coherent", "--decoding-b 'coherent': expected SETTING=VALUE"),
    ("coherent=maybe", "--decoding-b: coherent must be true or false, got 'maybe'"),
    ("beam=0", "--decoding-b: beam must be from 1 to 20, got '0'"),
    ("colour=red", "--decoding-b: unknown setting 'colour'"),
])
def test_a_bad_decoding_setting_is_one_line_before_any_work(flag, message, capsys):
    assert main(["compare", "default", "default", "--data", "missing.csv", "--images", "missing",
                 "--decoding-b", flag]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_two_shipped_models_are_each_scored_as_pycocoevalcap_scores_them(artemis_subset, feature_cache_dir):
    csv_path, images = artemis_subset
    result = compare("default", "fast", csv_path, images, "test", with_meteor=False, resamples=300,
                     feature_cache=str(feature_cache_dir), progress=False)
    ids = result["captions"]["ids"]
    refs = references(read_annotations(csv_path, images), "artemis", ids)
    gts = tokenize_for_scoring(refs)
    measures = result["measures"]
    for side in ("a", "b"):
        res = tokenize_for_scoring({i: [c] for i, c in zip(ids, result["captions"][side])})
        expected = dict(zip([f"BLEU-{n}" for n in range(1, 5)], Bleu(4).compute_score(gts, res, verbose=0)[0]))
        expected["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
        expected["CIDEr-D"] = Cider().compute_score(gts, res)[0]
        for key, value in expected.items():
            assert measures[key][side] == pytest.approx(value, rel=1e-9, abs=1e-12), (side, key)
    assert result["captions"]["a"] != result["captions"]["b"]
    for name, m in measures.items():
        if m["difference"] is None:
            continue
        assert m["difference"] == pytest.approx(m["a"] - m["b"], abs=1e-12), name
        assert 0 < m["p_value"] <= 1, name
        low, high = m["interval"]
        assert low <= high, name
    assert "steerability" in measures  # both models are emotion-grounded
    for text in (render_markdown(result), render_text(result)):
        assert all(name in text for name in measures)
        assert "artcap-default" in text and "artcap-fast" in text


@pytest.mark.slow
def test_models_trained_on_different_paintings_are_refused_in_one_line(tiny_run, artemis_subset, feature_cache_dir,
                                                                        capsys):
    csv_path, images = artemis_subset
    code = main(["compare", str(tiny_run), "default", "--data", str(csv_path), "--images", str(images),
                 "--no-meteor", "--cache", str(feature_cache_dir), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--split all" in err, err
