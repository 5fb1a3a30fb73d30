"""The ONNX Runtime backend on the real shipped encoder: same features and captions as torch, exported once
(cached, atomic, re-exported when damaged), a file that computes other numbers is refused for torch."""

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # the exporter needs it

from artcap.captioner import Captioner  # noqa: E402
from artcap.errors import ArtcapError  # noqa: E402
from artcap.features import FeatureCache  # noqa: E402
from artcap.onnx_backend import create_runner, export_name  # noqa: E402

pytestmark = pytest.mark.slow  # the first export takes ~10 s on 2 cores


@pytest.fixture(scope="module")
def paintings(shared_data) -> list[Path]:
    """Eight real paintings from different styles."""
    root = shared_data / "artemis-mini" / "wikiart"
    return [sorted(style.glob("*.jpg"))[0] for style in sorted(root.iterdir())[:8]]


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory) -> Path:
    """A cache folder ($ARTCAP_CACHE) holding the shipped encoder's checked export (done once here)."""
    root = tmp_path_factory.mktemp("artcap-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARTCAP_CACHE", str(root))
        assert Captioner.load(model_dir, backend="onnx").runner.name == "onnx"
    return root


@pytest.fixture
def cache(exported, tmp_path, monkeypatch) -> Path:
    """A private copy of the exported cache, as $ARTCAP_CACHE, for tests that damage it."""
    root = tmp_path / "cache"
    shutil.copytree(exported, root)
    monkeypatch.setenv("ARTCAP_CACHE", str(root))
    return root


def onnx_file(root: Path) -> Path:
    [path] = (root / "onnx").glob("*.onnx")
    return path


@pytest.fixture(scope="module")
def torch_captioner(model_dir):
    return Captioner.load(model_dir, backend="torch")


def test_onnx_features_equal_torch_on_real_paintings(cache, torch_captioner, model_dir, paintings):
    onnx = Captioner.load(model_dir, backend="onnx")
    assert (onnx.runner.name, torch_captioner.runner.name) == ("onnx", "torch")
    batch = torch_captioner.preprocess(paintings)
    got, expected = onnx.runner(batch), torch_captioner.runner(batch)
    assert got.pooled.shape == expected.pooled.shape == (8, 1280)
    side = -(-torch_captioner.encoder.image_size // 32)  # the network's stride: 224 px -> 7x7, 260 px -> 9x9
    assert got.grid.shape == expected.grid.shape == (8, 1280, side, side)
    np.testing.assert_allclose(got.pooled.numpy(), expected.pooled.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.grid.numpy(), expected.grid.numpy(), rtol=0, atol=1e-4)
    # a batch of one (the server's usual case) through the dynamic batch axis
    np.testing.assert_allclose(onnx.encode(paintings[:1]).numpy(), expected.pooled[:1].numpy(), rtol=0, atol=1e-4)


def test_captions_equal_between_backends(cache, torch_captioner, model_dir, paintings):
    onnx = Captioner.load(model_dir, backend="onnx")
    assert onnx.caption(paintings) == torch_captioner.caption(paintings)
    assert onnx.caption(paintings, beam=1) == torch_captioner.caption(paintings, beam=1)


def test_auto_is_onnx_on_cpu_and_torch_elsewhere(cache, model_dir, torch_captioner):
    assert Captioner.load(model_dir).runner.name == "onnx"  # the default
    assert create_runner(torch_captioner.encoder, "auto", "meta").name == "torch"
    with pytest.raises(ArtcapError, match="CPU only"):
        create_runner(torch_captioner.encoder, "onnx", "meta")
    with pytest.raises(ArtcapError, match="backend must be one of auto, torch, onnx, got 'tensorrt'"):
        create_runner(torch_captioner.encoder, "tensorrt")


def test_export_is_cached(cache, model_dir, torch_captioner, caplog):
    path = onnx_file(cache)
    assert path.name == export_name(torch_captioner.encoder)
    encoder = torch_captioner.encoder
    assert f"{encoder.name}-imagenet-{encoder.image_size}px" in path.name and "opset17" in path.name
    before = path.stat().st_mtime_ns
    record = path.with_name(path.name + ".verified.json")
    record_before = record.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="artcap"):
        assert Captioner.load(model_dir, backend="onnx").runner.name == "onnx"
    assert path.stat().st_mtime_ns == before, "the second load exported again"
    assert record.stat().st_mtime_ns == record_before, "the second load checked against torch again"
    assert not [r for r in caplog.records if "export" in r.getMessage()]
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.name + ".lock", record.name])


