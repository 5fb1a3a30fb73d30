"""The image -> emotion head: trained on real ArtEmis features (the 300-painting subset), scored, saved, loaded."""

import json
import os
import shutil

import numpy as np
import pytest

from artcap.data import EMOTIONS
from artcap.emotion import (EmotionHead, EmotionSettings, EmotionSplit, kl_divergence, load_emotion_head,
                            macro_recall, majority_mask, save_emotion_head, score_emotion_classifier,
                            train_emotion_head)
from artcap.errors import ArtcapError
from conftest import tiny_config

# The subset has 255 training paintings (4 batches an epoch): the default lr 1e-4 would barely leave the prior.
SUBSET_SETTINGS = EmotionSettings(epochs=30, members=2, lr=1e-3)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def corpus(artemis_subset, feature_cache_dir, tmp_path_factory):
    from artcap.corpus import load_corpus

    return load_corpus(tiny_config(artemis_subset, feature_cache_dir, tmp_path_factory.mktemp("emotion")),
                       progress=False)


@pytest.fixture(scope="module")
def trained(corpus):
    return train_emotion_head(corpus, SUBSET_SETTINGS)


@pytest.mark.slow
def test_head_beats_the_training_prior_on_val(corpus, trained):
    head, report = trained
    val = EmotionSplit.of(corpus, "val")
    probs = head.predict(val.features)
    assert probs.shape == (len(val.ids), len(EMOTIONS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (probs > 0).all()
    prior = EmotionSplit.of(corpus, "train").histograms.mean(axis=0)
    scores = score_emotion_classifier(probs, val.histograms, prior)
    assert scores["kl"] < scores["prior_kl"], scores
    assert report["val"]["kl"] == pytest.approx(scores["kl"])
    assert 1 <= report["best_epoch"] <= report["epochs_run"] <= 30
    assert "test" not in report  # selection never looks at test


@pytest.mark.slow
def test_training_is_reproducible(corpus, trained):
    head, _ = trained
    again, _ = train_emotion_head(corpus, SUBSET_SETTINGS)
    x = EmotionSplit.of(corpus, "val").features
    np.testing.assert_array_equal(head.predict(x), again.predict(x))


@pytest.mark.slow
def test_save_load_round_trip_gives_identical_predictions(corpus, trained, model_dir, tmp_path):
    head, report = trained
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    stripped = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "emotion"}
    (folder / "config.json").write_text(json.dumps(stripped))  # the shipped model has a head: start without one
    assert load_emotion_head(folder) is None  # no emotion section yet
    decoder_config = json.loads((folder / "config.json").read_text())
    save_emotion_head(folder, head, report)
    assert (folder / "emotion.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()  # not 0600
    config = json.loads((folder / "config.json").read_text())
    assert {k: v for k, v in config.items() if k != "emotion"} == decoder_config  # the rest is untouched
    assert config["emotion"]["emotions"] == list(EMOTIONS)
    loaded = load_emotion_head(folder)
    x = EmotionSplit.of(corpus, "test").features
    np.testing.assert_array_equal(loaded.predict(x), head.predict(x))
    np.testing.assert_array_equal(loaded.dominant(loaded.predict(x)), head.dominant(head.predict(x)))
    described = loaded.emotions(x[:2])
    assert described[0]["dominant"] in EMOTIONS and sum(described[0]["distribution"].values()) == pytest.approx(1)
    from artcap.captioner import Captioner

    Captioner.load(folder)  # the decoder still loads from the folder


@pytest.mark.slow
def test_damaged_head_files_are_one_line_errors(trained, model_dir, tmp_path):
    head, report = trained
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    save_emotion_head(folder, head, report)
    weights = folder / "emotion.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtcapError, match="emotion.safetensors: unreadable weights"):
        load_emotion_head(folder)
    weights.unlink()
    with pytest.raises(ArtcapError, match="emotion.safetensors: missing"):
        load_emotion_head(folder)
    config = json.loads((folder / "config.json").read_text())
    config["emotion"]["hidden_dim"] = "big"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtcapError, match=r"config.json: emotion.hidden_dim must be from 0 to \d+, got 'big'"):
        load_emotion_head(folder)


@pytest.mark.slow
def test_wrong_feature_dim_is_one_line_error(trained):
    head, _ = trained
    with pytest.raises(ArtcapError, match=r"features of shape \(3, 7\), expected \[n, 1280\]") as e:
        head.predict(np.zeros((3, 7), np.float32))
    assert "\n" not in str(e.value)
    with pytest.raises(ArtcapError, match="NaN"):
        head.predict(np.full((1, 1280), np.nan, np.float32))


def test_settings_are_checked():
    with pytest.raises(ArtcapError, match="emotion setting dropout = 1.5 is out of range"):
        EmotionSettings(dropout=1.5)
    with pytest.raises(ArtcapError, match="unknown key"):
        EmotionSettings.from_dict({"hidden": 3})
    assert EmotionSettings.from_dict(EmotionSettings(lr=0.01).to_dict()) == EmotionSettings(lr=0.01)


def test_scores_on_hand_checkable_cases():
    # three paintings: two with a > half majority (amusement 3/4, fear 3/5), one split 2/2
    counts = np.zeros((3, 9))
    counts[0, [0, 1]] = [3, 1]
    counts[1, [6, 7]] = [3, 2]
    counts[2, [2, 3]] = [2, 2]
    assert majority_mask(counts).tolist() == [True, True, False]
    uniform = np.full((3, 9), 1 / 9)
    # KL(h || uniform) = log 9 - H(h)
    h = counts / counts.sum(1, keepdims=True)
    entropy = -(np.where(h > 0, h * np.log(np.where(h > 0, h, 1)), 0)).sum(1)
    np.testing.assert_allclose(kl_divergence(counts / counts.sum(1, keepdims=True), uniform), np.log(9) - entropy)
    assert kl_divergence(h, h).tolist() == pytest.approx([0, 0, 0])
    perfect = score_emotion_classifier(h, counts, prior=[1, 0, 0, 0, 0, 0, 0, 0, 0])
    assert perfect["accuracy"] == 1.0 and perfect["macro_recall"] == 1.0 and perfect["kl"] == pytest.approx(0)
    assert perfect["majority_accuracy"] == 0.5  # always amusement: right on painting 0 only
    assert perfect["majority_macro_recall"] == 0.5  # recall 1 for amusement, 0 for fear
    assert perfect["majority_paintings"] == 2
    assert macro_recall(np.array([0, 0, 0]), np.array([0, 0, 1])) == 0.5
    with pytest.raises(ArtcapError, match="must both be"):
        score_emotion_classifier(np.ones((2, 9)) / 9, counts)


@pytest.mark.slow
def test_a_corpus_without_emotions_is_refused(corpus):
    from dataclasses import replace

    stripped = [replace(a, emotion=None) for a in corpus.annotations]
    from artcap.emotion import emotion_histograms

    with pytest.raises(ArtcapError, match="no annotation with an emotion"):
        emotion_histograms(stripped, corpus.data.split_ids("val"))


def test_linear_head_and_head_without_members_names():
    head = EmotionHead(16, hidden_dim=0, members=3)
    probs = head.predict(np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32))
    np.testing.assert_allclose(probs.sum(1), 1.0)
