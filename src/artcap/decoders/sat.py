"""Show, Attend and Tell (Xu et al. 2015), soft attention: the decoder of the ArtEmis speaker.

At every word the LSTM state h looks at each cell of the encoder's feature grid a [h*w, C]:

    e_i   = w . tanh(W_a a_i + W_h h)            additive attention (W_a a_i computed once per image)
    alpha = softmax(e)                           [h*w], what the word looks at
    z     = sigmoid(f_beta(h)) * sum_i alpha_i a_i    the gated context ("f_beta" gate, section 4.2.1)
    h, c  = LSTMCell([embed(word); z (; each condition's features)], (h, c))
    logits = Linear(Dropout(h))

h and c start from the mean of the grid (through one Linear each). Training adds the "doubly
stochastic" regulariser alpha_c * mean((1 - sum_t alpha_t)^2), which pushes every grid cell to be
looked at about once over the caption.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataclasses import dataclass
from typing import ClassVar

from ..conditions import Conditions
from ..settings import setting
from .base import (MAX_WIDTH, DecoderConfig, DecoderSettings, Memory, State, add_condition_layers, check_features,
                   condition_features, condition_output, register_decoder)


@dataclass
class SatSettings(DecoderSettings):
    """The `[decoder]` table of `kind = "sat"`: the base sizes plus the attention's."""

    attention_dim: int = setting(256, "sat: size of the additive attention's hidden layer", low=1, high=MAX_WIDTH)
    alpha_c: float = setting(1.0, "sat: weight of the doubly stochastic attention regulariser (Xu et al. use 1)",
                             low=0, high=1000)
    grid_size: int = setting(7, "sat: image features pooled to a grid_size x grid_size grid", low=1, high=32)

    feature_fields: ClassVar[tuple[str, ...]] = ("grid_size",)


@register_decoder("sat", settings=SatSettings)
class ShowAttendTell(nn.Module):
    feature_kind = "grid"
    has_attention = True

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        c, h, a = config.feature_dim, config.hidden_dim, config.attention_dim
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        conditions_width = add_condition_layers(self, config)
        self.grid_att = nn.Linear(c, a)  # W_a
        self.hidden_att = nn.Linear(h, a)  # W_h
        self.score = nn.Linear(a, 1)  # w
        self.init_h, self.init_c = nn.Linear(c, h), nn.Linear(c, h)
        self.f_beta = nn.Linear(h, c)
        cell_input = config.embed_dim + c + conditions_width
        self.cell = nn.LSTMCell(cell_input, h)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(h, config.vocab_size)

    def init_memory(self, features: torch.Tensor, conditions: Conditions | None = None) -> Memory:
        """(grid [B, N, C], W_a grid [B, N, A], *each condition's features [B, dim])."""
        grid = check_features(self, features)
        return (grid, self.grid_att(grid), *condition_features(self, conditions, grid.size(0)))

    def _initial_state(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = grid.mean(dim=1)
        return self.init_h(mean), self.init_c(mean)

    def _attend(self, memory: Memory, embedded: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """One step from an embedded word: -> ((h, c), alpha [B, N])."""
        grid, keys, *conditioned = memory
        h, c = state
        scores = self.score(torch.tanh(keys + self.hidden_att(h).unsqueeze(1))).squeeze(-1)
        alpha = torch.softmax(scores.float(), dim=-1).to(grid.dtype)
        context = torch.bmm(alpha.unsqueeze(1), grid).squeeze(1)
        gated = torch.sigmoid(self.f_beta(h)) * context
        h, c = self.cell(torch.cat([embedded, gated, *conditioned], dim=-1), (h, c))
        return (h, c), alpha

    def step(self, memory: Memory, token: torch.Tensor, state: State = None):
        """One word: token [B] -> (logits [B, V], (h, c), attention [B, N])."""
        if state is None:
            state = self._initial_state(memory[0])
        state, alpha = self._attend(memory, self.embed(token), state)
        return self.out(self.dropout(self._with_conditions(memory, state[0]))), state, alpha

    def _with_conditions(self, memory: Memory, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, H] or [B, T, H], plus the conditions' direct path when the model has one."""
        direct = condition_output(self, memory[2:])
        if direct is None:
            return hidden
        return hidden + (direct.unsqueeze(1) if hidden.dim() == 3 else direct)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                conditions: Conditions | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing, one batched step per position: -> (logits [B, T, V] or [N, V] under
        `mask`, alpha_c * doubly stochastic regulariser over the masked positions)."""
        memory = self.init_memory(features, conditions)
        hidden_t, alpha_t = self._teacher_forced(memory, self.embed(tokens), caption_lengths(mask, tokens))
        hidden_t = self._with_conditions(memory, hidden_t)
        if mask is not None:
            alpha_t = alpha_t * mask.unsqueeze(-1).to(alpha_t.dtype)  # padding looks at nothing
            hidden_t = hidden_t[mask]
        regulariser = ((1.0 - alpha_t.float().sum(dim=1)) ** 2).mean()
        return self.out(self.dropout(hidden_t)), self.config.alpha_c * regulariser

    def _teacher_forced(self, memory: Memory, embedded: torch.Tensor, lengths: torch.Tensor):
        """-> (hidden [B, T, H], alpha [B, T, N]), zeros past each caption's length. Step t runs only the captions
        still going (the batch sorted longest first, so they are a prefix): a batch padded to its longest caption
        costs its words, not B x T (about half the training time on ArtEmis, whose lengths vary 3-30)."""
        order = torch.argsort(lengths, descending=True, stable=True)
        grid, keys, *conditioned = (part.index_select(0, order) for part in memory)
        embedded, lengths = embedded.index_select(0, order), lengths.index_select(0, order)
        state = self._initial_state(grid)
        positions = torch.arange(embedded.size(1), device=lengths.device)
        active = [int(n) for n in (lengths.unsqueeze(0) > positions.unsqueeze(1)).sum(dim=1)]  # captions at step t
        batch, hidden, alphas = embedded.size(0), [], []
        for t, n in enumerate(active):
            state = (state[0][:n], state[1][:n])
            state, alpha = self._attend((grid[:n], keys[:n], *(c[:n] for c in conditioned)), embedded[:n, t], state)
            hidden.append(F.pad(state[0], (0, 0, 0, batch - n)))
            alphas.append(F.pad(alpha, (0, 0, 0, batch - n)))
        inverse = torch.argsort(order)
        return torch.stack(hidden, dim=1).index_select(0, inverse), torch.stack(alphas, dim=1).index_select(0, inverse)


def caption_lengths(mask: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
    """Each row's number of positions to run: its mask's length when the mask is a prefix (padding only at the
    end, as caption_loss builds it), else every position (any other mask only hides outputs)."""
    batch, steps = tokens.shape
    if mask is None:
        return torch.full((batch,), steps, device=tokens.device)
    lengths = mask.sum(dim=1)
    is_prefix = bool((mask == (torch.arange(steps, device=mask.device) < lengths.unsqueeze(1))).all())
    return lengths if is_prefix else torch.full_like(lengths, steps)
