"""Stage 2: encoders and the feature cache, on real images."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from artcap.encoders import create_encoder
from artcap.errors import ArtcapError
from artcap.features import FeatureCache
from artcap.images import load_image


@pytest.fixture(scope="module")
def lite0():
    return create_encoder("efficientnet-lite0", image_size=128)


@pytest.fixture()
def paintings(shared_data, tmp_path):
    """Eight real paintings copied to a folder the test may modify."""
    sources = sorted((shared_data / "artemis-mini" / "wikiart" / "Impressionism").glob("*.jpg"))[:8]
    for s in sources:
        shutil.copy(s, tmp_path / s.name)
    return sorted(tmp_path.glob("*.jpg"))


def test_encoder_gives_pooled_vector_and_grid(lite0, paintings):
    out = lite0(lite0.preprocess([load_image(p) for p in paintings[:2]]))
    assert out.pooled.shape == (2, 1280) and out.grid.shape[:2] == (2, 1280)
    assert torch.allclose(out.pooled, out.grid.mean(dim=(2, 3)))
    # ImageNet weights, not random: the bundled classifier is confident on some real painting.
    probs = lite0.model._fc(out.pooled).softmax(-1)
    assert probs.max() > 0.1


def test_cache_extracts_once_reuses_and_notices_changes(lite0, paintings, tmp_path):
    cache = FeatureCache(tmp_path / "cache", lite0)
    assert cache.extract(paintings, batch_size=4, num_workers=0, progress=False) == {}
    view = cache.view(paintings)
    with torch.inference_mode():
        direct = lite0(lite0.preprocess([load_image(p) for p in paintings])).pooled.numpy()
    np.testing.assert_allclose(view[np.arange(len(paintings))], direct, rtol=1e-4, atol=1e-4)
    assert isinstance(view.shards[0], np.memmap)  # read from disk, not held in RAM

    # A new cache object (a new process) finds everything: nothing to extract.
    again = FeatureCache(tmp_path / "cache", lite0)
    assert again.missing(paintings) == []
    shards = sorted((tmp_path / "cache").rglob("shard-*.npy"))

    # A changed image file is re-extracted, and only that one.
    flipped = load_image(paintings[0]).transpose(0)
    flipped.save(paintings[0])
    assert again.missing(paintings) == [paintings[0]]
    again.extract(paintings, num_workers=0, progress=False)
    assert len(sorted((tmp_path / "cache").rglob("shard-*.npy"))) == len(shards) + 1
    assert not np.allclose(again.view(paintings[:1])[0], direct[0])


def test_cache_reports_unreadable_images(lite0, paintings, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(paintings[0].read_bytes()[:500])
    failures = FeatureCache(tmp_path / "c", lite0).extract([*paintings[:2], bad], num_workers=0, progress=False)
    assert list(failures) == [bad] and "broken.jpg" in failures[bad]


def test_different_size_or_weights_is_a_different_cache(tmp_path):
    a = create_encoder("efficientnet-lite0", image_size=128)
    b = create_encoder("efficientnet-lite0", image_size=224)
    c = create_encoder("efficientnet-lite0", weights="random", image_size=128)
    assert len({a.key, b.key, c.key}) == 3


def test_weights_from_file_and_random_only_by_name(tmp_path):
    from safetensors.torch import save_file

    random_xception = create_encoder("xception", weights="random")
    assert random_xception.image_size == 128 and random_xception.feature_dim == 2048
    path = tmp_path / "xception.safetensors"
    save_file({k: v.contiguous() for k, v in random_xception.model.state_dict().items()}, str(path))
    loaded = create_encoder("xception", weights=path)
    x = torch.randint(0, 255, (1, 3, 128, 128), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.allclose(loaded(x).pooled, random_xception(x).pooled)
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    with pytest.raises(ArtcapError, match="junk.safetensors: unreadable weights"):
        create_encoder("xception", weights=tmp_path / "junk.safetensors")
    with pytest.raises(ArtcapError, match="unknown encoder"):
        create_encoder("vgg-nope")


def test_offline_download_fails_with_one_clear_line(tmp_path):
    """The hub download is a real feature; offline it must fail clearly, never fall back to random."""
    code = (
        "from artcap.encoders import create_encoder\n"
        "from artcap.errors import ArtcapError\n"
        "try:\n    create_encoder('xception')\nexcept ArtcapError as e:\n    print('ERR', e)\n"
        "else:\n    print('DOWNLOADED')\n"
    )
    # Point the downloads at a dead local proxy and an empty cache, so the test is offline anywhere.
    env = {"PATH": "/usr/bin:/bin", "TORCH_HOME": str(tmp_path), "HF_HOME": str(tmp_path),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "HF_HUB_DISABLE_XET": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("ERR could not download ImageNet weights for xception"), out
    assert "--encoder-weights FILE" in out
