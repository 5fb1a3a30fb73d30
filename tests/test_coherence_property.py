"""The coherence measures flag exactly the defects a caption has: captions are generated from templates with a
chosen set of defects (a pronoun of the other gender, a tail an English sentence cannot end on, a clause said
twice, a clause broken off before the next), and each detector must fire exactly when its defect was put in."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artcap.coherence import (DEFECTS, DETECTORS, SentenceGuard, choose_unbroken, coherence_flags, dangling_end,
                              is_broken, mixes_genders, repeats_a_clause, unfinished_clause)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PEOPLE = {"male": ["man", "boy", "king", "gentleman", "father", "priest"],
          "female": ["woman", "girl", "queen", "lady", "mother", "nun"]}
PRONOUN = {"male": "he", "female": "she"}
OTHER = {"male": "female", "female": "male"}
THINGS = ["sky", "sea", "tree", "house", "painting", "river", "flower", "mountain", "boat", "road"]
ADJECTIVES = ["dark", "calm", "bright", "sad", "lonely", "peaceful", "strange", "warm", "cold", "busy"]
DOINGS = ["thinking about something", "enjoying the day", "waiting for someone", "looking at the sea",
          "resting in the shade", "holding a flower", "sitting by the river", "walking home"]
# Tails that make only a dangling end (the word after them is missing, but no complement was opened) ...
DANGLING_ONLY_TAILS = ["and", "but", "because", "it could", "we", "i think i", "very", "or"]
# ... and tails that break a clause off where a complement was opened (a dangling end when last).
OPEN_TAILS = ["is trying to be", "looks like the", "is going to", "reminds me of", "looks like", "seems to be a"]


@st.composite
def thing_clause(draw) -> str:
    return f"the {draw(st.sampled_from(THINGS))} is {draw(st.sampled_from(ADJECTIVES))}"


@st.composite
def person_clause(draw, gender: str, mixed: bool) -> str:
    noun = draw(st.sampled_from(PEOPLE[gender]))
    pronoun = PRONOUN[OTHER[gender] if mixed else gender]
    return f"the {noun} looks like {pronoun} is {draw(st.sampled_from(DOINGS))}"


@st.composite
def captions(draw) -> tuple[str, set[str]]:
    """A caption and the defects put into it."""
    gender = draw(st.sampled_from(["male", "female"]))
    wanted = set(draw(st.lists(st.sampled_from(DEFECTS), unique=True)))
    pieces = draw(st.lists(st.one_of(thing_clause(), person_clause(gender, False)), min_size=1, max_size=4,
                           unique=True))
    if "mixed genders" in wanted:
        pieces.insert(draw(st.integers(0, len(pieces))), draw(person_clause(gender, True)))
    if "repeated clause" in wanted:
        at = draw(st.integers(0, len(pieces) - 1))
        pieces.insert(at + 1, pieces[at])
    if "unfinished clause" in wanted:  # broken off in the middle, then the caption goes on
        broken = f"the {draw(st.sampled_from(THINGS))} {draw(st.sampled_from(OPEN_TAILS))}"
        pieces.insert(draw(st.integers(0, len(pieces) - 1)), broken)
    caption = " and ".join(pieces)
    if "dangling end" in wanted:  # in a clause of its own ("looks", used nowhere else), so no repeat is touched
        caption += f" and the {draw(st.sampled_from(THINGS))} looks {draw(st.sampled_from(ADJECTIVES))}"
        if draw(st.booleans()):
            caption += " " + draw(st.sampled_from(DANGLING_ONLY_TAILS))
        else:  # an opened complement at the very end is both a dangling end and an unfinished clause
            caption += " and it " + draw(st.sampled_from(OPEN_TAILS))  # "it": unlike the broken clause above
            wanted.add("unfinished clause")
    return caption, wanted


@SETTINGS
@given(captions())
def test_each_detector_flags_exactly_the_generated_defects(generated):
    caption, wanted = generated
    found = {name for name, detect in DETECTORS.items() if detect(caption)}
    assert found == wanted, caption


@SETTINGS
@given(st.lists(captions(), min_size=1, max_size=8))
def test_rates_are_the_share_of_flagged_captions(generated):
    rates = coherence_flags(c for c, _ in generated).rates()
    for name in DEFECTS:
        assert rates[name] == sum(name in wanted for _, wanted in generated) / len(generated)


@pytest.mark.parametrize("caption", [
    "the man looks like she has a sense of people",
    "i like the way the woman is looking at the painting looks like he is trying to be",
    "the way the woman is sitting on the right looks like he is going to be in the bible",
    "the king stands tall and she is proud of himself",
])
def test_the_reported_captions_mix_genders(caption):
    assert mixes_genders(caption)


@pytest.mark.parametrize("caption", [
    "the man looks at the woman and she smiles",   # her own noun came first
    "she looks at him with love",                  # object pronouns may name someone else
    "the woman looks at him",
    "the man looks at her and she smiles back",    # "her" introduced her
    "the woman and the children, they look like he is far away",  # people in between: the referent is unclear
    "the man's wife is sad and he is angry",
])
def test_coherent_people_are_not_flagged(caption):
    assert not mixes_genders(caption)


@pytest.mark.parametrize("caption", [
    "i wonder what it is",                       # embedded question
    "this looks like a child's idea of what hell looks like",
    "the building is dungeon like",              # not "looks like"
    "a style too loud to be attracted to",       # a stranded preposition
    "the colors are calming",
])
def test_sentences_that_may_end_so_are_not_dangling(caption):
    assert not dangling_end(caption) and not unfinished_clause(caption)


def test_a_clause_said_twice_is_flagged_only_verbatim():
    assert repeats_a_clause("the colors are very calming and the colors are very calming")
    assert repeats_a_clause("the sky is dark, the sea is calm, the sky is dark")
    assert not repeats_a_clause("the colors are very calming and the colors are calm")
    assert not repeats_a_clause("red and red")  # one-word clauses are not clauses said twice


# ---- writing under the guard (coherence.SentenceGuard) and choosing among finished captions (choose_unbroken) ----

# Words that make every defect possible: people of both genders, the pronouns (one with a clitic), openers,
# wh-words, clause breaks, and plain words that finish a clause.
GUARD_WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "the", "man", "woman", "queen", "king's", "people", "he", "she",
               "she's", "himself", "herself", "her", "his", "looks", "like", "is", "trying", "to", "be", "of", "a",
               "and", "but", "what", "sky", "dark", "calm", "it", "could", "very", "i", "sad"]


@st.composite
def guarded_prefix(draw) -> tuple[list[int], SentenceGuard]:
    """Word ids a decoder may say one after another under the guard (each drawn among the allowed ones)."""
    guard = _guard()
    prefix: list[int] = []
    for _ in range(draw(st.integers(0, 14))):
        _, banned = guard.banned(prefix)
        allowed = [i for i in range(4, len(GUARD_WORDS)) if i not in banned]
        prefix.append(draw(st.sampled_from(allowed)))
    return prefix, guard


def _guard() -> SentenceGuard:
    return SentenceGuard(GUARD_WORDS)


def _text(prefix: list[int]) -> str:
    return " ".join(GUARD_WORDS[i] for i in prefix)


@SETTINGS
@given(guarded_prefix())
def test_the_guard_lets_a_caption_end_exactly_when_it_is_unbroken(generated):
    """Never ends a broken caption, never stops an unbroken one: what the guard allows is what the detectors pass."""
    prefix, guard = generated
    no_end, _ = guard.banned(prefix)
    assert not mixes_genders(_text(prefix))  # the pronouns it masks are the only way to mix genders
    assert no_end == (bool(prefix) and is_broken(_text(prefix))), _text(prefix)


@SETTINGS
@given(guarded_prefix())
def test_the_guard_masks_exactly_the_words_that_break_the_caption(generated):
    prefix, guard = generated
    text = _text(prefix)
    _, banned = guard.banned(prefix)
    for i, word in enumerate(GUARD_WORDS[4:], start=4):
        if word in ("and", "but"):  # closing the clause: it must not be unfinished or a repeat
            breaks = bool(prefix) and (unfinished_clause(text) or repeats_a_clause(text))
        else:
            breaks = mixes_genders(f"{text} {word}")
        assert (i in banned) == breaks, (text, word)


@st.composite
def candidate_sets(draw) -> tuple[list[str], list[float], list[bool]]:
    """A beam's finished captions, some with defects put in, and how much a ranking prefers each."""
    generated = draw(st.lists(captions(), min_size=1, max_size=8))
    preference = draw(st.lists(st.floats(-1, 1) | st.sampled_from([0.0, 0.5]), min_size=len(generated),
                               max_size=len(generated)))
    return [c for c, _ in generated], preference, [bool(wanted) for _, wanted in generated]


@SETTINGS
@given(candidate_sets())
def test_the_choice_never_prefers_a_broken_caption_to_an_unbroken_one(generated):
    texts, preference, broken = generated
    chosen = choose_unbroken(texts, preference)
    pool = [i for i, b in enumerate(broken) if not b] or list(range(len(texts)))
    best = max(preference[i] for i in pool)
    assert chosen in pool and preference[chosen] == best  # the ranking decides among the unbroken ones
    assert chosen == min(i for i in pool if preference[i] == best)  # ties: the beam's order
