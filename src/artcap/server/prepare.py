"""Turn uploaded bytes into the model's input right away, keeping only the upload's real size.

A flat 6300x6300 PNG is 131 KB on the wire but 119 MB decoded; holding such images in the
caption queue is what made a burst of uploads cost gigabytes. Here the full-size pixels live
only inside `prepare_image` (JPEGs are not even decoded at full size: Pillow's draft mode
decodes at the smallest 1/2, 1/4, 1/8 scale that keeps the model's input size), and what waits
for the model is a small uint8 array, exactly what `artcap caption` would feed it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image

from artcap.images import ImageLoadError, image_format, load_image
from artcap.server.errors import ApiError

if TYPE_CHECKING:
    from artcap.encoders import Encoder

# The formats as the API reports them (Pillow's names, WebP spelt as people write it).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF")
# EXIF orientations that turn the picture a quarter: its upright width is the stored height.
_QUARTER_TURNS = {5, 6, 7, 8}


@dataclass(frozen=True)
class PreparedImage:
    pixels: np.ndarray  # the encoder's input, uint8 HWC (e.g. 224x224x3)
    width: int  # the upload's real, upright size, not the reduced one
    height: int
    format: str


def prepare_image(data: bytes, filename: str | None, max_pixels: int, encoder: Encoder) -> PreparedImage:
    """Check the format, decode (load_image refuses too many pixels from the header, before
    decoding any) and shrink to the encoder's input at once. Runs in a worker thread."""
    label = filename or "the upload"
    try:  # the format is judged from the bytes: the file name and Content-Type are not trusted
        image = load_image(data, max_pixels=max_pixels, name=label, min_size=encoder.image_size)
    except ImageLoadError as err:
        raise ApiError(_status(err.reason), str(err)) from None
    pillow_format = image_format(data) or "unknown"
    try:
        pixels = encoder.to_array(image)
    finally:
        image.close()  # the full-size pixels go now, not when the garbage collector gets to them
    width, height = _upright_size(data, fallback=(image.width, image.height))
    reported = {"MPO": "JPEG", "WEBP": "WebP"}.get(pillow_format, pillow_format)
    return PreparedImage(pixels, width, height, reported)


def _status(reason: str) -> int:
    if reason.startswith(("not an image", "unsupported format")):
        return 415
    return 413 if reason.startswith("too many pixels") else 422


def _upright_size(data: bytes, fallback: tuple[int, int]) -> tuple[int, int]:
    """The stored size from the header (no pixels decoded), turned as load_image turned it."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            orientation = _orientation(header)
    except Exception:  # load_image already read this header, so this is only belt and braces
        return fallback
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # unreadable EXIF: load_image kept the stored orientation too
        return None
