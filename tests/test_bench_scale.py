"""benchmarks/bench_scale.py at a tiny fraction: it runs end to end, prints one JSON line with every
measurement, and the features it wrote straight into the cache are what artcap's FeatureCache reads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DECODER_FIELDS = {"prepare_s", "after_prepare", "vocabulary", "train_captions", "train_tokens_per_epoch",
                  "read_all_s", "read_all_gb_float32", "after_read_all", "train_call_s", "train_steps",
                  "train_loop_s", "tokens_per_s", "extrapolated_epoch_s", "after_train", "peak_rss_mb"}


@pytest.mark.slow
def test_bench_scale_tiny_fraction_measures_and_writes_a_readable_cache(shared_data, tmp_path):
    from artcap.config import TrainConfig
    from artcap.encoders import EncoderSpec
    from artcap.features import FeatureCache, FeatureSpec

    work = tmp_path / "scale"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--fraction", "0.002",
                           "--steps", "2", "--read-all", "--threads", "1", "--workdir", str(work), "--keep"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0])
    assert result["images"] == round(80_031 * 0.002) and result["utterances"] == round(454_684 * 0.002)
    assert result["generate_s"] > 0 and result["disk_mb"]["total"] > result["disk_mb"]["grid7x7"] > 0
    for decoder in ("merge", "sat"):
        measured = result[decoder]
        assert DECODER_FIELDS <= set(measured), DECODER_FIELDS - set(measured)
        assert measured["train_steps"] == 2 and measured["tokens_per_s"] > 0
        assert measured["extrapolated_epoch_s"] == pytest.approx(
            measured["train_tokens_per_epoch"] / measured["tokens_per_s"], rel=0.01, abs=0.1)
        assert measured["peak_rss_mb"] >= measured["after_prepare"]["peak_rss_mb"] > 0
        assert measured["train_captions"] > 0 and measured["vocabulary"] > 4

    # The cache it wrote is artcap's own: every placeholder image counts as extracted, rows read back
    encoder = EncoderSpec.from_train_config(TrainConfig()).create()
    paths = sorted((work / "wikiart").rglob("*.jpg"))
    assert len(paths) == result["images"]
    for spec, shape, stored in ((FeatureSpec("pooled"), (1280,), np.float32),
                                (FeatureSpec("grid"), (49, 1280), np.float16)):
        cache = FeatureCache(work / "features", encoder, spec)
        assert cache.missing(paths) == []
        view = cache.view(paths)
        rows = view[np.arange(len(paths))]
        assert rows.shape == (len(paths), *shape) and rows.dtype == np.float32
        assert np.isfinite(rows).all() and rows.std() > 0
        assert np.array_equal(view[5], rows[5])
        index = json.loads(cache.index_path.read_text())
        shard = np.load(cache.dir / index["shards"][0]["name"], mmap_mode="r")
        assert shard.dtype == stored and sum(s["rows"] for s in index["shards"]) == len(paths)


def _resident_file_mb() -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["RssFile"].split()[0]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssFile from Linux's /proc")
def test_reading_every_row_keeps_no_shard_pages_resident(tmp_path):
    """An epoch reads every row in random batches; through a memory map every page read stayed resident
    (the full ArtEmis grid: 10 GB). FeatureView reads rows with positioned reads, so resident file pages
    do not grow with the shard."""
    from artcap.features import FeatureView

    rows = np.random.default_rng(0).standard_normal((1600, 49, 640)).astype(np.float16)  # 100 MB
    np.save(tmp_path / "shard.npy", rows)
    view = FeatureView([np.load(tmp_path / "shard.npy", mmap_mode="r")], np.stack([np.zeros(1600, int),
                                                                                    np.arange(1600)], 1), (49, 640))
    before = _resident_file_mb()
    order = np.random.default_rng(1).permutation(1600)
    for start in range(0, 1600, 64):
        batch = order[start : start + 64]
        assert np.array_equal(view[batch], rows[batch].astype(np.float32))
    assert _resident_file_mb() - before < 20, "the shard's pages stayed resident in this process"
