"""Standard output that fails in one line: a full disk, a file-size limit or a closed stdout is a
StdoutWriteError (an ArtcapError) naming standard output, like every other writer's; a reader that went
away (EPIPE) still ends the command quietly, as Unix tools do.

    with guarded_stdout():
        print(...)            # any write or flush that fails raises StdoutWriteError (BrokenPipeError stays)
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from .errors import ArtcapError
from .io import DISK_FULL_ERRNOS


class StdoutWriteError(ArtcapError):
    """Standard output could not be written: what was printed is incomplete."""


class _GuardedStream:
    """Passes everything to the real stream; turns a failed write or flush into one StdoutWriteError line."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._guard(lambda stream: stream.write(text))

    def writelines(self, lines) -> None:
        self._guard(lambda stream: stream.writelines(lines))

    def flush(self) -> None:
        self._guard(lambda stream: stream.flush())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _guard(self, operation):
        if self._stream is None:  # started with stdout closed (`artcap ... >&-`)
            raise StdoutWriteError("standard output is closed; redirect it to a file (> FILE), or write a record file "
                              "with --out FILE where the command has one")
        try:
            return operation(self._stream)
        except BrokenPipeError:
            raise  # the reader went away: the CLI ends quietly
        except OSError as e:
            _silence(self._stream)
            advice = ("free some space (or lift the file size limit) and run the command again"
                      if e.errno in DISK_FULL_ERRNOS else "check where standard output goes")
            raise StdoutWriteError(f"standard output: cannot write ({e.strerror or e}); what was printed is incomplete: "
                              f"{advice}") from None


def _silence(stream: TextIO) -> None:
    """Point the stream's file descriptor at /dev/null, so the text still buffered in it does not fail
    again when the interpreter flushes it on exit (that would print a second error)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no file descriptor (an in-memory stream): nothing to flush
        pass


@contextmanager
def guarded_stdout() -> Iterator[None]:
    """sys.stdout guarded for the duration; everything printed is flushed (and checked) before leaving."""
    original = sys.stdout
    guarded = _GuardedStream(original)
    sys.stdout = guarded  # type: ignore[assignment]
    try:
        yield
        if original is not None:
            guarded.flush()
    finally:
        sys.stdout = original
