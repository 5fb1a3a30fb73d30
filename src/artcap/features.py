"""Stage 2b, the feature cache: encode each image once per (encoder, weights, image size, file).

Features live on disk in .npy shards opened memory-mapped, so the full ArtEmis (80K images x
2048 floats) never has to sit in RAM. `index.json` maps each image file (absolute path, size,
mtime) to its row; a changed file no longer matches and is re-extracted. Shards and the index are
written atomically after every chunk, so an interrupted extraction resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .encoders import Encoder
from .errors import ArtcapError
from .images import ImageLoadError, load_image
from .io import atomic_path, atomic_write_json

log = logging.getLogger("artcap")
INDEX_VERSION = 1


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


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


@dataclass
class FeatureView:
    """Rows of several memory-mapped shards, addressed by position in the requested path list."""

    shards: list[np.ndarray]
    locations: np.ndarray  # [N, 2]: (shard, row) per requested path

    def __len__(self) -> int:
        return len(self.locations)

    @property
    def dim(self) -> int:
        return self.shards[0].shape[1]

    def __getitem__(self, idx) -> np.ndarray:
        loc = self.locations[idx]
        if loc.ndim == 1:
            return np.asarray(self.shards[loc[0]][loc[1]], dtype=np.float32)
        out = np.empty((len(loc), self.dim), np.float32)
        for shard in np.unique(loc[:, 0]):
            mask = loc[:, 0] == shard
            out[mask] = self.shards[shard][loc[mask, 1]]
        return out


class FeatureCache:
    def __init__(self, root: str | Path, encoder: Encoder):
        self.encoder = encoder
        self.dir = Path(root) / encoder.key
        self.index_path = self.dir / "index.json"
        self._index = self._read_index()

    def _read_index(self) -> dict:
        if not self.index_path.exists():
            return {"version": INDEX_VERSION, "feature_dim": self.encoder.feature_dim, "shards": [], "files": {}}
        try:
            index = json.loads(self.index_path.read_text())
            assert index["version"] == INDEX_VERSION and index["feature_dim"] == self.encoder.feature_dim
            return index
        except (ValueError, KeyError, AssertionError):
            raise ArtcapError(f"{self.index_path}: unreadable or from another version; delete {self.dir} to rebuild") from None

    def missing(self, paths: Sequence[Path]) -> list[Path]:
        """Paths with no cached features, or whose file changed since they were extracted."""
        files = self._index["files"]
        out = []
        for p in paths:
            key, size, mtime = _file_key(Path(p))
            entry = files.get(key)
            if entry is None or entry[2] != size or entry[3] != mtime:
                out.append(Path(p))
        return out

    def extract(self, paths: Sequence[Path], batch_size: int = 16, num_workers: int = 1,
                chunk_size: int = 2048, progress: bool = True) -> dict[Path, str]:
        """Encode every path not yet cached. Returns {path: reason} for images that could not be read."""
        todo = list(dict.fromkeys(self.missing(paths)))
        failures: dict[Path, str] = {}
        if not todo:
            return failures
        self.dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(todo), unit="img", desc=f"features {self.encoder.key}", disable=not progress,
                   dynamic_ncols=True)
        device = next(self.encoder.buffers()).device
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            rows = np.zeros((len(chunk), self.encoder.feature_dim), np.float32)
            done = np.zeros(len(chunk), bool)
            with torch.inference_mode():
                for idx, batch, errors in decoded_batches(chunk, self.encoder, batch_size, num_workers):
                    for i, err in errors.items():
                        failures[chunk[i]] = err
                    if batch is not None:
                        rows[idx] = self.encoder(batch.to(device)).pooled.float().cpu().numpy()
                        done[idx] = True
                    bar.update(len(idx) + len(errors))
            self._append_shard(chunk, rows, done)
        bar.close()
        return failures

    def _append_shard(self, chunk: list[Path], rows: np.ndarray, done: np.ndarray) -> None:
        if not done.any():
            return
        shard_name = f"shard-{len(self._index['shards']):05d}.npy"
        with atomic_path(self.dir / shard_name) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, rows[done])
        row = 0
        for path, ok in zip(chunk, done):
            if ok:
                key, size, mtime = _file_key(path)
                self._index["files"][key] = [len(self._index["shards"]), row, size, mtime]
                row += 1
        self._index["shards"].append(shard_name)
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
        shards = [np.load(self.dir / name, mmap_mode="r") for name in self._index["shards"]]
        return FeatureView(shards, locations)


def default_cache_dir() -> Path:
    """$ARTCAP_CACHE, else ~/.cache/artcap/features."""
    return Path(os.environ.get("ARTCAP_CACHE", Path.home() / ".cache" / "artcap")) / "features"
