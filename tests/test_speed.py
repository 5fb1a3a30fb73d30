"""The speed work changes no caption and no feature beyond its stated tolerance: the folder job with its
optimisations (the CNN in a background thread, batched beam search that drops finished images, the batched
rerank) gives the same captions as captioning one image at a time, for the shipped models on real paintings;
decoding JPEGs on the encoder's device (run here on the CPU) gives the CPU path's features within tolerance,
with the same errors for files it cannot take."""

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from artcap.captioner import Captioner
from artcap.caption_files import caption_paths
from artcap.features import FeatureCache, decoded_batches, device_decoded_batches, encoded_batches
from artcap.gpu_decode import DEVICE_DECODE_TOLERANCE, DeviceJpegDecoder, plain_jpeg

pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def paintings(shared_data) -> list[Path]:
    """Real paintings, three from each style (different subjects, lengths of caption)."""
    root = shared_data / "artemis-mini" / "wikiart"
    return [p for style in sorted(root.iterdir()) for p in sorted(style.glob("*.jpg"))[:3]]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["default", "fast"])
def test_optimised_folder_job_gives_the_captions_of_one_image_at_a_time(model, paintings):
    captioner = Captioner.load(model)
    fast = [r.caption for r in caption_paths(captioner, paintings)]
    plain = [r.caption for r in caption_paths(captioner, paintings, overlap=False, batch_size=1,
                                              decode_batch_size=1)]
    assert all(fast) and len(fast) == len(paintings)
    assert fast == plain, [(p.name, a, b) for p, a, b in zip(paintings, fast, plain) if a != b]


def test_encoded_batches_raises_the_threads_error_and_stops_when_closed(paintings, captioner):
    calls = []

    def failing(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("encoder broke")
        return torch.zeros(len(batch), 4)

    with pytest.raises(RuntimeError, match="encoder broke"):
        list(encoded_batches(paintings[:8], captioner.encoder, failing, 2, 0))
    before = threading.active_count()
    batches = encoded_batches(paintings, captioner.encoder, lambda b: torch.zeros(len(b), 4), 2, 0, ahead=1)
    first = next(batches)
    batches.close()  # the consumer stops early: the thread must end, not hang on its full queue
    assert first[0] == [0, 1] and threading.active_count() == before


def test_device_decoding_on_the_cpu_matches_the_cpu_path(paintings, captioner):
    """The tensor path (decode_jpeg + torch resize) on the CPU: same images, features within tolerance."""
    encoder = captioner.encoder
    cpu = {tuple(i): b for i, b, _ in decoded_batches(paintings, encoder, 8, 0)}
    device = {tuple(i): b for i, b, _ in device_decoded_batches(paintings, encoder, 8, 0, torch.device("cpu"))}
    assert cpu.keys() == device.keys()
    with torch.inference_mode():
        for key in cpu:
            a, b = encoder(cpu[key]).pooled, encoder(device[key]).pooled
            relative = ((a - b).norm(dim=1) / a.norm(dim=1)).max().item()
            assert relative < DEVICE_DECODE_TOLERANCE, (key, relative)


def test_device_decoding_leaves_other_files_to_the_cpu_path_with_the_same_errors(paintings, captioner, tmp_path):
    """A PNG, a rotated JPEG, a CMYK JPEG, a truncated JPEG and a missing file: the same errors as the CPU
    path, and the readable ones encoded (the PNG and the rotated JPEG exactly as the CPU path does)."""
    source = Image.open(paintings[0])
    files = [tmp_path / "a.png", tmp_path / "rotated.jpg", tmp_path / "cmyk.jpg", tmp_path / "cut.jpg",
             tmp_path / "gone.jpg", paintings[1]]
    source.save(files[0])
    exif = Image.Exif()
    exif[0x0112] = 6
    source.save(files[1], exif=exif)
    source.convert("CMYK").save(files[2])
    files[3].write_bytes(paintings[2].read_bytes()[:4000])  # cut in the middle of its pixels
    assert [plain_jpeg(f.read_bytes()) for f in files if f.exists()] == [False, False, False, False, True]
    encoder = captioner.encoder
    [(cpu_idx, cpu_batch, cpu_errors)] = decoded_batches(files, encoder, 8, 0)
    [(idx, batch, errors)] = device_decoded_batches(files, encoder, 8, 0, torch.device("cpu"))
    assert idx == cpu_idx == [0, 1, 2, 5] and errors == cpu_errors and set(errors) == {3, 4}
    assert torch.equal(batch[:3], cpu_batch[:3])  # the files the CPU decoded are the CPU's pixels


def test_device_decoder_refuses_a_broken_jpeg_alone(paintings):
    good = paintings[0].read_bytes()
    decoded = DeviceJpegDecoder(224, "cpu").decode([good, good[:200] + b"\xff" * 50, good])
    assert decoded[1] is None and decoded[0] is not None and torch.equal(decoded[0], decoded[2])
    assert decoded[0].shape == (3, 224, 224) and decoded[0].dtype == torch.uint8


def test_feature_cache_extracts_with_device_decoding(paintings, captioner, tmp_path):
    files = paintings[:6]
    shutil.copy(files[0], tmp_path / "broken.jpg")
    (tmp_path / "broken.jpg").write_bytes(files[0].read_bytes()[:100])
    plain = FeatureCache(tmp_path / "plain", captioner.encoder)
    device = FeatureCache(tmp_path / "device", captioner.encoder)
    inputs = [*files, tmp_path / "broken.jpg"]
    assert plain.extract(inputs, progress=False, device_decode=False).keys() == \
        device.extract(inputs, progress=False, device_decode=True).keys() == {tmp_path / "broken.jpg"}
    rows_a, rows_b = plain.view(files)[np.arange(len(files))], device.view(files)[np.arange(len(files))]
    relative = np.linalg.norm(rows_a - rows_b, axis=1) / np.linalg.norm(rows_a, axis=1)
    assert relative.max() < DEVICE_DECODE_TOLERANCE
