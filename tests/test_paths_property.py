"""Property tests (hypothesis) for where artcap reads and writes. Each generator makes new cases of a class:

1. paths composed from data stay inside the folder the user gave: CSV rows, a model folder being pushed or
   shipped to Ray, the --xmp-dir mirror and sidecars, a feature cache's index, whatever mix of `..`, absolute
   paths and links;
2. a folder walk accounts for every entry named like an image: broken and looping links, links out of the
   folder, FIFOs and sockets, files that vanish mid-job, unreadable files and folders (as a non-root user,
   since root reads through chmod 000) each end as a failed record, never a silent skip;
3. no traceback reaches a user: stdout to a full disk or past a file-size limit, and a feature cache that is
   a file, a pseudo file system or a read-only one (/sys) end in one line and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from artcap.errors import ArtcapError

def bounded(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ARTCAP = [sys.executable, "-m", "artcap"]
EXTENSIONS = (".jpg", ".JPG", ".jpeg", ".png", ".PNG", ".webp", ".tif", ".gif", ".bmp")
UTTERANCE = "a quiet painting of a river under a grey sky"


def write_image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "PNG")  # told by content: any image suffix reads
    return path


@contextlib.contextmanager
def scratch():
    """A fresh folder per generated case (hypothesis runs many cases in one test function)."""
    folder = Path(tempfile.mkdtemp(prefix="artcap-paths-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from artcap.cli import main

    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err: str, *names: str) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])


# ==== 1. paths composed from data stay inside their root ======================================================

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=10)


@dataclass
class Escape:
    relative: str  # what the data names, relative to the image folder (or an absolute path)
    how: str


@st.composite
def escapes(draw, images: Path, secret: Path, inside: str, suffixes: tuple[str, ...]) -> Escape:
    """A name that reaches `secret` (outside `images`) from `images`: `..` with detours through folders that
    exist, an absolute path, or a link made here inside `images` (to the file or to its folder)."""
    how = draw(st.sampled_from(["dotdot", "absolute", "file link", "folder link"]))
    if how == "absolute":
        return Escape(str(secret), how)
    if how == "file link":
        link = images / inside / f"{draw(names)}{draw(st.sampled_from(suffixes))}"
        assume(not link.exists())
        link.symlink_to(secret if draw(st.booleans()) else os.path.relpath(secret, link.parent))
        return Escape(link.relative_to(images).as_posix(), how)
    if how == "folder link":
        link = images / draw(names)
        assume(not link.exists())
        link.symlink_to(secret.parent)
        return Escape(f"{link.name}/{secret.name}", how)
    ups = len(images.relative_to(secret.parent.parent).parts)
    parts = [".."] * ups + [secret.parent.name, secret.name]
    for _ in range(draw(st.integers(0, 3))):  # detours that resolve to the same place: "./" anywhere, or
        at = draw(st.integers(0, len(parts) - 1))  # "Style/../" where the path is still inside `images`
        parts[at:at] = [inside, ".."] if at == 0 and draw(st.booleans()) else ["."]
    return Escape("/".join(parts), how)


def csv_layout(folder: Path, depth: int) -> tuple[Path, Path]:
    """(images, secret): an image folder with good paintings good0..good3, and an image outside it."""
    images = folder.joinpath(*[f"d{i}" for i in range(depth)], "images")
    for n in range(4):
        write_image(images / "Style" / f"good{n}.jpg", seed=n + 2)
    secret = write_image(folder / "outside" / "secret.jpg", seed=1)
    return images, secret


def artemis_row(relative: str, draw) -> tuple[str, str]:
    """art_style, painting naming `relative` (which ends in .jpg), split at one of its slashes."""
    stem = relative[: -len(".jpg")]
    slashes = [i for i, c in enumerate(stem) if c == "/" and 0 < i < len(stem) - 1]
    assume(slashes)
    cut = draw(st.sampled_from(slashes))
    return stem[:cut], stem[cut + 1:]


def write_rows(path: Path, kind: str, rows: list[tuple[str, str]]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if kind == "artemis":
            writer.writerow(["art_style", "painting", "emotion", "utterance", "repetition"])
            writer.writerows([style, painting, "awe", UTTERANCE, 1] for style, painting in rows)
        else:
            writer.writerow(["image", "caption"])
            writer.writerows([name, UTTERANCE] for name, _ in rows)


@st.composite
def csv_cases(draw, folder: Path):
    """(csv, images, secret, the bad row's line, how it escapes): a CSV of good rows and one that leads out."""
    images, secret = csv_layout(folder, draw(st.integers(0, 2)))
    kind = draw(st.sampled_from(["artemis", "flickr"]))
    escape = draw(escapes(images, secret, "Style", (".jpg",) if kind == "artemis" else EXTENSIONS))
    if kind == "artemis":
        assume(escape.relative.endswith(".jpg"))
        bad = artemis_row(escape.relative, draw) if escape.how != "absolute" else (str(secret.parent), "secret")
        good = [("Style", f"good{n}") for n in range(4)]
    else:
        bad, good = (escape.relative, ""), [(f"Style/good{n}.jpg", "") for n in range(4)]
    rows = good[:draw(st.integers(0, 3))]
    at = draw(st.integers(0, len(rows)))
    rows.insert(at, bad)
    csv_path = folder / "data.csv"
    write_rows(csv_path, kind, rows)
    return csv_path, images, secret, at + 2, escape.how


@bounded(60)
@given(data=st.data())
def test_csv_rows_that_lead_outside_the_image_folder_are_refused_naming_the_row(data):
    from artcap.data import read_annotations

    with scratch() as folder:
        csv_path, images, secret, line, how = data.draw(csv_cases(folder))
        with pytest.raises(ArtcapError) as refused:
            read_annotations(csv_path, images)
        message = str(refused.value)
        assert "\n" not in message and f"row {line}:" in message and "outside" in message, (how, message)
        try:  # with --skip-missing the row is dropped with a warning, and nothing outside is ever read
            kept = read_annotations(csv_path, images, skip_missing=True)
        except ArtcapError:  # the bad row was the only one
            return
        real_images = os.path.realpath(images)
        assert all(os.path.realpath(a.image_path).startswith(real_images + os.sep) for a in kept)


@bounded(8)
@given(data=st.data(), command=st.sampled_from(["features", "train", "evaluate"]))
def test_commands_refuse_a_csv_row_leading_outside_in_one_line_and_cache_nothing(data, command, capsys, model_dir):
    with scratch() as folder:
        csv_path, images, _, line, _ = data.draw(csv_cases(folder))
        cache = folder / "cache"
        argv = {"features": ["features", "--data", str(csv_path), "--images", str(images), "--cache", str(cache)],
                "train": ["train", "--data", str(csv_path), "--images", str(images), "--cache", str(cache),
                          "--set", f"run.out={folder / 'run'}"],
                "evaluate": ["evaluate", str(model_dir), "--data", str(csv_path), "--images", str(images),
                             "--cache", str(cache), "--split", "all", "--no-meteor"]}[command]
        backend = ["--backend", "torch"] if command != "train" else []
        code, _, err = run_cli(["-q", *argv, *backend], capsys)
        assert code != 0
        assert_one_line(err, f"row {line}")
        assert not cache.exists() or not any(cache.rglob("*.npy")), "features were extracted"


@st.composite
def model_folder_links(draw, folder: Path, outside: Path) -> tuple[str, str]:
    """(name, what): one link placed in a model folder that must stop a push: out of the folder (to a file,
    relative or absolute, possibly replacing a file the push reads: config.json, the card), broken or looping."""
    name = draw(st.one_of(st.sampled_from(["config.json", "vocab.json", "README.md", "MODEL_CARD.md",
                                           "model.safetensors"]), names.map(lambda n: n + ".bin")))
    what = draw(st.sampled_from(["out", "out relative", "broken", "loop"]))
    link = folder / name
    target = {"out": outside, "out relative": Path(os.path.relpath(outside, folder)),
              "broken": folder / "missing.bin", "loop": link}[what]
    if what == "out" and name in ("config.json", "vocab.json", "model.safetensors"):
        target = outside.with_name(name)
        shutil.copy(link, target)  # a working file moved out: only the link is wrong
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    return name, what


def model_beside_a_secret(root: Path, model_dir: Path, secret: str) -> tuple[Path, Path]:
    """A copy of the shipped model folder at root/model and, outside it, root/private/secret.txt
    (model_folder_links moves a file the model reads beside it)."""
    model = root / "model"
    shutil.copytree(model_dir, model)
    outside = root / "private" / "secret.txt"
    outside.parent.mkdir()
    outside.write_text(secret)
    return model, outside


@bounded(25)
@given(data=st.data())
def test_a_push_never_uploads_or_reads_through_a_link_out_of_the_model_folder(data, model_dir, capsys):
    with scratch() as root:
        model, outside = model_beside_a_secret(root, model_dir, "---\nlicense: mine\n---\nprivate words\n")
        name, what = data.draw(model_folder_links(model, outside))
        code, out, err = run_cli(["-q", "push", str(model), "someone/model", "--dry-run"], capsys)
        assert code != 0, (name, what, out[:300])
        assert_one_line(err, name)
        assert "private words" not in out and "would upload" not in out


@bounded(15)
@given(data=st.data())
def test_a_ray_job_never_ships_a_file_through_a_link_out_of_the_model_folder(data, model_dir):
    from artcap.ray_job import ModelBundle

    with scratch() as root:
        model, outside = model_beside_a_secret(root, model_dir, "private words\n")
        name, what = data.draw(model_folder_links(model, outside))
        if data.draw(st.booleans()):  # the link one folder down (moved as it is: out, or now broken)
            (model / "sub").mkdir()
            (model / name).rename(model / "sub" / name)
        with pytest.raises(ArtcapError) as refused:
            ModelBundle.of(model)
        message = str(refused.value)
        assert "\n" not in message and name in message and "Ray" in message, (name, what, message)


@st.composite
def mirror_cases(draw, root: Path):
    """(collection, xmp_dir, outside, images): a collection in sub-folders, and a mirror folder in which a
    link (at the depth of one image's folder, or as the sidecar itself) leads out of it."""
    collection, xmp_dir, outside = root / "collection", root / "meta", root / "outside"
    outside.mkdir()
    folders = draw(st.lists(st.lists(names, min_size=0, max_size=2).map(tuple), min_size=1, max_size=3, unique=True))
    images = [write_image(collection.joinpath(*parts, f"{draw(names)}.jpg")) for parts in folders]
    victim = draw(st.sampled_from(images)).relative_to(collection)
    if draw(st.booleans()) and victim.parent.parts:  # a folder of the mirror is a link out
        link = xmp_dir / victim.parent
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(outside, target_is_directory=True)
        affected = {i for i in images if i.relative_to(collection).parts[:len(victim.parent.parts)]
                    == victim.parent.parts}
    else:  # the sidecar itself is a link to a sidecar outside
        sidecar = xmp_dir / victim.parent / (victim.name + ".xmp")
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        (outside / "theirs.xmp").write_text(SECRET_XMP)
        sidecar.symlink_to(outside / "theirs.xmp")
        affected = {collection / victim}
    return collection, xmp_dir, outside, images, affected


SECRET_XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="private-words"/>'
              '</rdf:RDF></x:xmpmeta>')


