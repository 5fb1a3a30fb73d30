"""Coherent decoding (`DecodingConfig.coherent`) on the shipped default model and real paintings: with it on,
captions under every emotion never end on a dangling word, never mix genders, never leave a clause unfinished or
say one twice, whatever the search (greedy, beam, beam reranked by the matcher). Without it, these paintings do get
such captions, so the tests would fail if the option did nothing."""

from __future__ import annotations

import pytest

from artcap.coherence import DETECTORS, is_broken
from artcap.data import EMOTIONS

# Paintings of the default model's val split whose captions mixed genders or dangled before coherent decoding.
PAINTINGS = ["Baroque/bartolome-esteban-murillo_christ-the-column", "Baroque/peter-paul-rubens_roman-charity",
             "Naive_Art_Primitivism/marc-chagall_a-wheatfield-on-a-summer-s-afternoon-1942",
             "Impressionism/alfred-sisley_at-moret-sur-loing-1892", "Impressionism/camille-pissarro_kneeling-woman",
             "Baroque/adriaen-van-ostade_peasants-drinking-and-making-music-in-a-barn"]
SEARCHES = {"reranked beam": {}, "beam": {"rerank": False}, "greedy": {"beam": 1, "rerank": False}}


@pytest.fixture(scope="module")
def features(captioner, shared_data):
    paths = [shared_data / "artemis-mini" / "wikiart" / f"{name}.jpg" for name in PAINTINGS]
    present = [p for p in paths if p.is_file()]
    assert present == paths, "the paintings of this test are missing from the shared data"
    return captioner.encode(paths)


def captions_under_every_emotion(captioner, features, **decoding) -> list[str]:
    return [c for emotion in EMOTIONS for c in captioner.caption(features, emotion=emotion, **decoding)]


def test_the_shipped_default_decodes_coherently(captioner):
    assert captioner.decoding.coherent


@pytest.mark.parametrize("search", list(SEARCHES))
def test_coherent_captions_of_real_paintings_have_no_defect(captioner, features, search):
    captions = captions_under_every_emotion(captioner, features, coherent=True, **SEARCHES[search])
    broken = {c: [name for name, detect in DETECTORS.items() if detect(c)] for c in captions if is_broken(c)}
    assert not broken, broken


def test_without_coherent_decoding_these_paintings_get_broken_captions(captioner, features):
    captions = captions_under_every_emotion(captioner, features, coherent=False)
    assert any(DETECTORS["mixed genders"](c) for c in captions)
    assert any(DETECTORS["dangling end"](c) for c in captions)


@pytest.mark.parametrize("max_len", [1, 3])
def test_a_caption_cut_at_its_length_limit_is_still_one_caption(captioner, features, max_len):
    """The guard masks only <eos>, "and"/"but" and pronouns, and never the forced <eos> at max_len: the beam always
    finishes, even when every hypothesis is cut off mid-clause."""
    captions = captioner.caption(features, coherent=True, max_len=max_len)
    assert len(captions) == len(PAINTINGS)
    assert all(1 <= len(c.split()) <= max_len for c in captions)
