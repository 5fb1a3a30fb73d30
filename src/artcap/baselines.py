"""The two baselines every artcap model is scored against (same split, same metrics):

- ``nearest-neighbour`` (ArtEmis's): each test painting gets a caption of the training painting
  whose pooled CNN features are most similar (cosine). Of that painting's captions we take the
  *consensus* one — the caption with the highest smoothed sentence BLEU-4 against the painting's
  other captions (ties: the first in file order) — so the choice is deterministic and not a
  random annotator's outlier. ArtEmis picked one at random.
- ``constant``: the single training caption that scores best, given for every painting, against the
  training references — the strongest generic sentence. Scoring all ~10^4-10^5 training captions
  against all training references is quadratic, so we use a two-stage approximation:
  1. rank every training caption by a cheap proxy of its expected BLEU-4 against a random
     painting: for n = 1..4 the mean document frequency (share of training paintings whose
     references contain it) of its n-grams, geometric mean over n, times the BLEU brevity penalty
     against the median reference length;
  2. score the ``pool_size`` best by the proxy, plus the ``pool_size // 4`` most frequent exact
     captions, exactly: corpus BLEU-4 (pycocoevalcap, closest reference length) of that caption
     given for each of ``sample_images`` training paintings (a fixed random sample), against all of
     their references. The best of those wins (ties: the shorter, then alphabetical).

Both are "captioner-like": ``caption(features) -> list[str]``, as ``Captioner`` has.
Texts are the preset-processed captions (lower-case words joined by spaces).
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import BleuScorer, cook_refs, cook_test

from .errors import ArtcapError
from .metrics import per_image_bleu

__all__ = ["nearest_neighbour", "constant_caption", "consensus_caption", "NearestNeighbourCaptioner",
           "ConstantCaptioner"]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def nearest_rows(train_features: np.ndarray, query_features: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Index of the training row with the highest cosine similarity to each query row (ties: lowest index)."""
    train = _unit_rows(train_features)
    query = _unit_rows(query_features)
    if train.ndim != 2 or query.ndim != 2 or train.shape[1] != query.shape[1]:
        raise ArtcapError(f"nearest_neighbour: feature shapes {train.shape} and {query.shape} do not match")
    out = np.empty(len(query), dtype=np.int64)
    for s in range(0, len(query), chunk):  # bounded memory on the full ArtEmis
        out[s : s + chunk] = (query[s : s + chunk] @ train.T).argmax(axis=1)
    return out


def consensus_captions(captions_by_image: Mapping[int, Sequence[str]]) -> dict[int, str]:
    """For each image, its caption with the best smoothed sentence BLEU-4 against its other captions
    (one JVM for all; an image with one caption gets that caption; ties: the first)."""
    predictions, references, single = {}, {}, {}
    for image, captions in captions_by_image.items():
        captions = [c for c in captions if c.strip()]
        if not captions:
            raise ArtcapError(f"nearest_neighbour: training image #{image} has no caption")
        if len(captions) == 1:
            single[image] = captions[0]
            continue
        for k, caption in enumerate(captions):
            predictions[(image, k)] = caption
            references[(image, k)] = captions[:k] + captions[k + 1 :]
    scores = per_image_bleu(predictions, references) if predictions else {}
    best: dict[int, tuple[float, int, str]] = {}
    for (image, k), caption in predictions.items():
        candidate = (scores[(image, k)], -k, caption)
        if image not in best or candidate > best[image]:
            best[image] = candidate
    return {**single, **{image: caption for image, (_, _, caption) in best.items()}}


def consensus_caption(captions: Sequence[str]) -> str:
    """The consensus caption of one image (see ``consensus_captions``)."""
    return consensus_captions({0: list(captions)})[0]


