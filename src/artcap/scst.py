"""Self-critical sequence training (Rennie et al. 2017) with CIDEr-D as the reward: `[optim] objective = "scst"`.

Each step, for every caption row of the batch (an image, and its conditions' values for a conditioned decoder):
1. sample `scst.samples` captions from the decoder (multinomial over `step`'s next-word distribution, no
   gradient, <pad>/<bos>/<unk> never drawn, <eos> forced after max_len words, as decode.py does);
2. reward each by CIDEr-D against the image's training references, <eos> included (artcap.cider), minus
   `grounding_weight` x CIDEr-D against the references of a random other training painting (the grounding
   measure of artcap.metrics, turned into a reward: a caption that fits every painting gains nothing);
3. baseline each sample by the mean reward of the OTHER samples of the same image ("new self-critical",
   Luo 2020), so no greedy decode is needed and the baseline does not depend on the sample it judges;
4. take the log-probabilities of the sampled words with one teacher-forced call of the model itself
   (`model(features, tokens, mask, conditions)`), so a DistributedDataParallel wrapper's hooks run, and
   minimise -(reward - baseline) x log p, averaged over the sampled words.

Dropout is off during the whole step (sampling and scoring): the two passes then compute the same policy,
so the gradient is the policy gradient of the captions actually sampled. The steps the sampler forced
(<eos> after max_len words) carry no gradient: their probability under the sampler was 1. An attention
decoder's regulariser (SAT's doubly stochastic term) belongs to cross-entropy training and is left out.

The loss value is -(mean sampled reward) (its gradient is the policy gradient), so a run's `train_loss`
under SCST reads as minus the mean CIDEr-D reward of the epoch's samples. The loss keeps no state: the
training loop's checkpoints resume it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cider import CiderD
from .conditions import Conditions, repeat_rows
from .decode import DecodingConfig, step_words
from .errors import ArtcapError
from .text import Vocabulary


def new_self_critical_baseline(rewards: torch.Tensor) -> torch.Tensor:
    """rewards [B, K] (K samples per image) -> each sample's baseline: the mean reward of the image's other K-1."""
    k = rewards.size(1)
    if k < 2:
        raise ArtcapError(f"the self-critical baseline needs at least 2 samples per image, got {k}")
    return (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)


def _banned(vocab: Vocabulary) -> list[int]:
    return [vocab.pad_id, vocab.bos_id, vocab.unk_id]


@torch.no_grad()
def sample_captions(decoder: nn.Module, features: torch.Tensor, conditions: Conditions | None, vocab: Vocabulary,
                    max_len: int) -> torch.Tensor:
    """One sampled caption per feature row: [N, max_len + 1] word ids ending in <eos>, then <pad>. `decoder` is the
    bare module (init_memory/step are not DDP's forward)."""
    memory = decoder.init_memory(features, conditions)
    n, eos = features.size(0), vocab.eos_id
    words, _ = step_words(decoder, memory, n, vocab, DecodingConfig(max_len=max_len), features.device, _gumbel_draw)
    said_eos = words == eos
    after_eos = said_eos.long().cumsum(dim=1) - said_eos.long() > 0
    out = torch.full((n, max_len + 1), vocab.pad_id, dtype=torch.long, device=features.device)
    out[:, : words.size(1)] = words.masked_fill(after_eos, vocab.pad_id)
    return out


def _gumbel_draw(logp: torch.Tensor) -> torch.Tensor:
    """One draw per row from softmax(logp): Gumbel-max, several times faster than torch.multinomial on a CPU;
    -log(Exp(1)) is Gumbel(0, 1)."""
    return (logp - torch.empty_like(logp).exponential_().log()).argmax(dim=-1)


class ScstLoss:
    """The SCST loss for `train(loss_fn=...)`: `loss_fn(model, batch) -> (loss, number of sampled captions)`.
    Needs `batch.rows` (each caption's feature row), the keys of `cider`'s references."""

    def __init__(self, cider: CiderD, vocab: Vocabulary, max_len: int, samples: int = 5,
                 grounding_weight: float = 0.0):
        if samples < 2:
            raise ArtcapError(f"scst.samples must be at least 2 (the baseline is the other samples' mean), got {samples}")
        if grounding_weight and len(cider) < 2:
            raise ArtcapError("the grounding reward needs at least 2 training paintings to compare with")
        self.cider, self.vocab, self.max_len = cider, vocab, max_len
        self.samples, self.grounding_weight = samples, grounding_weight
        self.keys = cider.keys
        self.key_index = {k: n for n, k in enumerate(self.keys)}

    @classmethod
    def from_corpus(cls, corpus, max_len: int, samples: int = 5, grounding_weight: float = 0.0) -> "ScstLoss":
        """References: every training painting's kept captions (the preset's tokens), keyed by its feature row."""
        data = corpus.data
        references = {corpus.image_row[i]: data.captions[i] for i in data.split_ids("train")}
        return cls(CiderD(references), data.vocab, max_len, samples, grounding_weight)

    def words(self, ids: Sequence[int]) -> list[str]:
        """Sampled ids -> the caption's words, without <eos> (CiderD appends it) and what follows."""
        out = []
        for i in ids:
            if i == self.vocab.eos_id or i == self.vocab.pad_id:
                break
            out.append(self.vocab.words[i])
        return out

    def other_keys(self, keys: Sequence[Hashable]) -> list[Hashable]:
        """For each image, a random other training painting (torch's generator: reproducible with the loop's seeds)."""
        n = len(self.keys)
        offsets = torch.randint(1, n, (len(keys),)).tolist()
        return [self.keys[(self.key_index[k] + o) % n] for k, o in zip(keys, offsets)]

    def rewards(self, captions: Sequence[Sequence[str]], keys: Sequence[Hashable]) -> np.ndarray:
        """[len(keys), samples] rewards of captions (image-major: the samples of keys[0] first)."""
        own = np.repeat(np.asarray(keys, dtype=object), self.samples).tolist()
        reward = self.cider.score_many(captions, own)
        if self.grounding_weight:
            others = np.repeat(np.asarray(self.other_keys(keys), dtype=object), self.samples).tolist()
            reward = reward - self.grounding_weight * self.cider.score_many(captions, others)
        return reward.reshape(len(keys), self.samples)

    def __call__(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        if batch.rows is None:
            raise ArtcapError("SCST needs each caption's feature row (Batch.rows) to find its references")
        keys = [int(r) for r in batch.rows]
        decoder = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        features = batch.features.repeat_interleave(self.samples, dim=0)
        conditions = repeat_rows(batch.conditions, self.samples)
        was_training = model.training
        model.eval()  # dropout off: the policy sampled is the policy differentiated (see the module docstring)
        try:
            sampled = sample_captions(decoder, features, conditions, self.vocab, self.max_len)
            captions = [self.words(row) for row in sampled.tolist()]
            rewards = torch.as_tensor(self.rewards(captions, keys), dtype=torch.float32, device=features.device)
            advantage = (rewards - new_self_critical_baseline(rewards)).reshape(-1)
            log_probs, free = self._log_probs(model, features, sampled, conditions)
        finally:
            model.train(was_training)
        surrogate = -(advantage.unsqueeze(1) * log_probs * free).sum() / free.sum().clamp(min=1)
        mean_reward = rewards.mean()
        return surrogate - surrogate.detach() - mean_reward, rewards.numel()

    def _log_probs(self, model: nn.Module, features: torch.Tensor, sampled: torch.Tensor,
                   conditions: Conditions) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log p of every sampled word [N, L] (through the model's forward) and where the
        gradient applies (sampled, not forced, not padding)."""
        bos = torch.full((sampled.size(0), 1), self.vocab.bos_id, dtype=torch.long, device=sampled.device)
        length = int((sampled != self.vocab.pad_id).sum(dim=1).max())
        targets = sampled[:, :length]
        inputs = torch.cat([bos, sampled[:, : length - 1]], dim=1)
        mask = targets != self.vocab.pad_id
        logits, _ = model(features, inputs, mask, conditions)
        logits = logits.float().index_fill(1, torch.tensor(_banned(self.vocab), device=logits.device), float("-inf"))
        picked = F.log_softmax(logits, dim=-1).gather(1, targets[mask].unsqueeze(1)).squeeze(1)
        log_probs = torch.zeros(targets.shape, dtype=picked.dtype, device=picked.device).masked_scatter(mask, picked)
        free = mask.clone()
        if length > self.max_len:
            free[:, self.max_len] = False  # the forced <eos>
        return log_probs, free.to(log_probs.dtype)
