"""Stage 2b, the feature cache: encode each image once per (encoder, weights, image size, feature
spec, file).

Features live on disk in .npy shards opened memory-mapped, so the full ArtEmis (80K images x
1280 floats pooled, or x 49 x 1280 halves as a 7x7 grid) never has to sit in RAM. `index.json` maps each image file (absolute path, size,
mtime) to its row; a changed file no longer matches and is re-extracted. Shards and the index are
written atomically after every chunk, so an interrupted extraction resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .encoders import Encoder, EncoderOutput
from .errors import ArtcapError
from .images import ImageLoadError, load_image
from .io import atomic_path, atomic_write_json
from .paths import confined, require_writable_folder

log = logging.getLogger("artcap")
INDEX_VERSION = 2


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _file_key_or_none(path: Path) -> tuple[str, int, int] | None:
    try:
        return _file_key(path)
    except (OSError, RuntimeError):  # gone, unreadable, or a link loop (RuntimeError from resolve)
        return None


class _DecodedImages(Dataset):
    """Decodes and resizes images in DataLoader workers, so decoding overlaps inference."""

    def __init__(self, paths: Sequence[Path], encoder: Encoder):
        self.paths, self.encoder = list(paths), encoder

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.encoder.to_array(load_image(self.paths[i], min_size=self.encoder.image_size)), ""
        except ImageLoadError as e:
            size = self.encoder.image_size
            return i, np.zeros((size, size, 3), np.uint8), str(e)


def decoded_batches(paths: Sequence[Path], encoder: Encoder, batch_size: int, num_workers: int):
    """Yield (indices, uint8 NCHW batch, errors-by-index) with decoding in background workers."""
    loader = DataLoader(_DecodedImages(paths, encoder), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=lambda items: items, persistent_workers=False)
    for items in loader:
        good = [(i, a) for i, a, err in items if not err]
        errors = {i: err for i, _, err in items if err}
        batch = torch.from_numpy(np.stack([a for _, a in good])).permute(0, 3, 1, 2) if good else None
        yield [i for i, _ in good], batch, errors


def encoded_batches(paths: Sequence[Path], encoder: Encoder, encode: Callable[[torch.Tensor], torch.Tensor],
                    batch_size: int, num_workers: int, ahead: int = 16
                    ) -> Iterator[tuple[list[int], torch.Tensor | None, dict[int, str]]]:
    """`decoded_batches` with each batch also encoded (`encode`: uint8 batch -> features), in one background
    thread that runs up to `ahead` batches in front of the caller: reading, decoding and the image network
    then overlap whatever the caller does with the features (beam search), as Pillow, ONNX Runtime and torch
    release the GIL while they compute. Yields (indices, features or None, errors-by-index), in order; an
    exception in the thread is raised here, and closing the generator stops the thread. `ahead` 0: no thread,
    each batch is encoded when the caller asks for it."""
    if ahead <= 0:
        for indices, batch, errors in decoded_batches(paths, encoder, batch_size, num_workers):
            yield indices, None if batch is None else encode(batch), errors
        return
    results: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()

    def produce() -> None:
        try:
            with torch.inference_mode():  # thread-local: the caller's does not reach this thread
                for indices, batch, errors in decoded_batches(paths, encoder, batch_size, num_workers):
                    if stop.is_set():
                        return
                    _put(results, stop, (indices, None if batch is None else encode(batch), errors))
        except BaseException as e:  # handed to the caller, who raises it
            _put(results, stop, e)
        _put(results, stop, None)

    thread = threading.Thread(target=produce, name="artcap-encode", daemon=True)
    thread.start()
    try:
        while (item := results.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _put(results: queue.Queue, stop: threading.Event, item) -> None:
    """Put `item`, waiting for room, unless the consumer has stopped (then the item is dropped)."""
    while not stop.is_set():
        try:
            results.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


class _EncodedFiles(Dataset):
    """For decoding on the device: each file's bytes when it is a plain JPEG (gpu_decode.plain_jpeg), read in
    DataLoader workers; any other file is decoded here on the CPU as `_DecodedImages` does."""

    def __init__(self, paths: Sequence[Path], encoder: Encoder):
        self.decoded = _DecodedImages(paths, encoder)

    def __len__(self) -> int:
        return len(self.decoded)

    def __getitem__(self, i: int):
        from .gpu_decode import plain_jpeg

        try:
            data = Path(self.decoded.paths[i]).read_bytes()
        except OSError:
            data = b""  # the CPU path below says what is wrong with the file
        if data and plain_jpeg(data):
            return i, data, None, ""
        return i, None, *self.decoded[i][1:]


def device_decoded_batches(paths: Sequence[Path], encoder: Encoder, batch_size: int, num_workers: int,
                           device: torch.device):
    """`decoded_batches` with plain JPEGs decoded and resized on `device` (gpu_decode: nvJPEG on a GPU) and
    every other file on the CPU; the batch is on `device`. Yield (indices, uint8 NCHW batch, errors-by-index)."""
    from .gpu_decode import DeviceJpegDecoder

    decoder = DeviceJpegDecoder(encoder.image_size, device)
    loader = DataLoader(_EncodedFiles(paths, encoder), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=lambda items: items, persistent_workers=False)
    for items in loader:
        jpegs = [(i, data) for i, data, _, _ in items if data is not None]
        images = dict(zip([i for i, _ in jpegs], decoder.decode([data for _, data in jpegs])))
        good, errors = [], {}
        for i, data, array, err in items:
            if data is not None and images[i] is None:  # refused by the device decoder: the CPU path
                _, array, err = _DecodedImages(paths, encoder)[i]
            if err:
                errors[i] = err
            else:
                good.append((i, images[i] if data is not None and images[i] is not None
                             else torch.from_numpy(array.copy()).permute(2, 0, 1).to(device)))
        batch = torch.stack([image for _, image in good]) if good else None
        yield [i for i, _ in good], batch, errors


FEATURE_KINDS = ("pooled", "grid")
DEFAULT_GRID_SIZE = 7


@dataclass(frozen=True)
class FeatureSpec:
    """Which features of an encoder a cache holds: pooled vectors [C] (float32) or a grid [g*g, C]
    (float16, adaptive-average-pooled to g x g so every image size gives the same shape)."""

    kind: str = "pooled"
    grid_size: int = DEFAULT_GRID_SIZE

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ArtcapError(f"feature kind must be one of {', '.join(FEATURE_KINDS)}, got {self.kind!r}")
        if not 1 <= self.grid_size <= 32:
            raise ArtcapError(f"grid size must be from 1 to 32, got {self.grid_size}")

    @property
    def folder(self) -> str:
        return "pooled" if self.kind == "pooled" else f"grid{self.grid_size}x{self.grid_size}"

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.kind == "pooled" else np.float16)

    def row_shape(self, feature_dim: int) -> tuple[int, ...]:
        return (feature_dim,) if self.kind == "pooled" else (self.grid_size ** 2, feature_dim)

    def select(self, output: EncoderOutput) -> torch.Tensor:
        """The encoder's output in this spec's shape: [B, C] or [B, g*g, C]."""
        if self.kind == "pooled":
            return output.pooled
        grid = F.adaptive_avg_pool2d(output.grid.float(), self.grid_size)
        return grid.flatten(2).transpose(1, 2)


def pooled_vectors(features: torch.Tensor) -> torch.Tensor:
    """[B, C] pooled vectors from features as a decoder reads them: pooled [B, C] as they are, a grid
    [B, g*g, C] averaged over its cells (what the encoder's global average pooling gives), in float32."""
    return (features if features.dim() == 2 else features.float().mean(dim=1)).float()


@dataclass
class FeatureView:
    """Rows of several shards, addressed by position in the requested path list; rows come back as float32
    whatever the shards store.

    Rows are read with positioned reads (os.preadv), not through the shards' memory maps: every page a
    process touches through a map counts in its resident memory until the map goes, so one epoch of
    random batches over the full ArtEmis grid (10 GB) would hold all of it. Read pages stay in the OS page
    cache instead, which the kernel shares and frees as it needs (benchmarks/bench_scale.py measures this)."""

    shards: list[np.ndarray | None]  # memory-mapped .npy shards (their shape, dtype, file, offset); None: unused
    locations: np.ndarray  # [N, 2]: (shard, row) per requested path
    row_shape: tuple[int, ...]  # [C] or [g*g, C]
    _files: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # shard -> open file

    def __len__(self) -> int:
        return len(self.locations)

    @property
    def dim(self) -> int:
        return self.row_shape[-1]

    def __getitem__(self, idx) -> np.ndarray:
        loc = self.locations[idx]
        if loc.ndim == 1:
            return np.asarray(self._rows(int(loc[0]), loc[1:])[0], dtype=np.float32)
        out = np.empty((len(loc), *self.row_shape), np.float32)
        for shard in np.unique(loc[:, 0]):
            mask = loc[:, 0] == shard
            out[mask] = self._rows(int(shard), loc[mask, 1])
        return out

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}  # open files stay with the process that opened them

    def _rows(self, shard: int, rows: np.ndarray) -> np.ndarray:
        """Rows of one shard in its stored dtype: each run of consecutive rows is one read."""
        array = self.shards[shard]
        if getattr(array, "filename", None) is None or not hasattr(os, "preadv"):
            return array[rows]  # in memory (an array, an unpickled memmap), or no positioned reads here
        unique, inverse = np.unique(rows, return_inverse=True)
        out = np.empty((len(unique), *array.shape[1:]), array.dtype)
        row_bytes = out.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
        starts = np.flatnonzero(np.diff(unique, prepend=-2) != 1)
        for start, stop in zip(starts, [*starts[1:], len(unique)]):
            self._read_into(shard, out[start:stop], array.offset + int(unique[start]) * row_bytes)
        return out[inverse]

    def _read_into(self, shard: int, target: np.ndarray, offset: int) -> None:
        if shard not in self._files:
            self._files[shard] = open(self.shards[shard].filename, "rb", buffering=0)
        buffer, done = memoryview(target.reshape(-1).view(np.uint8)), 0
        while done < len(buffer):
            got = os.preadv(self._files[shard].fileno(), [buffer[done:]], offset + done)
            if got == 0:
                raise ArtcapError(f"{self.shards[shard].filename}: feature shard shorter than its index says (changed "
                                  f"while in use?); delete it to have its images re-extracted")
            done += got