def nearest_neighbour(train_features: np.ndarray, train_captions_by_image: Sequence[Sequence[str]],
                      query_features: np.ndarray) -> list[str]:
    """For each query row, the consensus caption of the training image (row of ``train_features``,
    aligned with ``train_captions_by_image``) nearest by cosine similarity of pooled features."""
    if len(train_features) != len(train_captions_by_image):
        raise ArtcapError(f"nearest_neighbour: {len(train_features)} training feature rows but "
                          f"{len(train_captions_by_image)} caption lists; they must be aligned")
    if len(train_features) == 0:
        raise ArtcapError("nearest_neighbour: no training images")
    if len(query_features) == 0:
        return []
    rows = nearest_rows(train_features, query_features)
    chosen = consensus_captions({int(r): list(train_captions_by_image[r]) for r in sorted(set(rows.tolist()))})
    return [chosen[int(r)] for r in rows]


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _proxy_scores(candidates: list[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Approximate expected BLEU-4 of each candidate against a random image's references."""
    document_frequency: Counter = Counter()
    lengths = []
    for refs in references:
        seen = set()
        for ref in refs:
            words = ref.split()
            lengths.append(len(words))
            for n in range(1, 5):
                seen.update(_ngrams(words, n))
        document_frequency.update(seen)
    images = max(len(references), 1)
    ref_length = statistics.median(lengths) if lengths else 1.0
    scores = []
    for caption in candidates:
        words = caption.split()
        if not words:
            scores.append(0.0)
            continue
        logs = []
        for n in range(1, 5):
            grams = _ngrams(words, n)
            # orders the caption is too short for, or that never occur, get a small floor (smoothing)
            p = sum(document_frequency[g] for g in grams) / (len(grams) * images) if grams else 0.0
            logs.append(math.log(max(p, 1e-4)))
        brevity = 1.0 if len(words) >= ref_length else math.exp(1 - ref_length / len(words))
        scores.append(brevity * math.exp(sum(logs) / 4))
    return scores


def constant_caption(train_captions: Sequence[str], train_references: Mapping[object, Sequence[str]],
                     pool_size: int = 200, sample_images: int = 500, seed: int = 0) -> str:
    """The training caption with the best corpus BLEU-4 when given for every training image (the
    two-stage approximation in the module docstring). Deterministic for a given seed."""
    candidates = sorted({c.strip() for c in train_captions if c.strip()})
    if not candidates:
        raise ArtcapError("constant_caption: no training captions")
    image_ids = sorted(k for k, refs in train_references.items() if any(r.strip() for r in refs))
    if not image_ids:
        raise ArtcapError("constant_caption: no training references")
    proxy = _proxy_scores(candidates, [train_references[k] for k in image_ids])
    by_proxy = sorted(range(len(candidates)), key=lambda i: (-proxy[i], candidates[i]))
    pool = [candidates[i] for i in by_proxy[:pool_size]]
    frequent = Counter(c.strip() for c in train_captions if c.strip()).most_common(max(pool_size // 4, 1))
    pool = list(dict.fromkeys(pool + [c for c, _ in frequent]))

    sample = sorted(random.Random(seed).sample(image_ids, min(sample_images, len(image_ids))), key=str)
    cooked_refs = [cook_refs([r for r in train_references[k] if r.strip()]) for k in sample]  # once, not per candidate

    def corpus_bleu4(caption: str) -> float:  # = pycocoevalcap Bleu(4).compute_score(...)[0][3]
        scorer = BleuScorer(n=4)
        scorer.crefs = cooked_refs
        scorer.ctest = [cook_test(caption, refs) for refs in cooked_refs]
        bleu, _ = scorer.compute_score(option="closest", verbose=0)
        return float(bleu[3])

    return min(pool, key=lambda c: (-corpus_bleu4(c), len(c.split()), c))


class NearestNeighbourCaptioner:
    """``caption(features)``: the nearest-neighbour baseline over a fixed training set."""

    name = "nearest-neighbour"

    def __init__(self, train_features: np.ndarray, train_captions_by_image: Sequence[Sequence[str]]):
        self.train_features = np.asarray(train_features, dtype=np.float32)
        self.train_captions = [list(c) for c in train_captions_by_image]

    def caption(self, features) -> list[str]:
        query = features.detach().cpu().numpy() if hasattr(features, "detach") else np.asarray(features)
        return nearest_neighbour(self.train_features, self.train_captions, query)


class ConstantCaptioner:
    """``caption(features)``: the same caption for every image."""

    name = "constant"

    def __init__(self, text: str):
        self.text = text

    def caption(self, features) -> list[str]:
        return [self.text] * len(features)
