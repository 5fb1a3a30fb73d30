"""Backends for the image network at inference: torch, or ONNX Runtime on the CPU (about twice as fast).

    runner = create_runner(encoder, backend="auto")   # "auto" | "torch" | "onnx"
    out = runner(uint8_nchw_batch)                    # EncoderOutput(pooled [B, C], grid [B, C, h, w])

"auto" (the default) runs the encoder with ONNX Runtime on the CPU when onnxruntime is installed and
the encoder exports faithfully, else with torch; torch stays for training, GPUs and encoders that do
not export. The export happens once per encoder weights, image size, opset and torch/onnxruntime
versions, into `<cache>/onnx/` ($ARTCAP_CACHE or ~/.cache/artcap), atomically and under a file lock so
two processes never export at once. Before its first use, the ONNX graph is checked against torch on a
probe batch (and the check recorded with the file's sha256, so a changed file is checked again): if they
differ beyond VERIFY_TOLERANCE, the file is removed and torch is used, with one warning line.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from filelock import FileLock

from .encoders import Encoder, EncoderOutput
from .errors import ArtcapError
from .io import atomic_path, atomic_write_json

log = logging.getLogger("artcap")

BACKENDS = ("auto", "torch", "onnx")
OPSET = 17
# Largest absolute difference allowed between ONNX Runtime's and torch's features on the probe batch.
# Measured: about 1e-5 on pooled features and 4e-5 on the grid (values up to ~6); other weights differ by ~1.
VERIFY_TOLERANCE = 1e-3
OUTPUTS = ("pooled", "grid")


class EncoderRunner(Protocol):
    """Runs the image network: a uint8 NCHW batch -> EncoderOutput."""

    name: str

    def __call__(self, batch: torch.Tensor) -> EncoderOutput: ...


class TorchRunner:
    name = "torch"

    def __init__(self, encoder: Encoder, device: torch.device):
        self.encoder, self.device = encoder, device

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> EncoderOutput:
        return self.encoder(batch.to(self.device).contiguous(memory_format=torch.channels_last))


class OnnxRunner:
    name = "onnx"

    def __init__(self, session, path: Path):
        self.session, self.path = session, path  # an onnxruntime.InferenceSession (thread-safe run)

    def __call__(self, batch: torch.Tensor) -> EncoderOutput:
        pooled, grid = self.session.run(list(OUTPUTS), {"images": np.ascontiguousarray(batch.cpu().numpy())})
        return EncoderOutput(pooled=torch.from_numpy(pooled), grid=torch.from_numpy(grid))


class ExportMismatch(Exception):
    """The ONNX graph computes other numbers than torch: never use it."""


def create_runner(encoder: Encoder, backend: str = "auto", device: str | torch.device = "cpu",
                  cache_dir: str | Path | None = None) -> EncoderRunner:
    """The runner for `backend` ("auto", "torch" or "onnx"). "onnx" needs onnxruntime and a CPU; an
    export that computes other numbers than torch falls back to torch with one warning line."""
    if backend not in BACKENDS:
        raise ArtcapError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    device = torch.device(device)
    torch_runner = TorchRunner(encoder, device)
    if backend == "torch" or (backend == "auto" and device.type != "cpu"):
        return torch_runner
    if device.type != "cpu":
        raise ArtcapError(f"the onnx backend runs on the CPU only; use backend 'torch' on {device}")
    missing = [name for name in ("onnxruntime", "onnx") if not _importable(name)]  # onnx: the exporter's
    if missing:
        if backend == "onnx":
            raise ArtcapError(f"backend 'onnx' needs {' and '.join(missing)}, which is not installed: pip install "
                              f"{' '.join(missing)} (or choose backend 'torch')")
        return torch_runner
    try:
        try:
            return load_onnx_runner(encoder, Path(cache_dir) if cache_dir else onnx_cache_dir())
        except ImportError as e:  # installed but broken (e.g. a binary built for another CPU)
            raise ArtcapError(f"onnxruntime or onnx cannot be imported ({e})") from None
    except ExportMismatch as e:
        log.warning("%s; using torch", e)
        return torch_runner
    except ArtcapError as e:
        if backend == "onnx":
            raise
        log.warning("%s; using torch", e)
        return torch_runner


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # sys.modules[name] is None: imports of it are blocked
        return False


def onnx_cache_dir() -> Path:
    from .features import cache_root

    return cache_root() / "onnx"


def load_onnx_runner(encoder: Encoder, cache_dir: Path) -> OnnxRunner:
    """Export (once) and load `encoder` as ONNX, checked against torch. Raises ExportMismatch (the file
    is removed, so the next load exports again) or ArtcapError (cannot export or write the cache)."""
    path = cache_dir / export_name(encoder)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            session = _cached_session(path) or _export_and_open(encoder, path)
            runner = OnnxRunner(session, path)
            if not _verified(path):
                _verify(runner, encoder)
    except OSError as e:
        raise ArtcapError(f"{cache_dir}: cannot write the ONNX export ({e.strerror or e}); set $ARTCAP_CACHE "
                          f"to a writable folder") from None
    return runner


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path) -> bool:
    """Whether this very file (by content) was checked against torch: checking costs a torch forward pass."""
    try:
        return json.loads(_record_path(path).read_text())["sha256"] == _file_digest(path)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _verify(runner: OnnxRunner, encoder: Encoder) -> None:
    """Check the export against torch on the probe batch and record it; a mismatch removes the file."""
    path = runner.path
    difference = max_difference(runner, encoder)
    if not difference <= VERIFY_TOLERANCE:  # `not <=` also catches NaN
        path.unlink(missing_ok=True)
        _record_path(path).unlink(missing_ok=True)
        raise ExportMismatch(f"{path.name}: ONNX Runtime's features differ from torch's by {difference:.3g} on the "
                             f"probe images (tolerance {VERIFY_TOLERANCE:g}); removed it")
    atomic_write_json(_record_path(path), {"sha256": _file_digest(path), "max_difference": difference,
                                           "tolerance": VERIFY_TOLERANCE})


def export_name(encoder: Encoder) -> str:
    """One file per encoder (name, weights, image size), outputs, opset and exporter/runtime versions.
    The weights are identified by their digest: a model folder's own encoder weights load as "random"."""
    import onnxruntime

    return (f"{encoder.key}-{weights_digest(encoder)}-{'+'.join(OUTPUTS)}-opset{OPSET}-"
            f"ort{onnxruntime.__version__}-torch{torch.__version__}.onnx")


