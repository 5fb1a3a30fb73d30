"""Stage 4, decoding: batched greedy search (the paper's) and beam search.

Both stop at <eos> or after `max_len` words (then <eos> is forced), so a caption is never
endless; neither emits <pad>, <bos> or <unk>. Beam search ranks finished captions by
log-probability / length**alpha and can block repeated n-grams; with beam=1 it equals greedy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import MergeDecoder
from .text import Vocabulary

NEG_INF = float("-inf")


def _next_log_probs(model: MergeDecoder, image, tokens, state, vocab: Vocabulary, seqs: list[list[int]],
                    force_eos: bool, no_repeat_ngram: int):
    logits, state = model.step(image, tokens, state)
    logp = F.log_softmax(logits.float(), dim=-1)
    logp[:, [vocab.pad_id, vocab.bos_id, vocab.unk_id]] = NEG_INF
    if force_eos:
        eos = logp[:, vocab.eos_id].clone()
        logp.fill_(NEG_INF)
        logp[:, vocab.eos_id] = eos
    if no_repeat_ngram > 1:
        n = no_repeat_ngram
        rows, words = [], []  # every (hypothesis, word) that would repeat an n-gram: banned in one go
        for row, seq in enumerate(seqs):
            if len(seq) >= n - 1:
                prefix = seq[len(seq) - n + 1:]
                for i in range(len(seq) - n + 1):
                    if seq[i:i + n - 1] == prefix:
                        rows.append(row)
                        words.append(seq[i + n - 1])
        if rows:
            logp[rows, words] = NEG_INF
    return logp, state


@torch.no_grad()
def greedy_search(model: MergeDecoder, features: torch.Tensor, vocab: Vocabulary, max_len: int,
                  no_repeat_ngram: int = 0) -> list[list[int]]:
    """features [B, F] -> B lists of word ids (without <bos>/<eos>)."""
    batch = features.size(0)
    image = model.encode_image(features)
    tokens = torch.full((batch,), vocab.bos_id, dtype=torch.long, device=features.device)
    seqs: list[list[int]] = [[] for _ in range(batch)]
    finished = [False] * batch
    state = None
    for t in range(max_len + 1):
        logp, state = _next_log_probs(model, image, tokens, state, vocab, seqs, t == max_len, no_repeat_ngram)
        tokens = logp.argmax(dim=-1)
        for i, w in enumerate(tokens.tolist()):
            if not finished[i]:
                if w == vocab.eos_id:
                    finished[i] = True
                else:
                    seqs[i].append(w)
        if all(finished):
            break
    return seqs


@torch.no_grad()
def beam_search(model: MergeDecoder, features: torch.Tensor, vocab: Vocabulary, max_len: int, beam: int = 3,
                length_alpha: float = 0.7, no_repeat_ngram: int = 0) -> list[list[int]]:
    """features [B, F] -> for each image the best finished caption's word ids."""
    batch, k = features.size(0), beam
    image = model.encode_image(features).repeat_interleave(k, dim=0)
    tokens = torch.full((batch * k,), vocab.bos_id, dtype=torch.long, device=features.device)
    scores = torch.full((batch, k), NEG_INF, device=features.device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    seqs: list[list[int]] = [[] for _ in range(batch * k)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    state = None
    for t in range(max_len + 1):
        logp, state = _next_log_probs(model, image, tokens, state, vocab, seqs, t == max_len, no_repeat_ngram)
        vocab_size = logp.size(-1)
        candidates = (scores.reshape(-1, 1) + logp).reshape(batch, k * vocab_size)
        top_scores, top_idx = candidates.topk(min(2 * k, candidates.size(1)), dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()

        sources, next_tokens, next_scores = [], [], []
        for b in range(batch):
            alive: list[tuple[float, int, int]] = []
            if not done[b]:
                for rank, (score, idx) in enumerate(zip(top_scores[b], top_idx[b])):
                    if score == NEG_INF:
                        break
                    src, word = b * k + idx // vocab_size, idx % vocab_size
                    if word == vocab.eos_id:
                        if rank < k:  # an <eos> counts only among the k best candidates
                            length = len(seqs[src]) + 1
                            finished[b].append((score / length ** length_alpha, seqs[src]))
                    else:
                        alive.append((score, src, word))
                    if len(alive) == k:
                        break
                if len(finished[b]) >= k or t == max_len or not alive:
                    done[b] = True
            if done[b]:
                alive = []
            alive += [(NEG_INF, b * k, vocab.pad_id)] * (k - len(alive))
            for score, src, word in alive:
                sources.append(src)
                next_tokens.append(word)
                next_scores.append(score)
        if all(done):
            break
        src_index = torch.tensor(sources, device=features.device)
        state = tuple(s.index_select(0, src_index) for s in state)
        image = image.index_select(0, src_index)
        tokens = torch.tensor(next_tokens, device=features.device)
        scores = torch.tensor(next_scores, device=features.device).reshape(batch, k)
        seqs = [seqs[s] + [w] for s, w in zip(sources, next_tokens)]
    return [max(f, key=lambda item: item[0])[1] if f else [] for f in finished]


def generate(model: MergeDecoder, features: torch.Tensor, vocab: Vocabulary, max_len: int, beam: int = 1,
             length_alpha: float = 0.7, no_repeat_ngram: int = 0) -> list[str]:
    """Captions as strings; beam=1 is greedy search."""
    model.eval()
    if beam <= 1:
        ids = greedy_search(model, features, vocab, max_len, no_repeat_ngram)
    else:
        ids = beam_search(model, features, vocab, max_len, beam, length_alpha, no_repeat_ngram)
    return [vocab.decode(seq) for seq in ids]
