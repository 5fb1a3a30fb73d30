"""Generated cases of the speed work's one promise: batching changes no number that matters. Training's packed
LSTM gives each caption the outputs and gradients it gets alone; beam search over a batch (which drops
images as they finish) gives each image the captions it gets alone."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from artcap.decode import DecodingConfig, search_n_best
from artcap.decoders import DecoderConfig, MergeDecoder, caption_loss
from artcap.text import SPECIALS, Vocabulary

VOCAB = 30


def model(num_emotions: int = 0) -> MergeDecoder:
    torch.manual_seed(0)
    return MergeDecoder(DecoderConfig(VOCAB, 12, embed_dim=8, hidden_dim=8, dropout=0.0,
                                      num_emotions=num_emotions)).eval()


def right_padded(lengths: list[int], seed: int) -> torch.Tensor:
    """<bos> w1 .. wn <eos> <pad> ..., one row per length (words drawn from the vocabulary's ordinary ids)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(len(lengths), max(lengths) + 2, dtype=torch.long)
    for r, n in enumerate(lengths):
        rows[r, 0], rows[r, n + 1] = Vocabulary.bos_id, Vocabulary.eos_id
        rows[r, 1 : n + 1] = torch.randint(4, VOCAB, (n,), generator=g)
    return rows


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=6), st.integers(0, 2**16))
def test_packed_training_loss_and_gradients_equal_each_caption_alone(lengths, seed):
    net = model()
    features = torch.randn(len(lengths), 12, generator=torch.Generator().manual_seed(seed))
    tokens = right_padded(lengths, seed)
    loss, n = caption_loss(net, features, tokens)
    loss.backward()
    batched = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    total = 0.0
    for r in range(len(lengths)):  # alone: no padding at all, so nothing to pack
        row_loss, row_n = caption_loss(net, features[r : r + 1], tokens[r : r + 1, : lengths[r] + 2])
        (row_loss * row_n / n).backward()
        total += row_loss.detach().item() * row_n / n
    assert abs(loss.item() - total) < 1e-5
    for a, p in zip(batched, net.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5), p.shape


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 7), st.integers(2, 5), st.integers(0, 2), st.integers(0, 2**16))
def test_batched_beam_search_gives_each_image_its_captions_alone(batch, beam, repeats, seed):
    net = model(num_emotions=9)
    vocab = Vocabulary([*SPECIALS, *(f"w{i}" for i in range(VOCAB - 4))])
    g = torch.Generator().manual_seed(seed)
    features, emotions = torch.randn(batch, 12, generator=g) * 3, torch.randint(0, 9, (batch,), generator=g)
    decoding = DecodingConfig(beam=beam, max_len=12, max_word_repeats=repeats, no_repeat_ngram=2 if repeats else 0)
    with torch.inference_mode():
        together = search_n_best(net, features, vocab, decoding, {"emotion": emotions})
        alone = [search_n_best(net, features[i : i + 1], vocab, decoding, {"emotion": emotions[i : i + 1]})[0]
                 for i in range(batch)]
    assert [[h.ids for h in hs] for hs in together] == [[h.ids for h in hs] for hs in alone]
