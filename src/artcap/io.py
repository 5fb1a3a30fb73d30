"""Atomic file writes: a reader (or a resumed job) never sees a half-written file."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtcapError

# Out of space (or over a quota or file-size limit): the user can act on it, so it is one line, not a traceback.
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600 files
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(path, e) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _mode_for(path: Path) -> int:
    """A replaced file keeps its permissions (a person's 0600 stays 0600); a new one gets the usual ones."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_UMASK


def disk_full_error(path: Path, error: OSError) -> ArtcapError:
    return ArtcapError(f"{path}: could not write ({os.strerror(error.errno)}); nothing was half-written — free some "
                       f"space and run the same command again to continue")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Written by Python's own file object, so a full disk is an OSError (ENOSPC/EFBIG) here, whatever
    library serialised the bytes (some report short writes in their own exception types)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def save_tensors(path: str | os.PathLike, tensors: dict) -> None:
    """A state dict as safetensors, atomically."""
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Strict JSON: a NaN or infinity is a bug to fix where it was made, never written (other readers reject it)."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def read_tensors(path: str | os.PathLike, expected: dict[str, tuple[int, ...]] | None = None, fits: str = "",
                 framework: str = "pt", fix: str = "re-copy the model folder or retrain") -> dict:
    """A safetensors file's tensors, or one line: missing, unreadable, (with `expected`: {name: shape}) of other
    names or shapes than `fits` says — checked on the header, before any tensor is read — or holding NaN or
    infinity. `framework`: "pt" (torch tensors) or "np" (numpy arrays); `fix`: what the message tells the user to do."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        named = f" ({fits} names it)" if fits else ""
        raise ArtcapError(f"{path}: missing{named}; {fix}")
    try:
        with safe_open(str(path), framework="np") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        if expected is not None:
            _check_shapes(path, shapes, expected, fits)
        if framework == "np":
            from safetensors.numpy import load_file
        else:
            from safetensors.torch import load_file
        tensors = load_file(str(path))
    except ArtcapError:
        raise
    except Exception as e:  # truncated, not safetensors, unreadable
        raise ArtcapError(f"{path}: unreadable weights ({type(e).__name__}); the file is truncated or not "
                          f"safetensors — {fix}") from None
    for name, tensor in tensors.items():
        if not _all_finite(tensor):
            raise ArtcapError(f"{path}: tensor {name} holds NaN or infinity, so the model cannot produce a caption; "
                              f"the weights are damaged (or training diverged) — {fix}")
    return tensors


def _check_shapes(path: Path, shapes: dict, expected: dict, fits: str) -> None:
    for name, shape in expected.items():
        if name not in shapes:
            raise ArtcapError(f"{path}: no tensor {name}, which {fits} needs; the weights do not fit config.json — "
                              f"re-copy the model folder")
        if tuple(shapes[name]) != tuple(shape):
            raise ArtcapError(f"{path}: tensor {name} has shape {list(shapes[name])} but {fits} needs {list(shape)}; "
                              f"the weights do not fit config.json — re-copy the model folder")
    extra = sorted(set(shapes) - set(expected))
    if extra:
        raise ArtcapError(f"{path}: tensor {extra[0]} is not part of {fits} ({len(extra)} such); the weights do not "
                          f"fit config.json — re-copy the model folder")


def _all_finite(tensor) -> bool:
    import numpy as np

    if hasattr(tensor, "is_floating_point"):  # a torch tensor
        import torch

        return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())
    return not np.issubdtype(tensor.dtype, np.floating) or bool(np.isfinite(tensor).all())
