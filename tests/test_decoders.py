"""The decoder family and decoding, on small real models with random weights and random features.

The third decoder kind below (a bag-of-words toy) is registered here the way a real one would be:
one class with @register_decoder, nothing else, and every generic test runs on it too.
"""

import json
from collections import Counter
from dataclasses import fields

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from artcap.data import EMOTIONS as DATA_EMOTIONS
from artcap.conditions import EMOTION
from artcap.decode import STOP_WORDS, ConditionContrast, DecodingConfig, beam_search, generate, greedy_search
from artcap.decoders import (EMOTIONS, DecoderConfig, MergeDecoder, add_condition_layers, caption_loss, check_features,
                             condition_features, create_decoder, decoder_has_attention, decoder_kinds, register_decoder,
                             settings_class)
from artcap.errors import ArtcapError
from artcap.text import SPECIALS, Vocabulary

GRID = 6  # h*w of the random feature grids
FEATURE_DIM = 12


@register_decoder("toy-bag")
class BagOfWords(nn.Module):
    """Next word from the image plus the running sum of the words so far: no LSTM, no attention."""

    feature_kind = "pooled"
    has_attention = False

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.image = nn.Linear(config.feature_dim, config.embed_dim)
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.out = nn.Linear(config.embed_dim, config.vocab_size)
        add_condition_layers(self, config)  # reads none here (its config names none), but checks what it is given

    def init_memory(self, features, conditions=None):
        features = check_features(self, features)
        return (self.image(features), *condition_features(self, conditions, features.size(0)))

    def step(self, memory, token, state):
        bag = self.embed(token) + (state[0] if state is not None else 0)
        return self.out(torch.tanh(memory[0] + bag)), (bag,), None

    def forward(self, features, tokens, mask=None, conditions=None):
        (image,) = self.init_memory(features, conditions)
        hidden = torch.tanh(image.unsqueeze(1) + self.embed(tokens).cumsum(dim=1))
        if mask is not None:
            hidden = hidden[mask]
        return self.out(hidden), hidden.new_zeros(())


WORDS = ["red", "sky", "woman", "dark", "calm", "tree", "sea", "boat", "face", "light",
         "the", "a", "of", "and", "is", "it", "in", "this"]
VOCAB = Vocabulary(list(SPECIALS) + WORDS)


