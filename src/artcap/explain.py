"""Pictures of where each word of a caption looked: the painting, then one small panel per word with
its attention map laid over the painting as a heat map (attention decoders only).

    save_attention_figure(image, description, grid_size=7, path="explain/painting.png")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .io import atomic_path

PANEL_INCHES = 1.9
COLUMNS = 5


def upsampled_map(weights: np.ndarray, grid_size: int, size: tuple[int, int]) -> np.ndarray:
    """A word's g*g weights as a smooth map of the image's size (bilinear), scaled to 0..1 for display."""
    grid = weights.reshape(grid_size, grid_size).astype(np.float32)
    grid = grid / max(float(grid.max()), 1e-12)
    return np.asarray(Image.fromarray(grid, mode="F").resize(size, Image.BILINEAR))


def save_attention_figure(image: Image.Image, description, grid_size: int, path: str | Path) -> None:
    """One PNG: the painting with its caption, then a panel per word (word as title, map over the painting)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    picture = image.convert("RGB")
    picture.thumbnail((256, 256))
    pixels = np.asarray(picture)
    panels = 1 + len(description.words)
    rows = -(-panels // COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(COLUMNS * PANEL_INCHES, rows * PANEL_INCHES * 1.1), dpi=100,
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(pixels)
    axes.flat[0].set_title("painting", fontsize=9)
    for ax, word, weights in zip(axes.flat[1:], description.words, description.attention):
        ax.imshow(pixels)
        ax.imshow(upsampled_map(weights, grid_size, picture.size), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(word, fontsize=10)
    fig.suptitle(description.caption, fontsize=10, wrap=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
