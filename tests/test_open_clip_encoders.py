"""`open_clip:<model>[:<tag>]`: an OpenCLIP image tower as an artcap encoder, offline.

The models here are tiny OpenCLIP configs registered by the test, randomly initialised and saved as
full CLIP checkpoints (image and text towers), as a user's downloaded checkpoint would be. Nothing
touches the network: the download path is run with the hub offline and an empty cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from artcap.cli import main
from artcap.encoders import create_encoder, list_encoders
from artcap.errors import ArtcapError
from artcap.features import FeatureCache, FeatureSpec
from artcap.images import load_image

from conftest import tiny_config

open_clip = pytest.importorskip("open_clip")

TINY_TEXT = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
TINY_MODELS = {
    # a vision transformer: 32 px images, 8 px patches -> a 4x4 grid of 32-d tokens
    "artcap-tiny-vit": {"embed_dim": 16, "text_cfg": TINY_TEXT,
                        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16}},
    # OpenAI's ModifiedResNet: 64 px images -> a 2x2 map of width*32 = 256 channels
    "artcap-tiny-rn": {"embed_dim": 16, "text_cfg": TINY_TEXT,
                       "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32}},
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Registers the tiny configs with open_clip (as its own JSON model configs); returns their folder."""
    folder = tmp_path_factory.mktemp("open-clip-configs")
    for name, config in TINY_MODELS.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return folder


def save_checkpoint(model_name: str, path: Path, seed: int = 0) -> Path:
    """A full CLIP checkpoint (both towers) of random weights, as .safetensors or a torch .pt state dict."""
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in open_clip.create_model(model_name).state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def vit_checkpoint(tiny_models, tmp_path_factory) -> Path:
    return save_checkpoint("artcap-tiny-vit", tmp_path_factory.mktemp("open-clip-weights") / "vit.safetensors")


@pytest.fixture(scope="module")
def paintings(shared_data) -> list:
    folder = shared_data / "artemis-mini" / "wikiart" / "Impressionism"
    return [load_image(p) for p in sorted(folder.glob("*.jpg"))[:3]]


def test_a_vit_tower_gives_its_patch_tokens_as_grid_and_their_mean(vit_checkpoint, paintings, tmp_path):
    encoder = create_encoder("open_clip:artcap-tiny-vit", weights=vit_checkpoint)
    assert (encoder.image_size, encoder.feature_dim) == (32, 32)
    batch = encoder.preprocess(paintings)
    with torch.inference_mode():
        out = encoder(batch)
    assert out.grid.shape == (3, 32, 4, 4) and out.pooled.shape == (3, 32)
    torch.testing.assert_close(out.pooled, out.grid.mean(dim=(2, 3)))

    # The grid is the checkpoint's own tower: its tokens after ln_post, class token dropped, row-major.
    reference = open_clip.create_model("artcap-tiny-vit")
    reference.load_state_dict(load_file(vit_checkpoint))
    x = (batch.float() / 255 - encoder.mean) / encoder.std
    with torch.inference_mode():
        tokens = reference.visual.ln_post(reference.visual.transformer(reference.visual._embeds(x)))
    torch.testing.assert_close(out.grid, tokens[:, 1:].transpose(1, 2).reshape(3, 32, 4, 4), rtol=1e-4, atol=1e-5)

    # Deterministic by name + checkpoint, whichever format carries it; another checkpoint differs.
    as_pt = save_checkpoint("artcap-tiny-vit", tmp_path / "vit.pt")
    other = save_checkpoint("artcap-tiny-vit", tmp_path / "other.safetensors", seed=1)
    with torch.inference_mode():
        again = create_encoder("open_clip:artcap-tiny-vit", weights=as_pt)(batch)
        different = create_encoder("open_clip:artcap-tiny-vit", weights=other)(batch)
    torch.testing.assert_close(again.grid, out.grid)
    assert not torch.allclose(different.pooled, out.pooled, atol=1e-3)
    key = create_encoder("open_clip:artcap-tiny-vit", weights=as_pt).key
    assert key.startswith("open_clip:artcap-tiny-vit-sha256-")  # the feature cache tells checkpoints apart


