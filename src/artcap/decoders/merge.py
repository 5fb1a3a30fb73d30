"""The "merge" decoder: the research report's model.


    image features --Dropout 0.5--Dense 256 ReLU------------------+
                                                                  add --Dense 256 ReLU--Dense V (softmax)
    caption prefix --Embedding--Dropout 0.5--LSTM 256-------------+

The report trained it Keras-style on one (image, prefix) -> next word sample per prefix. Here the
LSTM runs over whole captions once (teacher forcing): its output at step t encodes exactly the
prefix up to t, so the per-token loss is the same, at a fraction of the cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..conditions import Conditions
from .base import (DecoderConfig, Memory, State, add_condition_layers, check_features, condition_features,
                   condition_output, lstm_cell, register_decoder)


@register_decoder("merge")
class MergeDecoder(nn.Module):
    feature_kind = "pooled"
    has_attention = False

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.image_dropout = nn.Dropout(config.dropout)
        self.image_proj = nn.Linear(config.feature_dim, config.hidden_dim)
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.text_dropout = nn.Dropout(config.dropout)
        lstm_input = config.embed_dim + add_condition_layers(self, config)
        self.lstm = nn.LSTM(lstm_input, config.hidden_dim, batch_first=True)
        self.merge = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.out = nn.Linear(config.hidden_dim, config.vocab_size)

    def init_memory(self, features: torch.Tensor, conditions: Conditions | None = None) -> Memory:
        """(image [B, hidden], *each condition's features [B, dim]): the image branch, once per caption."""
        features = check_features(self, features)
        image = F.relu(self.image_proj(self.image_dropout(features)))
        conditioned = condition_features(self, conditions, features.size(0))
        direct = condition_output(self, conditioned)
        if direct is not None:
            image = image + direct
        return (image, *conditioned)

    def _logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.merge(image + text)))

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                conditions: Conditions | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, F], tokens [B, T] (starting with <bos>) -> (next-word logits [B, T, V], 0);
        with a boolean mask [B, T], only the masked positions' logits [N, V] (skipping padding in
        the vocabulary-sized matmul, the costliest step of training)."""
        image, *conditioned = self.init_memory(features, conditions)
        x = self.text_dropout(self.embed(tokens))
        if conditioned:
            x = torch.cat([x, *(c.unsqueeze(1).expand(-1, x.size(1), -1) for c in conditioned)], dim=-1)
        text = self._lstm_over_captions(x, mask)
        image = image.unsqueeze(1).expand_as(text)
        if mask is not None:
            image, text = image[mask], text[mask]
        return self._logits(image, text), text.new_zeros(())

    def _lstm_over_captions(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The LSTM's outputs [B, T, H]. With a mask whose rows are each a caption's first words (right
        padding), packed: each row runs for its own length, not the batch's longest, so the LSTM does no
        work on padding (the same outputs where the mask is set; benchmarks/bench_train.py measures it)."""
        if mask is not None and mask.any(dim=1).all():
            lengths = mask.sum(dim=1)
            if bool((mask == (torch.arange(mask.size(1), device=mask.device) < lengths.unsqueeze(1))).all()):
                packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
                return pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.size(1))[0]
        return self.lstm(x)[0]

    def step(self, memory: Memory, token: torch.Tensor, state: State = None):
        """One word: token [B] -> (logits [B, V], (h, c), None).

        The LSTM cell is written out with the nn.LSTM's own weights: for one step at a time it is
        several times faster than calling nn.LSTM."""
        image, *conditioned = memory
        x = torch.cat([self.text_dropout(self.embed(token)), *conditioned], dim=-1)
        h, c = state if state is not None else (x.new_zeros(x.size(0), self.config.hidden_dim),) * 2
        lstm = self.lstm
        h, c = lstm_cell(x, h, c, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
        return self._logits(image, h), (h, c), None
