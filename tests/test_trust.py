"""Trust: training settings, resume from any point, odd data, damaged files, faults in the feature
cache and in training, and the command line's small promises. Each test failed before its fix."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config

from artcap.cli import main
from artcap.encoders import create_encoder
from artcap.features import FeatureCache, FeatureSpec

ARTCAP = [sys.executable, "-m", "artcap"]


def strict_json(path: Path):
    """json.loads that refuses NaN/Infinity, as every other JSON reader does."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


# ---- training settings are checked before any work --------------------------------------------------

@pytest.mark.parametrize("setting, key", [("optim.batch_size=0", "optim.batch_size"), ("optim.lr=nan", "optim.lr"),
                                          ("decoder.dropout=2", "decoder.dropout"), ("optim.epochs=0", "optim.epochs"),
                                          ("optim.lr=-1", "optim.lr"), ("run.device=gpu", "run.device"),
                                          ("decoder.kind=lstm9", "decoder.kind")])
def test_bad_training_settings_are_one_line_before_any_work(setting, key, artemis_subset, tmp_path, capsys):
    csv_path, images = artemis_subset
    cache = tmp_path / "cache"
    started = time.perf_counter()
    code = main(["train", "--data", str(csv_path), "--images", str(images), "--cache", str(cache),
                 "--set", f"run.out={tmp_path / 'run'}", "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and key in err, err
    assert not cache.exists() and not (tmp_path / "run").exists()  # no feature extraction, no run folder
    assert time.perf_counter() - started < 30


# ---- resume from any kill point ---------------------------------------------------------------------

@pytest.mark.slow
def test_resume_after_a_kill_before_the_first_checkpoint_starts_over(artemis_subset, feature_cache_dir, tmp_path):
    config = tiny_config(artemis_subset, feature_cache_dir, tmp_path / "run", epochs=1, batch_size=4,
                         checkpoint_minutes=0.0)
    config.save(tmp_path / "c.toml")
    proc = subprocess.Popen([*ARTCAP, "-q", "train", "--config", str(tmp_path / "c.toml")])
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "run" / "config.toml").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "run" / "config.toml").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()

    resumed = subprocess.run([*ARTCAP, "train", "--resume", str(tmp_path / "run")], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "no checkpoint yet" in resumed.stderr and "starting the run over" in resumed.stderr
    assert [h["epoch"] for h in strict_json(tmp_path / "run" / "history.json")] == [1]


@pytest.mark.slow
def test_mid_epoch_checkpoints_by_time_with_default_steps(artemis_subset, feature_cache_dir, tmp_path):
    """With checkpoint_every left at 0, a checkpoint still lands inside the epoch (by time), so a kill
    mid-epoch loses at most `checkpoint_minutes` of work."""
    from artcap.checkpoint import load_checkpoint
    from artcap.train import train

    config = tiny_config(artemis_subset, feature_cache_dir, tmp_path / "run", epochs=1, batch_size=4,
                         checkpoint_minutes=1e-4)
    seen_steps = set()
    original = __import__("artcap.train", fromlist=["RunState"]).RunState.save

    def watching_save(self, path):
        original(self, path)
        seen_steps.add(load_checkpoint(path)["step"])

    import artcap.train as train_module
    train_module.RunState.save = watching_save
    try:
        train(config, progress=False)
    finally:
        train_module.RunState.save = original
    assert any(step > 0 for step in seen_steps), seen_steps  # saved mid-epoch, not only at its end


# ---- odd data: no NaN in JSON, say what happened ---------------------------------------------------

@pytest.mark.slow
def test_ten_paintings_train_without_nan_and_say_val_is_empty(shared_data, feature_cache_dir, tmp_path, caplog):
    import csv

    source = shared_data / "artemis-mini" / "artemis_mini.csv"
    out = tmp_path / "ten.csv"
    with open(source, newline="", encoding="utf-8") as f_in, open(out, "w", newline="", encoding="utf-8") as f_out:
        reader = csv.DictReader(f_in)
        writer = csv.DictWriter(f_out, reader.fieldnames)
        writer.writeheader()
        paintings = []
        for row in reader:
            if row["painting"] not in paintings:
                paintings.append(row["painting"])
            if len(paintings) > 10:
                break
            writer.writerow(row)
    from artcap.train import train

    config = tiny_config((out, shared_data / "artemis-mini" / "wikiart"), feature_cache_dir, tmp_path / "run",
                         epochs=2)
    with caplog.at_level("WARNING", logger="artcap"):
        run = train(config, progress=False)
    assert "no validation painting" in caplog.text and "10 paintings split 85/5/10 into 8/0/2" in caplog.text
    history = strict_json(run / "history.json")
    assert [h["val_loss"] for h in history] == [None, None]
    assert strict_json(run / "model" / "config.json")["training"]["best_val_loss"] is None


def test_a_one_row_csv_says_no_training_painting(shared_data, tmp_path, capsys):
    source = (shared_data / "artemis-mini" / "artemis_mini.csv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "one.csv").write_text("\n".join(source[:2]) + "\n", encoding="utf-8")
    code = main(["train", "--data", str(tmp_path / "one.csv"), "--images", str(shared_data / "artemis-mini/wikiart"),
                 "--cache", str(tmp_path / "cache"), "--set", f"run.out={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "no training painting" in err and "empty data set" not in err, err


# ---- damaged files: one line, not a traceback ---------------------------------------------------------

def test_evaluate_out_naming_an_existing_file_is_one_line(shared_data, tmp_path, capsys):
    (tmp_path / "scores.txt").write_text("mine")
    code = main(["evaluate", "--data", str(shared_data / "artemis-mini/artemis_mini.csv"), "--images",
                 str(shared_data / "artemis-mini/wikiart"), "--out", str(tmp_path / "scores.txt"), "--no-meteor"])
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and err.count("\n") == 1
    assert (tmp_path / "scores.txt").read_text() == "mine"


def test_model_config_missing_a_key_is_one_line(model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    config = json.loads((model / "config.json").read_text())
    del config["encoder"]
    (model / "config.json").write_text(json.dumps(config))
    code = main(["caption", str(Path(__file__).parent), "--model", str(model)])
    err = capsys.readouterr().err
    assert code == 2 and "key encoder is missing" in err and "Traceback" not in err


@pytest.mark.parametrize("content", ["{not json", '{"train": "a", "val": [], "test": []}', "[1, 2]"])
def test_malformed_splits_json_is_one_line(model_dir, shared_data, tmp_path, capsys, content):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    (model / "splits.json").write_text(content)
    code = main(["evaluate", str(model), "--data", str(shared_data / "artemis-mini/artemis_mini.csv"),
                 "--images", str(shared_data / "artemis-mini/wikiart"), "--no-meteor"])
    err = capsys.readouterr().err
    assert code == 2 and "splits.json" in err and err.count("\n") == 1, err


# ---- the feature cache: damage, two writers, kill -9 -------------------------------------------------

@pytest.fixture(scope="module")
def lite0():
    return create_encoder("efficientnet-lite0", image_size=128)


def some_paintings(shared_data, n):
    return sorted((shared_data / "artemis-mini" / "wikiart" / "Impressionism").glob("*.jpg"))[:n]


def test_a_truncated_shard_is_detected_and_re_extracted(lite0, shared_data, tmp_path):
    paths = some_paintings(shared_data, 6)
    cache = FeatureCache(tmp_path, lite0)
    cache.extract(paths[:3], num_workers=0, progress=False)
    cache.extract(paths[3:], num_workers=0, progress=False)
    expected = cache.view(paths)[np.arange(6)]
    first_shard = sorted(cache.dir.glob("shard-*.npy"))[0]
    first_shard.write_bytes(first_shard.read_bytes()[:200])  # a disk error, a bad copy

    reopened = FeatureCache(tmp_path, lite0)
    assert reopened.missing(paths) == paths[:3]  # only the damaged shard's images
    assert reopened.extract(paths, num_workers=0, progress=False) == {}
    np.testing.assert_allclose(reopened.view(paths)[np.arange(6)], expected, atol=1e-5)


def test_grid_features_are_cached_as_fixed_size_half_precision(lite0, shared_data, tmp_path):
    paths = some_paintings(shared_data, 3)
    cache = FeatureCache(tmp_path, lite0, FeatureSpec("grid", 4))  # 128 px gives a 4x4 grid natively
    cache.extract(paths, num_workers=0, progress=False)
    view = cache.view(paths)
    rows = view[np.arange(3)]
    assert rows.shape == (3, 16, 1280) and rows.dtype == np.float32
    assert FeatureCache(tmp_path, lite0, FeatureSpec("grid", 7)).missing(paths) == paths  # the grid size is in the key
    assert view.shards[0].dtype == np.float16
    pooled = FeatureCache(tmp_path, lite0)
    pooled.extract(paths, num_workers=0, progress=False)  # a separate folder: both kinds live side by side
    np.testing.assert_allclose(rows.mean(axis=1), pooled.view(paths)[np.arange(3)], atol=2e-2)


EXTRACT = """
import sys
from pathlib import Path
from artcap.encoders import create_encoder
from artcap.features import FeatureCache
paths = [Path(p) for p in sys.argv[2:]]
cache = FeatureCache(sys.argv[1], create_encoder("efficientnet-lite0", image_size=128))
assert cache.extract(paths, batch_size=4, num_workers=0, chunk_size=8, progress=False) == {}
"""


def check_cache_consistent(root, encoder, paths):
    cache = FeatureCache(root, encoder)
    index = json.loads(cache.index_path.read_text())
    assert cache.missing(paths) == []
    assert len(index["files"]) == len(paths)
    direct = FeatureCache(root / "fresh", encoder)
    direct.extract(paths, num_workers=0, progress=False)
    np.testing.assert_allclose(cache.view(paths)[np.arange(len(paths))], direct.view(paths)[np.arange(len(paths))],
                               atol=1e-5)


@pytest.mark.slow
def test_two_processes_extract_into_one_cache_at_once(lite0, shared_data, tmp_path):
    paths = some_paintings(shared_data, 24)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", EXTRACT, str(tmp_path), *map(str, order)], env=env)
             for order in (paths, paths[::-1])]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    check_cache_consistent(tmp_path, lite0, paths)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_during_extraction_then_resume_gives_the_same_cache(lite0, shared_data, tmp_path, seed):
    paths = some_paintings(shared_data, 32)
    rng = np.random.default_rng(seed)
    proc = subprocess.Popen([sys.executable, "-c", EXTRACT, str(tmp_path), *map(str, paths)])
    time.sleep(float(rng.uniform(3.0, 12.0)))  # import + model load take a few seconds; shards land after
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert subprocess.run([sys.executable, "-c", EXTRACT, str(tmp_path), *map(str, paths)], timeout=300).returncode == 0
    check_cache_consistent(tmp_path, lite0, paths)


def _file_size_limit(limit):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG, as with a full disk, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


@pytest.mark.slow
def test_a_full_disk_while_writing_the_cache_is_one_line_and_nothing_is_corrupted(shared_data, artemis_subset,
                                                                                   tmp_path, lite0):
    paths = some_paintings(shared_data, 8)
    csv_path, images = artemis_subset
    result = subprocess.run([*ARTCAP, "-q", "features", "--data", str(csv_path), "--images", str(images),
                             "--cache", str(tmp_path), "--image-size", "128", "--backend", "torch"],
                            capture_output=True, text=True,
                            timeout=600, preexec_fn=_file_size_limit(100_000))
    assert result.returncode == 2, result.stderr[-1500:]
    assert result.stderr.count("\n") == 1 and "free some space" in result.stderr, result.stderr
    assert not list(tmp_path.rglob("*.tmp"))  # the partial shard was removed
    cache = FeatureCache(tmp_path, lite0)  # still readable
    cache.extract(paths, num_workers=0, progress=False)
    check_cache_consistent(tmp_path, lite0, paths)


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line(artemis_subset, feature_cache_dir, tmp_path):
    config = tiny_config(artemis_subset, feature_cache_dir, tmp_path / "run", epochs=1)
    config.save(tmp_path / "c.toml")
    subprocess.run([*ARTCAP, "-q", "features", "--config", str(tmp_path / "c.toml")], check=True, timeout=600)
    result = subprocess.run([*ARTCAP, "-q", "train", "--config", str(tmp_path / "c.toml")], capture_output=True,
                            text=True, timeout=600, preexec_fn=_file_size_limit(50_000))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-1500:]
    assert "free some space" in result.stderr and not (tmp_path / "run" / "checkpoint.pt").exists()


# ---- the command line's small promises --------------------------------------------------------------

def test_quiet_and_threads_are_accepted_after_every_command():
    from artcap.cli import build_parser

    parser = build_parser()
    for command in (["caption", "x.jpg"], ["train"], ["features"], ["serve"], ["evaluate", "--data", "d", "--images", "i"]):
        args = parser.parse_args([*command, "-q", "--threads", "1"])
        assert args.quiet is True and args.threads == 1, command
    assert parser.parse_args(["-q", "train"]).quiet is True
    assert parser.parse_args(["train"]).quiet is False


def test_a_reader_that_closes_early_ends_quietly(shared_data, model_dir):
    folder = shared_data / "artemis-mini" / "wikiart" / "Impressionism"
    pipeline = subprocess.run(f"{sys.executable} -m artcap -q caption {folder} --model {model_dir} | head -n 1",
                              shell=True, capture_output=True, text=True, timeout=600,
                              executable="/bin/bash")
    assert pipeline.stdout.count("\n") == 1
    assert "Traceback" not in pipeline.stderr and "BrokenPipe" not in pipeline.stderr, pipeline.stderr[-1500:]