def make(kind: str, emotions: bool = False, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    own = {f.name for f in fields(settings_class(kind))}
    values = {**dict(embed_dim=8, hidden_dim=10, dropout=0.3, kind=kind,
                     num_emotions=len(EMOTIONS) if emotions else 0, emotion_dim=5),
              **({"attention_dim": 7} if "attention_dim" in own else {}), **overrides}
    return create_decoder(DecoderConfig(len(VOCAB), FEATURE_DIM, **values)).eval()


def features_for(model: nn.Module, batch: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, FEATURE_DIM) if model.feature_kind == "pooled" else (batch, GRID, FEATURE_DIM)
    return torch.randn(shape, generator=g) * scale


def random_emotions(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The conditions of an emotion-grounded decoder: a random emotion per caption."""
    return {"emotion": torch.randint(0, len(EMOTIONS), (batch,), generator=torch.Generator().manual_seed(seed))}


def random_tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    tokens = torch.randint(4, len(VOCAB), (batch, length), generator=torch.Generator().manual_seed(seed))
    tokens[:, 0] = VOCAB.bos_id
    return tokens


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: extra threads only spin against the other processes on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


KINDS = decoder_kinds()
GROUNDABLE = [k for k in KINDS if k != "toy-bag"]


def test_registry_has_the_built_in_kinds_and_the_toy():
    assert {"merge", "sat", "toy-bag"} <= set(KINDS)
    assert isinstance(create_decoder(DecoderConfig(len(VOCAB), FEATURE_DIM, kind="toy-bag")), BagOfWords)
    assert isinstance(create_decoder(DecoderConfig(len(VOCAB), FEATURE_DIM)), MergeDecoder)  # merge by default
    with pytest.raises(ValueError, match="registered twice"):
        register_decoder("sat")(BagOfWords)


def test_each_kind_declares_whether_it_has_attention():
    assert (decoder_has_attention("merge"), decoder_has_attention("sat"), decoder_has_attention("toy-bag")) == \
        (False, True, False)
    with pytest.raises(ValueError, match="must declare has_attention"):
        register_decoder("toy-undeclared")(type("Undeclared", (nn.Module,), {"feature_kind": "pooled"}))
    assert "toy-undeclared" not in decoder_kinds()


@pytest.mark.parametrize("kind,grounded", [(k, False) for k in KINDS] + [(k, True) for k in GROUNDABLE])
def test_step_equals_teacher_forced_forward(kind, grounded):
    model = make(kind, grounded)
    batch, length = 3, 7
    feats, tokens = features_for(model, batch), random_tokens(batch, length)
    emotions = random_emotions(batch) if grounded else None
    with torch.no_grad():
        forced, _ = model(feats, tokens, conditions=emotions)
        memory, state = model.init_memory(feats, emotions), None
        for t in range(length):
            logits, state, attention = model.step(memory, tokens[:, t], state)
            torch.testing.assert_close(logits, forced[:, t], atol=1e-5, rtol=1e-4)
            if model.has_attention:
                assert attention.shape == (batch, GRID)
                torch.testing.assert_close(attention.sum(dim=1), torch.ones(batch))
        mask = tokens % 3 != 0  # an arbitrary set of positions
        masked, _ = model(feats, tokens, mask, emotions)
        torch.testing.assert_close(masked, forced[mask], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", GROUNDABLE)
def test_emotion_changes_the_prediction_and_is_checked(kind):
    model = make(kind, emotions=True)
    feats, tokens = features_for(model, 2), random_tokens(2, 5)
    with torch.no_grad():
        calm, _ = model(feats, tokens, conditions={"emotion": torch.tensor([2, 2])})
        angry, _ = model(feats, tokens, conditions={"emotion": torch.tensor([4, 4])})
    assert not torch.allclose(calm, angry)
    with pytest.raises(ArtcapError, match="conditioned on emotion: give one emotion per caption"):
        model(feats, tokens)
    with pytest.raises(ArtcapError, match="emotion ids must be from 0 to 8, got \\[9\\]"):
        model(feats, tokens, conditions={"emotion": torch.tensor([9, 9])})
    with pytest.raises(ArtcapError, match="emotion must hold one id per caption \\(2\\)"):
        model(feats, tokens, conditions={"emotion": torch.tensor([1])})
    with pytest.raises(ArtcapError, match="not conditioned on emotion \\(it reads: none\\)"):
        make(kind)(feats, tokens, conditions={"emotion": torch.tensor([1, 1])})


def test_emotion_names_follow_artemis_order():
    assert EMOTIONS is DATA_EMOTIONS and len(EMOTIONS) == 9 and EMOTIONS[4] == "anger"
    assert EMOTION.values is EMOTIONS and EMOTION.ids(["awe", "something else"]).tolist() == [1, 8]
    with pytest.raises(ArtcapError, match="unknown emotion\\(s\\) 'joy'"):
        EMOTION.ids(["awe", "joy"])


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_feature_layout_is_a_clear_error(kind):
    model = make(kind)
    wrong = torch.randn(2, GRID, FEATURE_DIM) if model.feature_kind == "pooled" else torch.randn(2, FEATURE_DIM)
    with pytest.raises(ArtcapError, match=f"decoder '{kind}' reads {model.feature_kind} features"):
        generate(model, wrong, VOCAB, DecodingConfig())


def test_sat_reads_an_encoders_channel_first_map_like_its_flattened_grid():
    model = make("sat")
    grid_map = torch.randn(2, FEATURE_DIM, 2, 3)  # what encoders.EncoderOutput.grid holds
    flat = grid_map.flatten(2).transpose(1, 2)
    tokens = random_tokens(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(grid_map, tokens)[0], model(flat, tokens)[0])


def test_aux_loss_is_the_doubly_stochastic_regulariser_for_sat_and_zero_for_merge():
    tokens = random_tokens(4, 6)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, 4:] = False
    merge, sat = make("merge"), make("sat", alpha_c=2.0)
    assert float(merge(features_for(merge, 4), tokens, mask)[1]) == 0.0
    feats = features_for(sat, 4)
    with torch.no_grad():
        _, aux = sat(feats, tokens, mask)
        memory, state, attention_sum = sat.init_memory(feats), None, torch.zeros(4, GRID)
        for t in range(4):  # only the unmasked positions count
            _, state, attention = sat.step(memory, tokens[:, t], state)
            attention_sum += attention
    assert float(aux) > 0
    assert float(aux) == pytest.approx(2.0 * float(((1 - attention_sum) ** 2).mean()), rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=6), grounded=st.booleans())
def test_sat_teacher_forcing_over_captions_of_any_lengths_equals_stepping_each_word(lengths, grounded):
    """Training runs each caption only for its own words (shorter ones drop out of the batch); its logits and
    attention regulariser are what stepping every caption word by word gives."""
    model = make("sat", emotions=grounded, alpha_c=1.5)
    batch, steps = len(lengths), max(lengths)
    tokens = random_tokens(batch, steps, seed=len(lengths))
    mask = torch.arange(steps) < torch.tensor(lengths).unsqueeze(1)
    tokens[~mask] = 0
    feats, emotions = features_for(model, batch), random_emotions(batch) if grounded else None
    with torch.no_grad():
        logits, aux = model(feats, tokens, mask, emotions)
        memory, state, stepped, attention_sum = model.init_memory(feats, emotions), None, [], torch.zeros(batch, GRID)
        for t in range(steps):
            step_logits, state, attention = model.step(memory, tokens[:, t], state)
            stepped.append(step_logits)
            attention_sum += attention * mask[:, t:t + 1]
    torch.testing.assert_close(logits, torch.stack(stepped, dim=1)[mask], rtol=1e-5, atol=1e-5)
    assert float(aux) == pytest.approx(1.5 * float(((1 - attention_sum) ** 2).mean()), rel=1e-5)


def test_caption_loss_is_cross_entropy_plus_aux():
    model = make("sat", emotions=True)
    feats, emotions = features_for(model, 3), random_emotions(3)
    tokens = random_tokens(3, 6)
    tokens[0, 4:] = 0  # padding
    tokens[0, 3] = VOCAB.eos_id
    with torch.no_grad():
        loss, n = caption_loss(model, feats, tokens, emotions)
        targets = tokens[:, 1:]
        logits, aux = model(feats, tokens[:, :-1], targets != 0, emotions)
    assert n == int((targets != 0).sum())
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, targets[targets != 0]) + aux), rel=1e-6)


def test_a_few_adam_steps_lower_the_sat_loss():
    torch.manual_seed(0)
    model = make("sat", dropout=0.0).train()
    feats = torch.randn(16, GRID, FEATURE_DIM)
    tokens = random_tokens(16, 6, seed=1)
    tokens[:, -1] = VOCAB.eos_id
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(15):
        loss, _ = caption_loss(model, feats, tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("kind,grounded", [(k, False) for k in KINDS] + [("sat", True)])
def test_beam_of_one_equals_greedy(kind, grounded):
    model = make(kind, grounded, seed=3)
    feats = features_for(model, 5, scale=3.0)
    emotions = random_emotions(5) if grounded else None
    for ngram, repeats in [(0, 0), (2, 1), (3, 2)]:
        greedy = greedy_search(model, feats, VOCAB, 12, ngram, max_word_repeats=repeats, conditions=emotions)
        beams = beam_search(model, feats, VOCAB, 12, 1, no_repeat_ngram=ngram, max_word_repeats=repeats,
                            conditions=emotions)
        assert beams == greedy
        assert all(len(seq) <= 12 and not set(seq) & {0, 1, 2, 3} for seq in greedy)


def rerun_attention(model, feats, words, emotions=None) -> np.ndarray:
    """Where each word of a chosen caption looked, by feeding its words to `step` one by one."""
    memory = model.init_memory(feats.unsqueeze(0), emotions)
    token, state, rows = torch.tensor([VOCAB.bos_id]), None, []
    for word in words:
        _, state, attention = model.step(memory, token, state)
        rows.append(attention[0].numpy())
        token = torch.tensor([VOCAB.index[word]])
    return np.stack(rows)


@pytest.mark.parametrize("beam", [1, 4])
def test_attention_maps_belong_to_the_chosen_caption(beam):
    model = make("sat", emotions=True, seed=5)
    with torch.no_grad():  # sharper attention than random init gives, so maps differ between words
        model.score.weight.mul_(20)
        model.out.bias[VOCAB.eos_id] -= 3  # and captions of a few words, not empty ones
    feats, emotions = features_for(model, 6, scale=3.0), random_emotions(6)
    decoding = DecodingConfig(beam=beam, max_len=10, no_repeat_ngram=2)
    captions = generate(model, feats, VOCAB, decoding, emotions, with_attention=True)
    assert [c.text for c in captions] == generate(model, feats, VOCAB, decoding, emotions)
    spread = []
    with torch.no_grad():
        for i, caption in enumerate(captions):
            assert caption.text == " ".join(caption.words) and caption.words
            assert caption.attention.shape == (len(caption.words), GRID)
            np.testing.assert_allclose(caption.attention.sum(axis=1), 1.0, atol=1e-5)
            expected = rerun_attention(model, feats[i], caption.words, {"emotion": emotions["emotion"][i:i + 1]})
            np.testing.assert_allclose(caption.attention, expected, atol=1e-5)
            spread.append(float(np.ptp(caption.attention, axis=0).max()))
    assert max(spread) > 0.05  # the maps do change from word to word, so a mix-up would show


def test_decoders_without_attention_give_none():
    model = make("merge")
    (caption,) = generate(model, features_for(model, 1), VOCAB, DecodingConfig(beam=3), with_attention=True)
    assert caption.attention is None and caption.text == " ".join(caption.words)


def favouring(word: str, kind: str = "merge") -> nn.Module:
    """A model whose every step strongly prefers `word` (and never ends by itself)."""
    model = make(kind)
    with torch.no_grad():
        model.out.bias[VOCAB.index[word]] += 50
        model.out.bias[VOCAB.eos_id] -= 50
    return model


@pytest.mark.parametrize("beam", [1, 3])
def test_max_word_repeats_caps_content_words_but_not_stop_words(beam):
    model = favouring("sky")
    feats = features_for(model, 2)
    looping = generate(model, feats, VOCAB, DecodingConfig(beam=beam, max_len=12))
    assert all(c.split() == ["sky"] * 12 for c in looping)  # the loop the rule is for
    capped = generate(model, feats, VOCAB, DecodingConfig(beam=beam, max_len=12, max_word_repeats=2))
    assert all(Counter(c.split())["sky"] == 2 for c in capped)
    stop = generate(favouring("the"), feats, VOCAB, DecodingConfig(beam=beam, max_len=12, max_word_repeats=2))
    assert "the" in STOP_WORDS and all(c.split() == ["the"] * 12 for c in stop)


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000), beam=st.integers(1, 4),
       ngram=st.sampled_from([0, 2, 3]), repeats=st.sampled_from([0, 1, 2]), scale=st.sampled_from([1.0, 5.0]))
def test_decoding_rules_are_never_broken(kind, seed, beam, ngram, repeats, scale):
    model = make(kind, seed=seed)
    with torch.no_grad():  # random weights, scaled up: peaked, loop-prone word distributions
        model.out.weight.mul_(scale)
    decoding = DecodingConfig(beam=beam, max_len=15, no_repeat_ngram=ngram, max_word_repeats=repeats)
    for caption in generate(model, features_for(model, 3, seed=seed), VOCAB, decoding):
        words = caption.split()
        assert len(words) <= 15
        if ngram:
            grams = list(zip(*(words[i:] for i in range(ngram))))
            assert len(grams) == len(set(grams)), caption
        if repeats:
            counts = Counter(w for w in words if w not in STOP_WORDS)
            assert max(counts.values(), default=0) <= repeats, caption


def test_decoding_config_validates_and_round_trips_max_word_repeats():
    decoding = DecodingConfig(beam=3, max_word_repeats=2)
    assert DecodingConfig.from_dict(json.loads(json.dumps(decoding.to_dict()))) == decoding
    assert DecodingConfig.from_dict({"beam": 5}).max_word_repeats == 0  # older configs: off
    for bad in (-1, 11, True):
        with pytest.raises(ArtcapError, match="decoding max_word_repeats must be 0 \\(off\\) or from 1 to 10"):
            DecodingConfig(max_word_repeats=bad)
    flagged = DecodingConfig(rerank=True, emotion_guidance=1.5)
    assert DecodingConfig.from_dict(json.loads(json.dumps(flagged.to_dict()))) == flagged
    assert not DecodingConfig.from_dict({"beam": 5}).rerank  # older configs: off
    for bad in (1, "true", None):
        with pytest.raises(ArtcapError, match="decoding rerank must be true or false"):
            DecodingConfig(rerank=bad)
    assert not DecodingConfig.from_dict({"beam": 5}).coherent  # older configs decode as they always did
    for bad in (1, "yes"):
        with pytest.raises(ArtcapError, match="decoding coherent must be true or false"):
            DecodingConfig(coherent=bad)


def test_decoder_config_from_saved_dicts():
    old = {"vocab_size": 2208, "feature_dim": 1280, "embed_dim": 256, "hidden_dim": 256, "dropout": 0.5}
    config = DecoderConfig.from_dict(old)
    assert config.kind == "merge" and config.num_emotions == 0
    assert DecoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ArtcapError, match="config.json: unknown decoder setting\\(s\\) heads"):
        DecoderConfig.from_dict({**old, "heads": 4})
    with pytest.raises(ArtcapError, match="decoder.kind must be one of .*merge.*sat.*got 'transformer'"):
        DecoderConfig.from_dict({**old, "kind": "transformer"})
    # merge models saved when one config served every kind also hold sat's attention fields
    legacy = DecoderConfig.from_dict({**old, "attention_dim": 256, "alpha_c": 1.0})
    assert legacy == config and "attention_dim" not in legacy.to_dict()
    sat = DecoderConfig.from_dict({**old, "kind": "sat", "attention_dim": 64})
    assert sat.attention_dim == 64 and DecoderConfig.from_dict(sat.to_dict()) == sat
    with pytest.raises(ArtcapError, match="decoder.dropout must be from 0 to 0.95, got 2"):
        DecoderConfig.from_dict({**old, "dropout": 2})


def test_the_shipped_merge_model_loads_through_the_registry(model_dir):
    from safetensors.torch import load_file

    folder = model_dir if (model_dir / "config.json").is_file() else model_dir / "model"
    config = DecoderConfig.from_dict(json.loads((folder / "config.json").read_text())["decoder"])
    decoder = create_decoder(config)
    decoder.load_state_dict(load_file(folder / "model.safetensors"))  # strict: same parameter names
    assert config.kind == "merge"


@pytest.mark.parametrize("kind", GROUNDABLE)
def test_the_direct_emotion_path_keeps_step_equal_to_forward_and_moves_words(kind):
    """emotion_in_output: the emotion also reaches the word-choosing layer; step and forward still agree."""
    model = make(kind, emotions=True, emotion_in_output=True)
    assert model.emotion_out is not None and make(kind, emotions=True).emotion_out is None
    feats, tokens, emotions = features_for(model, 3), random_tokens(3, 6), random_emotions(3, seed=1)
    with torch.no_grad():
        forced, _ = model(feats, tokens, conditions=emotions)
        memory, state = model.init_memory(feats, emotions), None
        for t in range(tokens.size(1)):
            logits, state, _ = model.step(memory, tokens[:, t], state)
            torch.testing.assert_close(logits, forced[:, t], atol=1e-5, rtol=1e-4)
        model.emotion_out.weight.zero_()  # the direct path alone changes the words' scores
        model.emotion_out.bias.zero_()
        without, _ = model(feats, tokens, conditions=emotions)
    assert not torch.allclose(forced, without)


@pytest.mark.parametrize("kind", GROUNDABLE)
def test_emotion_guidance_scores_the_asked_emotion_against_all_nine(kind):
    """ConditionContrast's next-word scores on the emotion, checked against teacher-forced forward passes under every emotion:
    log p(w|e) + g (log p(w|e) - log mean_e' p(w|e')), at the first and later words (its states stay aligned)."""
    model, g = make(kind, emotions=True, seed=4), 1.5
    feats, tokens, asked = features_for(model, 2), random_tokens(2, 4), torch.tensor([6, 1])
    with torch.no_grad():
        own = F.log_softmax(model(feats, tokens, conditions={"emotion": asked})[0], dim=-1)
        every = torch.stack([F.log_softmax(model(feats, tokens, conditions={"emotion": torch.full((2,), e)})[0],
                                           dim=-1) for e in range(len(EMOTIONS))], dim=1)  # [B, 9, T, V]
        expected = own + g * (own - (torch.logsumexp(every, dim=1) - np.log(len(EMOTIONS))))
        guided = ConditionContrast(model, "emotion", g)
        memory, state = guided.init_memory(feats, {"emotion": asked}), None
        for t in range(tokens.size(1)):
            scores, state, _ = guided.step(memory, tokens[:, t], state)
            torch.testing.assert_close(scores, expected[:, t], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("beam", [1, 3])
def test_guided_decoding_keeps_the_rules_and_needs_a_grounded_model(beam):
    model = make("merge", emotions=True, seed=5)
    feats = features_for(model, 4, scale=3.0)
    decoding = DecodingConfig(beam, 10, no_repeat_ngram=2, max_word_repeats=1, emotion_guidance=2.0)
    captions = generate(model, feats, VOCAB, decoding, random_emotions(4))
    assert len(captions) == 4
    for caption in captions:
        words = caption.split()
        assert len(words) <= 10 and not {"<pad>", "<bos>", "<unk>"} & set(words)
        assert max(Counter(w for w in words if w not in STOP_WORDS).values(), default=0) <= 1
    with pytest.raises(ArtcapError, match="emotion_guidance needs a model conditioned on emotion"):
        generate(make("merge"), feats, VOCAB, decoding)
    with pytest.raises(ArtcapError, match="emotion_guidance must be from 0"):
        DecodingConfig(emotion_guidance=-1.0)
