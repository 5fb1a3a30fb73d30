"""A folder job on a Ray cluster: an actor pool captions, this process writes the record file.

    summary = caption_collection_ray("default", ["./collection"], "captions.jsonl", RayOptions("local", 2))

Ray Data turns the job's image list into a dataset; an actor pool (one loaded `Captioner` per
actor) captions it in small batches and sends back each image's result. The driver (this process)
stays the record file's only writer: it is `collection.caption_collection` with a `RayEngine`, so a
Ray job has every guarantee of the single-process one (manifest and job identity, resume after
kill -9, retry of error records, one record per image) and its finished file is the single-process
job's, record for record (only `time` differs).

Order: results arrive in whatever order the actors finish; the engine holds early ones back and
hands them on in the job's order, so the file is always what a single-process job would have
written so far. A kill -9 loses at most the results held back (a few batches), which the next run
captions again.

The model travels with the job: its folder's files (a few MB) go through Ray's object store and
each node unpacks them once into its temporary folder, so a shipped model, a local folder or an
hf:... model work on every node without a shared path or network access. The images do not
travel: every node must read them at the same path (a shared file system), as the driver does.
XMP sidecars and embedded metadata are written by the driver, which has the files.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .caption_files import DEFAULT_BATCH_SIZE, CaptionResult, caption_paths
from .collection import CollectionSummary, caption_collection
from .decode import DecodingConfig
from .errors import ArtcapError
from .paths import walk_folder

RAY_MISSING = "Ray is not installed: pip install 'artcap[ray]'"
LOCAL = "local"  # --ray local: start a Ray instance on this machine (testing, one big machine)
DEFAULT_IMAGES_PER_TASK = 16  # images per actor call: small enough to spread a job, big enough to batch decoding
MAX_BLOCKS = 10_000  # Ray Data's bookkeeping grows with blocks; beyond this a block holds several actor calls

log = logging.getLogger(__name__)


def require_ray():
    """The ray module (with Ray Data), or the one-line ArtcapError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the job needs Ray Data, not only Ray core
    except ImportError:
        raise ArtcapError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray job runs."""

    address: str = LOCAL  # "local" starts a Ray instance here; else a cluster's address (host:port, ray://..., auto)
    num_actors: int | None = None  # captioning actors; None: one per CPU the cluster can spare (at least 1)
    backend: str = "auto"  # what runs each actor's image network (Captioner.load's backend)
    batch_size: int = DEFAULT_BATCH_SIZE  # images per CNN call inside an actor
    images_per_task: int = DEFAULT_IMAGES_PER_TASK

    def __post_init__(self) -> None:
        if not self.address:
            raise ArtcapError("--ray needs 'local' or a cluster's address (host:port or ray://host:port)")
        for name in ("num_actors", "batch_size", "images_per_task"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ArtcapError(f"--{name.replace('_', '-')} must be 1 or more, got {value}")


# ---- the model, shipped through the object store --------------------------------------------------

@dataclass(frozen=True)
class ModelBundle:
    """A model folder's files as bytes: what an actor on any node needs to load the driver's model."""

    files: dict[str, bytes] = field(repr=False)  # relative path -> contents
    digest: str  # of every name and byte: the unpacked folder's name, shared by the actors of a node

    @classmethod
    def of(cls, folder: Path) -> "ModelBundle":
        """The files under `folder`, listed by paths.walk_folder: one ArtcapError line, before anything is
        read, for a link out of the folder (its target is not the model's to ship), broken or looping."""
        entries = walk_folder(Path(folder), recursive=True, wanted=lambda name: True)
        refused = [entry for entry in entries if entry.problem]
        if refused:
            more = f" ({len(refused) - 1} more file(s) like it)" if len(refused) > 1 else ""
            raise ArtcapError(f"{refused[0].path}: {refused[0].problem}{more}; the model cannot be shipped to Ray")
        files = {e.path.relative_to(folder).as_posix(): e.path.read_bytes() for e in entries}
        digest = hashlib.sha256()
        for name, data in files.items():
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return cls(files, digest.hexdigest()[:16])

    def unpack(self, root: Path) -> Path:
        """The folder under `root` holding these files; written once per node (atomically: written
        aside, then renamed, so an actor never loads a half-written model)."""
        target = root / self.digest
        if target.is_dir():
            return target
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.digest}.", dir=root))
        for name, data in self.files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        try:
            staging.rename(target)
        except OSError:  # another actor on this node got there first: its copy is the same bytes
            shutil.rmtree(staging, ignore_errors=True)
        return target


