"""load_image / find_images on real files of every awkward kind, only the accepted formats, one
normalisation for paths, PIL images and arrays (through the real shipped model), and the example painting."""

from __future__ import annotations

import io
import os
import pickle
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from artcap.errors import ArtcapError
from artcap.example import draw_example_painting, main as example_main
from artcap.images import (
    ACCEPTED_FORMATS, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageLoadError, find_images, image_format, load_image,
    to_rgb_image,
)


def noisy_rgb(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height; its pixel data is nowhere near that."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def assert_refused(source, reason_start: str, **kwargs) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as caught:
        load_image(source, **kwargs)
    error = caught.value
    assert isinstance(error, ArtcapError)
    assert error.reason.startswith(reason_start), error.reason
    assert str(error).startswith(f"{error.source}: {error.reason}")
    assert "\n" not in str(error)
    return error


# ---- refused ------------------------------------------------------------------------------


def test_zero_byte_file_and_empty_bytes_are_refused(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    error = assert_refused(empty, "zero bytes")
    assert error.source == str(empty)
    assert assert_refused(b"", "zero bytes", name="upload.png").source == "upload.png"


def test_truncated_jpeg_is_refused(tmp_path):
    buffer = io.BytesIO()
    noisy_rgb(128, 128).save(buffer, "JPEG", quality=90)
    whole = buffer.getvalue()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    assert load_image(whole).size == (128, 128)  # the uncut file is fine
    assert_refused(cut, "truncated or corrupt")


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is a shopping list, not a picture\n")
    error = assert_refused(fake, "not an image")
    assert "holiday.jpg" in str(error) and "re-save" in str(error)


def test_missing_file_and_folder_are_refused(tmp_path):
    assert_refused(tmp_path / "nope.png", "file not found")
    assert_refused(tmp_path, "is a folder")


def test_header_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_header_size(10_000, 6_000))  # 60 MP claimed, a few bytes stored
    started = time.perf_counter()
    error = assert_refused(bomb, "too many pixels")
    assert time.perf_counter() - started < 0.5  # decoding 60 MP would take far longer
    assert error.reason == "too many pixels (60,000,000 > 40,000,000)"
    # A real, small image over a caller-chosen limit is refused the same way.
    assert_refused(_png_bytes(noisy_rgb(20, 20)), "too many pixels", max_pixels=399)
    assert load_image(_png_bytes(noisy_rgb(20, 20)), max_pixels=400).size == (20, 20)


@pytest.mark.parametrize("width,height", [(10_000, 10_000), (20_000, 10_000)])
def test_huge_headers_raise_no_pillow_warning_or_error(width, height, recwarn):
    # 100 MP makes Pillow warn, 200 MP makes it raise DecompressionBombError: neither may escape.
    limits_before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    assert_refused(png_with_header_size(width, height), "too many pixels", max_pixels=DEFAULT_MAX_PIXELS)
    assert len(recwarn) == 0, [str(w.message) for w in recwarn]
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == limits_before


def _png_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save_args)
    return buffer.getvalue()


# ---- accepted and converted ---------------------------------------------------------------


@pytest.mark.parametrize("icc_profile", [None, b"not a real ICC profile"])
def test_cmyk_jpeg_becomes_rgb_with_the_right_colour(tmp_path, icc_profile):
    path = tmp_path / "print.jpg"
    extra = {"icc_profile": icc_profile} if icc_profile else {}
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, "JPEG", quality=95, **extra)  # pure red ink
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (32, 32)
    r, g, b = image.getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    ramp = np.tile((np.arange(256) * 257).astype(np.uint16), (8, 1))  # 0 .. 65535 left to right
    path = tmp_path / "scan16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(load_image(path)).astype(int)
    assert pixels.shape == (8, 256, 3)
    row = pixels[4, :, 0]
    assert np.abs(row - np.arange(256)).max() <= 1  # the gradient survives (clipping gives ~all 255)
    assert (np.diff(row) >= 0).all()
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_32bit_integer_tiff_with_16bit_values_is_scaled(tmp_path):
    ramp = np.tile((np.arange(0, 256, 5) * 257).astype(np.int32), (4, 1))
    path = tmp_path / "scan.tif"
    Image.fromarray(ramp, "I").save(path)
    row = np.asarray(load_image(path))[0, :, 0].astype(int)
    assert np.abs(row - np.arange(0, 256, 5)).max() <= 1