def test_another_image_size_resamples_the_position_embeddings(vit_checkpoint, paintings):
    encoder = create_encoder("open_clip:artcap-tiny-vit", weights=vit_checkpoint, image_size=64)
    with torch.inference_mode():
        out = encoder(encoder.preprocess(paintings[:1]))
    assert encoder.image_size == 64 and out.grid.shape == (1, 32, 8, 8)
    assert torch.isfinite(out.grid).all()


def test_a_conv_tower_gives_its_last_map(tiny_models, paintings, tmp_path):
    checkpoint = save_checkpoint("artcap-tiny-rn", tmp_path / "rn.pt")
    encoder = create_encoder("open_clip:artcap-tiny-rn", weights=checkpoint)
    with torch.inference_mode():
        out = encoder(encoder.preprocess(paintings))
    assert out.grid.shape == (3, 256, 2, 2) and out.pooled.shape == (3, 256)
    torch.testing.assert_close(out.pooled, out.grid.mean(dim=(2, 3)))
    # A conv tower reads any size (its attention pool, which is fixed to one, is not used).
    big = create_encoder("open_clip:artcap-tiny-rn", weights=checkpoint, image_size=128)
    with torch.inference_mode():
        assert big(big.preprocess(paintings[:1])).grid.shape == (1, 256, 4, 4)


def test_the_tags_normalisation_and_resize_filter_are_used():
    """A published tag's own preprocessing (MobileCLIP: no mean/std, bilinear), no download for random weights."""
    encoder = create_encoder("open_clip:MobileCLIP-S1:datacompdr", weights="random", image_size=64)
    assert encoder.mean.flatten().tolist() == [0.0, 0.0, 0.0] and encoder.std.flatten().tolist() == [1.0, 1.0, 1.0]
    assert encoder.resample == 2  # PIL's BILINEAR
    assert encoder.feature_dim == 512  # FastViT's last stage, before MobileCLIP's final conv and projection
    # OpenAI's weights were trained with QuickGELU, which ViT-B-32's own config does not say: the tag does.
    from open_clip.transformer import QuickGELU

    openai = create_encoder("open_clip:ViT-B-32:openai", weights="random", image_size=64)
    assert any(isinstance(m, QuickGELU) for m in openai.modules())
    assert "open_clip:<model>[:<pretrained tag>]" in list_encoders()


@pytest.mark.parametrize("name, weights, message", [
    ("open_clip:no-such-model", "random", "open_clip has no model 'no-such-model'"),
    ("open_clip:hf-hub:org/repo", "random", "OpenCLIP's own model names.*--encoder-weights FILE"),
    ("open_clip:ViT-B-32:no_such_tag", None, "no pretrained weights 'no_such_tag' for ViT-B-32 .*laion2b_s34b_b79k"),
    ("open_clip:ViT-B-32", None, r"names no pretrained weights: use open_clip:ViT-B-32:<tag> .*--encoder-weights FILE"),
    ("open_clip:ViT-B-32:", None, "spell it open_clip:<model>"),
    ("open_clip:artcap-tiny-vit", "missing.safetensors", "missing.safetensors: encoder weights file not found"),
])
def test_names_and_weights_it_cannot_use_are_one_line(tiny_models, name, weights, message, tmp_path):
    if weights and weights.endswith(".safetensors"):
        weights = str(tmp_path / weights)
    with pytest.raises(ArtcapError, match=message) as caught:
        create_encoder(name, weights=weights)
    assert "\n" not in str(caught.value)


def test_weights_of_another_model_are_refused(tiny_models, tmp_path):
    rn = save_checkpoint("artcap-tiny-rn", tmp_path / "rn.safetensors")
    with pytest.raises(ArtcapError, match=r"rn.safetensors: not weights of encoder open_clip:artcap-tiny-vit"):
        create_encoder("open_clip:artcap-tiny-vit", weights=rn)


