"""Stage 3, the decoder: the research report's "merge" model, in one readable file.

    image features --Dropout 0.5--Dense 256 ReLU------------------+
                                                                  add --Dense 256 ReLU--Dense V (softmax)
    caption prefix --Embedding--Dropout 0.5--LSTM 256-------------+

The report trained it Keras-style on one (image, prefix) -> next word sample per prefix. Here the
LSTM runs over whole captions once (teacher forcing): its output at step t encodes exactly the
prefix up to t, so the per-token loss is the same, at a fraction of the cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DecoderConfig:
    vocab_size: int
    feature_dim: int  # 2048 for Xception, 1280 for EfficientNet-Lite
    embed_dim: int = 256
    hidden_dim: int = 256
    dropout: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


class MergeDecoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.image_dropout = nn.Dropout(config.dropout)
        self.image_proj = nn.Linear(config.feature_dim, config.hidden_dim)
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.text_dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden_dim, batch_first=True)
        self.merge = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.out = nn.Linear(config.hidden_dim, config.vocab_size)

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        """[B, feature_dim] -> [B, hidden]: the image branch, computed once per caption."""
        return F.relu(self.image_proj(self.image_dropout(features)))

    def _logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.merge(image + text)))

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """features [B, F], tokens [B, T] (starting with <bos>) -> next-word logits [B, T, V];
        with a boolean mask [B, T], only the masked positions' logits [N, V] (skipping padding in
        the vocabulary-sized matmul, the costliest step of training)."""
        text, _ = self.lstm(self.text_dropout(self.embed(tokens)))
        image = self.encode_image(features).unsqueeze(1).expand_as(text)
        if mask is not None:
            image, text = image[mask], text[mask]
        return self._logits(image, text)

    def step(self, image: torch.Tensor, token: torch.Tensor, state=None):
        """One decoding step: image [B, H] (from encode_image), token [B] -> (logits [B, V], (h, c)).

        The LSTM cell is written out with the nn.LSTM's own weights (gate order i, f, g, o):
        for one step at a time it is several times faster than calling nn.LSTM."""
        x = self.text_dropout(self.embed(token))
        if state is None:
            h = c = x.new_zeros(x.size(0), self.config.hidden_dim)
        else:
            h, c = state
        gates = (F.linear(x, self.lstm.weight_ih_l0, self.lstm.bias_ih_l0)
                 + F.linear(h, self.lstm.weight_hh_l0, self.lstm.bias_hh_l0))
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return self._logits(image, h), (h, c)


def caption_loss(model: nn.Module, features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of predicting tokens[:, 1:] from each prefix, padding excluded; also returns
    the number of target tokens. `model` may be wrapped (DDP hooks live in its forward)."""
    length = int((tokens != 0).sum(dim=1).max())  # trim the batch to its longest caption
    inputs, targets = tokens[:, : length - 1], tokens[:, 1:length]
    mask = targets != 0
    logits = model(features, inputs, mask)
    return F.cross_entropy(logits.float(), targets[mask]), int(mask.sum())
