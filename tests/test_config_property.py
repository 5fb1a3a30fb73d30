"""Generated training configs (TOML tables, `--set table.key=value`, old flat keys) are each either loaded with
exactly the values given or refused with one line naming the dotted setting (or the unknown table) — never a
traceback. Every field of every table is drawn from its own Spec, so a new setting is covered when it is declared."""

import json
import math
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from artcap.config import FLAT_KEYS, SECTIONS, load_config
from artcap.decoders import decoder_kinds, settings_class
from artcap.errors import ArtcapError
from artcap.settings import field_type, spec_of

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x7f"), max_size=12)
NAMES = st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True)


def _fields(table, kind="merge"):
    cls = settings_class(kind) if table == "decoder" else SECTIONS[table]
    return {f.name: (field_type(cls, f), spec_of(f)) for f in fields(cls)}


def _valid(kind, spec, name):
    if kind is bool:
        return st.booleans()
    if kind is str:
        if spec.choices is not None:
            return st.sampled_from(spec.options())
        if spec.check is not None:  # device, encoder name, out: a few values they accept
            return st.sampled_from(["auto", "cpu", "cuda:1"] if name == "device" else ["a", "runs/x", "x y"])
        return TEXT
    low = spec.low if spec.low is not None else -10**6
    high = spec.high if spec.high is not None else 10**9
    if kind is int:
        values = st.integers(math.ceil(low) + (1 if spec.open_low and float(low).is_integer() else 0), int(high))
    else:
        values = st.floats(low, high, exclude_min=spec.open_low, allow_nan=False, allow_infinity=False)
    return st.one_of(values, st.just(spec.off)) if spec.off is not None else values


def _invalid(kind, spec, via_set):
    """Values the field must refuse (given as TOML values, or as --set text when `via_set`)."""
    if kind is bool:
        return st.sampled_from(["maybe", "2"] if via_set else [2, "yes please", 1.5])
    if kind is str:
        if spec.choices is not None:
            return st.sampled_from(["", "nope", " merge"])
        return st.sampled_from(["", "  "] if via_set else [5, [1, 2], True])
    bad = [st.sampled_from([math.nan, math.inf, -math.inf, "x", "", [1]] if kind is float else ["x", "", 1.5, [1]])]
    if spec.high is not None:
        bad.append(st.integers(int(spec.high) + 1, int(spec.high) + 10**12).map(kind))
    if spec.low is not None:
        below = st.integers(-10**12, math.floor(spec.low) - (0 if spec.open_low else 1))
        bad.append(below.filter(lambda v: v != spec.off).map(kind))
    return st.one_of(bad)


def _as_text(value):
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@st.composite
def entries(draw, via_set=False):
    """[(table, key, value, wanted value or None when the entry must be refused, the name its error gives)];
    `via_set`: values as the text a `--set` carries."""
    text = _as_text if via_set else (lambda v: v)
    kind = draw(st.sampled_from(decoder_kinds()))
    out = [("decoder", "kind", kind, kind, "decoder.kind")]
    for _ in range(draw(st.integers(1, 5))):
        table = draw(st.sampled_from(list(SECTIONS)))
        known = _fields(table, kind)
        known.pop("objective", None)  # scst needs run.init_from: a rule across tables, tested on its own
        known.pop("kind", None)
        name = draw(st.sampled_from(sorted(known)))
        field_kind, spec = known[name]
        plain_text = field_kind is str and spec.choices is None and spec.check is None
        if draw(st.integers(0, 4)) or (via_set and plain_text):
            value = draw(_valid(field_kind, spec, name))
            out.append((table, name, text(value), value, f"{table}.{name}"))
        else:
            out.append((table, name, text(draw(_invalid(field_kind, spec, via_set))), None, f"{table}.{name}"))
    if draw(st.integers(0, 5)) == 0:
        table = draw(st.sampled_from(list(SECTIONS)))
        key = draw(NAMES.filter(lambda k: k not in _fields(table, kind)))
        out.append((table, key, text(1), None, f"{table}.{key}"))
    if draw(st.integers(0, 8)) == 0:
        table = draw(NAMES.filter(lambda t: t not in SECTIONS and t not in FLAT_KEYS))
        out.append((table, "x", text(1), None, table))
    return out


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(value)


def _last_wins(items):
    """What a TOML file or a run of --set flags means when one key comes twice: the last value."""
    seen = {}
    for table, key, value, wanted, name in items:
        seen[(table, key)] = (table, key, value, wanted, name)
    return list(seen.values())


