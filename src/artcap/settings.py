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
from dataclasses import Field, dataclass, field, fields, is_dataclass, replace
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
    return _convert(field_type(cls, f), spec_of(f), name, text, source)


def parse_checked(cls: type, name: str, text: Any, source: str) -> Any:
    """`parse`, then the field's range: what every surface that reads text (flags, query parameters,
    form fields) accepts, so that a value is refused where it is given, with the same words everywhere."""
    f = next((f for f in fields(cls) if f.name == name), None)
    if f is None:
        parse(cls, name, text, source)  # the one-line "unknown setting" error
    return checked_value(field_type(cls, f), spec_of(f), name, text, source)


def checked_value(kind: type, spec: Spec, name: str, text: Any, source: str) -> Any:
    """Text or a value -> `kind`, inside `spec`, or one line: '{source}: {name} must be ..., got ...'."""
    value = _convert(kind, spec, name, text, source)
    if not spec.accepts(value):
        raise ArtcapError(f"{_prefix(source)}{name} {must_be(kind, spec, text)}")
    return value


def must_be(kind: type, spec: Spec, got: Any) -> str:
    """'must be from 1 to 20, got 50': how every message says what a value should have been."""
    return f"must be {_kind_text(kind, spec)}, got {_shown(got)}"


def _convert(kind: type, spec: Spec, name: str, text: Any, source: str) -> Any:
    if _is(text, kind) or (kind is float and isinstance(text, int) and not isinstance(text, bool)):
        return float(text) if kind is float else text
    if isinstance(text, str):
        raw = text.strip()
        if kind is bool and raw.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return raw.lower() in ("true", "1", "yes", "on")
        try:
            if kind in (int, float):
                return kind(raw)
        except (ValueError, OverflowError):
            pass
    raise ArtcapError(f"{_prefix(source)}{name} {must_be(kind, spec, text)}")


def _prefix(source: str) -> str:
    return f"{source}: " if source else ""


def _shown(value: Any, limit: int = 40) -> str:
    """A value as a message quotes it: repr, cut short (a message is one line of reasonable length)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, only: Iterable[str] | None = None) -> None:
    """One flag per field (`max_len` -> `--max-len`), default None (= keep the model's or config's),
    the help and the range from the field's Spec, checked as the flag is read; booleans get `--x/--no-x`."""
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
                                type=Bounded(kind, spec, f.name), help=f"{help_text}; {spec.describe()}")


class Bounded:
    """An argparse `type` that reads a number and checks it against a Spec as the flag is parsed, so
    `--threads 100000` or `--max-upload-mb inf` is one usage line, never a hang or a traceback. Every
    numeric flag of the command line is one of these (a settings field's, or `bounded(...)`'s); `spec`
    lets tests find every bounded flag and generate values outside its range."""

    def __init__(self, kind: type, spec: Spec, name: str) -> None:
        self.kind, self.spec, self.__name__ = kind, spec, name

    def __call__(self, text: str) -> Any:
        try:
            return checked_value(self.kind, self.spec, self.__name__, text, flag_name(self.__name__))
        except ArtcapError:  # argparse prints it as "argument --x: must be ..., got ..."
            raise argparse.ArgumentTypeError(must_be(self.kind, self.spec, text)) from None

    def __repr__(self) -> str:  # argparse names the type in some messages
        return self.__name__


def bounded(kind: type, low: float, high: float, *, open_low: bool = False) -> Bounded:
    """An argparse type for a number flag that is not a settings field (--threads, --port, ...): the
    text must parse as `kind` and lie in low..high, else argparse's one-line error names the flag."""
    return Bounded(kind, Spec(help="", low=low, high=high, open_low=open_low), kind.__name__)


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


# More threads than this hang or crash torch's thread pool (5,000 hangs, 100,000 segfaults) and are never faster.
MAX_THREADS = 256


def threads_spec() -> Spec:
    """torch threads, for the CLI's --threads and serve(threads=)."""
    return Spec(help="torch threads", low=1, high=MAX_THREADS)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


# ---- a pydantic model from settings classes (the HTTP API's parameters and their OpenAPI schema) ----

def request_model(name: str, *classes: type, caps: dict[str, float] | None = None, source: str = "",
                  exclude: Iterable[str] = ()) -> Any:
    """A pydantic model whose fields are the fields of the settings `classes`, each optional (None: the
    default of whoever resolves it), with its type, help (description) and bounds (minimum/maximum) from
    its Spec, tightened by `caps` ({name: highest allowed}, e.g. a server's own beam limit). Values
    (text from a query string or a form, or JSON values) are read by `checked_value`, so a request is
    refused with the words a flag would be; names no field has are refused (extra = "forbid"), and so
    are the `exclude`d fields' names."""
    from pydantic import BeforeValidator, ConfigDict, Field, create_model
    from typing import Annotated

    definitions: dict[str, Any] = {}
    for cls in classes:
        for f in fields(cls):
            if f.name in exclude:
                continue
            kind, spec = field_type(cls, f), capped(spec_of(f), (caps or {}).get(f.name))
            read = functools.partial(_read_request_value, kind, spec, f.name, source)
            bounds = {} if kind is bool or kind is str else {
                "ge": min(x for x in (spec.low, spec.off) if x is not None) if spec.low is not None else None,
                "le": spec.high}
            definitions[f.name] = (Annotated[kind | None, BeforeValidator(read)],
                                   Field(None, description=f"{spec.help}: {_kind_text(kind, spec)}", **bounds))
    return create_model(name, __config__=ConfigDict(extra="forbid"), **definitions)


def capped(spec: Spec, high: float | None) -> Spec:
    """`spec` with a lower ceiling (a server that allows less than the setting itself)."""
    if high is None or (spec.high is not None and spec.high <= high):
        return spec
    return replace(spec, high=high)


def _read_request_value(kind: type, spec: Spec, name: str, source: str, value: Any) -> Any:
    if value is None:
        return None
    try:
        return checked_value(kind, spec, name, value, source)
    except ArtcapError as e:
        raise ValueError(str(e)) from None
