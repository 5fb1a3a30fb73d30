"""The two baselines: nearest-neighbour by cosine similarity, and the strongest constant caption."""

import random

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu

from artcap.baselines import ConstantCaptioner, NearestNeighbourCaptioner, constant_caption, nearest_neighbour
from artcap.data import prepare, read_annotations, references
from artcap.errors import ArtcapError


def test_nearest_neighbour_uses_cosine_similarity_and_the_consensus_caption():
    train = np.array([[1.0, 0.0, 0.0], [10.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    captions = [
        ["a red boat on the calm sea", "purple elephants dancing in a storm", "a red boat on the sea"],
        ["a tall man in a dark coat"],
        ["green fields under a blue sky", "green fields and a blue sky"],
    ]
    # Query 0 is closest to row 1 in Euclidean distance but to row 0 by angle; query 1 is row 2 scaled.
    query = np.array([[10.0, 0.05, 0.0], [0.0, 0.1, 7.0]], np.float32)
    got = nearest_neighbour(train, captions, query)
    assert got[0] in ("a red boat on the calm sea", "a red boat on the sea")  # not the outlier
    assert got[1] in captions[2]
    assert NearestNeighbourCaptioner(train, captions).caption(query) == got
    with pytest.raises(ArtcapError, match="aligned"):
        nearest_neighbour(train, captions[:2], query)


def test_nearest_neighbour_on_real_features_finds_the_most_similar_training_painting(artemis_subset, feature_cache_dir):
    from artcap.config import config_from
    from artcap.corpus import load_corpus

    csv_path, images = artemis_subset
    corpus = load_corpus(config_from({"data.captions": str(csv_path), "data.images": str(images),
                                      "encoder.feature_cache": str(feature_cache_dir), "encoder.num_workers": 0}),
                         progress=False)
    data = corpus.data
    train_ids, test_ids = data.split_ids("train"), data.split_ids("test")
    train_feats = corpus.features[np.array([corpus.image_row[i] for i in train_ids])]
    test_feats = corpus.features[np.array([corpus.image_row[i] for i in test_ids])]
    train_caps = [[" ".join(t) for t in data.captions[i]] for i in train_ids]
    got = nearest_neighbour(train_feats, train_caps, test_feats)
    for n, caption in enumerate(got):
        sims = [float(np.dot(test_feats[n], f) / (np.linalg.norm(test_feats[n]) * np.linalg.norm(f)))
                for f in train_feats]
        assert caption in train_caps[int(np.argmax(sims))]
    # A training painting's own features find itself.
    assert nearest_neighbour(train_feats, train_caps, train_feats[5:6])[0] in train_caps[5]


def corpus_bleu4(caption, refs):
    gts = {k: v for k, v in refs.items()}
    bleu, _ = Bleu(4).compute_score(gts, {k: [caption] for k in gts}, verbose=0)
    return bleu[3]


def test_constant_caption_is_a_training_caption_that_beats_random_ones(artemis_subset):
    csv_path, images = artemis_subset
    annotations = read_annotations(csv_path, images)
    data = prepare(annotations, "paper")
    train_ids = data.split_ids("train")
    captions = [" ".join(t) for i in train_ids for t in data.captions[i]]
    refs = references(annotations, "paper", train_ids)
    best = constant_caption(captions, refs)
    assert best in captions
    assert constant_caption(captions, refs) == best  # deterministic
    best_score = corpus_bleu4(best, refs)
    for other in random.Random(0).sample(captions, 10):
        assert best_score >= corpus_bleu4(other, refs), other
    assert ConstantCaptioner(best).caption(np.zeros((3, 4))) == [best] * 3
