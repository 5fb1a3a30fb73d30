"""Shared fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real datasets at ../shared/data (relative to the repo root); skip when absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (see the project's shared data README)")
    return path


@pytest.fixture(scope="session")
def artemis_subset(shared_data, tmp_path_factory):
    """(csv, images): the first 300 paintings of artemis-mini, real rows and real images, small enough
    that feature extraction and training take seconds."""
    import csv

    source = shared_data / "artemis-mini" / "artemis_mini.csv"
    out = tmp_path_factory.mktemp("artemis-subset") / "subset.csv"
    with open(source, newline="", encoding="utf-8") as f_in, open(out, "w", newline="", encoding="utf-8") as f_out:
        reader = csv.DictReader(f_in)
        writer = csv.DictWriter(f_out, reader.fieldnames)
        writer.writeheader()
        paintings = set()
        for row in reader:
            paintings.add(row["painting"])
            if len(paintings) > 300:
                break
            writer.writerow(row)
    return out, shared_data / "artemis-mini" / "wikiart"


@pytest.fixture(scope="session")
def feature_cache_dir(tmp_path_factory):
    """One feature cache for the whole test session (extraction happens once)."""
    return tmp_path_factory.mktemp("feature-cache")


def tiny_config(artemis_subset, feature_cache_dir, out, **overrides):
    """A training config on the subset that runs in seconds. Overrides are dotted settings
    (`**{"decoder.kind": "sat"}`) or the old flat names (`epochs=2`), read as their dotted ones."""
    from artcap.config import FLAT_KEYS, config_from, flat_to_dotted

    csv_path, images = artemis_subset
    values = {"data.captions": str(csv_path), "data.images": str(images),
              "encoder.feature_cache": str(feature_cache_dir), "optim.epochs": 3, "optim.batch_size": 32,
              "run.out": str(out), "encoder.num_workers": 0, "decoder.embed_dim": 64, "decoder.hidden_dim": 64}
    for key, value in overrides.items():
        dotted = flat_to_dotted(key, value) if key in FLAT_KEYS else key
        if dotted is not None:  # None: a flat 0 that meant "the data's", which the tree says by leaving it out
            values[dotted] = value
    return config_from(values)


@pytest.fixture(scope="session")
def tiny_run(artemis_subset, feature_cache_dir, tmp_path_factory):
    """A real trained run folder (3 epochs on the subset), shared by the tests that need a model."""
    from artcap.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train(tiny_config(artemis_subset, feature_cache_dir, out), progress=False)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The shipped model ($ARTCAP_TEST_MODEL may name another model or run folder)."""
    from artcap.captioner import DEFAULT_MODEL_DIR

    path = Path(os.environ.get("ARTCAP_TEST_MODEL", DEFAULT_MODEL_DIR))
    if not (path / "config.json").is_file() and not (path / "model" / "config.json").is_file():
        pytest.skip(f"no shipped model at {path} (train it: artcap train --config configs/default.toml)")
    return path


@pytest.fixture(scope="session")
def captioner(model_dir):
    from artcap.captioner import Captioner

    return Captioner.load(model_dir)