def _check(load, items, capsys, tmp_path):
    refused = [name for *_, wanted, name in items if wanted is None]
    try:
        config = load()
    except ArtcapError as e:
        message = str(e)
        assert refused, f"refused a valid config: {message}"
        assert "\n" not in message and any(name in message for name in refused), (message, refused)
        return
    assert not refused, f"loaded a config with {refused}"
    for table, key, _, wanted, _ in items:
        if (table, key) != ("decoding", "max_len"):
            assert getattr(getattr(config, table), key) == wanted, (table, key)
        else:
            assert config.max_len(17) == wanted
    capsys.readouterr()
    config.save(tmp_path / "saved.toml")
    assert load_config(tmp_path / "saved.toml") == config  # the saved form reads back the same...
    assert capsys.readouterr().err == ""  # ...and is the nested one: no migration note


HYP = dict(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@hsettings(**HYP)
@given(items=entries())
def test_toml_tables_load_exactly_or_refuse_in_one_line(items, tmp_path, capsys):
    items = _last_wins(items)
    tables: dict = {}
    for table, key, value, *_ in items:
        tables.setdefault(table, []).append(f"{key} = {_toml_value(value)}")
    path = tmp_path / "c.toml"
    path.write_text("".join(f"[{t}]\n" + "\n".join(lines) + "\n\n" for t, lines in tables.items()), encoding="utf-8")
    _check(lambda: load_config(path), items, capsys, tmp_path)


@hsettings(**HYP)
@given(items=entries(via_set=True))
def test_set_overrides_load_exactly_or_refuse_in_one_line(items, capsys, tmp_path):
    items = _last_wins(items)
    _check(lambda: load_config(None, [f"{table}.{key}={text}" for table, key, text, *_ in items]), items, capsys,
           tmp_path)


@hsettings(**HYP)
@given(items=entries())
def test_old_flat_keys_load_as_their_dotted_settings_with_one_note(items, tmp_path, capsys):
    dotted = {v: k for k, v in FLAT_KEYS.items()}
    flat = [(t, k, v, w, n) for t, k, v, w, n in _last_wins(items)
            if f"{t}.{k}" in dotted and k not in ("grid_size", "max_len")]
    path = tmp_path / "flat.toml"
    path.write_text("".join(f"{dotted[f'{t}.{k}']} = {_toml_value(v)}\n" for t, k, v, *_ in flat), encoding="utf-8")
    refused = [n for *_, w, n in flat if w is None]
    try:
        config = load_config(path)
    except ArtcapError as e:
        assert refused and "\n" not in str(e) and any(n in str(e) for n in refused), (str(e), refused)
        return
    assert not refused
    for table, key, _, wanted, _ in flat:
        assert getattr(getattr(config, table), key) == wanted
    err = capsys.readouterr().err
    if flat:
        assert err.count("\n") == 1 and "artcap config migrate" in err, err


ALL_FIELDS = [(table, name, kind) for kind in decoder_kinds() for table in SECTIONS
              for name in _fields(table, kind) if (table == "decoder" or kind == "merge") and name != "kind"
              and name != "objective"]


@pytest.mark.parametrize("table, name, kind", ALL_FIELDS, ids=[f"{k}-{t}.{n}" for t, n, k in ALL_FIELDS])
@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_setting_takes_its_range_and_refuses_the_rest(table, name, kind, data, capsys, tmp_path):
    """Field by field: a value inside its Spec loads exactly (from TOML and from --set), one outside is one line."""
    field_kind, spec = _fields(table, kind)[name]
    via_set = data.draw(st.booleans())
    plain_text = field_kind is str and spec.choices is None and spec.check is None
    if data.draw(st.booleans()) or (via_set and plain_text):
        value = data.draw(_valid(field_kind, spec, name))
        wanted = value
    else:
        value, wanted = data.draw(_invalid(field_kind, spec, via_set)), None
    items = [("decoder", "kind", kind, kind, "decoder.kind"), (table, name, value, wanted, f"{table}.{name}")]
    if via_set:
        items = [(t, k, _as_text(v), w, n) for t, k, v, w, n in items]
        _check(lambda: load_config(None, [f"{t}.{k}={v}" for t, k, v, *_ in items]), items, capsys, tmp_path)
    else:
        path = tmp_path / "one.toml"
        body = f"{name} = {_toml_value(value)}\n"
        path.write_text(f'[decoder]\nkind = "{kind}"\n' + (body if table == "decoder" else f"\n[{table}]\n{body}"),
                        encoding="utf-8")
        _check(lambda: load_config(path), items, capsys, tmp_path)
