"""One source of truth per setting: a dataclass field that owns its type, default, range and help.

A settings class declares each field with `setting(...)`; `check(obj)` (called from the class's
`__post_init__`) enforces types and ranges with one line that names the field; `parse(field, text)`
turns command-line, TOML-override or query-string text into the field's type; `add_arguments` makes
argparse flags and `overrides(args, cls)` reads them back. Every surface (CLI, TOML, HTTP API, page)
derives its options from these fields, so none can drift from another or silently drop one.
"""

from __future__ import annotations

import argparse
import functools
import math
import types
import typing
from dataclasses import Field, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Iterable, Sequence

from .errors import ArtcapError

Choices = Sequence[str] | Callable[[], Sequence[str]]


@dataclass(frozen=True)
class Spec:
    """What a field allows: `low..high` (inclusive, or above `low` when `open_low`), or exactly `off`
    (a value meaning "off"/"the default", e.g. 0), or one of `choices`; `check` for anything else."""

    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    off: Any = None
    choices: Choices | None = None
    check: Callable[[Any], bool] | None = None
    allowed: str = ""  # how to say what is allowed, when the range alone does not say it well

    def options(self) -> list[str]:
        return list(self.choices() if callable(self.choices) else self.choices or [])

    def describe(self) -> str:
        if self.allowed:
            return self.allowed
        if self.choices is not None:
            return "one of " + ", ".join(self.options())
        parts = []
        if self.low is not None and self.high is not None:
            parts.append(f"above {_num(self.low)} and at most {_num(self.high)}" if self.open_low
                         else f"from {_num(self.low)} to {_num(self.high)}")
        elif self.low is not None:
            parts.append(f"above {_num(self.low)}" if self.open_low else f"{_num(self.low)} or more")
        text = " ".join(parts) or "a value"
        return f"{self.off!r} (off) or {text}" if self.off is not None else text

    def accepts(self, value: Any) -> bool:
        if self.off is not None and value == self.off and type(value) is type(self.off):
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        if self.high is not None and value > self.high:
            return False
        if self.choices is not None and value not in self.options():
            return False
        return self.check is None or bool(self.check(value))


def setting(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field with its default and its `Spec` (see there for the keywords)."""
    return field(default=default, metadata={"spec": Spec(help=help, **spec)})


def spec_of(f: Field) -> Spec:
    return f.metadata.get("spec") or Spec(help="")


def field_type(cls: type, f: Field) -> type:
    """The plain Python type of a field (str, int, float, bool or a nested settings class)."""
    hint = _hints(cls)[f.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check(obj: Any, prefix: str = "") -> None:
    """Check every field of a settings object against its type and Spec; int given for a float is
    converted (TOML and JSON write 1.0 as 1). The message names the field with its section prefix."""
    for f in fields(obj):
        kind, value = field_type(type(obj), f), getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if is_dataclass(kind):
            if not isinstance(value, kind):
                raise ArtcapError(f"{name} must be a [{name}] table of settings, got {value!r}")
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(obj, f.name, value)
        if not _is(value, kind) or not spec_of(f).accepts(value):
            raise ArtcapError(f"{name} must be {_kind_text(kind, spec_of(f))}, got {value!r}")


def _is(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):  # True is not a beam width, 1 is not a flag
        return kind is bool and isinstance(value, bool)
    return isinstance(value, kind)


def _kind_text(kind: type, spec: Spec) -> str:
    if kind is bool:
        return "true or false"
    if kind is str and spec.choices is None and not spec.allowed:
        return "text"
    return spec.describe()


def parse(cls: type, name: str, text: Any, source: str) -> Any:
    """Text (a flag, a `--set`, a query parameter, a TOML value) -> the field's type, or one line."""
    f = next((f for f in fields(cls) if f.name == name), None)
    if f is None:
        raise ArtcapError(f"{source}: unknown setting {name!r}; known: {', '.join(x.name for x in fields(cls))}")
    kind = field_type(cls, f)
    if _is(text, kind) or (kind is float and isinstance(text, int) and not isinstance(text, bool)):
        return text
    if isinstance(text, str):
        raw = text.strip()
        if kind is bool and raw.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return raw.lower() in ("true", "1", "yes", "on")
        try:
            if kind in (int, float):
                return kind(raw)
        except ValueError:
            pass
    raise ArtcapError(f"{source}: {name} must be {_kind_text(kind, spec_of(f))}, got {text!r}")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, only: Iterable[str] | None = None) -> None:
    """One flag per field (`max_len` -> `--max-len`), default None (= keep the model's or config's),
    the help and the range from the field's Spec; booleans get `--x/--no-x`."""
    wanted = set(only) if only is not None else None
    for f in fields(cls):
        if wanted is not None and f.name not in wanted:
            continue
        kind, spec = field_type(cls, f), spec_of(f)
        help_text = f"{spec.help} (default: the model's)"
        if kind is bool:
            parser.add_argument(flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, metavar=f.name.upper(),
                                type=_argparse_type(cls, f.name), help=f"{help_text}; {spec.describe()}")


def _argparse_type(cls: type, name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(cls, name, text, flag_name(name))
        except ArtcapError as e:  # argparse prints it as one usage line
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None
    convert.__name__ = name
    return convert


def bounded(kind: type, low: float, high: float, *, open_low: bool = False) -> Callable[[str], Any]:
    """An argparse type for a number flag that is not a settings field (--threads, --port, ...): the
    text must parse as `kind` and lie in its range, else argparse's one-line error names the flag."""
    spec = Spec(help="", low=low, high=high, open_low=open_low)

    def convert(text: str) -> Any:
        try:
            value = kind(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {spec.describe()}, got {text!r}") from None
        if not spec.accepts(value):
            raise argparse.ArgumentTypeError(f"must be {spec.describe()}, got {text!r}")
        return value
    convert.__name__ = kind.__name__
    convert.spec = spec  # so tests can find every bounded flag and generate values outside its range
    return convert


def overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` a user set on the command line (flags left at None are not overrides)."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def check_overrides(cls: type, values: dict[str, Any], label: Callable[[str], str] = flag_name) -> dict[str, Any]:
    """Check values a user gave for some fields of `cls` (flags, form fields) before any work, naming
    each the way the user wrote it (`--beam must be from 1 to 20, got 0`); returns `values`."""
    for f in fields(cls):
        if f.name in values and not spec_of(f).accepts(values[f.name]):
            raise ArtcapError(f"{label(f.name)} must be {_kind_text(field_type(cls, f), spec_of(f))}, "
                              f"got {values[f.name]!r}")
    return values


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"