def test_grayscale_and_palette_become_rgb(tmp_path):
    grey = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1)), "L")
    grey_rgb = np.asarray(load_image(_png_bytes(grey)))
    assert grey_rgb.shape == (16, 64, 3) and (grey_rgb[..., 0] == grey_rgb[..., 2]).all()
    assert grey_rgb[0, -1, 0] == 252

    palette = noisy_rgb(40, 30).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    expected = np.asarray(palette.convert("RGB"))
    assert (np.asarray(load_image(_png_bytes(palette))) == expected).all()


def test_transparency_is_composited_over_white():
    rgba = np.zeros((20, 40, 4), dtype=np.uint8)  # transparent black everywhere ...
    rgba[:, 20:] = (0, 0, 255, 255)  # ... but an opaque blue right half
    rgba[:5, 20:] = (0, 0, 0, 128)  # and a half-transparent black strip
    image = load_image(_png_bytes(Image.fromarray(rgba, "RGBA")))
    assert image.mode == "RGB"
    assert image.getpixel((5, 10)) == (255, 255, 255)
    assert image.getpixel((30, 10)) == (0, 0, 255)
    assert all(abs(c - 127) <= 1 for c in image.getpixel((30, 2)))


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (80, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 16, 16))  # red marker at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    stored.save(path, "JPEG", quality=95, exif=exif)
    image = load_image(path)
    assert image.size == (40, 80)
    r, g, b = image.getpixel((40 - 8, 8))  # top-left went to the top-right
    assert r > 200 and b < 60


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (24, 24), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    assert load_image(path).getpixel((12, 12)) == (255, 0, 0)


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (24, 24), colour) for colour in ((0, 255, 0), (255, 0, 0))]
    path = tmp_path / "anim.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert load_image(path).getpixel((12, 12)) == (0, 255, 0)


def test_stream_input_uses_the_given_name(tmp_path):
    path = tmp_path / "photo.png"
    noisy_rgb(30, 20).save(path)
    with open(path, "rb") as stream:
        assert load_image(stream).size == (30, 20)
    error = assert_refused(io.BytesIO(b"GIF89a broken"), "not an image", name="upload.gif")
    assert error.source == "upload.gif"
    copy = pickle.loads(pickle.dumps(error))  # errors cross worker-process boundaries intact
    assert (copy.source, copy.reason, str(copy)) == (error.source, error.reason, str(error))


def test_real_painting_decodes_to_rgb(shared_data):
    paintings = sorted((shared_data / "artemis-mini" / "wikiart").glob("*/*.jpg"))
    if not paintings:
        pytest.skip("no WikiArt images in the shared data")
    image = load_image(paintings[0])
    assert image.mode == "RGB" and image.size == (224, 224)
    assert np.asarray(image).std() > 5  # a real picture, not a blank


# ---- find_images --------------------------------------------------------------------------


def test_find_images_expands_folders_and_reports_missing_paths(tmp_path):
    album = tmp_path / "album"
    (album / "sub" / "deeper").mkdir(parents=True)
    for relative in ("b.jpg", "a.PNG", "notes.txt", "sub/c.webp", "sub/deeper/d.TIFF", "sub/readme.md"):
        (album / relative).write_bytes(b"x")
    odd = tmp_path / "scan.data"
    odd.write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()

    flat, errors = find_images([album])
    assert flat == [album / "a.PNG", album / "b.jpg"] and errors == []

    deep, _ = find_images([album, odd, album / "b.jpg"], recursive=True)
    assert deep == [album / "a.PNG", album / "b.jpg", album / "sub" / "c.webp",
                    album / "sub" / "deeper" / "d.TIFF", odd]  # explicit file kept, no duplicates
    assert find_images([album], recursive=True) == find_images([album], recursive=True)

    found, errors = find_images([tmp_path / "missing", empty, album / "sub"])
    assert found == [album / "sub" / "c.webp"]
    assert [(e.source, e.reason) for e in errors] == [
        (str(tmp_path / "missing"), "file not found"),
        (str(empty), "no images found in this folder"),
    ]
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


# ---- the shipped example painting ---------------------------------------------------------


