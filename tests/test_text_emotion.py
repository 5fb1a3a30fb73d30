"""The text -> emotion classifier (a scoring tool) and the emotion metrics, on real ArtEmis utterances."""

import numpy as np
import pytest

from artcap.data import EMOTIONS, make_splits, read_annotations
from artcap.errors import ArtcapError
from artcap.text_emotion import (TextEmotionClassifier, TextEmotionSettings, dominant_emotions, emotional_alignment,
                                 held_out_human_captions, histograms_by_image, score_text_classifier, steerability,
                                 text_classifier_for, train_text_classifier, utterances)

FAST = TextEmotionSettings(char_ngrams=(2, 4), cs=(1.0,))


@pytest.fixture(scope="module")
def subset(artemis_subset):
    annotations = read_annotations(*artemis_subset)
    return annotations, make_splits({a.image_id for a in annotations}, seed=2021)


@pytest.fixture(scope="module")
def classifier(subset, tmp_path_factory):
    annotations, splits = subset
    return text_classifier_for(annotations, splits, tmp_path_factory.mktemp("text-emotion"), FAST)


@pytest.mark.slow
def test_beats_the_majority_class_on_held_out_utterances(subset, classifier):
    annotations, splits = subset
    texts, labels = utterances(annotations, splits["test"])
    scores = score_text_classifier(classifier, texts, labels, utterances(annotations, splits["train"])[1])
    assert scores["utterances"] == len(texts) > 50
    assert scores["accuracy"] > scores["majority_accuracy"] + 0.05, scores


@pytest.mark.slow
def test_saved_classifier_predicts_what_sklearn_fitted(subset, classifier, tmp_path):
    """The arrays + vocabulary reproduce the fitted sklearn pipeline exactly (no pickle involved)."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    annotations, splits = subset
    train, val = utterances(annotations, splits["train"]), utterances(annotations, splits["val"])
    from artcap.text_emotion import _vectorizer, normalise_text

    vectorizers = [_vectorizer(kind, ngrams, FAST.min_df) for kind, ngrams in FAST.blocks]
    x = sparse.hstack([v.fit_transform([normalise_text(t) for t in train[0]]) for v in vectorizers], format="csr")
    model = LogisticRegression(C=1.0, max_iter=3000).fit(x, [EMOTIONS.index(e) for e in train[1]])
    x_val = sparse.hstack([v.transform([normalise_text(t) for t in val[0]]) for v in vectorizers], format="csr")
    expected = np.zeros((len(val[0]), 9))
    expected[:, model.classes_] = model.predict_proba(x_val)
    classifier.save(tmp_path)
    loaded = TextEmotionClassifier.load(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(val[0]), expected, atol=1e-5)  # float32 arrays on disk
    assert loaded.predict(val[0]) == classifier.predict(val[0])


@pytest.mark.slow
def test_cache_returns_the_same_classifier_and_survives_damage(subset, classifier, tmp_path):
    annotations, splits = subset
    first = text_classifier_for(annotations, splits, tmp_path, FAST)
    (entry,) = list(tmp_path.iterdir())
    (entry / "text_emotion.safetensors").write_bytes(b"garbage")
    again = text_classifier_for(annotations, splits, tmp_path, FAST)  # retrained over the damaged entry
    texts = utterances(annotations, splits["test"])[0]
    np.testing.assert_allclose(again.predict_proba(texts), first.predict_proba(texts), atol=1e-6)
    with pytest.raises(ArtcapError, match="text_emotion.safetensors: unreadable"):
        (entry / "text_emotion.safetensors").write_bytes(b"garbage")
        TextEmotionClassifier.load(entry)


@pytest.mark.slow
def test_alignment_is_one_for_dominant_utterances_and_low_when_shuffled(subset, classifier):
    """Each painting's own human utterances of its dominant emotion, judged by an oracle on the known labels:
    alignment 1; the same captions moved to other paintings: far lower."""
    annotations, splits = subset
    ids = splits["train"]
    dominant = dominant_emotions(histograms_by_image(annotations, ids))
    own = {}
    for a in annotations:
        if a.image_id in dominant and a.emotion == dominant[a.image_id]:
            own.setdefault(a.image_id, a.text)
    label_of = {a.text: a.emotion for a in annotations}

    class Oracle:  # the annotator's own label: alignment must be exactly 1
        def predict(self, texts):
            return [label_of[t] for t in texts]

    assert emotional_alignment(own, dominant, Oracle()) == 1.0
    keys = sorted(own)
    shuffled = {k: own[keys[(n + 7) % len(keys)]] for n, k in enumerate(keys)}
    assert emotional_alignment(shuffled, dominant, Oracle()) < 0.6
    # the trained classifier on them: well above chance (1/9)
    assert emotional_alignment(own, dominant, classifier) > 0.4


def test_alignment_and_steerability_hand_checked():
    class Keyword:
        def predict(self, texts):
            return [next((e for e in EMOTIONS if e.split()[0] in t), "something else") for t in texts]

    counts = {"a": [3, 0, 0, 0, 0, 0, 1, 0, 0],  # amusement 3/4
              "b": [0, 0, 0, 0, 0, 0, 2, 2, 0],  # no > half majority: left out
              "c": [0, 0, 0, 0, 0, 0, 4, 1, 0]}  # fear 4/5
    dominant = dominant_emotions(counts)
    assert dominant == {"a": "amusement", "c": "fear"}
    captions = {"a": ["such amusement", "pure fear"], "b": "whatever", "c": "fear everywhere"}
    assert emotional_alignment(captions, dominant, Keyword()) == pytest.approx(2 / 3)
    assert emotional_alignment({"b": "x"}, dominant, Keyword()) is None
    shares = steerability({"fear": {"a": "fear", "c": "awe"}, "awe": {"a": "awe here"}}, Keyword())
    assert shares == {"fear": 0.5, "awe": 1.0, "overall": pytest.approx(2 / 3)}
    with pytest.raises(ArtcapError, match="unknown emotion 'joy'"):
        steerability({"joy": {"a": "x"}}, Keyword())


@pytest.mark.slow
def test_human_reference_row(subset, classifier):
    annotations, splits = subset
    ids = splits["test"]
    human = held_out_human_captions(annotations, ids, seed=0)
    assert set(human) == set(ids) and human == held_out_human_captions(annotations, ids, seed=0)
    value = emotional_alignment(human, dominant_emotions(histograms_by_image(annotations, ids)), classifier)
    assert 0.0 <= value <= 1.0


@pytest.mark.slow
def test_bad_text_inputs_are_one_line_errors(classifier):
    with pytest.raises(ArtcapError, match="not one string"):
        classifier.predict_proba("one string")
    with pytest.raises(ArtcapError, match=r"texts\[1\] is a int"):
        classifier.predict(["fine", 3])
    assert classifier.predict([]) == [] and classifier.predict_proba([]).shape == (0, 9)
    with pytest.raises(ArtcapError, match="no training or no validation utterances"):
        train_text_classifier(([], []), (["x"], ["awe"]), FAST)
