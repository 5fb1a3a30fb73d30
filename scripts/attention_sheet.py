"""Contact sheets of where the `sat` model looks: portraits and landscapes from artemis-mini's val and test paintings,
one row per painting (the painting, then the map of each content word), its caption under the row.

    python scripts/attention_sheet.py [--model sat] [--data CSV] [--images DIR] [--out docs/images]

Writes sat-attention-portraits.png and sat-attention-landscapes.png, and prints a markdown table of how focused
each caption's maps are: a word's map is a distribution over the g x g grid; "peak" is its largest cell over the
uniform share (1 = flat, g*g = all on one cell), "spread" its entropy over the uniform's (1 = flat, 0 = one cell).
The paintings are chosen by title ("portrait" / "landscape"), never by how the maps look.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from artcap.captioner import Captioner
from artcap.decode import STOP_WORDS
from artcap.explain import upsampled_map
from artcap.io import atomic_write_bytes
from artcap.checkpoint import read_splits

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("portrait", "landscape")
PER_SPLIT = 3  # paintings of each kind from each of val and test: 12 in all
WORDS_SHOWN = 5
PANEL_INCHES, DPI = 1.4, 72


def chosen_paintings(splits: dict, kind: str) -> list[str]:
    """The first PER_SPLIT val and test paintings (sorted ids) whose title names the kind."""
    return [p for split in ("val", "test") for p in sorted(i for i in splits[split] if kind in i.lower())[:PER_SPLIT]]


def focus(weights: np.ndarray) -> tuple[float, float]:
    """(peak over uniform, entropy over the uniform's) of one word's attention distribution."""
    cells = weights.size
    entropy = -float(np.sum(weights * np.log(np.clip(weights, 1e-12, None))))
    return float(weights.max()) * cells, entropy / np.log(cells)


def content_words(words: list[str]) -> list[int]:
    """Indices of the caption's content words (the ones a map can be about), at most WORDS_SHOWN."""
    return [i for i, w in enumerate(words) if w not in STOP_WORDS][:WORDS_SHOWN]


def draw_sheet(rows: list[tuple[str, Image.Image, object]], grid_size: int) -> bytes:
    """One PNG (256 colours): per painting a row of panels and its caption under the row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + WORDS_SHOWN
    fig = plt.figure(figsize=(columns * PANEL_INCHES, len(rows) * PANEL_INCHES * 1.3), dpi=DPI)
    for subfig, (painting, image, description) in zip(fig.subfigures(len(rows), 1), rows):
        axes = subfig.subplots(1, columns)
        subfig.subplots_adjust(left=0.01, right=0.99, wspace=0.04, top=0.86, bottom=0.13)
        picture = image.convert("RGB")
        picture.thumbnail((160, 160))
        pixels = np.asarray(picture)
        for ax in axes:
            ax.axis("off")
        axes[0].imshow(pixels)
        axes[0].set_title(painting.split("/")[-1][:24], fontsize=6)
        for ax, i in zip(axes[1:], content_words(description.words)):
            weights = description.attention[i]
            ax.imshow(pixels)
            ax.imshow(upsampled_map(weights, grid_size, picture.size), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(f"{description.words[i]}  x{focus(weights)[0]:.1f}", fontsize=7)
        subfig.supxlabel(description.caption, fontsize=8, y=0.01)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    out = io.BytesIO()
    Image.open(buffer).convert("RGB").quantize(256).save(out, format="PNG", optimize=True)
    return out.getvalue()


def focus_table(kind: str, rows: list[tuple[str, Image.Image, object]]) -> list[str]:
    lines = []
    for painting, _, description in rows:
        stats = np.array([focus(description.attention[i]) for i in content_words(description.words)])
        peak, spread = stats.mean(axis=0) if len(stats) else (float("nan"), float("nan"))
        lines.append(f"| {kind} | {painting} | {description.caption} | {peak:.1f} | {spread:.2f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sat", help="a shipped model's name or a model folder (attention decoder)")
    parser.add_argument("--images", type=Path, default=ROOT / "../shared/data/artemis-mini/wikiart")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--prefix", default="sat-attention", help="file names: PREFIX-portraits.png, ...")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a dozen images: extra threads only contend on a shared machine
    captioner = Captioner.load(args.model)
    splits = read_splits(captioner.folder.path / "splits.json")
    grid_size = captioner.feature_spec.grid_size
    table = ["| kind | painting | caption | peak | spread |", "|---|---|---|---:|---:|"]
    for kind in KINDS:
        paintings = chosen_paintings(splits, kind)
        images = [Image.open(args.images / f"{p}.jpg") for p in paintings]
        descriptions = captioner.describe(images, with_attention=True)
        rows = list(zip(paintings, images, descriptions))
        atomic_write_bytes(args.out / f"{args.prefix}-{kind}s.png", draw_sheet(rows, grid_size))
        table += focus_table(kind, rows)
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
