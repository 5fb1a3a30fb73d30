"""Where artcap may look: paths composed from data stay inside the folder the user gave, and a folder
walk accounts for every entry it meets.

    image = confined(images, "Impressionism/monet_water-lilies.jpg", "data.csv: row 12")
    for entry in walk_folder(Path("collection"), recursive=True, wanted=is_image_name):
        entry.path, entry.problem   # problem: None (a readable file), or why it cannot be read

`confined` is the one way a path named by data (a CSV column, a model config, a cache index, a
mirror tree) is joined to its root: the joined path is resolved (`..` and symbolic links) and refused
when it lands outside the root. `walk_folder` is the one way a folder given by the user is listed:
broken links, link loops, links out of the folder and files that are not regular files (FIFOs,
sockets, devices: reading one would block or never end) come back as entries with a problem, never
silently skipped, and never followed out of the folder.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .errors import ArtcapError


class OutsideRootError(ArtcapError):
    """A path named by data that would lead outside the folder it must stay in."""


def confined(root: str | os.PathLike, relative: str | os.PathLike, what: str) -> Path:
    """`root / relative`, or OutsideRootError (one line starting with `what`, e.g. "data.csv: row 12")
    when `relative` is absolute or leads outside `root` once `..` and symbolic links are resolved.
    The path returned is the joined one (as the user would write it), not the resolved one."""
    text = os.fsdecode(relative)
    if "\0" in text:
        raise OutsideRootError(f"{what}: {text!r} holds a NUL character; it cannot name a file")
    if os.path.isabs(text):
        raise OutsideRootError(f"{what}: {text!r} is an absolute path; name a file inside {os.fsdecode(root)} "
                               f"relative to it")
    joined = Path(root) / text
    real_root = os.path.realpath(root)
    real = os.path.realpath(joined)
    if not _is_within(real, real_root):
        how = "through a symbolic link " if _lexically_within(text) else ""
        raise OutsideRootError(f"{what}: {text!r} leads {how}outside {os.fsdecode(root)} (to {real}); artcap "
                               f"stays inside the folder it was given")
    return joined


def _is_within(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _lexically_within(relative: str) -> bool:
    first = os.path.normpath(relative).split(os.sep, 1)[0]
    return first != os.pardir


def require_writable_folder(folder: Path, what: str, problem: str, advice: str) -> None:
    """Make `folder` (and its parents) and prove a file can be created in it, before any work goes into
    filling it; else one ArtcapError line: "`problem` (why, at which path); `advice`". Catches a
    location that is a file (or under one), read-only, or in a pseudo file system such as /proc."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".artcap-write-check-"):
            pass
    except OSError as e:
        where = f" at {os.fsdecode(e.filename)}" if e.filename else ""
        reason = "a file is in the way" if e.errno in (errno.EEXIST, errno.ENOTDIR) else (e.strerror or str(e))
        raise ArtcapError(f"{problem} ({reason}{where}; {what} needs a folder artcap can write); {advice}") from None


# ---- walking a folder ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FolderEntry:
    """One entry a walk met: a regular file inside the folder (problem None), or what stops it being read."""

    path: Path
    problem: str | None = None


def walk_folder(folder: Path, *, recursive: bool, wanted: Callable[[str], bool]) -> list[FolderEntry]:
    """Every entry under `folder` whose name `wanted` accepts, sorted by path (sub-folders too when
    `recursive`). Symbolic links are followed only to places inside `folder`; a linked folder is never
    entered (what it holds inside `folder` is walked through its own path), and one leading out of
    `folder` is an entry with a problem. Raises OSError when `folder` itself cannot be listed; a
    sub-folder that cannot be listed is an entry with a problem."""
    real_root = os.path.realpath(folder)
    found: list[FolderEntry] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            names = os.listdir(current)
        except OSError as e:
            if current == folder:
                raise
            found.append(FolderEntry(current, f"cannot read the folder ({e.strerror or e})"))
            continue
        for name in names:
            path = current / name
            kind, problem = _classify(path, real_root, folder)
            if kind == "folder":
                if recursive:
                    pending.append(path)
            elif kind == "folder link out":
                if recursive:
                    found.append(FolderEntry(path, problem))
            elif kind == "file" and wanted(name):
                found.append(FolderEntry(path, problem))
    return sorted(found, key=lambda entry: entry.path)


def _classify(path: Path, real_root: str, folder: Path) -> tuple[str, str | None]:
    """("folder" | "linked folder" | "folder link out" | "file", problem): what `path` is, and why it
    cannot be read as a file (None when it can). Links that cannot be followed count as files: their
    name is all there is to go by."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as e:
        return "file", f"vanished while the folder was listed ({e.strerror or e})"
    if stat.S_ISDIR(mode):
        return "folder", None
    if stat.S_ISLNK(mode):
        try:
            mode = os.stat(path).st_mode
        except OSError as e:
            return "file", _unfollowable_link(path, e)
        real = os.path.realpath(path)
        if not _is_within(real, real_root):
            kind = "folder link out" if stat.S_ISDIR(mode) else "file"
            return kind, (f"a symbolic link to {real}, outside {folder}; artcap "
                          f"does not follow links out of a folder it was given: copy the file in instead")
        if stat.S_ISDIR(mode):
            return "linked folder", None
    if not stat.S_ISREG(mode):
        return "file", (f"not a regular file ({_FILE_KINDS.get(stat.S_IFMT(mode), 'a special file')}); "
                        f"artcap reads image files only")
    return "file", None


def _unfollowable_link(path: Path, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "a symbolic link loop (it leads back to itself); fix or remove the link"
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        try:
            target = os.readlink(path)
        except OSError:  # removed meanwhile
            return "vanished while the folder was listed"
        return f"a broken symbolic link (to {target}, which does not exist); fix or remove the link"
    return f"a symbolic link that cannot be followed ({error.strerror or error})"


_FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device"}
