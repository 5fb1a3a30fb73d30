"""Caption metrics: hand-computed BLEU, pycocoevalcap cross-checks, grounding, diversity, tables."""

from __future__ import annotations

import csv
import math
import shutil
import warnings
from collections import defaultdict

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer

from artcap import metrics
from artcap.errors import ArtcapError
from artcap.metrics import (
    coco_scores,
    diversity,
    evaluate_captions,
    format_markdown_table,
    grounding,
    per_image_bleu,
    tokenize_for_scoring,
)

# Three images; C's prediction is empty. All text is lower-case words, so PTB tokens == text.
PREDICTIONS = {
    "A": "a woman in a red dress",
    "B": "dark sky over the sea",
    "C": "",
}
REFERENCES = {
    "A": ["a woman wearing a red dress", "the lady in red"],
    "B": ["a dark stormy sky over the sea", "storm clouds gather over a grey sea at dusk", "stormy sea"],
    "C": ["a bowl of fruit on a table", "still life"],
}

# Six distinct scenes, five human-like captions each (for grounding).
SCENES = {
    "boat": [
        "a small boat on a calm blue lake",
        "a wooden boat floating on the calm water",
        "the boat rests on a quiet blue lake at dawn",
        "a lonely boat on still water under a pale sky",
        "calm water with a small wooden boat",
    ],
    "dog": [
        "a brown dog sleeping by the fire",
        "the dog is asleep next to a warm fireplace",
        "a sleepy brown dog lies near the fire",
        "a dog curled up beside the fireplace",
        "the brown dog naps by a glowing fire",
    ],
    "city": [
        "a busy city street at night with bright lights",
        "people walking on a city street full of lights",
        "the city street glows with lights at night",
        "crowds on a bright street in the city at night",
        "night lights over a crowded city street",
    ],
    "fruit": [
        "a bowl of apples and pears on a table",
        "fruit in a bowl on a wooden table",
        "apples and pears piled in a white bowl",
        "a still life of fruit in a bowl",
        "a table with a bowl of ripe apples",
    ],
    "mountain": [
        "snowy mountains under a cold grey sky",
        "a range of snow covered mountains",
        "the mountains are covered in snow and clouds",
        "cold snowy peaks beneath a grey sky",
        "snow on the high mountains and a grey sky",
    ],
    "portrait": [
        "an old man with a long white beard",
        "portrait of an old bearded man in black",
        "the old man has a white beard and sad eyes",
        "a serious old man with a beard",
        "an elderly man with a white beard looks down",
    ],
}
HELD_OUT_PREDICTIONS = {k: v[0] for k, v in SCENES.items()}
HELD_OUT_REFERENCES = {k: v[1:] for k, v in SCENES.items()}

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java is not installed")


@pytest.fixture(scope="module")
def hand_scores() -> dict[str, float]:
    return coco_scores(PREDICTIONS, REFERENCES, with_meteor=False)  # METEOR's JVM costs ~10 s


def test_corpus_bleu_matches_hand_arithmetic(hand_scores):
    # Clipped n-gram matches / guesses per image:
    #   A "a woman in a red dress": unigrams 6/6 ("a" twice, ref 1 has "a" twice);
    #     bigrams "a woman" "a red" "red dress" match, "woman in" "in a" do not -> 3/5.
    #   B "dark sky over the sea": unigrams 5/5; bigrams "sky over" "over the" "the sea" -> 3/4.
    #   C "": 0/0 and 0/0.
    p1 = (6 + 5 + 0) / (6 + 5 + 0)
    p2 = (3 + 3) / (5 + 4)
    # Closest reference lengths: A 6 (6 words vs refs 6, 4); B 7 (5 vs 7, 9, 2); C 2 (0 vs 7, 2).
    candidate_len, reference_len = 6 + 5 + 0, 6 + 7 + 2
    brevity = math.exp(1 - reference_len / candidate_len)
    bleu1 = brevity * p1
    bleu2 = brevity * math.sqrt(p1 * p2)
    assert hand_scores["BLEU-1"] == pytest.approx(bleu1, rel=1e-6)
    assert hand_scores["BLEU-2"] == pytest.approx(bleu2, rel=1e-6)

    # ... and the same numbers from pycocoevalcap's Bleu scorer itself.
    res = {k: [v] for k, v in PREDICTIONS.items()}
    library, _ = Bleu(4).compute_score(REFERENCES, res, verbose=0)
    for n in range(1, 5):
        assert hand_scores[f"BLEU-{n}"] == pytest.approx(library[n - 1], rel=1e-12)


def test_cider_d_matches_pycocoevalcap_scorer(hand_scores):
    scorer = CiderScorer(n=4, sigma=6.0)
    for k in PREDICTIONS:
        scorer += (PREDICTIONS[k], REFERENCES[k])
    corpus, per_image = scorer.compute_score()
    assert hand_scores["CIDEr-D"] == pytest.approx(float(corpus), rel=1e-12)
    assert per_image[2] == 0.0  # the empty caption contributes exactly 0
    assert per_image[0] > 0.5 and per_image[1] > 0.5
    assert 0.0 < hand_scores["ROUGE-L"] < 1.0
    wrapper_corpus, _ = Cider().compute_score(REFERENCES, {k: [v] for k, v in PREDICTIONS.items()})
    assert hand_scores["CIDEr-D"] == pytest.approx(float(wrapper_corpus), rel=1e-12)


