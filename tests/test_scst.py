"""Self-critical sequence training: in-process CIDEr-D, the new self-critical baseline, the grounding reward,
real SCST steps on every decoder kind and on the tiny trained run, collapse reporting, the human row."""

import json
import math

import numpy as np
import pytest
import torch
from pycocoevalcap.cider.cider_scorer import CiderScorer

from artcap.cider import CiderD
from artcap.config import config_from
from artcap.errors import ArtcapError
from artcap.metrics import collapse_scores, top_caption_share
from artcap.decoders import DecoderConfig, create_decoder
from artcap.scst import ScstLoss, new_self_critical_baseline, sample_captions
from artcap.text import Vocabulary
from artcap.train import Batch, _selection_score

from conftest import tiny_config

TOY = {  # a toy training corpus: painting -> its references (tokens)
    "boat": [["a", "red", "boat", "on", "a", "calm", "sea"], ["the", "boat", "is", "red"],
             ["this", "painting", "makes", "me", "feel", "calm"]],
    "woman": [["a", "woman", "in", "a", "blue", "dress"], ["she", "looks", "sad", "in", "her", "dress"],
              ["this", "painting", "makes", "me", "feel", "calm"]],
    "forest": [["dark", "trees", "in", "a", "gloomy", "forest"], ["a", "path", "through", "the", "forest"],
               ["this", "painting", "makes", "me", "feel", "calm"]],
}
CANDIDATES = {"boat": "a red boat on the sea", "woman": "a woman in a dress dress", "forest": "the forest the forest"}


def _pycocoevalcap(candidates: dict[str, str], end: str) -> list[float]:
    """pycocoevalcap's CiderScorer on the toy corpus: its document frequencies come from the references scored,
    here the whole training corpus, so they are the ones CiderD caches."""
    scorer = CiderScorer(n=4, sigma=6.0)
    for key, refs in TOY.items():
        scorer += (candidates[key] + end, [" ".join(r) + end for r in refs])
    scorer.compute_doc_freq()
    return scorer.compute_cider()


@pytest.mark.parametrize("end_token", [None, "<eos>"])
def test_cider_d_equals_pycocoevalcaps_with_the_same_document_frequencies(end_token):
    cider = CiderD(TOY, end_token=end_token)
    expected = _pycocoevalcap(CANDIDATES, f" {end_token}" if end_token else "")
    keys = list(TOY)
    got = cider.score_many([CANDIDATES[k].split() for k in keys], keys)
    assert got == pytest.approx(expected, rel=1e-12)
    assert [cider.score(CANDIDATES[k].split(), k) for k in keys] == pytest.approx(expected, rel=1e-12)
    assert len(set(np.round(got, 6))) == 3 and min(got) > 0  # three different, non-trivial scores


def test_cider_d_by_hand_and_the_end_token_counts():
    # Two paintings, one reference each, no shared word: every n-gram has df 1, so idf = log 2 for all, and a
    # caption equal to its reference has cosine 1 in each order it has n-grams, 0 in the others, no length penalty.
    corpus = {"a": [["red", "sky"]], "b": [["blue", "sea"]]}
    assert CiderD(corpus, end_token=None).score(["red", "sky"], "a") == pytest.approx(10 * (1 + 1 + 0 + 0) / 4)
    # With <eos>: "red sky <eos>" has 1-, 2- and 3-grams; <eos> alone ends every reference (idf 0), so it is the
    # n-grams that END with it that count ("sky <eos>", "red sky <eos>").
    assert CiderD(corpus).score(["red", "sky"], "a") == pytest.approx(10 * (1 + 1 + 1 + 0) / 4)
    assert CiderD(corpus).score(["red", "sky"], "b") == 0.0 and CiderD(corpus).score([], "a") == 0.0


def test_a_caption_cut_before_its_end_loses_more_when_the_end_token_is_scored():
    refs = {"woman": [["the", "woman", "wears", "a", "red", "dress"]] * 2, "sea": [["a", "stormy", "sea"]] * 2}
    whole, cut = ["the", "woman", "wears", "a", "red", "dress"], ["the", "woman", "wears", "a", "red"]
    with_end, without_end = CiderD(refs), CiderD(refs, end_token=None)
    loss_with = with_end.score(whole, "woman") - with_end.score(cut, "woman")
    loss_without = without_end.score(whole, "woman") - without_end.score(cut, "woman")
    assert loss_with > loss_without > 0