def weights_digest(encoder: Encoder) -> str:
    digest = hashlib.sha256()
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _open_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # --threads sets torch's; use as many ($ARTCAP_ORT_THREADS: another number, for benchmarks/bench_before_after.py)
    options.intra_op_num_threads = int(os.environ.get("ARTCAP_ORT_THREADS") or torch.get_num_threads())
    options.inter_op_num_threads = 1  # one chain of operators: parallelism is inside them
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: measured on 2 shared cores (load ~10), 9 instead of 17 CPU-ms per
    # image and 4x the images/s; spinning only steals the cores the decoder and other jobs need next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings are not the user's business
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cached_session(path: Path):
    """The cached export's session, or None when there is none or it is damaged (it is exported again)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by an export that was killed: we hold the lock
        stale.unlink(missing_ok=True)
    if not path.is_file():
        return None
    try:
        return _open_session(path)
    except Exception as e:  # truncated or overwritten: onnxruntime raises its own exception types
        log.warning("%s: damaged ONNX export (%s); exporting it again", path, type(e).__name__)
        return None


class _Exportable(torch.nn.Module):
    """The encoder with both outputs as a tuple, which is what the exporter traces."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(images)
        return out.pooled, out.grid


def _export_and_open(encoder: Encoder, path: Path):
    size = encoder.image_size
    example = torch.zeros((2, 3, size, size), dtype=torch.uint8)
    batch_axis = {0: "batch"}
    log.info("exporting %s to ONNX (once): %s", encoder.key, path)
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # tracer and deprecation warnings: the probe check is what counts
            torch.onnx.export(_Exportable(encoder).eval(), (example,), str(tmp), opset_version=OPSET, dynamo=False,
                              input_names=["images"], output_names=list(OUTPUTS),
                              dynamic_axes={"images": batch_axis, "pooled": batch_axis, "grid": batch_axis})
        return _open_session(path)
    except (OSError, ArtcapError):
        raise
    except Exception as e:  # an operator the exporter or runtime lacks: not an ONNX model
        path.unlink(missing_ok=True)
        raise ArtcapError(f"{encoder.name} does not export to ONNX ({type(e).__name__}: {str(e)[:120]})") from None


def probe_batch(size: int) -> torch.Tensor:
    """Painting-like test images, the same every time: colour gradients, a radial one, smooth and
    fine noise (so every channel and spatial frequency is exercised). uint8 [4, 3, size, size]."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    radial = np.hypot(x - 0.5, y - 0.5)
    smooth = np.kron(rng.random((8, 8, 3)), np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size]
    images = [
        np.stack([x, y, 1 - x], axis=-1),
        np.stack([radial, 1 - radial, 0.5 + 0 * x], axis=-1) / radial.max(),
        0.6 * smooth + 0.4 * rng.random((size, size, 3)),
        rng.random((size, size, 3)),
    ]
    batch = np.stack([np.clip(im * 255, 0, 255).astype(np.uint8) for im in images])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def max_difference(runner: EncoderRunner, encoder: Encoder) -> float:
    """Largest absolute difference of pooled and grid features between `runner` and torch on the probe."""
    batch = probe_batch(encoder.image_size)
    with torch.inference_mode():
        expected = TorchRunner(encoder, torch.device("cpu"))(batch)
    got = runner(batch)
    return max(float((got.pooled - expected.pooled).abs().max()), float((got.grid - expected.grid).abs().max()))
