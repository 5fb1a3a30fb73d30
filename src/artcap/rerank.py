"""Reranking the beam with an image-caption matcher: of a painting's finished beam hypotheses, keep the one that a
small contrastive model finds most specific to *this* painting.

Beam search prefers the sentence that is likely for any painting ("i like the colors in this painting"). The matcher
scores how well a caption fits an image compared with other images: an image side, Linear(pooled features ->
`dim`), and a caption side, the mean of learned word embeddings (the decoder's vocabulary), both L2-normalised; it
is trained with the symmetric InfoNCE loss (CLIP's) on the training paintings and their captions, one caption drawn
per painting per batch, in seconds on a CPU. Only its weights ship (`matcher.safetensors`, 3.6 MB here): no
caption or image of the training data.

`artcap train` with `matcher = true` trains it after the decoder; decoding with `rerank = true` (`--rerank`) uses it.
Measured on val (docs/models.md, "Choosing the default model"): for the grounded Lite2 model, CIDEr-D 0.082 -> 0.095,
grounding 0.030 -> 0.042, distinct 71% -> 92%.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ArtcapError
from .text import Vocabulary

log = logging.getLogger("artcap")
MATCHER_FILE = "matcher.safetensors"


@dataclass(frozen=True)
class MatcherSettings:
    dim: int = 256  # the shared space
    epochs: int = 30  # passes over the training paintings
    batch_size: int = 256  # paintings per step (one caption each: no false negatives from the same painting)
    lr: float = 3e-3
    dropout: float = 0.2  # on the image features
    seed: int = 0


class CaptionMatcher(nn.Module):
    def __init__(self, feature_dim: int, vocab_size: int, dim: int = 256, dropout: float = 0.2):
        super().__init__()
        self.feature_dim, self.vocab_size, self.dim = feature_dim, vocab_size, dim
        self.image = nn.Linear(feature_dim, dim)
        self.words = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        self.dropout = nn.Dropout(dropout)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))  # CLIP's learned temperature

    def encode_images(self, pooled: torch.Tensor) -> torch.Tensor:
        if pooled.dim() != 2 or pooled.size(1) != self.feature_dim:
            raise ArtcapError(f"matcher: features of shape {tuple(pooled.shape)}, expected [B, {self.feature_dim}] "
                              f"(the pooled features of the model's encoder)")
        return F.normalize(self.image(self.dropout(F.normalize(pooled.float(), dim=1))), dim=1)

    def encode_captions(self, captions: Sequence[Sequence[int]]) -> torch.Tensor:
        """Word ids per caption (an empty caption reads as one <unk>) -> [N, dim]."""
        captions = [list(c) or [Vocabulary.unk_id] for c in captions]
        flat = torch.tensor([w for c in captions for w in c], dtype=torch.long)
        offsets = torch.tensor([0, *np.cumsum([len(c) for c in captions])[:-1]], dtype=torch.long)
        return F.normalize(self.words(flat, offsets), dim=1)

    def loss(self, pooled: torch.Tensor, captions: Sequence[Sequence[int]]) -> torch.Tensor:
        """Symmetric InfoNCE over a batch of (image, its caption) pairs."""
        logits = self.log_scale.exp().clamp(max=100) * self.encode_images(pooled) @ self.encode_captions(captions).T
        target = torch.arange(len(captions))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    @torch.no_grad()
    def scores(self, pooled: torch.Tensor, candidates: Sequence[Sequence[Sequence[int]]]) -> list[list[float]]:
        """For each image, how well each of its candidate captions (word ids) matches it (cosine similarity)."""
        self.eval()
        if not candidates:
            return []
        images = self.encode_images(pooled)
        # Every image's candidates in one embedding call (each caption's mean is its own, whatever else is
        # in the call), then each image's scores from its slice.
        everything = self.encode_captions([option for options in candidates for option in options])
        starts = np.cumsum([0, *(len(options) for options in candidates)])
        return [(everything[start:stop] @ image).tolist() if stop - start > 1 else [0.0] * int(stop - start)
                for image, start, stop in zip(images, starts[:-1], starts[1:])]

    def choose(self, pooled: torch.Tensor, candidates: Sequence[Sequence[Sequence[int]]]) -> list[int]:
        """For each image, the index of its candidate caption (word ids, the beam's best first) that matches it best;
        ties keep the beam's order."""
        return [int(np.argmax(s)) for s in self.scores(pooled, candidates)]


def train_matcher(features: np.ndarray, captions: Sequence[Sequence[Sequence[int]]], vocab_size: int,
                  settings: MatcherSettings = MatcherSettings()) -> CaptionMatcher:
    """features [N, C] (pooled, one row per training painting) and each painting's captions as word ids."""
    if len(features) != len(captions) or len(captions) < 2:
        raise ArtcapError(f"matcher: {len(features)} feature rows for {len(captions)} paintings' captions; need one "
                          f"row per painting and at least 2 paintings")
    if any(not caps for caps in captions):
        raise ArtcapError("matcher: every training painting needs at least one caption")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    matcher = CaptionMatcher(features.shape[1], vocab_size, settings.dim, settings.dropout)
    optimizer = torch.optim.Adam(matcher.parameters(), lr=settings.lr)
    features_t = torch.as_tensor(np.asarray(features, dtype=np.float32))
    matcher.train()
    for _ in range(settings.epochs):
        order = rng.permutation(len(captions))
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            if len(batch) < 2:
                continue
            drawn = [captions[i][rng.integers(len(captions[i]))] for i in batch]
            loss = matcher.loss(features_t[batch], drawn)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    log.info("caption matcher: last batch loss %.3f", loss.item())
    return matcher.eval()


def matcher_for(corpus, settings: MatcherSettings = MatcherSettings()) -> CaptionMatcher:
    """Train the matcher on a corpus's training paintings (its features must be pooled: train.add_image_extras) and
    captions (its vocabulary's ids)."""
    data = corpus.data
    ids = data.split_ids("train")
    features = np.asarray(corpus.features[np.array([corpus.image_row[i] for i in ids])], dtype=np.float32)
    unk = data.vocab.unk_id
    captions = [[[data.vocab.index.get(w, unk) for w in caption] for caption in data.captions[i]] for i in ids]
    return train_matcher(features, captions, len(data.vocab), settings)


def save_matcher(model_dir: str | Path, matcher: CaptionMatcher, settings: MatcherSettings = MatcherSettings()) -> None:
    """`matcher.safetensors` and the "matcher" section of config.json (after the decoder's last export)."""
    from .model_folder import MatcherSection, write_part

    section = MatcherSection(matcher.feature_dim, matcher.vocab_size, matcher.dim)
    trained = {k: v for k, v in asdict(settings).items() if k != "dim"}
    write_part(model_dir, matcher, section.file, lambda config: config.with_matcher(section, trained))


def load_matcher(model_dir: str | Path, config=None) -> CaptionMatcher | None:
    """The model folder's matcher (its config.json's "matcher" section), or None when it has none."""
    from .model_folder import ModelConfig, load_part

    config = config or ModelConfig.read(model_dir)
    return load_part(model_dir, config.matcher, lambda s: CaptionMatcher(s.feature_dim, s.vocab_size, s.dim),
                     "matcher")
