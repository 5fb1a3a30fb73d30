"""Stage 4, decoding: batched greedy search (the paper's) and beam search, for every decoder kind.

Both talk to the decoder only through its interface (decoders/base.py: `init_memory` once, then `step` per
word), stop at <eos> or after `max_len` words (then <eos> is forced), so a caption is never
endless; neither emits <pad>, <bos> or <unk>. Beam search ranks finished captions by
log-probability / length**alpha; with beam=1 it equals greedy.

`coherent` adds the rules of `coherence.SentenceGuard`: no end after a dangling word, no "and"/"but" after an
unfinished or repeated clause, no he/she of the other gender than the person just named; and of the finished
captions the best unbroken one is kept.

Two bans keep captions from looping, both applied to all hypotheses at once as masks over the
next-word log-probabilities: `no_repeat_ngram` (no n-gram twice) and `max_word_repeats` (no content
word, i.e. a word outside the short `STOP_WORDS` list, more than that many times). <eos> is never
banned, so a caption can always end.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import settings
from .coherence import SentenceGuard, choose_unbroken
from .conditions import EMOTION, Conditions, repeat_rows
from .errors import ArtcapError, check_known_keys
from .settings import setting
from .text import Vocabulary

NEG_INF = float("-inf")
MAX_BEAM = 20
MAX_CAPTION_WORDS = 200
MAX_WORD_REPEATS = 10

# Function words that `max_word_repeats` never limits: articles, pronouns, prepositions, conjunctions,
# auxiliaries. ArtEmis' "looks like" keeps "like" here (as a preposition it recurs in good captions).
STOP_WORDS = frozenset("""
a an the this that these those there here
i me my mine you your he him his she her hers it its it's we us our they them their
and or but nor so because if than as while though although
of in on at to for with from by about into onto over under up down out off through between
is am are was were be been being has have had do does did will would can could should may might must
not no very too just also like
""".split())


@dataclass(frozen=True)
class DecodingConfig:
    """Every setting that changes a caption for a given model and image. Saved in the model's
    config.json as its defaults; a folder job's identity includes it, so one record file never
    mixes two decodings."""

    beam: int = setting(1, "beam width; 1 = greedy search (the paper's)", low=1, high=MAX_BEAM)
    max_len: int = setting(30, "the longest caption, in words", low=1, high=MAX_CAPTION_WORDS)
    length_alpha: float = setting(0.7, "beam ranking: log-probability / length**alpha", low=0, high=5)
    no_repeat_ngram: int = setting(0, "no n-gram twice in a caption (2 = no bigram twice)", off=0, low=2, high=10)
    max_word_repeats: int = setting(0, "no content word (outside STOP_WORDS) more than this many times",
                                    off=0, low=1, high=MAX_WORD_REPEATS)
    emotion_guidance: float = setting(0.0, "emotion-grounded models: how much to favour words specific to the "
                                      "asked emotion (decode.ConditionContrast)", low=0, high=10)
    rerank: bool = setting(False, "keep the beam caption the model's image-caption matcher finds most specific "
                                  "to the image (models trained with a matcher)")
    coherent: bool = setting(False, "keep captions whole: never end on a dangling word (\"trying to be\"), never "
                                    "say he/she of the other gender than the person named, never prefer a broken "
                                    "caption of the beam to an unbroken one (artcap.coherence)")

    def __post_init__(self) -> None:
        settings.check(self, prefix="decoding ")

    def guidance(self) -> dict[str, float]:
        """{condition: guidance weight} (decode.ConditionContrast): the emotion's, when it is on."""
        return {EMOTION.name: self.emotion_guidance} if self.emotion_guidance > 0 else {}

    def with_overrides(self, **overrides: Any) -> "DecodingConfig":
        """A copy with the given settings changed; None means 'keep the model's'."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config.json") -> "DecodingConfig":
        check_known_keys(cls, values, source, "decoding")
        return cls(**values)


@dataclass
class Caption:
    """One decoded caption; `attention[i]` is where word i looked (one weight per grid cell, summing
    to 1), None for decoders without attention."""

    text: str
    words: list[str]
    attention: np.ndarray | None  # [len(words), h*w]


@dataclass
class Hypothesis:
    ids: list[int]  # word ids, without <bos>/<eos>
    attention: torch.Tensor | None  # [len(ids), h*w]
    score: float = 0.0  # beam search: log-probability / length**alpha (the beam's ranking)


class _Bans:
    """The decoding rules that look at what a hypothesis already said, as masks over the vocabulary."""

    def __init__(self, vocab: Vocabulary, decoding: DecodingConfig, device: torch.device):
        self.specials = [vocab.pad_id, vocab.bos_id, vocab.unk_id]
        self.eos = vocab.eos_id
        self.ngram, self.repeats = decoding.no_repeat_ngram, decoding.max_word_repeats
        self.content = torch.tensor([i >= 4 and w not in STOP_WORDS for i, w in enumerate(vocab.words)],
                                    device=device)
        self.guard = _sentence_guard(tuple(vocab.words)) if decoding.coherent else None

    def apply(self, logp: torch.Tensor, history: torch.Tensor, force_eos: bool) -> torch.Tensor:
        """logp [R, V] and the words said so far [R, t] -> logp with every banned word at -inf."""
        logp[:, self.specials] = NEG_INF
        if force_eos:
            eos = logp[:, self.eos].clone()
            logp.fill_(NEG_INF)
            logp[:, self.eos] = eos
            return logp
        n, t = self.ngram, history.size(1)
        if n > 1 and t >= n:  # the word after every earlier occurrence of the last n-1 words
            windows = history.unfold(1, n - 1, 1)[:, : t - n + 1]  # [R, t-n+1, n-1]
            repeats = (windows == history[:, t - n + 1:].unsqueeze(1)).all(dim=-1)
            rows = repeats.nonzero(as_tuple=True)[0]
            logp[rows, history[:, n - 1:][repeats]] = NEG_INF
        if self.repeats and t:
            counts = torch.zeros_like(logp).scatter_add_(1, history, torch.ones_like(history, dtype=logp.dtype))
            logp.masked_fill_((counts >= self.repeats) & self.content, NEG_INF)
        if self.guard is not None:
            _mask_breaking_words(logp, history, self.guard, self.eos)
        return logp


@functools.lru_cache(maxsize=4)
def _sentence_guard(words: tuple[str, ...]) -> SentenceGuard:
    return SentenceGuard(words)


def _mask_breaking_words(logp: torch.Tensor, history: torch.Tensor, guard: SentenceGuard, eos: int) -> None:
    """`coherent`: mask, per hypothesis, the next words that would break its caption (never all of them: only
    <eos>, "and"/"but" and gendered pronouns can be). Rows past their <eos> (or padding) are left alone."""
    for row, prefix in enumerate(history.tolist()):
        if eos in prefix or Vocabulary.pad_id in prefix:
            continue
        no_end, words = guard.banned(prefix)
        if no_end:
            logp[row, eos] = NEG_INF
        if words:
            logp[row, words] = NEG_INF


def _next_log_probs(model: nn.Module, memory, tokens, state, history, bans: _Bans, force_eos: bool):
    logits, state, attention = model.step(memory, tokens, state)
    logp = bans.apply(F.log_softmax(logits.float(), dim=-1), history, force_eos)
    return logp, state, attention


def step_words(model: nn.Module, memory, batch: int, vocab: Vocabulary, decoding: DecodingConfig,
               device: torch.device, choose) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The word-by-word loop that greedy search and SCST's sampling share: `choose(logp [B, V]) -> ids [B]`
    picks each next word among those the decoding rules allow; <eos> is forced after max_len words.
    -> (the words [B, steps], stopping once every row said <eos>; the attention row of each step)."""
    bans = _Bans(vocab, decoding, device)
    tokens = torch.full((batch,), vocab.bos_id, dtype=torch.long, device=device)
    history = tokens.new_empty(batch, 0)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    attentions: list[torch.Tensor] = []
    state = None
    for t in range(decoding.max_len + 1):
        logp, state, attention = _next_log_probs(model, memory, tokens, state, history, bans, t == decoding.max_len)
        tokens = choose(logp)
        history = torch.cat([history, tokens.unsqueeze(1)], dim=1)
        if attention is not None:
            attentions.append(attention.float())
        finished |= tokens == vocab.eos_id
        if bool(finished.all()):
            break
    return history, attentions


