"""Pictures of where each word of a caption looked: the painting, then one small panel per word with
its attention map laid over the painting as a heat map (attention decoders only).

    error = write_explanation(Path("a.jpg"), description, grid_size=7, folder=Path("explain"))

A picture is named after its image (names.encode_name of the file name, then `.png`) and carries a
PNG text chunk `artcap` = `explain`: a file of that name is replaced only when it is such a picture,
so a file artcap did not write is never overwritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from . import __version__
from .errors import ArtcapError
from .io import atomic_path
from .names import clean_text, encode_name

MARKER_KEY, MARKER_VALUE = "artcap", "explain"  # the PNG text chunk that says artcap drew the picture
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
        ax.set_title(clean_text(word), fontsize=10)
    fig.suptitle(clean_text(description.caption), fontsize=10, wrap=True)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": f"artcap {__version__}", MARKER_KEY: MARKER_VALUE})
    finally:
        plt.close(fig)


def explanation_path(image: Path, folder: Path) -> Path:
    return folder / f"{encode_name(image.name)}.png"


def is_explanation(path: Path) -> bool:
    """Whether `path` is a picture artcap drew (a PNG with artcap's text chunk); read only, never changed."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with Image.open(path) as picture:
            return picture.format == "PNG" and picture.text.get(MARKER_KEY) == MARKER_VALUE
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def write_explanation(image: Path, description, grid_size: int, folder: Path) -> str | None:
    """Draw the picture for `image` into `folder`; None, or a one-line error naming the picture (a file
    there that artcap did not draw, a folder that cannot be written, a full disk)."""
    from .images import load_image

    path = explanation_path(image, folder)
    if (path.exists() or path.is_symlink()) and not is_explanation(path):
        return (f"{encode_name(path)}: exists and artcap did not write it, so artcap leaves it as it is; move it "
                f"away or choose another --explain folder")
    try:
        save_attention_figure(load_image(image), description, grid_size, path)
    except ArtcapError as e:  # the image went away, or a full disk
        return clean_text(str(e))
    except OSError as e:
        return f"{encode_name(path)}: cannot write the picture ({e.strerror or e}); choose another --explain folder"
    return None