class FeatureCache:
    """One folder per (encoder, weights, image size) and feature spec. Several processes may extract
    into one cache at once: each encodes a chunk, then, holding the folder's lock, re-reads the index,
    writes its shard and the new index atomically. Shards are checked against their recorded byte size,
    so one damaged on disk is dropped and its images re-extracted, never read as garbage."""

    def __init__(self, root: str | Path, encoder: Encoder, spec: FeatureSpec | None = None,
                 runner: Callable[[torch.Tensor], EncoderOutput] | None = None):
        self.encoder, self.spec = encoder, spec or FeatureSpec()
        # What computes the features: `encoder` itself, or an onnx_backend runner of it (ONNX Runtime's
        # features equal torch's to ~1e-5, so both fill one cache)
        self.runner = runner or encoder
        self.root = Path(root)
        self.dir = self.root / encoder.key / self.spec.folder
        self.index_path = self.dir / "index.json"
        self._lock = FileLock(str(self.dir / ".lock"))  # the file is made on first use, by extraction only
        self._index = self._read_index()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._index = self._read_index()  # another process may have added shards meanwhile
            yield

    def _empty_index(self) -> dict:
        return {"version": INDEX_VERSION, "feature_dim": self.encoder.feature_dim, "kind": self.spec.kind,
                "row_shape": list(self.spec.row_shape(self.encoder.feature_dim)), "dtype": self.spec.dtype.name,
                "shards": [], "files": {}}

    def _read_index(self) -> dict:
        try:
            text = self.index_path.read_text()
        except (FileNotFoundError, NotADirectoryError):  # a new cache (or one whose root is not a folder yet)
            return self._empty_index()
        except OSError as e:  # unreadable, a folder, under /proc...: extraction's location check says more
            raise ArtcapError(f"{self.index_path}: cannot read the feature cache's index ({e.strerror or e}); "
                              f"pass another cache folder with --cache (config key feature_cache)") from None
        try:
            index = json.loads(text)
            expected = self._empty_index()
            if any(index[k] != expected[k] for k in ("version", "feature_dim", "kind", "row_shape", "dtype")):
                raise ValueError
            return self._drop_damaged_shards(index)
        except (ValueError, KeyError, TypeError):
            raise ArtcapError(f"{self.index_path}: unreadable or from another artcap version; delete {self.dir} "
                              f"to rebuild the cache") from None

    def _shard_path(self, shard: dict) -> Path:
        """A shard the index names, which must be a file of this cache's folder (the index is data)."""
        if not isinstance(shard.get("name"), str):
            raise ValueError("a shard without a name")
        return confined(self.dir, shard["name"], f"{self.index_path}: shard")

    def _drop_damaged_shards(self, index: dict) -> dict:
        """Forget shards whose file is missing or not the size written: their images count as missing."""
        damaged = set()
        for number, shard in enumerate(index["shards"]):
            path = self._shard_path(shard)
            if not path.is_file() or path.stat().st_size != shard["bytes"]:
                damaged.add(number)
                log.warning("%s: damaged feature shard (missing or truncated); its %d image(s) will be re-extracted",
                            path, shard["rows"])
        if damaged:
            index["files"] = {k: v for k, v in index["files"].items() if v[0] not in damaged}
        return index

    def missing(self, paths: Sequence[Path]) -> list[Path]:
        """Paths with no cached features, or whose file changed since they were extracted."""
        files = self._index["files"]
        out = []
        for p in paths:
            try:
                key, size, mtime = _file_key(Path(p))
            except OSError:  # gone or unreadable: extraction reads it and says why
                out.append(Path(p))
                continue
            entry = files.get(key)
            if entry is None or entry[2] != size or entry[3] != mtime:
                out.append(Path(p))
        return out

    def extract(self, paths: Sequence[Path], batch_size: int = 16, num_workers: int = 1,
                chunk_size: int = 2048, progress: bool = True, device_decode: bool | None = None) -> dict[Path, str]:
        """Encode every path not yet cached. Returns {path: reason} for images that could not be read.
        `device_decode`: decode plain JPEGs on the encoder's device (gpu_decode); None: when it is a CUDA
        device and torchvision can (else, and for every other file, the CPU decodes)."""
        device = next(self.encoder.buffers()).device
        if device_decode is None:
            from .gpu_decode import device_decoding_available

            device_decode = device_decoding_available(device)
        todo = list(dict.fromkeys(self.missing(paths)))
        failures: dict[Path, str] = {}
        if not todo:
            return failures
        require_writable_folder(self.dir, "the feature cache", f"{self.root}: cannot hold the feature cache",
                                "pass a writable folder with --cache (config key feature_cache)")
        bar = tqdm(total=len(todo), unit="img", desc=f"features {self.encoder.key} {self.spec.folder}",
                   disable=not progress, dynamic_ncols=True)
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            with self._locked():
                chunk = self.missing(chunk)  # another job may have extracted some meanwhile
            rows, done, keys = self._encode(chunk, batch_size, num_workers, failures, bar, device_decode)
            with self._locked():
                self._append_shard(chunk, rows, done, keys)
            bar.update(len(todo[start : start + chunk_size]) - len(chunk))
        bar.close()
        return failures

    def _encode(self, chunk: list[Path], batch_size: int, num_workers: int, failures: dict[Path, str],
                bar, device_decode: bool = False) -> tuple[np.ndarray, np.ndarray, list]:
        """(feature rows, which rows were encoded, each file's index key). A key is taken before its file is
        read, so a file changed meanwhile is re-extracted next time; a file that vanishes is a failure."""
        rows = np.zeros((len(chunk), *self.spec.row_shape(self.encoder.feature_dim)), self.spec.dtype)
        done = np.zeros(len(chunk), bool)
        keys = [_file_key_or_none(path) for path in chunk]
        device = next(self.encoder.buffers()).device
        with torch.inference_mode():
            batches = (device_decoded_batches(chunk, self.encoder, batch_size, num_workers, device)
                       if device_decode else decoded_batches(chunk, self.encoder, batch_size, num_workers))
            for idx, batch, errors in batches:
                for i, err in errors.items():
                    failures[chunk[i]] = err
                if batch is not None:
                    rows[idx] = self.spec.select(self.runner(batch.to(device))).float().cpu().numpy()
                    done[idx] = True
                bar.update(len(idx) + len(errors))
        for i, path in enumerate(chunk):
            if done[i] and keys[i] is None:
                failures[path] = f"{path}: changed while its features were extracted; run the same command again"
                done[i] = False
        return rows, done, keys

    def _append_shard(self, chunk: list[Path], rows: np.ndarray, done: np.ndarray, keys: list) -> None:
        if not done.any():
            return
        number = len(self._index["shards"])
        name = f"shard-{number:05d}-{os.getpid()}.npy"
        _save_npy(self.dir / name, rows[done])
        row = 0
        for key, size, mtime in (k for ok, k in zip(done, keys) if ok):
            self._index["files"][key] = [number, row, size, mtime]
            row += 1
        self._index["shards"].append({"name": name, "rows": row, "bytes": (self.dir / name).stat().st_size})
        atomic_write_json(self.index_path, self._index)

    def view(self, paths: Sequence[Path]) -> FeatureView:
        """Memory-mapped features for `paths`, in order. Every path must have been extracted."""
        files = self._index["files"]
        locations = np.empty((len(paths), 2), np.int64)
        for n, p in enumerate(paths):
            entry = files.get(str(Path(p).resolve()))
            if entry is None:
                raise ArtcapError(f"{p}: no cached features under {self.dir}; run extraction first")
            locations[n] = entry[:2]
        used = set(locations[:, 0].tolist())
        shards = [np.load(self._shard_path(shard), mmap_mode="r") if number in used else None
                  for number, shard in enumerate(self._index["shards"])]
        return FeatureView(shards, locations, self.spec.row_shape(self.encoder.feature_dim))


def cache_root() -> Path:
    """$ARTCAP_CACHE, else ~/.cache/artcap: features/ and onnx/ (the exported image network) live there."""
    return Path(os.environ.get("ARTCAP_CACHE", Path.home() / ".cache" / "artcap"))


def _save_npy(path: Path, array: np.ndarray, block_rows: int = 256) -> None:
    """np.save, written block by block through Python's file object: a full disk is then an OSError
    that io.atomic_path reports as one line (numpy's own tofile reports a short write without errno)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
        for start in range(0, len(array), block_rows):
            f.write(np.ascontiguousarray(array[start : start + block_rows]).tobytes())


def default_cache_dir() -> Path:
    """$ARTCAP_CACHE, else ~/.cache/artcap/features."""
    return cache_root() / "features"