@needs_java
@pytest.mark.slow  # METEOR 1.5 loads its paraphrase table: ~10 s
def test_meteor_present_with_java_and_empty_prediction_does_not_crash_it(hand_scores):
    scores = coco_scores(PREDICTIONS, REFERENCES)  # C's prediction is ""
    assert list(scores) == list(metrics.COCO_KEYS)
    assert 0.0 < scores["METEOR"] < 1.0
    assert {k: v for k, v in scores.items() if k != "METEOR"} == hand_scores


def test_empty_and_blank_predictions_score_zero_without_crashing():
    blank = {"A": "", "B": "   \n\t ", "C": "..."}
    scores = coco_scores(blank, REFERENCES, with_meteor=False)
    assert set(scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"}
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in scores.values()), scores
    assert per_image_bleu(blank, REFERENCES) == {"A": 0.0, "B": 0.0, "C": 0.0}


def test_per_image_bleu_hand_arithmetic_with_exp_smoothing():
    bleu2 = per_image_bleu(PREDICTIONS, REFERENCES, n=2)
    assert bleu2["A"] == pytest.approx(math.sqrt(1.0 * 3 / 5))  # reference length 6 = caption length
    assert bleu2["B"] == pytest.approx(math.exp(1 - 7 / 5) * math.sqrt(1.0 * 3 / 4))
    assert bleu2["C"] == 0.0

    bleu4 = per_image_bleu(PREDICTIONS, REFERENCES, n=4)
    # A: trigrams only "a red dress" matches (1/4); no 4-gram matches (0/3 -> 1 / (2 * 3)).
    assert bleu4["A"] == pytest.approx((1.0 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)
    # B: trigrams "sky over the" "over the sea" (2/3); 4-gram "sky over the sea" (1/2).
    assert bleu4["B"] == pytest.approx(math.exp(1 - 7 / 5) * (1.0 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)

    # A 2-word caption has no 3/4-grams: those orders are left out (effective order);
    # the closest reference length is 4 ("the lady in red"), so the brevity penalty is e^(1-4/2).
    short = per_image_bleu({"A": "red dress", "B": "x", "C": "x"}, REFERENCES, n=4)
    assert short["A"] == pytest.approx(math.exp(1 - 4 / 2))


def test_per_image_bleu_without_smoothing_is_pycocoevalcaps_per_image_list():
    ours = per_image_bleu(PREDICTIONS, REFERENCES, n=4, smoothing="none")
    _, library = Bleu(4).compute_score(REFERENCES, {k: [v] for k, v in PREDICTIONS.items()}, verbose=0)
    for i, k in enumerate(PREDICTIONS):
        assert ours[k] == pytest.approx(library[3][i], rel=1e-9, abs=1e-300)


def test_ptb_tokenizer_is_the_coco_protocol_one():
    tokens = tokenize_for_scoring({"x": ["A Dog's day, in PARIS!", "line\u2028break"], "y": [""]})
    if shutil.which("java"):
        assert tokens == {"x": ["a dog 's day in paris", "line break"], "y": [""]}
    else:
        assert tokens == {"x": ["a dog's day in paris", "line break"], "y": [""]}


def test_without_java_falls_back_and_omits_meteor_with_one_warning_each(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    monkeypatch.setattr(metrics, "_WARNED", set())
    with pytest.warns(RuntimeWarning) as caught:
        scores = coco_scores(PREDICTIONS, REFERENCES)
        assert tokenize_for_scoring({"x": ["A Dog's day, in PARIS!"]}) == {"x": ["a dog's day in paris"]}
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and all("\n" not in m and "java" in m for m in messages), messages
    assert "METEOR" not in scores and "CIDEr-D" in scores
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process: no second warning
        coco_scores(PREDICTIONS, REFERENCES)


def test_mismatched_ids_raise_artcap_error_naming_the_id():
    with pytest.raises(ArtcapError, match="'D'.*no references"):
        coco_scores({**PREDICTIONS, "D": "a cat"}, REFERENCES)
    with pytest.raises(ArtcapError, match="'C'.*no prediction"):
        grounding({"A": "x", "B": "y"}, REFERENCES)
    with pytest.raises(ArtcapError, match="'A'.*non-empty reference"):
        per_image_bleu(PREDICTIONS, {**REFERENCES, "A": ["  "]})
    with pytest.raises(ArtcapError, match="at least 2 images"):
        grounding({"A": "x"}, {"A": ["y"]})


def test_grounding_is_zero_for_a_constant_caption():
    constant = {k: "a small boat on the water" for k in SCENES}
    assert abs(grounding(constant, HELD_OUT_REFERENCES)) < 1e-9


def test_grounding_rewards_own_references_and_not_shuffles():
    matched = grounding(HELD_OUT_PREDICTIONS, HELD_OUT_REFERENCES)
    assert matched > 0.5
    ids = sorted(SCENES)
    for shift in (1, 2, 3):  # caption of image i+shift given to image i
        shuffled = {k: HELD_OUT_PREDICTIONS[ids[(i + shift) % len(ids)]] for i, k in enumerate(ids)}
        assert grounding(shuffled, HELD_OUT_REFERENCES) < 0.1 * matched


def test_rotated_references_share_document_frequencies():
    ids = sorted(SCENES)
    rotated = {k: HELD_OUT_REFERENCES[ids[(i + 1) % len(ids)]] for i, k in enumerate(ids)}
    own, other = CiderScorer(), CiderScorer()
    for k in ids:
        own += (HELD_OUT_PREDICTIONS[k], HELD_OUT_REFERENCES[k])
        other += (HELD_OUT_PREDICTIONS[k], rotated[k])
    own.compute_doc_freq()
    other.compute_doc_freq()
    assert own.document_frequency == other.document_frequency and len(own.document_frequency) > 50


def test_diversity_on_a_small_example():
    predictions = {"1": "A red dress.", "2": "a  red dress", "3": "The sea at night", "4": ""}
    scores = diversity(predictions, ["THE SEA, at night!", "something else"])
    assert scores == {
        "distinct_captions": 3 / 4,  # "a red dress" twice after folding case/space/punctuation
        "vocabulary": 7,  # a red dress the sea at night
        "mean_length": (3 + 3 + 4 + 0) / 4,
        "copied_from_training": 1 / 4,
    }
    assert "copied_from_training" not in diversity(predictions)


def test_evaluate_captions_agrees_with_the_parts():
    report = evaluate_captions(HELD_OUT_PREDICTIONS, HELD_OUT_REFERENCES, ["a dog"], with_meteor=False)
    assert report["coco"] == coco_scores(HELD_OUT_PREDICTIONS, HELD_OUT_REFERENCES, with_meteor=False)
    per_image = per_image_bleu(HELD_OUT_PREDICTIONS, HELD_OUT_REFERENCES)
    assert report["paper_bleu"]["per_image"] == per_image
    assert report["paper_bleu"]["mean"] == pytest.approx(sum(per_image.values()) / len(per_image))
    assert report["grounding"] == pytest.approx(grounding(HELD_OUT_PREDICTIONS, HELD_OUT_REFERENCES))
    assert report["diversity"]["copied_from_training"] == 0.0


def test_format_markdown_table():
    table = format_markdown_table(
        {"baseline": {"BLEU-4": 0.12345, "vocabulary": 512}, "ours|v2": {"BLEU-4": 0.2, "vocabulary": 600.0}},
        ["BLEU-4", "vocabulary", "METEOR"],
        row_header="model",
    )
    assert table.splitlines() == [
        "| model | BLEU-4 | vocabulary | METEOR |",
        "|---|---:|---:|---:|",
        "| baseline | 0.123 | 512.0 | – |",
        "| ours\\|v2 | 0.200 | 600.0 | – |",
    ]


def _artemis_held_out(shared_data, paintings: int = 50) -> tuple[dict[str, str], dict[str, list[str]]]:
    csv_path = shared_data / "artemis-mini" / "artemis_mini.csv"
    if not csv_path.is_file():
        pytest.skip(f"{csv_path} not found")
    utterances: dict[str, list[str]] = defaultdict(list)
    with csv_path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            utterances[f"{row['art_style']}/{row['painting']}"].append(row["utterance"])
    # Every k-th painting across the CSV: consecutive rows are the same artist's works, and
    # grounding's rotation would then compare each painting with a near twin.
    candidates = [k for k, v in utterances.items() if len(v) >= 5]
    chosen = candidates[:: max(1, len(candidates) // paintings)][:paintings]
    assert len(chosen) == paintings
    return {k: utterances[k][0] for k in chosen}, {k: utterances[k][1:] for k in chosen}


def test_real_artemis_humans_are_grounded_and_a_generic_sentence_is_not(shared_data):
    humans, references = _artemis_held_out(shared_data)
    generic = {k: "the colors are bright and the woman looks happy" for k in humans}
    human_grounding = grounding(humans, references)
    generic_grounding = grounding(generic, references)
    # ArtEmis utterances are subjective: a held-out human's CIDEr-D against the other annotators
    # is only ~0.06, against another painting's ~0.02 (measured: grounding 0.043 +- 0.011).
    assert human_grounding > 0.02, human_grounding
    assert abs(generic_grounding) < 1e-9
    # ...although BLEU-1 rates the generic sentence as high as the humans (measured 0.46 vs 0.36).
    human_bleu = coco_scores(humans, references, with_meteor=False)["BLEU-1"]
    generic_bleu = coco_scores(generic, references, with_meteor=False)["BLEU-1"]
    assert generic_bleu > 0.8 * human_bleu, (generic_bleu, human_bleu)