def test_cider_d_refuses_unknown_images_and_empty_corpora():
    with pytest.raises(ArtcapError, match="not in the reference corpus"):
        CiderD(TOY).score(["a"], "nowhere")
    with pytest.raises(ArtcapError, match="no image"):
        CiderD({})
    with pytest.raises(ArtcapError, match="'x' has no non-empty reference"):
        CiderD({"x": [[]]})


def test_new_self_critical_baseline_is_the_mean_of_the_other_samples():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    baseline = new_self_critical_baseline(rewards)
    assert torch.allclose(baseline, torch.tensor([[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]]))
    assert torch.allclose((rewards - baseline).sum(dim=1), torch.zeros(2))  # advantages sum to zero per image
    with pytest.raises(ArtcapError, match="at least 2 samples"):
        new_self_critical_baseline(torch.ones(4, 1))


def _toy_vocab() -> Vocabulary:
    return Vocabulary.build([r for refs in TOY.values() for r in refs])


def test_the_grounding_reward_is_lower_for_a_caption_that_fits_every_painting():
    corpus = {**TOY, "city": [["tall", "grey", "houses", "in", "a", "busy", "street"]]}  # the stock sentence's idf > 0
    cider = CiderD(corpus)
    generic, specific = "this painting makes me feel calm".split(), "a red boat on a calm sea".split()
    plain = ScstLoss(cider, _toy_vocab(), max_len=10, samples=2)
    grounded = ScstLoss(cider, _toy_vocab(), max_len=10, samples=2, grounding_weight=1.0)
    torch.manual_seed(0)
    r_plain = plain.rewards([generic, specific], ["boat"])[0]
    draws = np.stack([grounded.rewards([generic, specific], ["boat"])[0] for _ in range(60)])  # random others
    assert 0 < r_plain[0] < r_plain[1]  # CIDEr-D alone pays the stock sentence too
    # Against woman or forest (the same stock reference) the stock sentence earns about 0, against city all of it.
    assert draws[:, 0].min() < 0.05 * r_plain[0] and draws[:, 0].max() == pytest.approx(r_plain[0])
    assert draws[:, 0].mean() < 0.5 * r_plain[0]
    # The specific caption keeps most of its reward: it matches the other paintings only in "a" and "calm".
    assert draws[:, 1].mean() > 0.7 * r_plain[1] and (draws[:, 1] - draws[:, 0]).min() > 0
    keys = list(corpus)  # the other painting is never the painting itself
    assert all(o != k for k, o in zip(keys * 100, grounded.other_keys(keys * 100)))


def test_sampled_words_stop_at_the_end_token():
    vocab = _toy_vocab()
    loss = ScstLoss(CiderD(TOY), vocab, max_len=10)
    ids = vocab.encode(["a", "red", "boat"])[1:]  # without <bos>: a red boat <eos>
    assert loss.words(ids + [vocab.pad_id, vocab.pad_id]) == ["a", "red", "boat"]


def _toy_decoder_and_batch(kind: str, emotions: int):
    torch.manual_seed(0)
    vocab = _toy_vocab()
    decoder = create_decoder(DecoderConfig(len(vocab), 8, embed_dim=16, hidden_dim=16, dropout=0.5, kind=kind,
                                              num_emotions=emotions))
    features = torch.randn(3, 8) if kind == "merge" else torch.randn(3, 4, 8)
    conditions = {"emotion": torch.tensor([0, 4, 8])} if emotions else {}
    batch = Batch(features, torch.zeros(3, 5, dtype=torch.long), conditions,
                  np.array([0, 1, 2]))  # feature rows: the keys of the reference corpus
    return decoder.train(), batch, ScstLoss(CiderD(dict(enumerate(TOY.values()))), vocab, max_len=8, samples=4)


@pytest.mark.parametrize("kind", ["merge", "sat"])
@pytest.mark.parametrize("emotions", [0, 9])
def test_scst_steps_train_every_decoder_kind_with_and_without_emotions(kind, emotions):
    """Real decoders, the real loss: sampled captions end in <eos> exactly once and never hold <bos>/<unk>;
    the loss is minus the mean reward, its gradient reaches the decoder and changes it."""
    decoder, batch, loss_fn = _toy_decoder_and_batch(kind, emotions)
    sampled = sample_captions(decoder, batch.features, batch.conditions, loss_fn.vocab, 8)
    assert sampled.shape[0] == 3 and bool(((sampled == loss_fn.vocab.eos_id).sum(dim=1) == 1).all())
    assert not bool(torch.isin(sampled, torch.tensor([loss_fn.vocab.bos_id, loss_fn.vocab.unk_id])).any())

    optimizer = torch.optim.Adam(decoder.parameters(), lr=0.05)
    before = [p.detach().clone() for p in decoder.parameters()]
    for _ in range(2):
        loss, n = loss_fn(decoder, batch)
        assert n == 12 and math.isfinite(float(loss.detach())) and float(loss.detach()) <= 0  # -(mean CIDEr-D)
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in decoder.parameters() if p.grad is not None]
        assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
        optimizer.step()
    assert decoder.training  # the loss switches dropout off only for its own passes
    assert any(not torch.equal(a, b) for a, b in zip(before, decoder.parameters()))


