"""Folder jobs on Ray: an actor pool captions, the driver writes the same record file.

The slow tests share one local Ray instance (starting Ray costs seconds); a killed driver joins it by
its address, as a driver joins a real cluster.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from artcap.caption_files import CaptionResult
from artcap.errors import ArtcapError
from artcap.ray_job import RAY_MISSING, ModelBundle, RayOptions, actor_cpus, in_order


def paintings(shared_data: Path, n: int) -> list[Path]:
    return sorted((shared_data / "artemis-mini" / "wikiart").rglob("*.jpg"))[:n]


def make_folder(root: Path, sources: list[Path]) -> Path:
    """Real paintings in style sub-folders, plus one cut (corrupt) file."""
    for src in sources:
        dest = root / src.parent.name / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    (root / "broken.jpg").write_bytes(sources[0].read_bytes()[:500])
    return root


def without_time(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in path.read_text(encoding="utf-8").splitlines()]


# ---- fast: the pieces -------------------------------------------------------------------------------

@pytest.mark.parametrize("cluster, node, actors, expected", [
    (2, 2, 2, 0.5),  # the 2-core measurement: 1 CPU each deadlocks against Ray Data's tasks
    (2, 2, 1, 1.0),
    (1, 1, 2, 0.25),
    (64, 16, 8, 7.0),  # whole CPUs, one torch thread each
    (64, 4, 2, 4.0),  # never more than one node has: an actor cannot span nodes
])
def test_actor_cpus_leave_room_for_ray_datas_tasks(cluster, node, actors, expected):
    cpus = actor_cpus(cluster, node, actors)
    assert cpus == expected
    assert cpus * actors <= max(cluster - 1, cluster / 2)


def test_results_in_any_order_come_out_in_the_jobs_order():
    paths = [Path(f"img{i}.jpg") for i in range(50)]
    rows = [(i, pickle.dumps((None if i % 7 else f"bad {i}", None))) for i in range(50)]
    random.Random(0).shuffle(rows)
    results = list(in_order(paths, rows))
    assert [r.path for r in results] == paths
    assert [r.error for r in results] == [None if i % 7 else f"bad {i}" for i in range(50)]
    assert all(isinstance(r, CaptionResult) for r in results)


def test_a_missing_result_is_one_line_not_a_silently_short_file():
    rows = [(0, pickle.dumps((None, None))), (2, pickle.dumps((None, None)))]
    got = []
    with pytest.raises(ArtcapError, match="returned 1 of 3 results"):
        got.extend(in_order([Path("a"), Path("b"), Path("c")], rows))
    assert [r.path for r in got] == [Path("a")]  # what came in order was handed on


def test_model_bundle_unpacks_the_same_bytes_once(model_dir, tmp_path):
    bundle = ModelBundle.of(model_dir)
    folder = bundle.unpack(tmp_path)
    assert sorted(bundle.files) == sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    assert all((folder / name).read_bytes() == (model_dir / name).read_bytes() for name in bundle.files)
    assert bundle.unpack(tmp_path) == folder and len(list(tmp_path.iterdir())) == 1  # a second actor reuses it
    changed = ModelBundle({**bundle.files, "config.json": bundle.files["config.json"] + b" "}, "")
    assert ModelBundle.of(folder).digest == bundle.digest
    assert ModelBundle.of(folder).digest != ModelBundle.of(_write(tmp_path / "other", changed.files)).digest


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("kw", [dict(num_actors=0), dict(batch_size=0), dict(images_per_task=0), dict(address="")])
def test_bad_options_are_one_line(kw):
    with pytest.raises(ArtcapError) as e:
        RayOptions(**kw)
    assert "\n" not in str(e.value)


def test_without_ray_installed_it_is_one_line_and_nothing_is_written(model_dir, tmp_path):
    out = tmp_path / "captions.jsonl"
    script = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        from artcap.errors import ArtcapError
        from artcap.ray_job import RayOptions, caption_collection_ray
        try:
            caption_collection_ray({str(model_dir)!r}, [{str(tmp_path)!r}], {str(out)!r}, RayOptions("local"))
        except ArtcapError as e:
            print(e)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [RAY_MISSING]
    assert "pip install 'artcap[ray]'" in done.stdout
    assert not out.exists() and not list(tmp_path.iterdir())


# ---- slow: a real local Ray instance ----------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_address():
    """One local Ray instance for this module's tests; its address lets other processes join it."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def collection(shared_data, tmp_path_factory):
    """20 real paintings and a corrupt file, with the single-process job's finished record file."""
    import torch

    from artcap.captioner import Captioner
    from artcap.collection import caption_collection

    root = tmp_path_factory.mktemp("ray")
    folder = make_folder(root / "collection", paintings(shared_data, 20))
    reference = root / "single.jsonl"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor runs (0.5 CPU each); on a loaded machine also the fastest
    try:
        caption_collection(Captioner.load(None, backend="torch"), [folder], reference, recursive=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    return folder, reference


def _ray_job(folder: Path, out: Path, address: str, **options):
    from artcap.ray_job import caption_collection_ray

    return caption_collection_ray(None, [folder], out, RayOptions(address, backend="torch", **options),
                                  recursive=True, progress=False)


@pytest.mark.slow
def test_two_actors_write_the_single_process_jobs_file(collection, ray_address, tmp_path):
    folder, reference = collection
    out = tmp_path / "ray.jsonl"
    # 3 images per actor call: the batches interleave, so results arrive out of order
    summary = _ray_job(folder, out, ray_address, num_actors=2, images_per_task=3)

    assert without_time(out) == without_time(reference)  # same records, same order, each image once
    assert summary.total == summary.captioned == 21
    assert [path for path, _ in summary.errors] == ["broken.jpg"]
    manifests = [json.loads((path.parent / f"{path.name}.job.json").read_text()) for path in (out, reference)]
    assert [{k: v for k, v in m.items() if k != "journal"} for m in manifests] == \
        [{k: v for k, v in manifests[1].items() if k != "journal"}] * 2  # the same job identity (journal: its own name)
    assert [m["journal"] for m in manifests] == ["ray.jsonl", "single.jsonl"]


@pytest.mark.slow
def test_a_failed_image_fixed_is_retried_through_ray_and_only_it(collection, ray_address, shared_data, tmp_path):
    sources = paintings(shared_data, 4)
    folder = make_folder(tmp_path / "c", sources)
    out = tmp_path / "captions.jsonl"
    first_summary = _ray_job(folder, out, ray_address, num_actors=2, images_per_task=2)
    first = out.read_bytes().splitlines()
    assert [path for path, _ in first_summary.errors] == ["broken.jpg"]

    shutil.copyfile(sources[1], folder / "broken.jpg")  # the user replaces the file, as the error says
    summary = _ray_job(folder, out, ray_address, num_actors=2, images_per_task=2)

    second = out.read_bytes().splitlines()
    assert (summary.skipped, summary.retried, summary.captioned, summary.errors) == (4, 1, 1, [])
    changed = [i for i, (a, b) in enumerate(zip(first, second)) if a != b]
    assert len(second) == len(first) and [json.loads(first[i])["path"] for i in changed] == ["broken.jpg"]
    fixed = json.loads(second[changed[0]])
    assert fixed["error"] is None and fixed["caption"] == json.loads(second[1])["caption"]  # the same painting


@pytest.mark.slow
def test_a_ray_driver_killed_mid_job_resumes_with_no_duplicates(collection, ray_address, tmp_path):
    folder, reference = collection
    out = tmp_path / "killed.jsonl"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from artcap.ray_job import RayOptions, caption_collection_ray
        caption_collection_ray(None, [Path({str(folder)!r})], Path({str(out)!r}),
                               RayOptions({ray_address!r}, num_actors=2, backend="torch", images_per_task=1),
                               recursive=True, progress=False)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)  # the driver (a Ray client of the cluster) dies mid-job
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    before = [json.loads(line)["path"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert 3 <= len(before) < 21, "the job was not killed mid-run"

    # resumed by the single-process job: a Ray job's file is an ordinary record file
    from artcap.captioner import Captioner
    from artcap.collection import caption_collection

    summary = caption_collection(Captioner.load(None, backend="torch"), [folder], out, recursive=True, progress=False)

    records = without_time(out)
    assert len({r["path"] for r in records}) == len(records) == 21  # nothing twice, nothing lost
    assert records == without_time(reference)  # the file an uninterrupted single-process job writes
    assert summary.skipped == len(before) - ("broken.jpg" in before)  # an error record is tried again
    assert summary.captioned == 21 - summary.skipped


def test_an_address_where_no_cluster_answers_is_one_line_and_nothing_is_written(model_dir, tmp_path):
    pytest.importorskip("ray")
    from artcap.ray_job import caption_collection_ray

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out" / "captions.jsonl"
    started = time.monotonic()
    with pytest.raises(ArtcapError, match=f"--ray 127.0.0.1:{port}: no Ray cluster answers there") as e:
        caption_collection_ray(model_dir, [tmp_path], out, RayOptions(f"127.0.0.1:{port}"), progress=False)
    assert "\n" not in str(e.value) and "ray start --head" in str(e.value)
    assert time.monotonic() - started < 30  # Ray alone retries for minutes
    assert not out.parent.exists()


def test_the_ray_flags_are_checked_in_one_line(tmp_path, capsys):
    from artcap.cli import main

    assert main(["caption", str(tmp_path), "--ray"]) == 2
    assert "--ray writes a record file: add --out" in capsys.readouterr().err
    assert main(["caption", str(tmp_path), "--out", str(tmp_path / "x.jsonl"), "--num-actors", "2"]) == 2
    assert "--num-actors needs --ray" in capsys.readouterr().err