def test_example_painting_is_deterministic_and_not_flat(tmp_path):
    first, second = draw_example_painting(), draw_example_painting()
    assert first.mode == "RGB" and first.size == (384, 384)
    assert first.tobytes() == second.tobytes()
    pixels = np.asarray(first)
    assert pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 5_000
    assert draw_example_painting(128).size == (128, 128)

    out = tmp_path / "landscape.jpg"
    assert example_main([str(out)]) == 0
    assert out.stat().st_size < 100_000
    assert load_image(out).size == (384, 384)


def test_shipped_example_matches_the_generator():
    shipped = Path(__file__).resolve().parents[1] / "examples" / "landscape.jpg"
    assert shipped.stat().st_size < 100_000
    difference = np.abs(np.asarray(load_image(shipped)).astype(int) - np.asarray(draw_example_painting()).astype(int))
    assert difference.mean() < 4  # only JPEG loss between the file and a fresh drawing


def test_min_size_decodes_big_jpegs_at_a_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1600), (120, 80, 40)).save(path, quality=90)
    reduced = load_image(path, min_size=224)
    assert 224 <= min(reduced.size) and reduced.size[0] < 2000  # 1/4 scale: 500x400
    assert load_image(path).size == (2000, 1600)


# ---- only the accepted formats, told by content ---------------------------------------------


def _saved(image: Image.Image, fmt: str, **args) -> bytes | None:
    """`image` encoded by Pillow as `fmt`, or None when this Pillow cannot write it."""
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt, **args)
    except (OSError, KeyError, ValueError):
        return None
    return buffer.getvalue()


# Formats Pillow reads (and writes) that docs/images.md does not list; each was accepted before.
OTHER_FORMATS = ["PCX", "TGA", "PPM", "ICO", "SGI", "IM", "QOI", "DDS", "JPEG2000", "ICNS", "EPS", "BLP", "SPIDER"]
UNSIGNED_FORMATS = {"TGA", "IM", "SPIDER"}  # Pillow tells them by trying to read them, not by a signature


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Pillow 13 deprecates writing IM
@pytest.mark.parametrize("fmt", OTHER_FORMATS)
def test_other_pillow_formats_are_refused_whatever_the_name(tmp_path, fmt):
    data = _saved(Image.new("RGB", (64, 64), (200, 30, 30)), fmt)
    if data is None:
        pytest.skip(f"this Pillow cannot write {fmt}")
    disguised = tmp_path / "painting.jpg"  # the name is never trusted
    disguised.write_bytes(data)
    error = assert_refused(disguised, "")
    assert error.source == str(disguised) and "JPEG, PNG, WebP, BMP, TIFF or GIF" in str(error)
    if fmt in UNSIGNED_FORMATS:  # no signature to tell them by
        assert error.reason == "not an image" or error.reason.startswith("unsupported format (looks like ")
    else:
        assert error.reason == f"unsupported format (looks like {fmt})"
    assert image_format(data) is None


