"""Decoding JPEGs where the image network runs: on a GPU, nvJPEG (torchvision.io.decode_jpeg(device="cuda"))
decodes a whole batch at once and the resize runs there too, so feature extraction is no longer bound by the
CPU's JPEG decoder (docs/benchmarks.md, "On a GPU": the encoder alone was 19-32x faster than extraction).

    images = DeviceJpegDecoder(image_size=224, device="cuda").decode(jpeg_bytes)  # [3, 224, 224] or None each

Only plain JPEGs go this way: 8-bit RGB or grey, no EXIF rotation, within the pixel limit (read from the
header, nothing decoded). Every other file (PNG, CMYK, rotated, too big, broken) and any JPEG the device
decoder refuses are handed back to the caller for the usual CPU path (images.load_image), which names what
is wrong with them, so the set of images and errors is the same either way. The pixels are close to the CPU
path's, not equal (another IDCT, torch's bicubic instead of Pillow's): the features agree within
DEVICE_DECODE_TOLERANCE (tests/test_speed.py).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .images import DEFAULT_MAX_PIXELS

_EXIF_ORIENTATION = 0x0112
# Largest relative difference (L2 norm of the difference / L2 norm) of pooled features between this path
# and the CPU path on real paintings. Measured: tests/test_speed.py prints it.
DEVICE_DECODE_TOLERANCE = 0.05


def device_decoding_available(device: torch.device | str) -> bool:
    """Whether JPEGs can be decoded on `device`: a CUDA device and a torchvision with decode_jpeg."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def plain_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """A JPEG the tensor path decodes to the same picture as images.load_image: 8-bit RGB or grey,
    upright (no EXIF orientation other than 1), within the pixel limit, complete (it ends with the
    end-of-image marker: a GPU decoder may fill a cut file in grey where Pillow refuses it). From the
    header and the last bytes only."""
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return False
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return False
            width, height = image.size
            if not 0 < width * height <= max_pixels:
                return False
            return image.getexif().get(_EXIF_ORIENTATION, 1) == 1
    except Exception:  # not a JPEG, or a header Pillow cannot read: the CPU path says why
        return False


def resize_like_encoder(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, size, size] as the CPU path does: Pillow's draft mode (a JPEG decoded at
    1/2, 1/4 or 1/8 scale when both sides stay >= `size`; here a box average, the closest of torch's filters),
    Encoder.to_array's whole-factor box reduction of very large images (to no less than 3x `size`), then an
    antialiased bicubic squash."""
    x = image.unsqueeze(0).float()
    height, width = image.shape[1:]
    draft = next((s for s in (8, 4, 2) if -(-height // s) >= size and -(-width // s) >= size), 1)
    if draft > 1:
        x = F.avg_pool2d(x, draft, ceil_mode=True, count_include_pad=False)
    factor = min(x.shape[2:]) // (3 * size)
    if factor >= 2:
        x = F.avg_pool2d(x, factor, ceil_mode=True, count_include_pad=False)
    if tuple(x.shape[2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)[0]


@dataclass
class DeviceJpegDecoder:
    """Decodes a batch of encoded JPEGs on `device` and resizes them to the encoder's `image_size`."""

    image_size: int
    device: torch.device | str = "cuda"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def decode(self, items: Sequence[bytes]) -> list[torch.Tensor | None]:
        """Each item (the bytes of a `plain_jpeg`) as uint8 [3, size, size] on the device, or None where the
        device decoder refuses it (the caller decodes that one on the CPU)."""
        return [None if image is None else resize_like_encoder(image, self.image_size)
                for image in self._decode_all(list(items))]

    def _decode_all(self, items: list[bytes]) -> list[torch.Tensor | None]:
        """One batched call; if the device refuses the batch, each item alone (None: refused)."""
        if not items:
            return []
        tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in items]
        try:
            return list(_decode_jpeg(tensors, self.device))
        except RuntimeError:  # one bad or unsupported file fails the whole batch: find it
            out: list[torch.Tensor | None] = []
            for tensor in tensors:
                try:
                    out.append(_decode_jpeg([tensor], self.device)[0])
                except RuntimeError:
                    out.append(None)
            return out


def _decode_jpeg(tensors: list[torch.Tensor], device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # torchvision's deprecation notice
        warnings.simplefilter("ignore", category=DeprecationWarning)
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
