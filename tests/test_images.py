"""load_image / find_images on real files of every awkward kind, and the shipped example painting."""

from __future__ import annotations

import io
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
from artcap.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageLoadError, find_images, load_image


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