def _greedy(model: nn.Module, memory, batch: int, vocab: Vocabulary, decoding: DecodingConfig,
            device: torch.device) -> list[Hypothesis]:
    history, attentions = step_words(model, memory, batch, vocab, decoding, device, lambda logp: logp.argmax(dim=-1))
    maps = torch.stack(attentions, dim=1) if attentions else None  # [B, steps, h*w]
    hypotheses = []
    for row, seq in enumerate(history.tolist()):
        ids = seq[: seq.index(vocab.eos_id)] if vocab.eos_id in seq else seq
        hypotheses.append(Hypothesis(ids, None if maps is None else maps[row, : len(ids)]))
    return hypotheses


def _beam(model: nn.Module, memory, batch: int, vocab: Vocabulary, decoding: DecodingConfig,
          device: torch.device) -> list[list[Hypothesis]]:
    """Every image's finished hypotheses (up to `beam`), best first. An image whose search is done leaves
    the batch (its rows are dropped), so the decoder only runs on the images still searching: a batch of
    paintings then costs the sum of their caption lengths, not its longest one times the batch."""
    k, max_len, alpha = decoding.beam, decoding.max_len, decoding.length_alpha
    bans = _Bans(vocab, decoding, device)
    memory = tuple(m.repeat_interleave(k, dim=0) for m in memory)
    tokens = torch.full((batch * k,), vocab.bos_id, dtype=torch.long, device=device)
    history = tokens.new_empty(batch * k, 0)
    maps: torch.Tensor | None = None  # [A*k, t, h*w]: each hypothesis' attention, reordered with it
    scores = torch.full((batch, k), NEG_INF, device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    active = list(range(batch))  # the images still searching; image active[j] owns rows j*k .. j*k+k-1
    state = None
    for t in range(max_len + 1):
        logp, state, attention = _next_log_probs(model, memory, tokens, state, history, bans, t == max_len)
        if attention is not None and maps is None:
            maps = attention.new_zeros(batch * k, 0, attention.size(1)).float()
        vocab_size = logp.size(-1)
        candidates = (scores.reshape(-1, 1) + logp).reshape(len(active), k * vocab_size)
        top_scores, top_idx = candidates.topk(min(2 * k, candidates.size(1)), dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()

        sources, next_tokens, next_scores, still = [], [], [], []
        for j, b in enumerate(active):
            alive: list[tuple[float, int, int]] = []
            for rank, (score, idx) in enumerate(zip(top_scores[j], top_idx[j])):
                if score == NEG_INF:
                    break
                src, word = j * k + idx // vocab_size, idx % vocab_size
                if word == vocab.eos_id:
                    if rank < k:  # an <eos> counts only among the k best candidates
                        ids = history[src].tolist()
                        finished[b].append(Hypothesis(ids, None if maps is None else maps[src],
                                                      score / (len(ids) + 1) ** alpha))
                else:
                    alive.append((score, src, word))
                if len(alive) == k:
                    break
            if len(finished[b]) >= k or t == max_len or not alive:
                continue  # done: its rows leave the batch
            still.append(b)
            alive += [(NEG_INF, j * k, vocab.pad_id)] * (k - len(alive))
            for score, src, word in alive:
                sources.append(src)
                next_tokens.append(word)
                next_scores.append(score)
        active = still
        if not active:
            break
        src_index = torch.tensor(sources, device=device)
        state = tuple(s.index_select(0, src_index) for s in state)
        memory = tuple(m.index_select(0, src_index) for m in memory)
        tokens = torch.tensor(next_tokens, device=device)
        scores = torch.tensor(next_scores, device=device).reshape(len(active), k)
        history = torch.cat([history.index_select(0, src_index), tokens.unsqueeze(1)], dim=1)
        if maps is not None:
            maps = torch.cat([maps.index_select(0, src_index), attention.float().index_select(0, src_index)
                              .unsqueeze(1)], dim=1)
    return [sorted(f, key=lambda h: -h.score) or [Hypothesis([], None)] for f in finished]


class ConditionContrast(nn.Module):
    """A conditioned decoder whose next-word scores favour what is specific to the asked value v of one condition:

        log p(w | v) + g * (log p(w | v) - log mean_v' p(w | v'))

    (contrastive, classifier-free-guidance-style decoding), the other conditions held at their asked values.
    For the emotion (`emotion_guidance`): the mean over all 9 emotions is what the model would say of the
    painting whatever the feeling; subtracting it pushes "scary" under fear and "funny" under amusement, where
    plain beam search keeps the stock caption every emotion shares. It runs the decoder on 1 + (number of
    values) rows per hypothesis, through the same interface, and offers it again: contrasts nest."""

    def __init__(self, model: nn.Module, condition: str, guidance: float):
        super().__init__()
        slot = next((s for s in model.config.condition_slots() if s.name == condition), None)
        if slot is None:
            raise ArtcapError(f"{condition}_guidance needs a model conditioned on {condition}; "
                              f"set it to 0 for this model")
        self.model, self.config, self.condition, self.guidance = model, model.config, condition, guidance
        self.kinds = slot.width

    def init_memory(self, features: torch.Tensor, conditions: Conditions) -> tuple[torch.Tensor, ...]:
        batch, k = features.size(0), self.kinds
        asked = self.model.init_memory(features, conditions)
        every_value = {**repeat_rows(conditions, k),
                       self.condition: torch.arange(k, device=features.device).repeat(batch)}
        every = self.model.init_memory(features.repeat_interleave(k, dim=0), every_value)
        return (*asked, *(m.reshape(batch, k, *m.shape[1:]) for m in every))  # batch first, for beam search

    def step(self, memory, token: torch.Tensor, state=None):
        k, n = self.kinds, len(memory) // 2  # the asked value's memory, then all values' of the same layout
        asked_state, every_state = (None, None) if state is None else (state[: len(state) // 2],
                                                                      state[len(state) // 2:])
        logits, asked_state, attention = self.model.step(memory[:n], token, asked_state)
        flat = tuple(m.flatten(0, 1) for m in memory[n:])
        flat_state = None if every_state is None else tuple(s.flatten(0, 1) for s in every_state)
        every_logits, flat_state, _ = self.model.step(flat, token.repeat_interleave(k), flat_state)
        logp = F.log_softmax(logits.float(), dim=-1)
        every = F.log_softmax(every_logits.float(), dim=-1).reshape(token.size(0), k, -1)
        marginal = torch.logsumexp(every, dim=1) - math.log(k)
        state = (*asked_state, *(s.reshape(token.size(0), k, *s.shape[1:]) for s in flat_state))
        return logp + self.guidance * (logp - marginal), state, attention


def guided(model: nn.Module, guidance: Mapping[str, float], conditions: Conditions) -> nn.Module:
    """`model` with a ConditionContrast for each condition given a guidance weight above 0."""
    for name, weight in guidance.items():
        if weight > 0:
            if name not in conditions:
                raise ArtcapError(f"{name}_guidance needs a model conditioned on {name} and a value of it to "
                                  f"caption under; set it to 0 for this model")
            model = ConditionContrast(model, name, weight)
    return model


@torch.no_grad()
def _run(searcher, model: nn.Module, features: torch.Tensor, vocab: Vocabulary, decoding: DecodingConfig,
         conditions: Conditions | None, guidance: Mapping[str, float] | None = None):
    conditions = dict(conditions or {})
    model = guided(model, {**decoding.guidance(), **(guidance or {})}, conditions)
    memory = model.init_memory(features, conditions)
    return searcher(model, memory, features.size(0), vocab, decoding, features.device)


def search_n_best(model: nn.Module, features: torch.Tensor, vocab: Vocabulary, decoding: DecodingConfig,
                  conditions: Conditions | None = None, guidance: Mapping[str, float] | None = None
                  ) -> list[list[Hypothesis]]:
    """Per image, the finished hypotheses best first: up to `beam` of them (one for greedy search), with
    their attention maps when the decoder has attention. `conditions` {name: ids [B]} for a conditioned
    decoder (the emotion's ids in EMOTIONS order); `guidance` {name: weight} adds guidance for conditions
    beyond the decoding's own (`emotion_guidance`)."""
    if decoding.beam <= 1:
        return [[h] for h in _run(_greedy, model, features, vocab, decoding, conditions, guidance)]
    return _run(_beam, model, features, vocab, decoding, conditions, guidance)


def search(model: nn.Module, features: torch.Tensor, vocab: Vocabulary, decoding: DecodingConfig,
           conditions: Conditions | None = None, guidance: Mapping[str, float] | None = None) -> list[Hypothesis]:
    """The best hypothesis per image (see search_n_best); `coherent`: the best unbroken one, if any."""
    return [best_of(n_best, vocab, decoding)
            for n_best in search_n_best(model, features, vocab, decoding, conditions, guidance)]


def best_of(n_best: list[Hypothesis], vocab: Vocabulary, decoding: DecodingConfig,
            preference: list[float] | None = None) -> Hypothesis:
    """The hypothesis `preference` (default: the beam's order) ranks first; with `coherent`, the first without a
    defect (coherence.choose_unbroken) when there is one."""
    preference = preference if preference is not None else [-rank for rank in range(len(n_best))]
    if not decoding.coherent:
        return n_best[max(range(len(n_best)), key=lambda i: (preference[i], -i))]
    return n_best[choose_unbroken([vocab.decode(h.ids) for h in n_best], preference)]


def greedy_search(model: nn.Module, features: torch.Tensor, vocab: Vocabulary, max_len: int,
                  no_repeat_ngram: int = 0, *, max_word_repeats: int = 0,
                  conditions: Conditions | None = None) -> list[list[int]]:
    """features -> B lists of word ids (without <bos>/<eos>)."""
    decoding = DecodingConfig(1, max_len, no_repeat_ngram=no_repeat_ngram, max_word_repeats=max_word_repeats)
    return [h.ids for h in _run(_greedy, model, features, vocab, decoding, conditions)]


def beam_search(model: nn.Module, features: torch.Tensor, vocab: Vocabulary, max_len: int, beam: int = 3,
                length_alpha: float = 0.7, no_repeat_ngram: int = 0, *, max_word_repeats: int = 0,
                conditions: Conditions | None = None) -> list[list[int]]:
    """features -> for each image the best finished caption's word ids (beam=1 runs the beam code)."""
    decoding = DecodingConfig(beam, max_len, length_alpha, no_repeat_ngram, max_word_repeats)
    return [n_best[0].ids for n_best in _run(_beam, model, features, vocab, decoding, conditions)]


def generate(model: nn.Module, features: torch.Tensor, vocab: Vocabulary, decoding: DecodingConfig,
             conditions: Conditions | None = None, with_attention: bool = False,
             guidance: Mapping[str, float] | None = None) -> list[str] | list[Caption]:
    """Captions as strings; with_attention: as `Caption`s, with where each word looked."""
    model.eval()
    hypotheses = search(model, features, vocab, decoding, conditions, guidance)
    if not with_attention:
        return [vocab.decode(h.ids) for h in hypotheses]
    return [to_caption(h, vocab) for h in hypotheses]


def to_caption(hypothesis: Hypothesis, vocab: Vocabulary) -> Caption:
    attention = hypothesis.attention
    return Caption(vocab.decode(hypothesis.ids), [vocab.words[i] for i in hypothesis.ids],
                   None if attention is None else attention.cpu().numpy())