def model_cache_root() -> Path:
    return Path(tempfile.gettempdir()) / "artcap-ray-models"


# ---- the actors ------------------------------------------------------------------------------------

class CaptionActor:
    """One loaded Captioner; called with a batch of {"index", "path"}, returns {"index", "result"},
    each result the pickled (error, Description) of one image: captions keep every field exactly."""

    def __init__(self, bundle: ModelBundle, backend: str, decoding: dict[str, Any], emotion: str | None,
                 batch_size: int, threads: int):
        import torch

        from .captioner import Captioner

        torch.set_num_threads(threads)  # the CPUs Ray gave this actor, not every core of the node
        self.captioner = Captioner.load(bundle.unpack(model_cache_root()), backend=backend)
        self.decoding = DecodingConfig.from_dict(decoding)
        self.emotion, self.batch_size = emotion, batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        paths = [Path(p) for p in batch["path"]]
        results = caption_paths(self.captioner, paths, batch_size=self.batch_size, num_workers=0,
                                decoding=self.decoding, emotion=self.emotion)
        return {"index": batch["index"], "result": [pickle.dumps((r.error, r.description)) for r in results]}


def actor_cpus(cluster_cpus: float, node_cpus: float, num_actors: int) -> float:
    """CPUs each actor asks Ray for. One CPU is left to Ray Data's own tasks and the driver (asking
    for all of them deadlocks the pool against Ray Data's tasks on a small machine); the rest is shared
    out: whole CPUs where there are enough (one torch thread each), at most a node's, else a share."""
    spare = cluster_cpus - 1 if cluster_cpus > 1 else cluster_cpus / 2
    share = spare / num_actors
    if share >= 1:
        return float(min(math.floor(share), max(1, math.floor(node_cpus))))
    return max(0.01, math.floor(share * 100) / 100)


def default_num_actors(cluster_cpus: float) -> int:
    return max(1, int(cluster_cpus) - 1)


# ---- the engine: the driver's side ----------------------------------------------------------------

class RayEngine:
    """collection.CaptionEngine on Ray: joins (or starts) Ray when there is work, captions the paths
    on an actor pool and yields the results in the order of the paths."""

    def __init__(self, model_folder: Path, options: RayOptions):
        self.model_folder, self.options = Path(model_folder), options

    def __call__(self, paths: list[Path], decoding: DecodingConfig, emotion: str | None) -> Iterator[CaptionResult]:
        if not paths:
            return  # nothing to do: no cluster is started or joined
        ray = require_ray()
        started_here = _connect(ray, self.options.address)
        try:
            yield from self._run(ray, paths, decoding, emotion)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray, paths: list[Path], decoding: DecodingConfig, emotion: str | None) -> Iterator[CaptionResult]:
        cluster_cpus = float(ray.cluster_resources().get("CPU", 1))
        node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
        # One block per actor call (up to a limit): a single block would go to a single actor. No more
        # actors than blocks: a resume with a few images left does not start a whole pool.
        blocks = min(MAX_BLOCKS, math.ceil(len(paths) / self.options.images_per_task))
        num_actors = min(blocks, self.options.num_actors or default_num_actors(cluster_cpus))
        cpus = actor_cpus(cluster_cpus, node_cpus, num_actors)
        log.info("Ray: %d actors at %.2f CPU each (cluster: %g CPUs)", num_actors, cpus, cluster_cpus)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bar counts written records
        if hasattr(context, "print_on_execution_start"):
            context.print_on_execution_start = False
        dataset = ray.data.from_items([{"index": i, "path": str(p)} for i, p in enumerate(paths)],
                                      override_num_blocks=blocks)
        captioned = dataset.map_batches(
            CaptionActor, batch_size=self.options.images_per_task, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=cpus,
            fn_constructor_kwargs=dict(bundle=ModelBundle.of(self.model_folder), backend=self.options.backend,
                                       decoding=decoding.to_dict(), emotion=emotion,
                                       batch_size=self.options.batch_size, threads=max(1, int(cpus))))
        try:
            yield from in_order(paths, _rows(captioned))
        except ray.exceptions.RayError as e:
            raise ArtcapError(f"the Ray job failed ({_gist(e)}); every record written so far is kept: "
                              f"run the same command again to resume") from None