def tree(folder: Path) -> dict[str, bytes]:
    """Every regular file under `folder` (links neither followed nor read) -> its bytes."""
    files = {}
    for parent, _, names_here in os.walk(folder):
        for name in names_here:
            path = Path(parent) / name
            if not path.is_symlink():
                files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return files


@bounded(25)
@given(data=st.data())
def test_the_xmp_mirror_never_reads_or_writes_through_a_link_out_of_it(data):
    from artcap.xmp import MetadataWriter

    with scratch() as root:
        collection, xmp_dir, outside, images, affected = data.draw(mirror_cases(root))
        before = tree(outside)
        with MetadataWriter(sidecars=True, xmp_dir=xmp_dir, root=collection) as writer:
            errors = {image: writer.write(image, "a river", "model", {"beam": 1}) for image in images}
        assert tree(outside) == before, "a sidecar was written outside the mirror"
        written = b"".join(tree(xmp_dir).values())
        assert b"private-words" not in written, "a sidecar outside the mirror was read into it"
        for image, error in errors.items():
            if image in affected:
                assert error and str(image) in error and "\n" not in error, error
            else:
                assert error is None, error


@pytest.fixture(scope="module")
def small_encoder():
    from artcap.encoders import create_encoder

    return create_encoder("efficientnet-lite0", weights="random", image_size=64).eval()


