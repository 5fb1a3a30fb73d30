"""The one exception type a user sees as a single line, never as a traceback."""


class ArtcapError(Exception):
    """A problem with the user's input or environment. The message names the file, row or
    field and says what to do; the CLI prints it as one line and exits non-zero."""


def check_known_keys(cls, values: dict, source: str, what: str) -> None:
    """Refuse keys a dataclass does not have, naming them and the known ones (saved configs, settings files)."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ArtcapError(f"{source}: unknown {what} setting(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(known))}")


def first_line(error: BaseException) -> str:
    """An exception's first non-empty line (a library's multi-line message inside one of ours), else its type."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