def _rows(dataset) -> Iterator[tuple[int, bytes]]:
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        yield from zip(batch["index"].tolist(), batch["result"])


def in_order(paths: Sequence[Path], rows: Iterable[tuple[int, bytes]]) -> Iterator[CaptionResult]:
    """(index, pickled result) rows in any order -> one CaptionResult per path, in the order of `paths`:
    rows that come early wait until every earlier one is there."""
    waiting: dict[int, bytes] = {}
    next_index = 0
    for index, result in rows:
        waiting[index] = result
        while next_index in waiting:
            error, description = pickle.loads(waiting.pop(next_index))
            yield CaptionResult(paths[next_index], description, error)
            next_index += 1
    if next_index != len(paths):
        raise ArtcapError(f"the Ray job returned {next_index} of {len(paths)} results; run the same command "
                          f"again to caption the rest")


def _connect(ray, address: str) -> bool:
    """Start or join Ray (quietly: the driver shows its own progress); True when started here, so it
    is shut down at the end. A process already connected (a test, a notebook) keeps its connection."""
    if ray.is_initialized():
        return False
    # The driver's C++ core would log Ray Data's internal warnings to stderr (read once, at init);
    # errors still raise. A level the user set is kept.
    quiet = "RAY_BACKEND_LOG_LEVEL" not in os.environ
    if quiet:
        os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise ArtcapError(f"--ray {address}: cannot start or join Ray ({_gist(e)}); for a cluster, run "
                          f"'ray start --head' on its head node and pass its address (host:6379)") from None
    finally:
        if quiet:
            del os.environ["RAY_BACKEND_LOG_LEVEL"]
    # Ray Data logs a failed actor's traceback before raising it; the driver says it in one line.
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return True


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A cluster's host:port (or ray://host:port) must answer within `timeout` seconds: Ray itself
    retries an unreachable address for minutes, logging warnings."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if address == LOCAL or match is None:  # "local", "auto": Ray finds (or refuses) them at once
        return
    try:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=timeout).close()
    except OSError as e:
        raise ArtcapError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e}); start one with "
                          f"'ray start --head' and pass the address it prints, or use --ray local") from None


def _gist(error: BaseException) -> str:
    """An exception's last non-blank line: for an error raised in an actor, the error itself."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else type(error).__name__


# ---- a whole collection -----------------------------------------------------------------------------

def caption_collection_ray(model: str | Path | None, inputs: Sequence[str | Path], out: str | Path,
                           options: RayOptions, **job: Any) -> CollectionSummary:
    """`collection.caption_collection` with the captioning done on Ray (see the module docstring);
    `model` is a model spec (Captioner.load's), `job` caption_collection's keywords (recursive,
    decoding and any DecodingConfig field, emotion, metadata, progress). Raises ArtcapError when Ray is missing."""
    require_ray()  # before the model loads: a missing Ray is the first thing said
    check_reachable(options.address)
    from .captioner import Captioner

    # The driver's model names the job (its id, the decoding) and never sees an image: torch loads
    # fastest. The actors load the same files with the backend asked for.
    captioner = Captioner.load(model, backend="torch")
    engine = RayEngine(captioner.folder.path, options)
    return caption_collection(captioner, inputs, out, engine=engine, **job)