def test_damaged_export_is_exported_again(cache, model_dir, torch_captioner, paintings, caplog):
    path = onnx_file(cache)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a truncated file, as a full disk or a bad copy leaves
    with caplog.at_level(logging.WARNING, logger="artcap"):
        onnx = Captioner.load(model_dir, backend="onnx")
    assert onnx.runner.name == "onnx"
    assert path.stat().st_size > len(good) // 2
    [warning] = caplog.records
    assert "damaged ONNX export" in warning.getMessage() and "\n" not in warning.getMessage()
    assert onnx.caption(paintings[:3]) == torch_captioner.caption(paintings[:3])


def tamper(path: Path) -> None:
    """Rewrite the export with one convolution's weights changed: it loads, but computes other numbers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the biggest weight tensor
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(model, str(path))


def test_export_that_differs_from_torch_falls_back_with_one_warning(cache, model_dir, paintings, torch_captioner,
                                                                    caplog):
    path = onnx_file(cache)
    tamper(path)
    with caplog.at_level(logging.WARNING, logger="artcap"):
        fallback = Captioner.load(model_dir, backend="onnx")
    assert fallback.runner.name == "torch"
    [warning] = caplog.records
    message = warning.getMessage()
    assert "differ from torch's" in message and "using torch" in message and "\n" not in message
    assert not path.exists(), "the bad file must go, so the next load exports a good one"
    assert fallback.caption(paintings[:2]) == torch_captioner.caption(paintings[:2])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="artcap"):
        assert Captioner.load(model_dir, backend="onnx").runner.name == "onnx"
    assert not caplog.records


def test_killed_export_leaves_no_partial_file(model_dir, tmp_path, monkeypatch):
    """SIGKILL an exporting process: the export's final name never holds a partial file, and the next load
    exports, cleaning up the killed one's temporary file."""
    env = {**os.environ, "ARTCAP_CACHE": str(tmp_path)}
    code = f"from artcap.captioner import Captioner; Captioner.load({str(model_dir)!r}, backend='onnx')"
    process = subprocess.Popen([sys.executable, "-c", code], env=env)
    folder = tmp_path / "onnx"
    deadline = time.monotonic() + 120
    while not list(folder.glob(".*.tmp")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert list(folder.glob(".*.tmp")), "the export never started"
    time.sleep(0.5)  # into the export
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list(folder.glob("*.onnx")), "a killed export left a file under its final name"
    monkeypatch.setenv("ARTCAP_CACHE", str(tmp_path))
    assert Captioner.load(model_dir, backend="onnx").runner.name == "onnx"
    assert not list(folder.glob(".*.tmp"))
    assert len(list(folder.glob("*.onnx"))) == 1


def run_without(package: str, model_dir: Path, backend: str, cache: Path) -> subprocess.CompletedProcess:
    code = (
        f"import sys; sys.modules[{package!r}] = None\n"
        "from artcap.captioner import Captioner\nfrom artcap.errors import ArtcapError\n"
        f"try:\n    print(Captioner.load({str(model_dir)!r}, backend={backend!r}).runner.name)\n"
        "except ArtcapError as e:\n    print(e); sys.exit(2)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ARTCAP_CACHE": str(cache)})


@pytest.mark.parametrize("package", ["onnxruntime", "onnx"])  # onnx: the exporter needs it
def test_onnx_without_its_packages_is_one_line(package, model_dir, tmp_path):
    result = run_without(package, model_dir, "onnx", tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout.count("\n") == 1
    assert f"needs {package}," in result.stdout and f"pip install {package} " in result.stdout
    auto = run_without(package, model_dir, "auto", tmp_path)
    assert (auto.returncode, auto.stdout, auto.stderr) == (0, "torch\n", "")
    assert not (tmp_path / "onnx").exists()


def test_feature_cache_extracts_with_onnx(cache, model_dir, torch_captioner, paintings, tmp_path):
    encoder = torch_captioner.encoder
    runner = create_runner(encoder, "onnx")
    assert runner.name == "onnx"
    by_onnx = FeatureCache(tmp_path / "onnx-features", encoder, runner=runner)
    by_torch = FeatureCache(tmp_path / "torch-features", encoder)
    for features in (by_onnx, by_torch):
        assert features.extract(paintings, batch_size=4, num_workers=0, progress=False) == {}
    np.testing.assert_allclose(by_onnx.view(paintings)[np.arange(8)], by_torch.view(paintings)[np.arange(8)],
                               rtol=0, atol=1e-4)


def test_two_processes_export_once(model_dir, tmp_path):
    """Two loads at once on an empty cache: one exports while the other waits on the lock, then reuses it."""
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
            "from artcap.captioner import Captioner\n"
            f"print(Captioner.load({str(model_dir)!r}, backend='onnx').runner.name)\n")
    env = {**os.environ, "ARTCAP_CACHE": str(tmp_path)}
    processes = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in processes]
    assert [out for out, _ in results] == ["onnx\n", "onnx\n"], [err for _, err in results]
    assert sum(err.count("exporting efficientnet-lite") for _, err in results) == 1
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
