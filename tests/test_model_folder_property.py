"""Every resource a model folder names is bounded, and every damage to one is one line.

A copy of the shipped `fast` model is damaged at random — a config.json field set to a string, a huge,
negative, NaN or fractional number, null, a list; a key deleted; a key added; a weights tensor filled with
NaN or infinity, given another shape, dropped or joined by an extra one — and then loaded. The folder is
refused with one line that names the file and the field (or tensor), or it still captions. Memory is
bounded while it loads (RLIMIT_AS), so a size that would allocate a terabyte fails the test instead of the
machine; a few cases go through the real CLI in a subprocess under the same kind of limit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from artcap.captioner import MODELS_DIR, Captioner
from artcap.errors import ArtcapError
from artcap.model_folder import ModelConfig, ModelFolder

FAST = MODELS_DIR / "fast"
ROOT = Path(__file__).resolve().parents[1]
PAINTING = ROOT / "examples" / "landscape.jpg"
# Reports kept as written: their contents are not read, so damage inside them is harmless.
FREE_FORM = (("training",), ("emotion", "training"))


def _leaves(value, path=()):
    """Every key path of config.json that artcap reads (lists are leaves)."""
    if path in FREE_FORM:
        yield path
        return
    if isinstance(value, dict):
        if path:
            yield path
        for key, item in value.items():
            yield from _leaves(item, path + (key,))
    else:
        yield path


CONFIG = json.loads((FAST / "config.json").read_text())
FIELDS = sorted(set(_leaves(CONFIG)))
BAD_VALUES = st.one_of(
    st.sampled_from(["2208", "", "x" * 300, "../../etc/passwd", None, True, [], {}, [1, 2], math.nan, math.inf,
                     -math.inf, -1, 0, 1, 10**5, 10**6, 10**9, 10**18, 1e9, 2.5, -0.5, "timm:vit_tiny"]),
    st.integers(-(10**12), 10**12), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))
WEIGHTS = ("model.safetensors", "emotion.safetensors", "matcher.safetensors", "text_emotion.safetensors")


@st.composite
def config_damage(draw):
    path = draw(st.sampled_from(FIELDS))
    action = draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
    value = draw(BAD_VALUES)
    return ("config.json", path, action, value)


@st.composite
def weights_damage(draw):
    name = draw(st.sampled_from(WEIGHTS))
    tensors = load_file(str(FAST / name))
    tensor = draw(st.sampled_from(sorted(k for k, v in tensors.items() if v.is_floating_point() and v.numel())))
    # the text judge's arrays are checked against its own vocabulary file, which names no tensor
    shapes = ["reshape", "drop", "add"] if name != "text_emotion.safetensors" else []
    action = draw(st.sampled_from(["nan", "inf", "-inf", *shapes]))
    return (name, (tensor,), action, None)


@st.composite
def vocab_damage(draw):
    action = draw(st.sampled_from(["drop", "add", "replace"]))
    return ("vocab.json", ("vocabulary",), action, draw(BAD_VALUES) if action == "replace" else None)


def damage(folder: Path, change) -> None:
    file, path, action, value = change
    if file == "vocab.json":
        words = json.loads((folder / file).read_text())
        new = words[:-1] if action == "drop" else words + ["zebra"] if action == "add" else value
        (folder / file).write_text(json.dumps(new))
        return
    if file == "config.json":
        config = json.loads((folder / file).read_text())
        *parents, last = path
        section = config
        for key in parents:
            section = section[key]
        if action == "set":
            section[last] = value
        elif action == "delete":
            del section[last]
        else:
            (section[last] if isinstance(section.get(last), dict) else section)["unexpected_key"] = value
        (folder / file).write_text(json.dumps(config))  # json writes NaN and Infinity; json.loads reads them back
        return
    tensors = load_file(str(folder / file))
    (name,) = path
    if action in ("nan", "inf", "-inf"):
        flat = tensors[name].flatten().clone()
        flat[len(flat) // 2] = float(action)
        tensors[name] = flat.view_as(tensors[name])
    elif action == "reshape":
        tensor = tensors[name].reshape(-1) if tensors[name].dim() == 0 else tensors[name]
        tensors[name] = torch.cat([tensor, tensor[:1]])
    elif action == "drop":
        del tensors[name]
    else:
        tensors["unexpected.weight"] = torch.zeros(3)
    save_file(tensors, str(folder / file))


@contextlib.contextmanager
def bounded_memory(extra_bytes: int = 3 << 30):
    """Address space limited to what the process has now plus `extra_bytes`: an allocation beyond it fails."""
    vm_size = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_size + extra_bytes if hard == resource.RLIM_INFINITY else min(vm_size + extra_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def expect_one_line_or_a_caption(folder: Path, change, encoders: dict) -> None:
    file, path, action, _ = change
    try:
        with bounded_memory():
            model = ModelFolder.load(folder)
            model.text_judge  # noqa: B018 - loaded when asked for: it must be checked as well
    except ArtcapError as e:
        message = str(e)
        event(f"refused: {file}")
        assert "\n" not in message and str(folder) in message, message
        names = {path[-1], *path[:1]} if file == "config.json" else {path[0]}
        if file == "vocab.json":
            names = {"vocabulary", "words"}
        elif action == "add":
            names = {"unexpected_key"} if file == "config.json" else {"unexpected.weight"}
        assert any(n in message for n in names), f"{message!r} names none of {names}"
        if file not in ("config.json", "vocab.json"):
            assert file in message, message
        if file == "vocab.json":
            assert file in message, message
        return
    event(f"accepted: {file}")
    # Accepted: a harmless change (an optional key deleted, an allowed value). The folder must still caption.
    spec = model.encoder_spec
    if spec not in encoders:
        encoders[spec] = spec.create(folder)
    captioner = Captioner(model, encoders[spec], torch.device("cpu"))
    # a grounded decoder without its emotion classifier captions under an emotion it is given
    emotion = "awe" if captioner.is_grounded and model.emotion_head is None else None
    (caption,) = captioner.caption([PAINTING], beam=1, emotion=emotion)
    assert isinstance(caption, str)


@pytest.fixture(scope="module")
def encoders():
    return {}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(change=st.one_of(config_damage(), weights_damage(), vocab_damage()))
@example(change=("config.json", ("decoder", "vocab_size"), "set", 10**9))
@example(change=("config.json", ("decoder", "hidden_dim"), "set", 10**6))
@example(change=("config.json", ("encoder", "image_size"), "set", 10**5))
@example(change=("config.json", ("decoder", "vocab_size"), "set", "2208"))
@example(change=("config.json", ("emotion", "hidden_dim"), "set", 10**6))
@example(change=("config.json", ("matcher", "settings", "dim"), "set", 10**7))
@example(change=("model.safetensors", ("out.weight",), "nan", None))
def test_a_damaged_model_folder_is_one_line_or_still_captions(change, encoders, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "fast"
    shutil.copytree(FAST, folder)
    damage(folder, change)
    expect_one_line_or_a_caption(folder, change, encoders)


def _cli(folder: Path) -> subprocess.CompletedProcess:
    def limit() -> None:  # 6 GiB of address space: torch's import needs ~4, a caption little more
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    return subprocess.run([sys.executable, "-m", "artcap", "caption", "--model", str(folder), str(PAINTING)],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit, cwd=ROOT)


@pytest.mark.slow
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(change=st.one_of(config_damage(), weights_damage()))
@example(change=("config.json", ("decoder", "vocab_size"), "set", 10**9))
@example(change=("config.json", ("encoder", "image_size"), "set", 10**5))
@example(change=("config.json", ("decoder", "vocab_size"), "set", "2208"))
@example(change=("model.safetensors", ("out.weight",), "nan", None))
def test_the_cli_says_one_line_for_a_damaged_model_folder(change, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "fast"
    shutil.copytree(FAST, folder)
    damage(folder, change)
    result = _cli(folder)
    if result.returncode == 0:  # a harmless change: a caption came out
        assert result.stdout.strip().startswith(str(PAINTING)), result.stdout
        return
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(folder) in lines[0], lines[0]


def test_model_config_round_trips_for_every_shipped_model(tmp_path):
    for folder in sorted(p for p in MODELS_DIR.iterdir() if (p / "config.json").is_file()):
        config = ModelConfig.read(folder)
        config.write(tmp_path)
        assert ModelConfig.read(tmp_path) == config
        again = json.loads((tmp_path / "config.json").read_text())
        assert ModelConfig.from_dict(again) == config and again == config.to_dict()


def test_emotion_head_and_matcher_training_write_through_model_config(tmp_path):
    """Real (tiny) training of both parts into a folder without them: config.json gains exactly their sections."""
    from artcap.emotion import EmotionSettings, EmotionSplit, fit_emotion_head, save_emotion_head
    from artcap.rerank import MatcherSettings, save_matcher, train_matcher

    folder = tmp_path / "model"
    shutil.copytree(FAST, folder)
    bare = dataclasses.replace(ModelConfig.read(folder), emotion=None, emotion_training={}, matcher=None,
                               matcher_settings={})
    bare.write(folder)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(24, 1280)).astype(np.float32)
    histograms = rng.dirichlet(np.ones(9), size=24)
    split = lambda s: EmotionSplit([f"p{i}" for i in range(s.start, s.stop)], features[s], histograms[s])  # noqa: E731
    head, report = fit_emotion_head(split(slice(0, 16)), split(slice(16, 24)),
                                    EmotionSettings(hidden_dim=8, members=2, epochs=2, patience=1))
    save_emotion_head(folder, head, report)
    captions = [[[int(w) for w in rng.integers(4, 2208, size=5)]] for _ in range(24)]
    matcher_settings = MatcherSettings(dim=16, epochs=2, batch_size=8)
    save_matcher(folder, train_matcher(features, captions, 2208, matcher_settings), matcher_settings)

    written = ModelConfig.read(folder)
    assert dataclasses.replace(written, emotion=None, emotion_training={}, matcher=None, matcher_settings={}) == bare
    assert (written.emotion.hidden_dim, written.emotion.members, written.matcher.dim) == (8, 2, 16)
    assert written.emotion_training["best_epoch"] == report["best_epoch"] and "history" not in written.emotion_training
    assert written.matcher_settings["epochs"] == 2
    model = ModelFolder.load(folder)
    np.testing.assert_array_equal(model.emotion_head.predict(features[:3]), head.predict(features[:3]))
    assert model.matcher.dim == 16


def test_an_unknown_key_and_a_wrong_type_name_the_field(tmp_path):
    shutil.copytree(FAST, tmp_path / "fast")
    config = json.loads((tmp_path / "fast" / "config.json").read_text())
    config["decoder"]["vocab_size"] = "2208"
    (tmp_path / "fast" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtcapError, match=r"config.json: decoder.vocab_size must be from 5 to 1000000, got '2208'"):
        ModelConfig.read(tmp_path / "fast")


def test_the_two_entry_points_take_images_features_or_pixels_alike():
    captioner = Captioner.load("sat", backend="torch")
    pixels = captioner.preprocess([PAINTING, PAINTING])
    by_image = captioner.describe([PAINTING, PAINTING], beam=2, with_attention=True)
    by_features = captioner.describe(captioner.encode(pixels), beam=2, with_attention=True)
    for a, b in zip(by_features, by_image, strict=True):
        assert (a.caption, a.words, a.emotion, a.emotion_scores) == (b.caption, b.words, b.emotion, b.emotion_scores)
        np.testing.assert_array_equal(a.attention, b.attention)
    assert captioner.caption(pixels, beam=2) == [d.caption for d in by_image]
    assert by_image[0].attention.shape == (len(by_image[0].words), 49)  # each word's map over the 7x7 grid
    assert captioner.describe([]) == [] and captioner.caption([]) == []
    with pytest.raises(ArtcapError, match="unknown decoding setting 'beem'; known: beam, max_len"):
        captioner.caption([PAINTING], beem=3)
    with pytest.raises(ArtcapError, match="no attention"):
        Captioner.load("fast", backend="torch").describe([PAINTING], with_attention=True)


def _valid_values(cls, **fixed):
    """A strategy for a settings section: every field within its declared range (settings.Spec)."""
    from dataclasses import fields as dataclass_fields

    from artcap.settings import field_type, spec_of

    def one(f):
        spec, kind = spec_of(f), field_type(cls, f)
        if f.name in fixed:
            return fixed[f.name]
        if spec.choices is not None:
            return st.sampled_from(spec.options())
        if kind is int:
            return st.integers(int(spec.low), int(spec.high))
        return st.just(f.default)

    return st.builds(cls, **{f.name: one(f) for f in dataclass_fields(cls)})


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_any_valid_model_config_round_trips(data, tmp_path_factory):
    from artcap.model_folder import EmotionSection, EncoderSection, FeaturesSection, MatcherSection

    base = ModelConfig.read(FAST)
    config = dataclasses.replace(
        base,
        encoder=data.draw(_valid_values(EncoderSection, name=st.sampled_from(["efficientnet-lite2", "timm:vit_x"]))),
        features=data.draw(_valid_values(FeaturesSection, kind=st.just("pooled"))),
        emotion=data.draw(st.none() | _valid_values(EmotionSection, file=st.sampled_from(["e.safetensors"]))),
        matcher=data.draw(st.none() | _valid_values(MatcherSection)),
        model_id=data.draw(st.text(min_size=1, max_size=20)), summary=data.draw(st.text(max_size=20)),
        decoding=base.decoding.with_overrides(beam=data.draw(st.integers(1, 20))))
    folder = tmp_path_factory.mktemp("config")
    config.write(folder)
    assert ModelConfig.read(folder) == config
