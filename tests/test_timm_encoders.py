"""`timm:<name>` reads vision transformers too: their patch tokens become the grid, offline (random weights)."""

from __future__ import annotations

import pytest
import torch

from artcap.encoders import as_grid, create_encoder
from artcap.errors import ArtcapError
from artcap.features import FeatureSpec, pooled_vectors


@pytest.fixture(scope="module")
def vit():
    return create_encoder("timm:vit_tiny_patch16_224", weights="random", image_size=64)


def test_a_vision_transformer_gives_a_grid_of_its_patches_and_their_mean(vit):
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    out = vit(images)
    assert out.grid.shape == (2, 192, 4, 4) and out.pooled.shape == (2, 192)  # 64 px / 16 px patches
    tokens = vit.model.forward_features((images.float() / 255 - vit.mean) / vit.std)
    assert tokens.shape == (2, 1 + 16, 192)  # the class token first
    torch.testing.assert_close(out.pooled, tokens[:, 1:].mean(dim=1))  # the class token is not a patch
    grid = FeatureSpec("grid", 2).select(out)
    assert grid.shape == (2, 4, 192)
    torch.testing.assert_close(pooled_vectors(grid), out.pooled, rtol=1e-4, atol=1e-5)


def test_native_size_and_a_channels_last_transformer():
    native = create_encoder("timm:vit_tiny_patch16_224", weights="random")
    assert native.image_size == 224 and native(torch.zeros(1, 3, 224, 224, dtype=torch.uint8)).grid.shape[-1] == 14
    swin = create_encoder("timm:swin_tiny_patch4_window7_224", weights="random", image_size=64)  # gives [B, h, w, C]
    out = swin(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert out.grid.shape == (1, 768, 2, 2) and out.pooled.shape == (1, 768)


def test_features_that_are_neither_a_map_nor_square_tokens_are_refused():
    channels_last = torch.zeros(2, 3, 3, 8)
    assert as_grid(channels_last, 8).shape == (2, 8, 3, 3)
    with pytest.raises(ArtcapError, match=r"features have shape \[2, 5, 8\]"):
        as_grid(torch.zeros(2, 5, 8), 8, prefix_tokens=0, name="timm:x")
