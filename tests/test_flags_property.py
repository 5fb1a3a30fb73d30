"""Every number flag of every command is bounded where it is parsed: a value outside its range (huge,
negative, inf, nan, text) is one line naming the flag and exit code 2, before any work starts."""

import contextlib
import io
import math

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from artcap.cli import build_parser


def _bounded_flags():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    flags = []
    for name, command in commands.items():
        for action in command._actions:
            spec = getattr(action.type, "spec", None)
            if spec is not None and action.option_strings:
                flags.append((name, action.option_strings[0], action.type.__name__, spec))
    return flags


FLAGS = _bounded_flags()


def test_the_number_flags_that_crashed_or_hung_are_bounded():
    found = {(c, f) for c, f, _, _ in FLAGS}
    assert {("caption", "--threads"), ("serve", "--max-upload-mb"), ("serve", "--port"),
            ("caption", "--batch-size"), ("experiment", "--epochs")} <= found


def _outside(kind, spec):
    values = [st.sampled_from(["inf", "-inf", "nan", "", "x", "1e999"])]
    if spec.high is not None:
        values.append(st.integers(int(spec.high) + 1, 10**12).map(str))
    if spec.low is not None:
        values.append(st.integers(-10**12, math.ceil(spec.low) - (0 if spec.open_low else 1)).map(str))
    # `off` (e.g. no_repeat_ngram 0) is allowed below `low`
    return st.one_of(values).filter(lambda text: spec.off is None or text != str(spec.off))


@hsettings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_number_outside_its_range_is_one_line_naming_the_flag(data):
    command, flag, kind, spec = data.draw(st.sampled_from(FLAGS))
    text = data.draw(_outside(kind, spec))
    args = [command] + (["steps-per-epoch", "--out", "x"] if command == "experiment" else []) + [f"{flag}={text}"]
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_, contextlib.redirect_stderr(stderr):
        build_parser().parse_args(args)
    err = stderr.getvalue()
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and err.startswith("artcap: error:") and flag in err, err
