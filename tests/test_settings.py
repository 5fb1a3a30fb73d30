"""The one settings mechanism: every field's type and range is enforced the same way from every source."""

import argparse
from dataclasses import dataclass, fields

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from artcap import settings
from artcap.decode import DecodingConfig
from artcap.errors import ArtcapError


@dataclass(frozen=True)
class Example:
    width: int = settings.setting(4, "a width", low=1, high=8)
    scale: float = settings.setting(0.5, "a scale", low=0, high=1, open_low=True)
    ngram: int = settings.setting(0, "an n-gram ban", off=0, low=2, high=5)
    kind: str = settings.setting("a", "a kind", choices=("a", "b"))
    flag: bool = settings.setting(False, "a flag")

    def __post_init__(self):
        settings.check(self)


def _valid(name, value):
    try:
        Example(**{name: value})
        return True
    except ArtcapError as e:
        assert "\n" not in str(e) and name in str(e)
        return False


@hsettings(max_examples=300, deadline=None)
@given(st.sampled_from([f.name for f in fields(Example)]),
       st.one_of(st.integers(-10, 20), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=3)))
def test_a_value_is_accepted_exactly_when_its_type_and_range_allow_it(name, value):
    expected = {
        "width": type(value) is int and 1 <= value <= 8,
        "scale": type(value) in (int, float) and value == value and 0 < value <= 1,
        "ngram": type(value) is int and (value == 0 or 2 <= value <= 5),
        "kind": value in ("a", "b"),
        "flag": type(value) is bool,
    }[name]
    assert _valid(name, value) == expected


@hsettings(max_examples=200, deadline=None)
@given(st.sampled_from([f.name for f in fields(DecodingConfig) if settings.field_type(DecodingConfig, f) is not bool]),
       st.one_of(st.text(max_size=6), st.integers(-5, 300).map(str), st.floats().map(str)))
def test_a_flag_reads_text_exactly_as_settings_parse_checked_does(name, text):
    """The command line and every other text source (query strings, form fields) share one parser and range."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    settings.add_arguments(parser, DecodingConfig)
    flag = settings.flag_name(name)
    try:
        value = settings.parse_checked(DecodingConfig, name, text, flag)
    except ArtcapError:
        value = None
    try:
        parsed = settings.overrides(parser.parse_args([flag, text]), DecodingConfig).get(name)
    except (argparse.ArgumentError, SystemExit):
        parsed = None
    if text.startswith("-"):
        return  # argparse reads a leading dash as another flag
    assert repr(parsed) == repr(value)  # repr: nan is a value too


def test_flags_are_made_from_the_fields():
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, DecodingConfig)
    args = parser.parse_args(["--beam", "3", "--no-rerank", "--length-alpha", "1"])
    assert settings.overrides(args, DecodingConfig) == {"beam": 3, "rerank": False, "length_alpha": 1.0}
    assert {a.dest for a in parser._actions} >= {f.name for f in fields(DecodingConfig)}
    with pytest.raises(SystemExit):
        parser.parse_args(["--beam", "many"])
