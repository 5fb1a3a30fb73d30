"""Consensus reranking of the beam's captions (Devlin et al. 2015, "Exploring nearest neighbor approaches for image
captioning"; Mao et al.'s consensus reranking): of a painting's finished beam hypotheses, keep the one that agrees
best - by CIDEr-D, document frequencies from the training captions - with what people said about the k training
paintings that look most like it (cosine of pooled image features).

Beam search alone prefers the sentence that is likely for *any* painting ("i like the colors in this painting");
the neighbours' captions name what paintings like this one show, so the rerank trades a little likelihood for
specificity. Measured on val (README, "Specific captions"): CIDEr-D 0.077 -> 0.098, grounding 0.021 -> 0.041,
distinct 68% -> 82% for the grounded merge model at beam 5, k = 10.

The neighbours ship in the model folder (`neighbours.safetensors`: the training paintings' pooled features, fp16,
L2-normalised; `neighbours.json`: their tokenised captions), written by `artcap train` with `rerank = true` and
used when the decoding's `rerank_neighbours` is above 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .cider import CiderD
from .errors import ArtcapError
from .io import atomic_write_json, save_tensors

FEATURES_FILE = "neighbours.safetensors"
CAPTIONS_FILE = "neighbours.json"


class NeighbourReranker:
    def __init__(self, features: np.ndarray, captions: Sequence[Sequence[Sequence[str]]]):
        if len(features) != len(captions) or not len(captions):
            raise ArtcapError(f"reranker: {len(features)} feature rows for {len(captions)} paintings' captions; "
                              f"need one row per painting and at least one painting")
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        self.features = (features / np.clip(norms, 1e-12, None)).astype(np.float32)
        self.captions = [[list(c) for c in caps] for caps in captions]
        self._cider: CiderD | None = None

    @property
    def cider(self) -> CiderD:
        """CIDEr-D against each training painting's captions, cooked once, on first use."""
        if self._cider is None:
            self._cider = CiderD(dict(enumerate(self.captions)))
        return self._cider

    def neighbours(self, pooled: np.ndarray, k: int) -> np.ndarray:
        """[B, k] rows of the k most similar training paintings (cosine), most similar first."""
        pooled = np.asarray(pooled, dtype=np.float32)
        if pooled.ndim != 2 or pooled.shape[1] != self.features.shape[1]:
            raise ArtcapError(f"reranker: features of shape {pooled.shape}, expected [B, {self.features.shape[1]}] "
                              f"(the pooled features of the model's encoder)")
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        k = min(k, len(self.features))
        similarity = pooled @ self.features.T
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)

    def choose(self, pooled: np.ndarray, candidates: Sequence[Sequence[Sequence[str]]], k: int) -> list[int]:
        """For each painting, the index of its candidate (tokenised captions, the beam's best first) with the
        highest mean CIDEr-D against its k nearest training paintings' captions; ties keep the beam's order."""
        chosen = []
        for rows, options in zip(self.neighbours(pooled, k), candidates):
            if len(options) <= 1:
                chosen.append(0)
                continue
            pairs = [(option, int(row)) for option in options for row in rows]
            scores = self.cider.score_many([p[0] for p in pairs], [p[1] for p in pairs]).reshape(len(options), -1)
            chosen.append(int(np.argmax(scores.mean(axis=1))))
        return chosen

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        save_tensors(folder / FEATURES_FILE, {"features": torch.from_numpy(self.features).half()})
        atomic_write_json(folder / CAPTIONS_FILE, {"captions": [[" ".join(c) for c in caps] for caps in self.captions]})

    @classmethod
    def load(cls, folder: str | Path) -> "NeighbourReranker | None":
        """The model folder's reranker, or None when it has none."""
        folder = Path(folder)
        if not (folder / FEATURES_FILE).exists() and not (folder / CAPTIONS_FILE).exists():
            return None
        import json

        from safetensors.torch import load_file

        try:
            features = load_file(str(folder / FEATURES_FILE))["features"].float().numpy()
            captions = json.loads((folder / CAPTIONS_FILE).read_text(encoding="utf-8"))["captions"]
            captions = [[c.split() for c in caps] for caps in captions]
        except Exception as e:  # missing, truncated, not safetensors/JSON, or the wrong layout
            raise ArtcapError(f"{folder}: damaged reranker files {FEATURES_FILE}/{CAPTIONS_FILE} "
                              f"({type(e).__name__}: {e}); re-copy the model folder or train it again with "
                              f"rerank = true") from None
        return cls(features, captions)


def reranker_for(corpus) -> NeighbourReranker:
    """The training paintings' pooled features and captions of a corpus (corpus.Corpus, pooled features)."""
    ids = corpus.data.split_ids("train")
    rows = [corpus.image_row[i] for i in ids]
    features = np.asarray(corpus.features[np.array(rows)], dtype=np.float32)
    if features.ndim == 3:  # a grid [N, g*g, C]: pooled as the baselines and the emotion head pool it
        features = features.mean(axis=1)
    return NeighbourReranker(features, [corpus.data.captions[i] for i in ids])
