"""Reranking the beam with the image-caption matcher (artcap.rerank): what it learns, which caption it keeps, its
files, and a real run that ships it."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from artcap.captioner import DEFAULT_MODEL_DIR, Captioner
from artcap.cli import main
from artcap.errors import ArtcapError
from artcap.model_folder import ModelConfig
from artcap.rerank import MATCHER_FILE, CaptionMatcher, MatcherSettings, load_matcher, save_matcher, train_matcher

from conftest import tiny_config

# Word ids 4.. of a toy vocabulary: three kinds of painting, each with its own words, plus words every caption uses.
SEA, FOREST, CROWD, COMMON = [4, 5, 6], [7, 8, 9], [10, 11, 12], [13, 14, 15]
VOCAB_SIZE = 16


def toy_data(paintings_per_kind: int = 30, seed: int = 0):
    """Features that cluster by kind (3 directions plus noise) and captions that name the kind among common words."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(3, 12))
    features, captions = [], []
    for kind, words in enumerate((SEA, FOREST, CROWD)):
        for _ in range(paintings_per_kind):
            features.append(directions[kind] + 0.3 * rng.normal(size=12))
            captions.append([list(rng.choice(COMMON, 3)) + list(rng.choice(words, 2)) for _ in range(4)])
    return np.array(features, dtype=np.float32), captions, directions


@pytest.fixture(scope="module")
def toy_matcher():
    features, captions, directions = toy_data()
    matcher = train_matcher(features, captions, VOCAB_SIZE, MatcherSettings(dim=16, epochs=40, batch_size=32))
    return matcher, directions


def test_it_learns_which_words_go_with_which_paintings(toy_matcher):
    matcher, directions = toy_matcher
    images = torch.tensor(directions, dtype=torch.float32)
    captions = [SEA[:2] + COMMON, FOREST[:2] + COMMON, CROWD[:2] + COMMON]
    similarity = matcher.encode_images(images) @ matcher.encode_captions(captions).T
    assert similarity.argmax(dim=1).tolist() == [0, 1, 2]  # each kind's image prefers its own words


def test_it_keeps_the_beam_candidate_that_fits_this_painting(toy_matcher):
    matcher, directions = toy_matcher
    generic, sea, forest = COMMON, COMMON[:2] + SEA, COMMON[:2] + FOREST
    images = torch.tensor(directions[:2], dtype=torch.float32)
    assert matcher.choose(images, [[generic, sea, forest], [generic, sea, forest]]) == [1, 2]
    assert matcher.choose(images, [[generic], [forest, forest]]) == [0, 0]  # one candidate, or a tie: the beam's
    with pytest.raises(ArtcapError, match=r"expected \[B, 12\]"):
        matcher.choose(images[:, :5], [[generic], [generic]])


def test_training_is_reproducible_and_refuses_bad_input():
    features, captions, _ = toy_data(paintings_per_kind=4)
    settings = MatcherSettings(dim=8, epochs=3, batch_size=8)
    first = train_matcher(features, captions, VOCAB_SIZE, settings).state_dict()
    second = train_matcher(features, captions, VOCAB_SIZE, settings).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(ArtcapError, match="feature rows for"):
        train_matcher(features[:3], captions, VOCAB_SIZE, settings)
    with pytest.raises(ArtcapError, match="at least one caption"):
        train_matcher(features[:2], [captions[0], []], VOCAB_SIZE, settings)


def test_files_round_trip_and_damage_is_one_line(toy_matcher, tmp_path):
    matcher, directions = toy_matcher
    shutil.copy(DEFAULT_MODEL_DIR / "config.json", tmp_path / "config.json")  # a real model folder's config
    save_matcher(tmp_path, matcher, MatcherSettings(dim=16))
    config = json.loads((tmp_path / "config.json").read_text())
    loaded = load_matcher(tmp_path)
    images = torch.tensor(directions, dtype=torch.float32)
    torch.testing.assert_close(loaded.encode_images(images), matcher.eval().encode_images(images))
    without = dataclasses.replace(ModelConfig.read(tmp_path), matcher=None)
    assert config["matcher"]["feature_dim"] == 12 and load_matcher(tmp_path, without) is None
    (tmp_path / MATCHER_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ArtcapError, match="matcher.safetensors: unreadable weights"):
        load_matcher(tmp_path)


@pytest.fixture(scope="module")
def matcher_run(artemis_subset, feature_cache_dir, tmp_path_factory):
    """A real (tiny) run with `matcher = true`: the model folder ships the matcher's weights, and nothing else new."""
    from artcap.train import train

    out = tmp_path_factory.mktemp("runs") / "matcher"
    return train(tiny_config(artemis_subset, feature_cache_dir, out, matcher=True, beam=4, rerank=True),
                 progress=False)


def test_a_run_ships_its_matcher_and_reranks_within_the_beam(matcher_run, shared_data):
    model = matcher_run / "model"
    assert (model / MATCHER_FILE).is_file()
    assert json.loads((model / "config.json").read_text())["matcher"]["file"] == MATCHER_FILE
    captioner = Captioner.load(model, backend="torch")
    assert isinstance(captioner.matcher, CaptionMatcher) and captioner.decoding.rerank
    paintings = sorted((shared_data / "artemis-mini" / "wikiart").rglob("*.jpg"))[:6]
    features = captioner.encode(paintings)
    reranked = captioner.caption(features)
    plain = captioner.caption(features, decoding=captioner.decoding.with_overrides(rerank=False))
    from artcap.decode import search_n_best

    n_best = search_n_best(captioner.decoder, features, captioner.vocab, captioner.decoding)
    for caption, hypotheses in zip(reranked, n_best):
        assert caption in {captioner.vocab.decode(h.ids) for h in hypotheses}
    assert plain == [captioner.vocab.decode(hs[0].ids) for hs in n_best]


def test_rerank_without_a_matcher_is_a_one_line_error(tiny_run, shared_data, capsys):
    painting = next((shared_data / "artemis-mini" / "wikiart").rglob("*.jpg"))
    assert main(["caption", str(painting), "--model", str(tiny_run), "--rerank", "--beam", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no caption matcher to rerank with" in err and len(err.splitlines()) == 1
