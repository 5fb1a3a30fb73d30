"""Every number a user names on the command line is bounded where the flag is read: generated over
every numeric flag of every command (found by walking the real parser, so a new flag is tested the
day it is added). No number flag is read without a range (an upper bound included); a value is
accepted exactly when its range allows it (test_flags_property.py checks the refusal's wording); the
reported cases are one line through `main`. The server's own limits (the Python API's
`create_app(**limits)`) are bounded the same way."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
from dataclasses import fields

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from artcap import settings
from artcap.cli import build_parser, main
from artcap.errors import ArtcapError

# The least each command needs besides the flag under test (its required arguments).
MINIMAL_ARGV = {"caption": [], "models": [], "features": [], "train": [], "serve": [], "push": ["m", "o/n"],
                "evaluate": ["--data", "d", "--images", "i"],
                "compare": ["a", "b", "--data", "d", "--images", "i"], "config": ["migrate", "c.toml"], "experiment": ["steps-per-epoch", "--out", "o"]}


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def value_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction)
            and not isinstance(a, argparse.BooleanOptionalAction)]


NUMERIC_FLAGS = [(name, action) for name, parser in commands().items() for action in value_flags(parser)
                 if isinstance(action.type, settings.Bounded)]


def test_every_command_has_its_minimal_arguments_here():
    assert set(commands()) == set(MINIMAL_ARGV), "a new command: add the least it needs to MINIMAL_ARGV"


def test_no_numeric_flag_is_read_without_bounds():
    for name, parser in commands().items():
        for action in value_flags(parser):
            assert action.type not in (int, float), f"artcap {name} {action.option_strings[0]}: use settings.number()"
    assert NUMERIC_FLAGS and all(action.type.spec.high is not None for _, action in NUMERIC_FLAGS), \
        [f"{n} {a.option_strings[0]}" for n, a in NUMERIC_FLAGS if a.type.spec.high is None]


def allowed(kind: type, spec: settings.Spec, text: str) -> bool:
    """The rule, restated: a number of the flag's kind, finite, `off` or inside low..high."""
    try:
        value = kind(text.strip())
    except (ValueError, OverflowError):
        return False
    if kind is float and not math.isfinite(value):
        return False
    if spec.off is not None and value == spec.off:
        return True
    return ((spec.low is None or (value > spec.low if spec.open_low else value >= spec.low))
            and (spec.high is None or value <= spec.high))


def candidates(spec: settings.Spec):
    edges = [x for x in (spec.low, spec.high, spec.off) if x is not None]
    near = st.sampled_from(edges).flatmap(lambda e: st.sampled_from([e - 1, e, e + 1, e - 0.5, e + 0.5, e * 10, -e]))
    return st.one_of(
        near.map(lambda x: str(int(x)) if float(x).is_integer() else str(x)),
        st.integers(-10**12, 10**12).map(str), st.floats().map(str),
        st.sampled_from(["", "nan", "inf", "-inf", "1e999", "5000", "100000", "many", "0x10", "1_0", " 3 "]))


@hsettings(max_examples=400, deadline=None)
@given(data=st.data())
def test_a_numeric_flag_refuses_what_its_range_does_not_allow_in_one_line(data):
    command, action = data.draw(st.sampled_from(NUMERIC_FLAGS))
    bounded: settings.Bounded = action.type
    text = data.draw(candidates(bounded.spec))
    flag = action.option_strings[0]
    argv = [command, *MINIMAL_ARGV[command], f"{flag}={text}"]
    expected = allowed(bounded.kind, bounded.spec, text)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            value = getattr(build_parser().parse_args(argv), action.dest)
    except SystemExit as stop:
        assert stop.code == 2 and not expected, (argv, "an allowed value was refused")
        error = stderr.getvalue()
        assert error.count("\n") == 1 and flag in error and "Traceback" not in error, error
        return
    assert expected, (argv, value, "an out-of-range value was let through")
    assert type(value) is bounded.kind


@pytest.mark.parametrize("argv", [["models", "--threads", "5000"], ["models", "--threads", "100000"],
                                  ["serve", "--max-upload-mb", "inf"], ["experiment", "steps-per-epoch", "--grid", "",
                                                                        "--out", "o"]])
def test_the_reported_cases_are_one_line_before_any_work(argv, capsys):
    code = main(argv)
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "Traceback" not in error, error


@hsettings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_server_limit_is_bounded(data):
    from artcap.server.settings import ServerSettings

    name = data.draw(st.sampled_from([f.name for f in fields(ServerSettings)]))
    spec = settings.spec_of(next(f for f in fields(ServerSettings) if f.name == name))
    assert spec.high is not None, name
    value = data.draw(st.one_of(st.just(float("inf")), st.just(float("nan")), st.integers(-10**15, 10**15),
                                st.floats(), st.booleans(), st.text(max_size=3)))
    kind = settings.field_type(ServerSettings, next(f for f in fields(ServerSettings) if f.name == name))
    ok = (type(value) is kind or (kind is float and type(value) is int)) and allowed(kind, spec, str(value))
    try:
        ServerSettings.from_keywords(**{name: value})
        assert ok, (name, value)
    except ArtcapError as err:
        assert not ok and name in str(err) and "\n" not in str(err), (name, value, err)