@bounded(15)
@given(how=st.sampled_from(["dotdot", "absolute", "link", "nested dotdot"]), up=st.integers(1, 4))
def test_a_feature_index_naming_a_shard_outside_the_cache_is_refused(small_encoder, how, up):
    from artcap.features import FeatureCache

    with scratch() as root:
        paintings = [write_image(root / "images" / f"{i}.png", seed=i) for i in range(2)]
        cache = FeatureCache(root / "cache", small_encoder)
        assert not cache.extract(paintings, num_workers=0, progress=False)
        index = json.loads(cache.index_path.read_text())
        shard = cache.dir / index["shards"][0]["name"]
        elsewhere = root.joinpath(*[f"e{i}" for i in range(up)]) / "copy.npy"  # the same bytes, outside the cache
        elsewhere.parent.mkdir(parents=True)
        shutil.copy(shard, elsewhere)
        name = {"dotdot": os.path.relpath(elsewhere, cache.dir), "absolute": str(elsewhere),
                "nested dotdot": "x/../" + os.path.relpath(elsewhere, cache.dir), "link": "linked.npy"}[how]
        if how == "link":
            (cache.dir / "linked.npy").symlink_to(elsewhere)
        shard.unlink()
        index["shards"][0]["name"] = name
        cache.index_path.write_text(json.dumps(index))
        with pytest.raises(ArtcapError) as refused:
            FeatureCache(root / "cache", small_encoder).view(paintings)
        assert "index.json" in str(refused.value) and "\n" not in str(refused.value)


