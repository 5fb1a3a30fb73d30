"""CIDEr-D in-process, with document frequencies computed once from a fixed reference corpus: the reward of
self-critical training (artcap.scst), thousands of (caption, references) pairs per step, no Java, no re-counting.

    cider = CiderD({row: [["a", "red", "sky"], ...], ...})     # the training references, cooked once
    cider.score(["a", "red", "sunset"], row)                    # CIDEr-D of one caption against row's references
    cider.score_many(captions, rows)                            # np.ndarray, one score per (caption, row)

The arithmetic is pycocoevalcap's CiderScorer (which is CIDEr-D: tf-idf n-gram vectors for n = 1..4, the
candidate's counts clipped by the reference's, a Gaussian length penalty with sigma 6, mean over n, mean over
references, x10), n-grams counted by its own `precook`. Two things differ, both on purpose:
- the document frequencies (and log of the corpus size) come from the corpus given here, not from the batch being
  scored; with the same corpus as references, the scores equal CiderScorer's exactly (tests/test_scst.py);
- `end_token` ("<eos>" by default) is appended to every reference and candidate, so n-grams that end a caption
  count: a caption cut off in "... with a" loses the ("with", "a", <eos>) match a reference ending there would have.
Like CiderScorer, the length in the penalty is the number of bigrams (words - 1), and an n-gram no reference
has is weighted as if it had document frequency 1.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pycocoevalcap.cider.cider_scorer import precook

from .errors import ArtcapError

NGRAMS = 4
SIGMA = 6.0
END_TOKEN = "<eos>"


@dataclass
class _Cooked:
    """One caption as CIDEr-D sees it: tf-idf weight per n-gram, the vector norm per order, its length."""

    weights: dict[tuple[str, ...], float]
    norms: np.ndarray  # [NGRAMS]
    length: int  # bigram count, as CiderScorer's counts2vec counts it


@dataclass
class _ReferenceSet:
    cooked: list[_Cooked]
    norms: np.ndarray  # [R, NGRAMS]
    lengths: np.ndarray  # [R]


class CiderD:
    """CIDEr-D against a fixed reference corpus, whose document frequencies are counted once."""

    def __init__(self, references: Mapping[Hashable, Sequence[Sequence[str]]], end_token: str | None = END_TOKEN,
                 sigma: float = SIGMA):
        if not references:
            raise ArtcapError("CIDEr-D needs a reference corpus: no image with references was given")
        self.end_token, self.sigma = end_token, sigma
        counted = {}
        for key, refs in references.items():
            refs = [r for r in refs if len(r)]
            if not refs:
                raise ArtcapError(f"CIDEr-D: image {key!r} has no non-empty reference caption")
            counted[key] = [precook(self._text(r), NGRAMS) for r in refs]
        self.document_frequency: dict[tuple[str, ...], int] = {}
        for refs in counted.values():  # an n-gram counts once per image, however many of its references have it
            for ngram in {g for ref in refs for g in ref}:
                self.document_frequency[ngram] = self.document_frequency.get(ngram, 0) + 1
        self.log_corpus_size = math.log(float(len(counted)))
        self._counted = counted
        self._references: dict[Hashable, _ReferenceSet] = {}  # cooked on first use: a rerank needs only a few

    def __len__(self) -> int:
        return len(self._counted)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._counted

    @property
    def keys(self) -> list[Hashable]:
        """The images of the reference corpus, in the order given."""
        return list(self._counted)

    def _text(self, tokens: Sequence[str]) -> str:
        words = list(tokens) + ([self.end_token] if self.end_token else [])
        return " ".join(words)

    def _cook(self, counts: Mapping[tuple[str, ...], int]) -> _Cooked:
        """CiderScorer's counts2vec with the cached document frequencies."""
        weights, norms, length = {}, np.zeros(NGRAMS), 0
        for ngram, tf in counts.items():
            idf = self.log_corpus_size - math.log(max(1.0, self.document_frequency.get(ngram, 0.0)))
            weights[ngram] = w = tf * idf
            norms[len(ngram) - 1] += w * w
            if len(ngram) == 2:
                length += tf
        return _Cooked(weights, np.sqrt(norms), length)

    def _reference_set(self, counted: list) -> _ReferenceSet:
        cooked = [self._cook(c) for c in counted]
        return _ReferenceSet(cooked, np.stack([c.norms for c in cooked]), np.array([c.length for c in cooked]))

    def _against(self, candidate: _Cooked, refs: _ReferenceSet) -> float:
        overlap = np.zeros((len(refs.cooked), NGRAMS))
        for r, ref in enumerate(refs.cooked):
            ref_weights = ref.weights
            for ngram, w in candidate.weights.items():
                rw = ref_weights.get(ngram)
                if rw is not None:
                    overlap[r, len(ngram) - 1] += min(w, rw) * rw  # clipped: repeating a word does not pay
        norm = candidate.norms[None, :] * refs.norms
        similarity = np.divide(overlap, norm, out=overlap, where=norm != 0)
        delta = (candidate.length - refs.lengths).astype(float)
        penalty = np.exp(-(delta**2) / (2 * self.sigma**2))
        return float((similarity * penalty[:, None]).mean(axis=1).mean() * 10.0)

    def cook_candidate(self, tokens: Sequence[str]) -> _Cooked:
        return self._cook(precook(self._text(tokens), NGRAMS))

    def score(self, tokens: Sequence[str], key: Hashable) -> float:
        """CIDEr-D of one caption (a list of words, without the end token) against image `key`'s references."""
        return self._against(self.cook_candidate(tokens), self._refs(key))

    def score_many(self, captions: Sequence[Sequence[str]], keys: Sequence[Hashable]) -> np.ndarray:
        """One score per (caption, key) pair; a caption is cooked once even when scored against several keys."""
        if len(captions) != len(keys):
            raise ArtcapError(f"CIDEr-D: {len(captions)} captions for {len(keys)} images")
        cache: dict[tuple[str, ...], _Cooked] = {}
        out = np.empty(len(captions))
        for i, (tokens, key) in enumerate(zip(captions, keys)):
            words = tuple(tokens)
            cooked = cache.get(words)
            if cooked is None:
                cooked = cache[words] = self.cook_candidate(words)
            out[i] = self._against(cooked, self._refs(key))
        return out

    def _refs(self, key: Hashable) -> _ReferenceSet:
        refs = self._references.get(key)
        if refs is None:
            counted = self._counted.get(key)
            if counted is None:
                raise ArtcapError(f"CIDEr-D: image {key!r} is not in the reference corpus ({len(self)} images)")
            refs = self._references[key] = self._reference_set(counted)
        return refs