@pytest.mark.slow
def test_scst_steps_raise_the_mean_sampled_reward():
    decoder, batch, loss_fn = _toy_decoder_and_batch("merge", 0)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=0.05)
    rewards = []
    for _ in range(40):
        loss, _ = loss_fn(decoder, batch)
        rewards.append(-float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.1, rewards


def test_config_checks_the_scst_keys_before_any_work():
    with pytest.raises(ArtcapError, match="set run.init_from"):
        config_from({"optim.objective": "scst"})
    with pytest.raises(ArtcapError, match="scst.samples must be from 2 to 64, got 1"):
        config_from({"optim.objective": "scst", "run.init_from": "m", "scst.samples": 1})
    with pytest.raises(ArtcapError, match="scst.grounding_weight must be from 0 to 10, got -1.0"):
        config_from({"scst.grounding_weight": -1.0})
    with pytest.raises(ArtcapError, match="optim.objective must be one of xe, scst, got 'rl'"):
        config_from({"optim.objective": "rl"})
    assert config_from({"optim.select_by": "cider_distinct"}).optim.select_by == "cider_distinct"


def test_cider_distinct_selection_prefers_any_varied_epoch_then_cider():
    config = config_from({"optim.select_by": "cider_distinct"})
    collapsed = _selection_score(config, {"cider": 0.9, "distinct": 0.3})
    less_collapsed = _selection_score(config, {"cider": 0.1, "distinct": 0.5})
    varied = _selection_score(config, {"cider": 0.05, "distinct": 0.6})
    better = _selection_score(config, {"cider": 0.08, "distinct": 0.9})
    assert collapsed < less_collapsed < varied < better


def test_top_caption_share_and_collapse_scores():
    predictions = {"a": "A red sky.", "b": "a red sky", "c": "a calm sea", "d": "trees"}
    assert top_caption_share(predictions) == 0.5  # case and punctuation folded
    assert collapse_scores(predictions) == {"distinct": 0.75, "vocabulary": 6, "top_caption_share": 0.5}
    with pytest.raises(ArtcapError):
        top_caption_share({})


@pytest.mark.slow
def test_scst_on_the_tiny_run_reports_collapse_and_resumes_exactly(tiny_run, artemis_subset, feature_cache_dir,
                                                                   tmp_path):
    from artcap.captioner import Captioner
    from artcap.train import train

    images = artemis_subset[1]
    settings = {"optim.objective": "scst", "run.init_from": str(tiny_run / "model"), "optim.epochs": 2,
                "optim.steps_per_epoch": 6, "optim.lr": 5e-4, "optim.select_by": "cider_distinct",
                "scst.grounding_weight": 0.5, "decoder.dropout": 0.0}
    run = train(tiny_config(artemis_subset, feature_cache_dir, tmp_path / "scst", **settings), progress=False)
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for record in history:
        assert 0 < record["distinct"] <= 1 and record["vocabulary"] >= 1 and 0 < record["top_caption_share"] <= 1
        assert record["cider"] >= 0 and math.isfinite(record["train_loss"])  # minus the mean sampled reward
    val_images = [images / f"{p}.jpg" for p in json.loads((run / "splits.json").read_text())["val"][:4]]
    assert all(c.strip() for c in Captioner.load(run).caption(val_images, beam=1))

    # Stopped after epoch 1 and resumed: the same weights as the uninterrupted run (the loss keeps no state).
    first = train(tiny_config(artemis_subset, feature_cache_dir, tmp_path / "resumed", **{**settings, "optim.epochs": 1}),
                  progress=False)
    resumed = train(tiny_config(artemis_subset, feature_cache_dir, first, **settings), resume=True, progress=False)
    again = json.loads((resumed / "history.json").read_text())
    assert [h["train_loss"] for h in again] == pytest.approx([h["train_loss"] for h in history], rel=1e-6)
    assert [h["cider"] for h in again] == pytest.approx([h["cider"] for h in history], rel=1e-6)


def test_the_human_leave_one_out_row_on_real_utterances(artemis_subset):
    from artcap.data import read_annotations, references
    from artcap.evaluate import HUMAN_MIN_UTTERANCES, human_leave_one_out

    csv_path, images = artemis_subset
    annotations = read_annotations(csv_path, images)
    ids = sorted({a.image_id for a in annotations})[:60]
    refs = references(annotations, "artemis", ids)
    human = human_leave_one_out(ids, refs, with_meteor=False)
    eligible = [i for i in ids if len(refs[i]) >= HUMAN_MIN_UTTERANCES]
    assert human["paintings"] == len(eligible) >= 2 and human["utterance_indices"] == [0, 1, 2, 3, 4]
    assert human["references_per_painting"] == pytest.approx(np.mean([len(refs[i]) - 1 for i in eligible]))
    row = human["row"]
    # People describe *their* painting: positive CIDEr-D and grounding, almost never the same sentence twice.
    assert 0 < row["BLEU-4"] < 1 and row["CIDEr-D"] > 0 and row["grounding"] > 0
    assert row["distinct"] > 0.9 and row["top caption share"] < 0.1 and row["copied"] is None
    # Too few paintings with enough utterances: no row rather than a meaningless one.
    assert human_leave_one_out(ids, refs, with_meteor=False, min_utterances=1000) is None


@pytest.mark.slow
def test_evaluate_reports_the_human_row_and_the_top_caption_share(tiny_run, artemis_subset, feature_cache_dir):
    from artcap.evaluate import HUMAN_ROW, evaluate

    csv_path, images = artemis_subset
    result = evaluate(tiny_run, csv_path, images, split="test", with_meteor=False,
                      feature_cache=str(feature_cache_dir), progress=False)
    model = result["systems"][result["model"]]
    assert 0 < model["top_caption_share"] <= 1
    human = result["human_leave_one_out"]
    assert human["paintings"] >= 2 and human["row"]["grounding"] > model["grounding"]
    lines = result["table"].splitlines()
    assert "top caption share |" in lines[0] and any(line.startswith(f"| {HUMAN_ROW} |") for line in lines)


def test_the_sampler_draws_from_the_decoders_distribution():
    decoder, _, loss_fn = _toy_decoder_and_batch("merge", 0)
    decoder.eval()
    vocab = loss_fn.vocab
    features = torch.randn(1, 8).expand(20_000, 8)
    torch.manual_seed(1)
    first = sample_captions(decoder, features, None, vocab, max_len=1)[:, 0]
    with torch.no_grad():
        logits, _, _ = decoder.step(decoder.init_memory(features[:1]), torch.tensor([vocab.bos_id]), None)
    logits[:, [vocab.pad_id, vocab.bos_id, vocab.unk_id]] = float("-inf")
    expected = torch.softmax(logits[0], dim=-1)
    observed = torch.bincount(first, minlength=len(vocab)).float() / len(first)
    assert float((observed - expected).abs().max()) < 0.015 and observed[[0, 1, 3]].sum() == 0


DDP_SCRIPT = """
import os, socket, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from test_scst import _toy_decoder_and_batch
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
decoder, batch, loss_fn = _toy_decoder_and_batch("sat", 9)
wrapped = torch.nn.parallel.DistributedDataParallel(decoder)
loss, n = loss_fn(wrapped, batch)
loss.backward()
grads = [p.grad for p in decoder.parameters() if p.grad is not None]
assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
print("ok", n, len(grads))
dist.destroy_process_group()
"""


def test_scst_runs_through_a_distributed_data_parallel_wrapper():
    """Under torchrun the loss gets the DDP wrapper: sampling must use the bare module, the gradient DDP's forward."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", DDP_SCRIPT, str(Path(__file__).parent)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    word, n, with_grad = done.stdout.split()
    assert word == "ok" and int(n) == 12 and int(with_grad) > 0


def test_fine_tuning_must_keep_the_decoders_emotion_grounding(tiny_run, artemis_subset, feature_cache_dir, tmp_path):
    from artcap.train import train

    config = tiny_config(artemis_subset, feature_cache_dir, tmp_path / "ft", **{
        "run.init_from": str(tiny_run / "model"), "emotion.grounded": True, "optim.epochs": 1})
    with pytest.raises(ArtcapError, match="its decoder is not emotion-grounded; set emotion.grounded = false"):
        train(config, progress=False)
    assert not (tmp_path / "ft" / "checkpoint.pt").exists()