# ==== 2. a folder walk reports everything it cannot read ======================================================

ENTRY_KINDS = ("image", "broken link", "self loop", "two-link loop", "link out", "fifo", "socket", "link to fifo",
               "vanishes", "link inside")
BAD_KINDS = set(ENTRY_KINDS) - {"image", "link inside"}


def make_entry(path: Path, kind: str, outside: Path, seed: int) -> None:
    """Put an entry of `kind` at `path` (an image-like name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("image", "vanishes"):
        write_image(path, seed)
    elif kind == "broken link":
        path.symlink_to(path.with_name(path.name + ".gone"))
    elif kind == "self loop":
        path.symlink_to(path.name)
    elif kind == "two-link loop":
        partner = path.with_name("." + path.name + ".partner")  # hidden from the walk: no image name
        path.symlink_to(partner.name)
        partner.symlink_to(path.name)
    elif kind == "link out":
        path.symlink_to(write_image(outside / f"{path.name}.png", seed))
    elif kind == "link inside":
        path.symlink_to(write_image(path.with_name(f".real-{path.name}.data"), seed).name)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link to fifo":
        os.mkfifo(path.with_name(f".fifo-{path.name}.pipe"))
        path.symlink_to(f".fifo-{path.name}.pipe")
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))


@st.composite
def folder_cases(draw):
    """(recursive, [(relative path, kind)]): entries named like images, at depth 0 (or deeper when recursive)."""
    recursive = draw(st.booleans())
    entry = st.tuples(st.lists(names, max_size=2 if recursive else 0).map(tuple), names,
                      st.sampled_from(EXTENSIONS), st.sampled_from(ENTRY_KINDS))
    raw = draw(st.lists(entry, min_size=1, max_size=8))
    entries, seen = [], set()
    for folders, stem, suffix, kind in raw:
        relative = Path(*folders, stem + suffix)
        if relative.name.lower() in seen or any(p.lower() in seen for p in folders):
            continue  # a name used as a file and a folder, or twice in different case
        seen.add(relative.name.lower())
        seen.update(f.lower() for f in folders)
        entries.append((relative.as_posix(), kind))
    return recursive, entries


def deleting(captioner, doomed: set[Path]):
    """A caption engine that removes `doomed` files after the walk, just before they are read."""
    from artcap.collection import caption_paths

    def engine(paths, decoding, emotion):
        for path in doomed:
            path.unlink(missing_ok=True)
        return caption_paths(captioner, paths, decoding=decoding, emotion=emotion, num_workers=0)

    return engine


@bounded(20)
@given(case=folder_cases())
def test_every_entry_named_like_an_image_is_captioned_or_a_failed_record(case, captioner):
    from artcap.collection import caption_collection
    from artcap.images import find_images

    recursive, entries = case
    with scratch() as root:
        folder, outside = root / "collection", root / "outside"
        folder.mkdir()
        outside.mkdir()
        for n, (relative, kind) in enumerate(entries):
            make_entry(folder / relative, kind, outside, n)
        bad = {relative for relative, kind in entries if kind in BAD_KINDS}
        unreadable_now = {relative for relative, kind in entries if kind in BAD_KINDS - {"vanishes"}}

        paths, errors = find_images([folder], recursive=recursive)  # what `artcap caption FOLDER` prints
        named = [e.source for e in errors]
        for relative in unreadable_now:
            assert named.count(str(folder / relative)) == 1, (relative, dict(entries), named)
        assert not {p.relative_to(folder).as_posix() for p in paths} & unreadable_now

        doomed = {folder / relative for relative, kind in entries if kind == "vanishes"}
        summary = caption_collection(captioner, [folder], root / "captions.jsonl", recursive=recursive,
                                     engine=deleting(captioner, doomed), progress=False)
        records = {r["path"]: r for r in map(json.loads, (root / "captions.jsonl").read_text().splitlines())}
        assert set(records) == {relative for relative, _ in entries}, (sorted(records), entries)
        for relative, kind in entries:
            record = records[relative]
            if relative in bad:
                assert record["error"] and record["caption"] is None and str(folder / relative) in record["error"]
            else:
                assert record["error"] is None and record["caption"], (kind, record)
        assert len(summary.errors) == len(bad)  # the CLI exits 1 when there is any


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to the nobody user, which needs root")
@bounded(12)
@given(kinds=st.lists(st.sampled_from(["image", "no read", "no read folder", "write only"]), min_size=1, max_size=6),
       recursive=st.booleans())
def test_files_and_folders_a_user_cannot_read_are_failures_not_skips(kinds, recursive):
    """As root chmod 000 blocks nothing, so the walk and the reads run in a child process as nobody."""
    assume(recursive or "no read folder" not in kinds)
    root = Path(tempfile.mkdtemp(prefix="artcap-perm-", dir="/tmp"))
    try:
        root.chmod(0o755)
        folder = root / "collection"
        expected_bad = set()
        for n, kind in enumerate(kinds):
            path = folder / (f"sub{n}" if kind == "no read folder" else "") / f"p{n}.png"
            write_image(path, n)
            path.chmod({"image": 0o644, "no read": 0o000, "write only": 0o200, "no read folder": 0o644}[kind])
            if kind == "no read folder":
                path.parent.chmod(0o311)  # can pass through, cannot list
            if kind != "image":
                expected_bad.add(path.parent if kind == "no read folder" else path)
        for parent in {folder, *folder.iterdir()}:
            if parent.is_dir() and parent.stat().st_mode & 0o777 != 0o311:
                parent.chmod(0o755)
        failed = _walk_and_read_as_nobody(folder, recursive)
        assert "exception" not in failed, failed
        assert set(failed["failures"]) == {str(p) for p in expected_bad}, (kinds, failed)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _walk_and_read_as_nobody(folder: Path, recursive: bool) -> dict:
    """{"failures": [path named by each failure]} from find_images + load_image run as the nobody user."""
    from artcap.images import ImageLoadError, find_images, load_image

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, walk, read, report, exit without cleanup
        result: dict = {"failures": []}
        try:
            os.setgid(65534)
            os.setuid(65534)
            paths, errors = find_images([folder], recursive=recursive)
            result["failures"] = [e.source for e in errors]
            for path in paths:
                try:
                    load_image(path)
                except ImageLoadError as e:
                    result["failures"].append(e.source)
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the test
            result["exception"] = repr(e)
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        report = f.read()
    os.waitpid(pid, 0)
    return json.loads(report)


@bounded(10)
@given(count=st.integers(1, 5), data=st.data())
def test_images_that_vanish_before_feature_extraction_are_failures_not_tracebacks(small_encoder, count, data):
    from artcap.features import FeatureCache

    with scratch() as root:
        paintings = [write_image(root / "images" / f"{i}.png", seed=i) for i in range(count)]
        gone = data.draw(st.sets(st.sampled_from(paintings), min_size=1))
        for path in gone:
            path.unlink()
        failures = FeatureCache(root / "cache", small_encoder).extract(paintings, num_workers=0, progress=False)
        assert set(failures) == gone
        assert all(str(path) in failures[path] and "\n" not in failures[path] for path in gone)


# ==== 3. no traceback reaches a user =========================================================================

def _limit_file_size(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@bounded(8)
@given(command=st.sampled_from(["caption text", "caption json", "caption csv", "models", "push"]),
       target=st.one_of(st.sampled_from(["/dev/full", "closed"]), st.integers(0, 40)))
def test_stdout_that_cannot_be_written_is_one_line_and_a_non_zero_exit(command, target, model_dir, shared_data,
                                                                        tmp_path):
    painting = next((shared_data / "artemis-mini" / "wikiart" / "Impressionism").glob("*.jpg"))
    argv = {"models": ["models"], "push": ["push", str(model_dir), "someone/model", "--dry-run"]}.get(
        command, ["caption", str(painting), "--model", str(model_dir), "--format", command.split()[-1]])
    if target == "/dev/full":
        stdout, limit = open("/dev/full", "w"), None
    elif target == "closed":  # `artcap ... >&-`: the output would be lost without a word
        stdout, limit = open(os.devnull, "w"), lambda: os.close(1)
    else:
        stdout, limit = open(tmp_path / f"out-{target}.txt", "w"), _limit_file_size(target)
    with stdout:
        result = subprocess.run([*ARTCAP, "-q", *argv], stdout=stdout, stderr=subprocess.PIPE, text=True,
                                timeout=300, preexec_fn=limit)
    assert result.returncode == 1, result.stderr  # the output is incomplete, as with failed images
    assert_one_line(result.stderr, "standard output")


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("tiny-csv")
    images = shared_data / "artemis-mini" / "wikiart"
    paintings = sorted(images.glob("*/*.jpg"))[:20]  # 20: every split gets a painting, so no warning is printed
    rows = [(p.parent.name, p.stem) for p in paintings]
    write_rows(folder / "data.csv", "artemis", rows)
    return folder / "data.csv", images


def unusable_caches(root: Path):
    """Cache locations no cache can live in: a file (or a path through one), a FIFO, a pseudo file system
    (/proc), a read-only one (/sys: root cannot write there either), a device."""
    def a_file(name):
        (root / name).write_text("mine\n")
        return root / name

    def a_fifo(name):
        os.mkfifo(root / name)
        return root / name

    return st.one_of(
        names.map(a_file), names.map(lambda n: a_file(n) / "features" / n), names.map(a_fifo),
        names.map(lambda n: Path("/proc") / n / "features"), names.map(lambda n: Path("/proc/self") / n),
        names.map(lambda n: Path("/sys") / n), names.map(lambda n: Path("/dev/null") / n),
    )


@bounded(10)
@given(data=st.data())
def test_a_feature_cache_that_cannot_be_written_is_one_line_before_any_work(data, tiny_csv, capsys):
    csv_path, images = tiny_csv
    with scratch() as root:
        cache = data.draw(unusable_caches(root))
        before = cache.read_bytes() if cache.is_file() else None
        code, _, err = run_cli(["-q", "features", "--data", str(csv_path), "--images", str(images), "--cache",
                                str(cache), "--encoder-weights", "random", "--backend", "torch"], capsys)
        assert code not in (0, 1)
        assert_one_line(err, "feature cache")
        if before is not None:
            assert cache.read_bytes() == before


@pytest.mark.parametrize("out", [None, "captions.jsonl"])
def test_a_link_loop_named_like_an_image_makes_the_folder_job_exit_1_naming_it(out, tmp_path, model_dir, capsys):
    """The case that was seen: the loop was skipped silently and the command exited 0."""
    folder = tmp_path / "collection"
    write_image(folder / "a.png")
    (folder / "loop.jpg").symlink_to("loop.jpg")
    argv = ["-q", "caption", str(folder), "--model", str(model_dir), *(["--out", str(tmp_path / out)] if out else [])]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 1 and "Traceback" not in err
    assert f"{folder / 'loop.jpg'}: a symbolic link loop" in err
    if out:
        records = {r["path"]: r for r in map(json.loads, (tmp_path / out).read_text().splitlines())}
        assert records["a.png"]["caption"] and "symbolic link loop" in records["loop.jpg"]["error"]
    else:
        assert stdout.startswith(f"{folder / 'a.png'}\t")


P3 = "http://iiif.io/api/presentation/3/context.json"
ONE_CANVAS_MANIFEST = {"@context": P3, "id": "https://example.org/m", "type": "Manifest", "items": [{
    "id": "https://example.org/c1", "type": "Canvas", "width": 10, "height": 10, "items": [{
        "id": "https://example.org/p", "type": "AnnotationPage", "items": [{
            "id": "https://example.org/a", "type": "Annotation", "motivation": "painting",
            "target": "https://example.org/c1",
            "body": {"id": "https://example.org/i.jpg", "type": "Image", "format": "image/jpeg"}}]}]}]}


@bounded(15)
@given(how=st.sampled_from(["absolute", "relative", "dotdot", "file URL"]), members=st.integers(1, 3))
def test_a_iiif_collection_never_makes_artcap_read_a_local_file_it_names(how, members):
    from artcap.iiif import IIIFClient, read_manifests

    with scratch() as root:
        private = root / "private" / "manifest.json"  # a valid manifest: only where it is named from is wrong
        private.parent.mkdir()
        private.write_text(json.dumps(ONE_CANVAS_MANIFEST))
        (root / "public").mkdir()
        named = {"absolute": str(private), "relative": os.path.relpath(private), "file URL": private.as_uri(),
                 "dotdot": "../private/manifest.json"}[how]
        collection = root / "public" / "collection.json"
        collection.write_text(json.dumps({"@context": P3, "id": "https://example.org/c", "type": "Collection",
                                          "items": [{"id": named, "type": "Manifest"}] * members}))
        with IIIFClient() as client:
            found = list(read_manifests(str(collection), client))
        assert len(found) == members and all(isinstance(item, ArtcapError) for item in found), found
        assert all("\n" not in str(item) and named in str(item) for item in found)