def test_eps_never_reaches_ghostscript(tmp_path, monkeypatch):
    # A Ghostscript on PATH that leaves a mark if anyone runs it.
    marker = tmp_path / "ghostscript-ran"
    fake = tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    path = tmp_path / "poster.jpg"
    path.write_bytes(_saved(Image.new("RGB", (16, 16), "blue"), "EPS"))
    assert assert_refused(path, "unsupported format").reason == "unsupported format (looks like EPS)"
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ACCEPTED_FORMATS)
def test_accepted_formats_are_read_whatever_the_name(tmp_path, fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    data = _saved(noisy_rgb(40, 30), fmt)
    misnamed = tmp_path / "painting.gif.txt"
    misnamed.write_bytes(data)
    assert load_image(misnamed).size == (40, 30)
    assert image_format(data) == fmt
    assert image_format(b"not an image") is None


# ---- the Python API: one normalisation for paths, PIL images and arrays ---------------------


def _painting(width: int = 500, height: int = 300) -> Image.Image:
    """A real-looking, non-square picture (the example painting, squashed)."""
    return draw_example_painting().resize((width, height), Image.BICUBIC)


def _same_caption_and_features(captioner, *inputs) -> str:
    features = captioner.encode(list(inputs)).numpy()
    for other in features[1:]:
        np.testing.assert_allclose(other, features[0], atol=1e-5)
    captions = captioner.caption(list(inputs))
    assert len(set(captions)) == 1, captions
    return captions[0]


def test_path_pil_and_array_give_the_same_caption(captioner, tmp_path):
    picture = _painting(500, 300)  # arrays used to skip the resize that files get
    path = tmp_path / "painting.png"
    picture.save(path)
    caption = _same_caption_and_features(captioner, path, str(path), picture, np.asarray(picture))
    assert caption.strip()
    grey = picture.convert("L")
    grey.save(tmp_path / "grey.png")
    _same_caption_and_features(captioner, tmp_path / "grey.png", grey, np.asarray(grey), np.asarray(grey)[..., None])


def test_16bit_pil_image_is_scaled_like_the_16bit_file(captioner, tmp_path):
    grey16 = Image.fromarray(np.asarray(_painting().convert("L")).astype(np.uint16) * 257)
    assert grey16.mode == "I;16"
    path = tmp_path / "scan16.png"
    grey16.save(path)
    _same_caption_and_features(captioner, path, grey16)
    assert np.asarray(to_rgb_image(grey16)).mean() == pytest.approx(np.asarray(_painting().convert("L")).mean(), abs=1)


def test_rgba_pil_image_and_array_go_over_white_like_the_rgba_file(captioner, tmp_path):
    rgba = _painting().convert("RGBA")
    alpha = np.zeros((300, 500), np.uint8)
    alpha[:, 250:] = 255  # the left half transparent, its colours still stored behind
    rgba.putalpha(Image.fromarray(alpha))
    path = tmp_path / "cutout.png"
    rgba.save(path)
    _same_caption_and_features(captioner, path, rgba, np.asarray(rgba))
    assert to_rgb_image(rgba).getpixel((10, 10)) == (255, 255, 255)


@pytest.mark.parametrize("array,expected", [
    (np.zeros((32, 32, 3), np.float32), "convert to uint8 0..255"),
    (np.ones((32, 32, 3), bool), "convert to uint8 0..255"),
    (np.zeros((32, 32, 3), np.uint16), "convert to uint8 0..255"),
    (np.zeros((3, 32, 32), np.uint8), "array.transpose(1, 2, 0)"),
    (np.zeros((32, 32, 2), np.uint8), "HxWx3"),
    (np.zeros((2, 32, 32, 3), np.uint8), "HxWx3"),
    (np.zeros((0, 32, 3), np.uint8), "empty array"),
])
def test_unusable_arrays_are_refused_saying_what_to_pass(captioner, array, expected):
    with pytest.raises(ImageLoadError) as caught:
        captioner.caption([np.zeros((8, 8, 3), np.uint8), array])
    message = str(caught.value)
    assert message.startswith("images[1]: ") and expected in message and "\n" not in message


def test_a_single_path_or_pil_image_is_one_image(captioner, tmp_path):
    path = tmp_path / "one.png"
    _painting().save(path)
    by_path = captioner.caption(str(path))
    assert isinstance(by_path, list) and len(by_path) == 1
    assert captioner.caption(path) == captioner.caption(_painting()) == by_path
    with pytest.raises(ArtcapError, match=r"pass a list of images, e\.g\. \[array\]"):
        captioner.caption(np.asarray(_painting()))  # one image or a batch? refused, not guessed
    with pytest.raises(ArtcapError, match="cannot caption a int"):
        captioner.caption(7)
    with pytest.raises(ImageLoadError, match=r"images\[0\]: cannot caption a dict"):
        captioner.caption([{"image": "one.png"}])
    with pytest.raises(ImageLoadError, match="missing.png: file not found"):
        captioner.caption(str(tmp_path / "missing.png"))
    assert captioner.caption([]) == []


def test_caller_images_are_not_changed(tmp_path):
    stored = Image.new("RGBA", (40, 20), (0, 0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.info["exif"] = exif.tobytes()
    before = stored.tobytes()
    array = np.asarray(stored).copy()
    rgb = to_rgb_image(stored)
    assert rgb.mode == "RGB" and stored.mode == "RGBA" and stored.tobytes() == before
    to_rgb_image(array)
    assert (array == np.asarray(stored)).all()
