"""Stages 3-4: real training steps, resume, data-parallel training, decoding, model folders."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import tiny_config

from artcap.captioner import Captioner
from artcap.checkpoint import load_checkpoint
from artcap.cli import main
from artcap.config import load_config
from artcap.decode import beam_search, greedy_search
from artcap.errors import ArtcapError
from artcap.corpus import load_corpus
from artcap.train import epoch_batches, train


def history(run):
    return json.loads((run / "history.json").read_text())


def test_training_lowers_val_loss_and_writes_a_run_folder(tiny_run):
    h = history(tiny_run)
    vocab_size = len(json.loads((tiny_run / "vocab.json").read_text()))
    assert [e["epoch"] for e in h] == [1, 2, 3]
    assert h[-1]["val_loss"] < h[0]["val_loss"] < math.log(vocab_size)  # learns, beats uniform guessing
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    for name in ("config.toml", "splits.json", "vocab.json", "checkpoint.pt", "loss.png", "model/config.json",
                 "model/model.safetensors", "model/vocab.json", "model/splits.json"):
        assert (tiny_run / name).is_file(), name
    assert load_config(tiny_run / "config.toml").optim.epochs == 3


def test_resume_continues_the_same_run(artemis_subset, feature_cache_dir, tmp_path, tiny_run):
    """2 epochs + resume to 3 equals 3 epochs straight (epoch boundaries are deterministic)."""
    config = tiny_config(artemis_subset, feature_cache_dir, tmp_path / "r", **{"optim.epochs": 2})
    run = train(config, progress=False)
    with pytest.raises(ArtcapError, match="a run already exists there"):
        train(config, progress=False)
    config = config.replaced({"optim.epochs": 3})
    train(config, resume=True, progress=False)
    resumed, straight = history(run), history(tiny_run)
    assert [e["epoch"] for e in resumed] == [1, 2, 3]
    for a, b in zip(resumed, straight):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)


def test_resume_after_kill_9(artemis_subset, feature_cache_dir, tmp_path):
    """A real SIGKILL mid-epoch; --resume finishes the run with every epoch present once."""
    config = tiny_config(artemis_subset, feature_cache_dir, tmp_path / "k", **{"optim.epochs": 4,
                         "run.checkpoint_every": 3, "optim.batch_size": 8})
    config_path = tmp_path / "k.toml"
    config.save(config_path)
    cmd = [sys.executable, "-m", "artcap", "-q", "train", "--config", str(config_path)]
    proc = subprocess.Popen(cmd)
    checkpoint = tmp_path / "k" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoint.exists() and load_checkpoint(checkpoint)["epoch"] >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(checkpoint)
    assert state["epoch"] < 4, "the run finished before it could be killed"
    code = subprocess.run([sys.executable, "-m", "artcap", "-q", "train", "--resume", str(tmp_path / "k")]).returncode
    assert code == 0
    h = history(tmp_path / "k")
    assert [e["epoch"] for e in h] == [1, 2, 3, 4]
    assert h[: state["epoch"]] == state["history"]  # finished epochs were kept, not redone


def test_two_process_gloo_training_matches_one_process(artemis_subset, feature_cache_dir, tmp_path, tiny_run):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    config = tiny_config(artemis_subset, feature_cache_dir, tmp_path / "ddp")
    config.save(tmp_path / "ddp.toml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "artcap", "-q", "train", "--config",
                             str(tmp_path / "ddp.toml")], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    two, one = history(tmp_path / "ddp"), history(tiny_run)
    assert len(two) == 3
    for a, b in zip(two, one):  # same global batch and data order: same curve within noise
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=0.15)


def test_epoch_batches_stream_continues_across_epochs():
    first = epoch_batches(10, 4, 2, 0, seed=0)
    second = epoch_batches(10, 4, 2, 1, seed=0)
    assert [len(b) for b in first + second] == [4, 4, 4, 4]
    seen = [int(i) for b in first for i in b] + [int(i) for b in second[:1] for i in b][:2]
    assert sorted(seen) == list(range(10))  # the first full pass covers every caption once
    assert [b.tolist() for b in epoch_batches(10, 4, 0, 3, seed=0)] == \
           [b.tolist() for b in epoch_batches(10, 4, 0, 3, seed=0)]


def test_beam_width_one_equals_greedy_and_beam_decodes(tiny_run):
    captioner = Captioner.load(tiny_run)
    config = load_config(tiny_run / "config.toml")
    corpus = load_corpus(config, json.loads((tiny_run / "splits.json").read_text()), progress=False)
    feats = torch.from_numpy(corpus.features[list(range(16))])
    vocab, model = captioner.vocab, captioner.decoder
    assert beam_search(model, feats, vocab, max_len=20, beam=1) == greedy_search(model, feats, vocab, max_len=20)
    beams = beam_search(model, feats, vocab, max_len=20, beam=3, no_repeat_ngram=2)
    for seq in beams:
        assert 0 < len(seq) <= 20 and vocab.unk_id not in seq
        bigrams = list(zip(seq, seq[1:]))
        assert len(bigrams) == len(set(bigrams))  # no repeated bigram
    # max_len bounds every caption
    assert all(len(s) <= 3 for s in greedy_search(model, feats, vocab, max_len=3))


def test_damaged_model_folders_fail_clearly(tiny_run, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "model", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ArtcapError, match="model.safetensors: unreadable weights"):
        Captioner.load(model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    assert main(["caption", str(tmp_path), "--model", str(model)]) == 2
    assert "model format version 99 is not supported" in capsys.readouterr().err


def test_truncated_checkpoint_fails_clearly(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    assert main(["-q", "train", "--resume", str(run), "--set", "optim.epochs=4"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt: unreadable checkpoint" in err and "Traceback" not in err


def test_config_errors_are_one_line(tmp_path):
    (tmp_path / "c.toml").write_text('[optim]\nepochs = "ten"\n')
    with pytest.raises(ArtcapError, match="optim.epochs must be from 1 to 100000, got 'ten'"):
        load_config(tmp_path / "c.toml")
    with pytest.raises(ArtcapError, match="unknown key optim.epoch; \\[optim\\] keys: objective, epochs"):
        (tmp_path / "d.toml").write_text("[optim]\nepoch = 3\n")
        load_config(tmp_path / "d.toml")
    with pytest.raises(ArtcapError, match="--set 'optim.lr'"):
        load_config(None, ["optim.lr"])
    assert load_config(None, ["optim.lr=0.01", "run.amp=false"]).optim.lr == 0.01
