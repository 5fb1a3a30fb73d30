"""A small landscape "painting" drawn entirely by this code, so the project can ship and caption
an example image it owns (the training images are for research use only).

    python -m artcap.example OUT.jpg [--size 384]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_SEED = 1874  # the first Impressionist exhibition; any fixed seed keeps the picture identical


def draw_example_painting(size: int = 384) -> Image.Image:
    """A deterministic size x size RGB landscape at sunset: sky, sun, mountains, hills, a lake
    with the reflection, a few pine trees, and brush-stroke texture from a seeded RNG."""
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    rng = np.random.default_rng(_SEED)  # one generator drawn in a fixed order: ridges, strokes, trees
    horizon = int(0.62 * size)  # the lake's shoreline
    canvas = _paint_ridges(_paint_sky(size, horizon), size, horizon, rng)
    canvas = _paint_lake(canvas, size, horizon)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    _brush_strokes(draw, np.asarray(image).astype(int), size, horizon, rng)
    _pine_trees(draw, size, horizon, rng)
    draw.line((0, horizon, size, horizon), fill=(236, 200, 160), width=1)  # light on the shoreline
    # A slight softening makes the strokes read as paint rather than pixels.
    return image.filter(ImageFilter.SMOOTH)


def _paint_sky(s: int, horizon: int) -> np.ndarray:
    """Deep blue at the top warming to peach at the horizon, with a glow around the sun."""
    y = np.linspace(0.0, 1.0, s)[:, None]
    x = np.linspace(0.0, 1.0, s)[None, :]
    top, low = np.array([38, 56, 112.0]), np.array([250, 178, 120.0])
    t = np.clip(y / (horizon / s), 0, 1) ** 1.6
    canvas = (top * (1 - t[..., None]) + low * t[..., None]) * np.ones((1, s, 1))
    sun_x, sun_y, sun_r = 0.68, 0.37, 0.06
    distance = np.hypot(x - sun_x, y - sun_y)
    glow = np.exp(-((distance / 0.22) ** 2))[..., None]
    canvas = canvas * (1 - 0.55 * glow) + np.array([255, 214, 150.0]) * 0.55 * glow
    canvas[distance < sun_r] = [255, 236, 190]
    return canvas


def _paint_ridges(canvas: np.ndarray, s: int, horizon: int, rng: np.random.Generator) -> np.ndarray:
    """Two ridges: hazy violet mountains behind, green hills in front."""

    def ridge(base: float, amplitude: float, roughness: float) -> np.ndarray:
        xs = np.linspace(0, 1, s)
        phases = rng.uniform(0, 2 * np.pi, 4)
        line = sum(np.sin(xs * np.pi * f + p) / f for f, p in zip((1.3, 2.9, 6.1, 13.0), phases))
        walk = np.cumsum(rng.normal(0, roughness, s))
        walk -= np.linspace(walk[0], walk[-1], s)  # no drift from left to right
        return (base - amplitude * line - walk) * s

    rows = np.arange(s)[:, None]
    for base, amplitude, roughness, colour, shade in (
        (0.47, 0.085, 0.004, [104, 86, 136], [150, 118, 150]),
        (0.57, 0.035, 0.003, [58, 96, 62], [92, 126, 70]),
    ):
        crest = ridge(base, amplitude, roughness)
        land = (rows >= crest[None, :]) & (rows < horizon)
        depth = np.clip((rows - crest[None, :]) / (0.08 * s), 0, 1)[..., None]
        painted = np.array(shade, float) * (1 - depth) + np.array(colour, float) * depth
        canvas = np.where(land[..., None], painted, canvas)
    return canvas


def _paint_lake(canvas: np.ndarray, s: int, horizon: int) -> np.ndarray:
    """The scene above mirrored, darkened and tinted, rippled row by row."""
    depth_below = s - horizon
    for row in range(horizon, s):
        k = row - horizon
        source_row = max(horizon - 1 - k, 0)
        shift = int(round(2.5 * np.sin(k * 0.9) * (1 + k / depth_below)))
        mirrored = np.roll(canvas[source_row], shift, axis=0)
        fade = 0.62 - 0.22 * k / depth_below
        canvas[row] = mirrored * fade + np.array([30, 54, 92.0]) * (1 - fade)
    return canvas


def _brush_strokes(draw: ImageDraw.ImageDraw, pixels: np.ndarray, s: int, horizon: int,
                   rng: np.random.Generator) -> None:
    """Short dabs in the local colour, horizontal in sky and water."""
    for _ in range(s * 9):
        px, py = int(rng.integers(0, s)), int(rng.integers(0, s))
        jitter = rng.integers(-14, 15, 3)
        colour = tuple(int(c) for c in np.clip(pixels[py, px] + jitter, 0, 255))
        length = rng.uniform(0.012, 0.035) * s * (1.6 if py >= horizon else 1.0)
        angle = rng.normal(0, 0.1 if py >= horizon else 0.22)
        dx, dy = length * np.cos(angle), length * np.sin(angle)
        draw.line((px - dx, py - dy, px + dx, py + dy), fill=colour, width=max(1, s // 128))


def _pine_trees(draw: ImageDraw.ImageDraw, s: int, horizon: int, rng: np.random.Generator) -> None:
    """Pine trees on the near shore, each a stack of dark triangles with its reflection."""
    for tree_x in sorted(rng.uniform(0.06, 0.42, 5)):
        height = rng.uniform(0.10, 0.17) * s
        cx, base_y = tree_x * s, horizon + 1
        green = tuple(int(c) for c in rng.integers([22, 48, 30], [40, 70, 46]))
        reflected = tuple(int(0.55 * c + 0.45 * w) for c, w in zip(green, (30, 54, 92)))
        draw.rectangle((cx - s / 200, base_y - height * 0.15, cx + s / 200, base_y), fill=(58, 40, 30))
        for tier in range(4):  # tiers widen towards the ground
            top_y = base_y - height * (1 - 0.2 * tier)
            bottom_y = top_y + 0.35 * height
            half = height * (0.12 + 0.05 * tier)
            draw.polygon([(cx, top_y), (cx - half, bottom_y), (cx + half, bottom_y)], fill=green)
            mirror = [(cx, 2 * base_y - top_y), (cx - half, 2 * base_y - bottom_y), (cx + half, 2 * base_y - bottom_y)]
            draw.polygon(mirror, fill=reflected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m artcap.example", description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="where to write the JPEG, e.g. examples/landscape.jpg")
    parser.add_argument("--size", type=int, default=384, help="width and height in pixels (default 384)")
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    draw_example_painting(args.size).save(args.output, "JPEG", quality=92)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
