"""Turn any image a user hands us (a file, bytes, a PIL image, a numpy array) into a fully decoded
8-bit RGB picture, or refuse it in one line.

Only the formats docs/images.md lists are read (ACCEPTED_FORMATS), whatever the file is called.
Every failure (missing, empty, not an image, another format, truncated, too big, odd colour mode,
an array of the wrong shape or type) becomes an `ImageLoadError`; no Pillow exception or warning
reaches the caller.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from artcap.errors import ArtcapError
from artcap.names import clean_text
from artcap.paths import walk_folder

DEFAULT_MAX_PIXELS = 40_000_000
"""Refuse images with more pixels than this (decompression-bomb guard; ~160 MB as decoded RGBA)."""

ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
"""Pillow format names of the only formats artcap decodes (told by content, never by file name).
The rest of Pillow's ~40 readers (EPS via Ghostscript, ICO, PCX, TGA, JPEG 2000, ...) stay unused:
less untrusted-file surface, and one list the docs, the CLI and the web app share."""

ACCEPTED_FORMATS_TEXT = "JPEG, PNG, WebP, BMP, TIFF or GIF"
"""ACCEPTED_FORMATS as people write them, for messages."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
"""Suffixes (lower-case, with dot) that `find_images` picks up inside folders."""

_HINTS = {
    "file not found": "check the path",
    "is a folder": "pass an image file, or use the folder as an input to search it for images",
    "permission denied": "make the file readable",
    "zero bytes": "the file is empty; re-download or re-export it",
    "not an image": f"artcap reads {ACCEPTED_FORMATS_TEXT}; open it in an image viewer, or re-save it as JPEG or PNG",
    "unsupported format": f"artcap reads {ACCEPTED_FORMATS_TEXT}; re-save it as JPEG or PNG",
    "truncated or corrupt": "the file is incomplete or damaged; re-download or re-export it",
    "unsupported colour mode": "re-save it as an 8-bit RGB JPEG or PNG",
}

# Modes holding more than 8 bits per sample; scaled (not clipped) to 8-bit grey.
_HIGH_BIT_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_EXIF_ORIENTATION = 0x0112

# warnings.catch_warnings() swaps the process-wide filter list and is not thread-safe before
# Python 3.14; the lock keeps concurrent loads (e.g. web-server worker threads) from
# restoring each other's filters.
_WARNINGS_LOCK = threading.Lock()


class ImageLoadError(ArtcapError):
    """An image that cannot be used. `source` names the file (or given name), `reason` says why."""

    def __init__(self, source: str, reason: str, hint: str | None = None) -> None:
        self.source = source
        self.reason = reason
        if hint is None:
            hint = next((h for key, h in _HINTS.items() if reason.startswith(key)), None)
        self.hint = hint
        # always one line; the name through names.clean_text (a tab in it shows as \t, not as a space)
        super().__init__(f"{clean_text(source)}: " + " ".join((reason + (f"; {hint}" if hint else "")).split()))

    def __reduce__(self):  # keep picklable across worker processes
        return (type(self), (self.source, self.reason, self.hint))