def test_without_the_extra_installed_it_says_which_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # what `import open_clip` meets when it is not installed
    with pytest.raises(ArtcapError, match=r"needs OpenCLIP, which is not installed; run: pip install 'artcap\[clip\]'"):
        create_encoder("open_clip:ViT-B-32:laion2b_s34b_b79k")


def test_offline_the_download_is_one_line_naming_the_encoder_and_the_local_file_option(artemis_subset, tmp_path):
    csv_path, images = artemis_subset
    # The hub in offline mode, an empty cache and a dead proxy: this test never reaches the network.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg"), "ARTCAP_CACHE": str(tmp_path / "artcap"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "artcap", "features", "--data", str(csv_path), "--images", str(images),
                           "--encoder", "open_clip:ViT-B-32:laion2b_s34b_b79k", "--cache", str(tmp_path / "cache")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("artcap: error: could not download the weights of open_clip:ViT-B-32:laion2b_s34b_b79k "
                               "from the Hugging Face repo laion/CLIP-ViT-B-32-laion2B-s34B-b79K"), lines[0]
    assert "--encoder-weights FILE" in lines[0]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))  # nothing random cached


@pytest.mark.slow
def test_features_and_training_on_real_paintings_with_a_local_checkpoint(tiny_models, vit_checkpoint, artemis_subset,
                                                                          tmp_path, monkeypatch):
    """`artcap features` fills the grid cache (what attention decoders read) with the tower's features; a
    captioner trains on its pooled vectors, and the model folder carries the image tower (not the text
    tower), so it captions without the user's checkpoint."""
    from artcap.captioner import Captioner
    from artcap.train import train

    monkeypatch.setenv("ARTCAP_CACHE", str(tmp_path / "artcap"))  # where the ONNX export goes
    csv_path, images = artemis_subset
    cache, name = tmp_path / "features", "open_clip:artcap-tiny-vit"
    code = main(["-q", "features", "--data", str(csv_path), "--images", str(images), "--encoder", name,
                 "--encoder-weights", str(vit_checkpoint), "--cache", str(cache), "--set", "decoder.kind=sat"])
    assert code == 0

    encoder = create_encoder(name, weights=vit_checkpoint)
    spec = FeatureSpec("grid", 7)
    index = json.loads((cache / encoder.key / spec.folder / "index.json").read_text())
    paths = [Path(p) for p in sorted(index["files"])[:2]]
    assert len(index["files"]) > 100 and FeatureCache(cache, encoder, spec).missing(paths) == []
    with torch.inference_mode():
        decoded = [load_image(p, min_size=encoder.image_size) for p in paths]  # as extraction decodes them
        direct = spec.select(encoder(encoder.preprocess(decoded))).numpy()
    cached = FeatureCache(cache, encoder, spec).view(paths)[np.arange(2)]
    np.testing.assert_allclose(cached, direct, atol=1e-2)  # the cache stores grids as float16

    run = train(tiny_config(artemis_subset, cache, tmp_path / "run", encoder=name, encoder_weights=str(vit_checkpoint),
                            epochs=1, steps_per_epoch=5), progress=False)  # the merge decoder: pooled features
    shipped = load_file(next(run.rglob("encoder.safetensors")))
    assert shipped and all(k.startswith("visual.") for k in shipped)  # the text tower stays behind
    vit_checkpoint_copy = tmp_path / "moved.safetensors"
    vit_checkpoint.rename(vit_checkpoint_copy)  # the model folder must not need the user's file any more
    try:
        captions = Captioner.load(run).caption([load_image(p) for p in paths])
    finally:
        vit_checkpoint_copy.rename(vit_checkpoint)
    assert len(captions) == 2 and all(isinstance(c, str) and c.strip() for c in captions)
