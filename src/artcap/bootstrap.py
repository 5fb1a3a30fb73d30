"""Bootstrap intervals for corpus metrics, by resampling paintings with replacement.

A corpus metric (corpus BLEU, METEOR, CIDEr-D, a share of captions...) is written as a function of per-painting
sums: each painting contributes a row of numbers (`parts`, [N, K]) and the metric is `aggregate(sum of rows)`.
Corpus BLEU sums n-gram match counts and lengths, METEOR sums its alignment statistics, a mean sums
(value, 1). A bootstrap resample is a vector of painting weights (how often each painting was drawn, summing to N),
so every resample of every metric is one matrix product `weights @ parts` and one vectorised `aggregate`:
1,000 resamples of 240 paintings cost milliseconds, and the expensive work (tokenising, METEOR's alignments) is
done once.

- `interval`: the percentile interval (2.5% and 97.5% of the resampled values, for 95%);
- `paired`: two systems on the same paintings, the same resamples for both: the difference's percentile interval
  and a two-sided paired-bootstrap p-value by the shift method (Efron & Tibshirani 1993, section 16.4): the share
  of resamples whose difference lies at least |d| away from the observed difference d, i.e. how often a world in
  which the systems are equal would show a difference as large; with the +1 correction, (1 + hits) / (1 + B),
  so it is never 0. A system compared with itself has difference 0 in every resample: interval [0, 0], p = 1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ArtcapError

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 2021
CONFIDENCE = 0.95


class Statistic(ABC):
    """A corpus metric that can be recomputed on any weighting of its paintings."""

    @property
    @abstractmethod
    def paintings(self) -> int:
        """N, the number of paintings it is computed over."""

    @abstractmethod
    def resampled(self, weights: np.ndarray) -> np.ndarray:
        """[B] values, one per row of painting weights [B, N]."""

    def value(self) -> float:
        """The metric on the paintings as they are (every weight 1)."""
        return float(self.resampled(np.ones((1, self.paintings)))[0])


@dataclass(frozen=True)
class Pooled(Statistic):
    """`aggregate(weights @ parts)`: the metric from summed per-painting rows."""

    parts: np.ndarray  # [N, K]
    aggregate: Callable[[np.ndarray], np.ndarray]  # [..., K] -> [...]

    @property
    def paintings(self) -> int:
        return len(self.parts)

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(self.aggregate(weights @ self.parts), dtype=float)


def ratio(sums: np.ndarray) -> np.ndarray:
    """sum of column 0 / sum of column 1: a mean (column 1 all ones) or a share of a subset."""
    return sums[..., 0] / sums[..., 1]


def mean_of(values: Sequence[float] | np.ndarray) -> Pooled:
    """The plain mean of per-painting values (ROUGE-L, CIDEr-D with fixed document frequencies, shares)."""
    values = np.asarray(values, dtype=float)
    return Pooled(np.stack([values, np.ones_like(values)], axis=1), ratio)


def total_of(values: Sequence[float] | np.ndarray) -> Pooled:
    """A count split into per-painting shares that add up to it (e.g. the vocabulary): weighted sum."""
    values = np.asarray(values, dtype=float)
    return Pooled(values[:, None], lambda sums: sums[..., 0])


@dataclass(frozen=True)
class Averaged(Statistic):
    """The mean of several statistics over the same paintings (the human row: the mean over utterance indices)."""

    parts: tuple[Statistic, ...]

    @property
    def paintings(self) -> int:
        return self.parts[0].paintings

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        return np.mean([p.resampled(weights) for p in self.parts], axis=0)


def resample_weights(paintings: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """[resamples, paintings] draw counts: each row draws `paintings` paintings with replacement."""
    if paintings < 1:
        raise ArtcapError("a bootstrap interval needs at least one painting")
    if resamples < 1:
        raise ArtcapError(f"--resamples must be 1 or more, got {resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(paintings, np.full(paintings, 1.0 / paintings), size=resamples).astype(float)


def _percentiles(values: np.ndarray, confidence: float) -> list[float | None]:
    values = values[np.isfinite(values)]
    if not len(values):
        return [None, None]
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def interval(statistic: Statistic, weights: np.ndarray, confidence: float = CONFIDENCE) -> list[float | None]:
    """[low, high]: the percentile bootstrap interval of one metric ([None, None] where it is undefined)."""
    return _percentiles(statistic.resampled(weights), confidence)


def paired(a: Statistic, b: Statistic, weights: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """A minus B on the same resampled paintings: {"difference", "interval", "p_value"}."""
    if a.paintings != b.paintings:
        raise ArtcapError(f"a paired comparison needs the same paintings: {a.paintings} vs {b.paintings}")
    observed = a.value() - b.value()
    differences = a.resampled(weights) - b.resampled(weights)
    finite = differences[np.isfinite(differences)]
    if not np.isfinite(observed) or not len(finite):
        return {"difference": None, "interval": [None, None], "p_value": None}
    as_far = np.abs(finite - observed) >= abs(observed) - 1e-12  # a tie counts as "as far"
    return {"difference": float(observed), "interval": _percentiles(finite, confidence),
            "p_value": float((1 + as_far.sum()) / (1 + len(finite)))}


def excludes_zero(bounds: Sequence[float | None]) -> bool:
    """True when an interval lies entirely above or entirely below 0."""
    low, high = bounds
    return low is not None and high is not None and (low > 0 or high < 0)