def load_image(
    source: str | os.PathLike | bytes | BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    min_size: int | None = None,
) -> Image.Image:
    """Decode `source` (a path, raw bytes or a binary stream) to an 8-bit RGB image.

    EXIF orientation is applied, transparency is composited over white, CMYK / grey / palette /
    16-bit images are converted, and only the first frame of an animation is kept. Images with
    more than `max_pixels` pixels are refused from their header, before any pixel is decoded.
    Raises ImageLoadError (an ArtcapError) for anything that is not a usable image.

    `min_size`: the caller will shrink the image to this size anyway, so a JPEG may be decoded at
    the smallest of its built-in 1/2, 1/4, 1/8 scales that keeps both sides >= min_size (Pillow's
    draft mode): several times faster for large photographs.
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    label = name if name is not None else _source_label(source)

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            if path.is_dir():
                raise ImageLoadError(label, "is a folder")
            with open(path, "rb") as fp:
                if os.fstat(fp.fileno()).st_size == 0:
                    raise ImageLoadError(label, "zero bytes")
                return _decode(fp, label, max_pixels, min_size)
        except FileNotFoundError:
            raise ImageLoadError(label, "file not found") from None
        except PermissionError:
            raise ImageLoadError(label, "permission denied") from None
        except IsADirectoryError:
            raise ImageLoadError(label, "is a folder") from None
        except OSError as e:  # e.g. an I/O error on a failing disk or network share
            raise ImageLoadError(label, f"cannot read the file ({e.strerror or e})") from None

    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else source.read()
    if not data:
        raise ImageLoadError(label, "zero bytes")
    return _decode(io.BytesIO(data), label, max_pixels, min_size)


def image_format(data: bytes) -> str | None:
    """The Pillow name of the format of an encoded image (one of ACCEPTED_FORMATS: "JPEG" ... "GIF";
    "MPO" for multi-picture JPEGs), read from its header only, or None when artcap does not read it.
    For callers that must answer before decoding (the web app's 415), using the same readers as
    `load_image`."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                return image.format
        except Exception:  # not an accepted format, or a broken header: load_image says which
            return None


def to_rgb_image(
    image: str | os.PathLike | bytes | Image.Image | np.ndarray,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int | None = None,
) -> Image.Image:
    """The one way an image of any kind becomes 8-bit RGB, so that a painting gives the same pixels
    (and caption) however it is handed over:

    - a path or bytes: decoded by `load_image` (accepted formats only);
    - a PIL image: EXIF orientation, 16-bit scaling, CMYK and transparency handled as for files;
    - a numpy array: uint8 HxW (grey), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA, composited over white).

    The caller's image or array is never modified. Anything else raises ImageLoadError saying
    what is accepted. `name` labels the image in messages (default: the path, or "image").
    """
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        return load_image(image, max_pixels=max_pixels, name=name, min_size=min_size)
    label = name or "image"
    if isinstance(image, np.ndarray):
        image = _array_to_image(image, label)
    elif not isinstance(image, Image.Image):
        raise ImageLoadError(
            label, f"cannot caption a {type(image).__name__}",
            "pass a file path, a PIL image or a uint8 numpy array (HxWx3 RGB, HxW grey or HxWx4 RGBA)",
        )
    return _normalise_pil(image, label, max_pixels)


def single_input_folder(inputs: Sequence[str | os.PathLike]) -> Path | None:
    """The folder a job's names are relative to (record keys, --xmp-dir's mirror): its input when that is
    exactly one folder, else None (several inputs keep their paths as given, so names cannot collide)."""
    inputs = list(inputs)
    return Path(inputs[0]) if len(inputs) == 1 and Path(inputs[0]).is_dir() else None


@dataclass
class ImageListing:
    """What a list of inputs holds: `paths`, every image found (in order), of which `refused` could not
    be read as found (a broken or looping link, a link out of its folder, a FIFO...: path -> why), and
    `input_errors`, one per input that yields nothing (a missing path, a folder without images)."""

    paths: list[Path] = field(default_factory=list)
    refused: dict[Path, str] = field(default_factory=dict)
    input_errors: list[ImageLoadError] = field(default_factory=list)

    def refusal(self, path: Path) -> ImageLoadError:
        return ImageLoadError(str(path), self.refused[path], hint="")


def list_images(inputs: Sequence[str | Path], recursive: bool = False) -> ImageListing:
    """Expand files and folders into a deterministic list of images, accounting for every entry.

    A folder contributes every entry whose suffix is in IMAGE_EXTENSIONS (any case), sorted, through
    `paths.walk_folder`: one that cannot be read (a broken or looping link, a link leading out of the
    folder, a FIFO, socket or device) is listed in `refused`, never skipped. With `recursive` the
    folder is searched through all sub-folders. A file named explicitly is kept whatever its suffix
    (if it is not an image, `load_image` says so). Duplicates keep their first place.
    """
    listing = ImageListing()
    seen: set[Path] = set()

    def add(path: Path, problem: str | None = None) -> None:
        key = path.resolve() if problem is None else path.absolute()
        if key not in seen:
            seen.add(key)
            listing.paths.append(path)
            if problem is not None:
                listing.refused[path] = problem

    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            try:
                entries = walk_folder(path, recursive=recursive, wanted=is_image_name)
            except OSError as e:  # e.g. a folder without read permission
                listing.input_errors.append(ImageLoadError(str(raw), f"cannot read the folder ({e.strerror or e})"))
                continue
            if not entries:
                listing.input_errors.append(_no_images_error(path, recursive))
            for entry in entries:
                add(entry.path, entry.problem)
        elif path.is_file():
            add(path)
        elif path.exists():
            listing.input_errors.append(ImageLoadError(str(raw), "not a file or folder", "pass an image file or a folder"))
        else:
            listing.input_errors.append(ImageLoadError(str(raw), "file not found", "check the path"))
    return listing


def find_images(
    inputs: Sequence[str | Path], recursive: bool = False
) -> tuple[list[Path], list[ImageLoadError]]:
    """`list_images` as (readable image paths, one error per input that yields nothing and per image
    that cannot be read), for callers that report both the same way."""
    listing = list_images(inputs, recursive)
    readable = [p for p in listing.paths if p not in listing.refused]
    return readable, [*listing.input_errors, *(listing.refusal(p) for p in listing.refused)]


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _no_images_error(folder: Path, recursive: bool) -> ImageLoadError:
    has_subfolders = not recursive and any(p.is_dir() for p in _children(folder))
    hint = ("it has sub-folders: search them with the recursive option" if has_subfolders
            else f"images must end in {', '.join(sorted(IMAGE_EXTENSIONS))}")
    return ImageLoadError(str(folder), "no images found in this folder", hint)


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


# --------------------------------------------------------------------------------------------


def _source_label(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    stream_name = getattr(source, "name", None)
    return stream_name if isinstance(stream_name, str) else "<stream>"


def _decode(fp: BinaryIO, label: str, max_pixels: int, min_size: int | None = None) -> Image.Image:
    # Pillow reports oddities (huge sizes, corrupt EXIF, palette transparency) as warnings;
    # each is either checked by us or harmless, so none may leak to the caller.
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(fp, formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            other = _other_format(fp)
            reason = f"unsupported format (looks like {other})" if other else "not an image"
            raise ImageLoadError(label, reason) from None
        except Image.DecompressionBombError as e:
            # Above twice Image.MAX_IMAGE_PIXELS Pillow refuses on its own, whatever max_pixels is.
            reason = _too_many_pixels_reason(e, max_pixels)
            raise ImageLoadError(label, reason, "downscale it before captioning") from None
        except Exception:  # a recognised format with a broken header
            raise ImageLoadError(label, "truncated or corrupt") from None

        width, height = image.size
        if width * height > max_pixels:  # header only: nothing decoded yet
            raise ImageLoadError(
                label,
                f"too many pixels ({width * height:,} > {max_pixels:,})",
                f"it is {width}x{height}; downscale it or raise the pixel limit",
            )
        if min_size:
            image.draft(None, (min_size, min_size))  # JPEG only; a no-op for other formats
        try:
            image.load()  # the first frame of an animation; raises on truncated data
        except Exception:
            raise ImageLoadError(label, "truncated or corrupt") from None
        try:
            ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of a big photo
        except Exception:
            pass  # unreadable EXIF: keep the stored orientation rather than refuse the picture
        try:
            rgb = _to_rgb(image)
        except Exception:
            raise ImageLoadError(label, f"unsupported colour mode ({image.mode})") from None
        # An RGB animation is still tied to its (soon closed) file; hand back a plain frame.
        return rgb.copy() if rgb is image and getattr(image, "n_frames", 1) > 1 else rgb


def _other_format(fp: BinaryIO) -> str | None:
    """Guess the Pillow format a refused file is in (for the message), from its first bytes only:
    only the readers' signature checks run, never a reader (EPS would start Ghostscript). Some
    signatures are weak (a TGA passes CUR's), hence "looks like" in the message."""
    try:
        fp.seek(0)
        prefix = fp.read(16)
        Image.init()
        for name in Image.ID:
            accept = Image.OPEN[name][1]
            if name not in ACCEPTED_FORMATS and accept is not None and accept(prefix) is True:
                return name
    except Exception:  # a signature check that chokes on odd bytes just means "no name"
        pass
    return None


_ARRAY_HINT = (
    "pass uint8 arrays of shape HxWx3 (RGB), HxW (grey) or HxWx4 (RGBA, composited over white)"
)


def _array_to_image(array: np.ndarray, label: str) -> Image.Image:
    """A PIL image of the array's pixels, or ImageLoadError saying what shape and type to pass."""
    shape = "x".join(map(str, array.shape))
    if array.dtype != np.uint8:
        advice = (
            "convert to uint8 0..255, e.g. (array * 255).round().astype(np.uint8) for floats in 0..1"
            if array.dtype.kind == "f"
            else "convert to uint8 0..255"
        )
        raise ImageLoadError(label, f"unsupported array type {array.dtype} (shape {shape})",
                             f"{advice}; {_ARRAY_HINT}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        raise ImageLoadError(label, f"unsupported array shape {shape} (channels first)",
                             "move the channels last: array.transpose(1, 2, 0)")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageLoadError(label, f"unsupported array shape {shape}", _ARRAY_HINT)
    if array.size == 0:
        raise ImageLoadError(label, f"empty array (shape {shape})", _ARRAY_HINT)
    return Image.fromarray(np.ascontiguousarray(array))  # uint8: L, RGB or RGBA by shape


def _normalise_pil(image: Image.Image, label: str, max_pixels: int) -> Image.Image:
    """A caller's PIL image through the same steps as a decoded file, without changing it."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(label, f"too many pixels ({width * height:,} > {max_pixels:,})",
                             f"it is {width}x{height}; downscale it or raise the pixel limit")
    if width == 0 or height == 0:
        raise ImageLoadError(label, f"empty image ({width}x{height})", "pass an image with pixels")
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image.load()  # a lazily opened file: decode it now, so a broken one is named here
        except Exception:
            raise ImageLoadError(label, "truncated or corrupt") from None
        try:
            if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                image = ImageOps.exif_transpose(image)  # a rotated copy: the caller's image is kept
        except Exception:
            pass  # unreadable EXIF: keep the stored orientation, as for files
        try:
            return _to_rgb(image)
        except Exception:
            raise ImageLoadError(label, f"unsupported colour mode ({image.mode})") from None


def _too_many_pixels_reason(error: Exception, max_pixels: int) -> str:
    match = re.search(r"\((\d+) pixels\)", str(error))
    pixels = int(match.group(1)) if match else 0
    if pixels > max_pixels or not Image.MAX_IMAGE_PIXELS:
        return f"too many pixels ({pixels:,} > {max_pixels:,})"
    return f"too many pixels ({pixels:,} > Pillow's own limit of {2 * Image.MAX_IMAGE_PIXELS:,})"


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: `image` itself when it already is, else a new image."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        image = _to_8bit_grey(image)
    if image.mode == "CMYK":
        return _cmyk_to_rgb(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """Scale high-bit-depth grey to 0..255 (clipping would turn most 16-bit images white)."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scaled = values / 257.0  # 65535 -> 255
    elif image.mode == "I" and values.size and values.min() >= 0 and values.max() <= 65535:
        # 16-bit PNG/TIFF data arrives as "I"; values that already fit 8 bits are kept as they are.
        scaled = values / 257.0 if values.max() > 255 else values
    elif image.mode == "F" and values.size and values.min() >= 0 and values.max() <= 1:
        scaled = values * 255.0  # float images in 0..1
    else:  # arbitrary range (signed ints, HDR floats): stretch to the full 8-bit range
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    if "transparency" in image.info:  # a 16-bit tRNS value no longer matches 8-bit data
        grey.info.pop("transparency", None)
    return grey


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """Use the embedded ICC profile when there is one (print CMYK is far from naive 255-C)."""
    icc = image.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms  # optional: Pillow may be built without LittleCMS

            converted = ImageCms.profileToProfile(
                image,
                ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                ImageCms.createProfile("sRGB"),
                outputMode="RGB",
            )
            if converted is not None:
                return converted
        except Exception:
            pass  # broken profile: the plain conversion below is still a fair picture
    return image.convert("RGB")
