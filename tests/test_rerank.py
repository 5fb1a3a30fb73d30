"""Consensus reranking (artcap.rerank): which beam caption it keeps, its files, and a real run that ships it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from artcap.captioner import Captioner
from artcap.cli import main
from artcap.errors import ArtcapError
from artcap.rerank import CAPTIONS_FILE, FEATURES_FILE, NeighbourReranker

from conftest import tiny_config

SEA = [["a", "red", "boat", "on", "the", "sea"], ["the", "boat", "sails", "on", "a", "calm", "sea"]]
FOREST = [["a", "dark", "forest", "at", "night"], ["the", "dark", "trees", "of", "the", "forest", "scare", "me"]]
CROWD = [["many", "people", "dance", "in", "the", "street"], ["a", "crowd", "of", "people", "in", "a", "street"]]


def toy_reranker() -> NeighbourReranker:
    features = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return NeighbourReranker(features, [SEA, FOREST, CROWD])


def test_it_keeps_the_candidate_that_fits_the_look_alike_paintings():
    reranker = toy_reranker()
    generic = "i like the colors in this painting".split()
    candidates = [generic, "a boat on the calm sea".split(), "a dark forest".split()]
    near_sea, near_forest = [0.9, 0.1, 0.2], [0.1, 0.8, 0.3]
    assert reranker.choose(np.array([near_sea, near_forest]), [candidates, candidates], k=1) == [1, 2]
    # one candidate (greedy search) or identical ones: the beam's order stands
    assert reranker.choose(np.array([near_sea, near_sea]), [[generic], [generic, generic]], k=2) == [0, 0]


def test_neighbours_are_the_most_similar_paintings_by_cosine():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(40, 8)), rng.normal(size=(5, 8))
    reranker = NeighbourReranker(bank, [[["w"]]] * 40)
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        bank / np.linalg.norm(bank, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(reranker.neighbours(queries * 7.0, 6), np.argsort(-cosine, axis=1)[:, :6])
    assert reranker.neighbours(queries, 100).shape == (5, 40)  # k beyond the bank: every painting
    with pytest.raises(ArtcapError, match=r"expected \[B, 8\]"):
        reranker.neighbours(queries[:, :3], 2)


def test_files_round_trip_and_damage_is_one_line(tmp_path):
    reranker = toy_reranker()
    reranker.save(tmp_path)
    loaded = NeighbourReranker.load(tmp_path)
    query = np.array([[0.2, 0.1, 0.9]])
    candidates = [[["people", "in", "the", "street"], ["a", "red", "boat"]]]
    assert loaded.choose(query, candidates, 1) == reranker.choose(query, candidates, 1) == [0]
    assert NeighbourReranker.load(tmp_path / "elsewhere") is None  # a folder without neighbours
    (tmp_path / CAPTIONS_FILE).write_text(json.dumps({"captions": [["a b"]]}))  # 1 painting for 3 rows
    with pytest.raises(ArtcapError, match="feature rows for 1 paintings"):
        NeighbourReranker.load(tmp_path)
    (tmp_path / FEATURES_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ArtcapError, match="damaged reranker files"):
        NeighbourReranker.load(tmp_path)


@pytest.fixture(scope="module")
def rerank_run(artemis_subset, feature_cache_dir, tmp_path_factory):
    """A real (tiny) run with `rerank = true`: the model folder ships its training paintings' neighbours."""
    from artcap.train import train

    out = tmp_path_factory.mktemp("runs") / "rerank"
    return train(tiny_config(artemis_subset, feature_cache_dir, out, rerank=True, beam=4, rerank_neighbours=5),
                 progress=False)


def test_a_run_ships_its_neighbours_and_reranks_within_the_beam(rerank_run, shared_data):
    model = rerank_run / "model"
    assert (model / FEATURES_FILE).is_file() and (model / CAPTIONS_FILE).is_file()
    splits = json.loads((model / "splits.json").read_text())
    shipped = json.loads((model / CAPTIONS_FILE).read_text())["captions"]
    assert len(shipped) == len(splits["train"])  # only training paintings: never val or test
    captioner = Captioner.load(model, backend="torch")
    assert captioner.decoding.rerank_neighbours == 5
    paintings = sorted((shared_data / "artemis-mini" / "wikiart").rglob("*.jpg"))[:6]
    features = captioner.encode(paintings)
    reranked = captioner.caption_features(features)
    plain = captioner.caption_features(features, decoding=captioner.decoding.with_overrides(rerank_neighbours=0))
    from artcap.decode import search_n_best

    n_best = search_n_best(captioner.decoder, features, captioner.vocab, captioner.decoding)
    for caption, hypotheses in zip(reranked, n_best):
        assert caption in {captioner.vocab.decode(h.ids) for h in hypotheses}
    assert plain == [captioner.vocab.decode(hs[0].ids) for hs in n_best]


def test_rerank_without_neighbours_is_a_one_line_error(tiny_run, shared_data, capsys):
    painting = next((shared_data / "artemis-mini" / "wikiart").rglob("*.jpg"))
    assert main(["caption", str(painting), "--model", str(tiny_run), "--rerank", "5", "--beam", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no neighbours to rerank with" in err and len(err.splitlines()) == 1
