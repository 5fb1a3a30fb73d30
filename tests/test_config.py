"""The training config tree: TOML tables map 1:1 to settings dataclasses, `--set table.key=value` reaches any
field, old flat configs load with one note, and a new decoder kind brings its own settings in one file."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from artcap.config import FLAT_KEYS, SECTIONS, config_from, load_config, migrate_text
from artcap.decoders import (DecoderSettings, SatSettings, add_condition_layers, check_features, condition_features,
                             decoder_kinds, register_decoder)
from artcap.errors import ArtcapError
from artcap.settings import setting

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


# ---- a decoder kind with a setting of its own, defined only here -------------------------------------------

@dataclass
class StackedGruSettings(DecoderSettings):
    layers: int = setting(1, "stacked GRU layers", low=1, high=4)


class StackedGru(nn.Module):
    """Next word from a stack of `layers` GRUs started from the image: no attention, not emotion-grounded."""

    feature_kind = "pooled"
    has_attention = False

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.image = nn.Linear(config.feature_dim, config.hidden_dim)
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.gru = nn.GRU(config.embed_dim, config.hidden_dim, num_layers=config.layers, batch_first=True)
        self.out = nn.Linear(config.hidden_dim, config.vocab_size)
        add_condition_layers(self, config)  # reads none (its config names none), but checks what it is given

    def init_memory(self, features, conditions=None):
        features = check_features(self, features)
        return (torch.tanh(self.image(features)), *condition_features(self, conditions, features.size(0)))

    def _start(self, image):
        return image.unsqueeze(0).repeat(self.config.layers, 1, 1).contiguous()  # [layers, B, H]

    def step(self, memory, token, state):
        hidden = state[0].transpose(0, 1).contiguous() if state is not None else self._start(memory[0])
        out, hidden = self.gru(self.embed(token).unsqueeze(1), hidden)
        return self.out(out[:, 0]), (hidden.transpose(0, 1),), None  # state batch-first, as beam search needs

    def forward(self, features, tokens, mask=None, conditions=None):
        (image,) = self.init_memory(features, conditions)
        out, _ = self.gru(self.embed(tokens), self._start(image))
        out = out[mask] if mask is not None else out
        return self.out(out), out.new_zeros(())


@pytest.fixture(scope="module")
def stacked_gru():
    if "stacked-gru" not in decoder_kinds():
        register_decoder("stacked-gru", settings=StackedGruSettings)(StackedGru)
    return "stacked-gru"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_new_kind_is_one_class_and_one_registry_call_with_its_settings_from_toml_and_set(
        stacked_gru, artemis_subset, feature_cache_dir, tmp_path, capsys):
    from artcap.captioner import Captioner
    from artcap.train import train

    csv_path, images = artemis_subset
    path = _write(tmp_path / "gru.toml", f"""
[data]
captions = "{csv_path}"
images = "{images}"

[encoder]
feature_cache = "{feature_cache_dir}"
num_workers = 0

[decoder]
kind = "{stacked_gru}"
layers = 2
embed_dim = 32
hidden_dim = 32

[optim]
epochs = 1
steps_per_epoch = 3
batch_size = 16

[decoding]
beam = 2
max_len = 12

[run]
out = "{tmp_path / 'run'}"
""")
    assert load_config(path).decoder.layers == 2
    config = load_config(path, ["decoder.layers=3"])
    assert isinstance(config.decoder, StackedGruSettings) and config.decoder.layers == 3
    with pytest.raises(ArtcapError, match=r"^--set: decoder.layers must be from 1 to 4, got '9'$"):
        load_config(path, ["decoder.layers=9"])
    with pytest.raises(ArtcapError, match=r"decoder.layers is not|unknown key decoder.layers; decoder kind 'merge'"):
        load_config(path, ["decoder.kind=merge"])  # the merge kind has no such setting: named, with its keys
    assert capsys.readouterr().err == ""  # nested: no migration note

    run = train(config, progress=False)
    captioner = Captioner.load(run)
    assert isinstance(captioner.decoder, StackedGru) and captioner.decoder.gru.num_layers == 3  # from config.json
    saved = load_config(run / "config.toml")
    assert saved == config and "[decoder]\nkind = \"stacked-gru\"" in (run / "config.toml").read_text()
    paintings = sorted(images.rglob("*.jpg"))[:2]
    captions = captioner.caption(paintings)
    assert len(captions) == 2 and all(c.strip() for c in captions)
    assert captioner.config.decoding.beam == 2 and captioner.config.decoding.max_len == 12


# ---- tables, --set and their errors -------------------------------------------------------------------------

def test_every_shipped_config_is_nested_and_loads_without_a_note(tmp_path, capsys):
    assert len(CONFIGS) >= 10
    for path in CONFIGS:
        config = load_config(path)
        assert capsys.readouterr().err == "", path
        config.save(tmp_path / path.name)
        assert load_config(tmp_path / path.name) == config  # saved and read back: the same tree
    assert load_config(ROOT / "configs" / "sat.toml").decoder == SatSettings(kind="sat", grid_size=7)


def test_set_reaches_any_table_and_switches_the_decoder_kind():
    config = load_config(None, ["decoder.kind=sat", "decoder.hidden_dim=512", "decoder.attention_dim=64",
                                "optim.lr=0.01", "decoding.beam=5", "emotion.grounded=true", "data.preset=artemis"])
    assert isinstance(config.decoder, SatSettings)
    assert (config.decoder.hidden_dim, config.decoder.attention_dim, config.optim.lr, config.decoding.beam,
            config.emotion.grounded, config.data.preset) == (512, 64, 0.01, 5, True, "artemis")
    shorter = config.replaced({"optim.epochs": 2})
    assert shorter.optim.epochs == 2 and shorter.decoder == config.decoder
    with pytest.raises(ArtcapError, match="replaced: optim.epochs must be from 1 to 100000, got 0"):
        config.replaced({"optim.epochs": 0})


@pytest.mark.parametrize("overrides, message", [
    (["nope.x=1"], "--set: unknown table 'nope'; tables: data, encoder, decoder, optim, decoding, emotion, scst, run"),
    (["optim.epoch=3"], "--set: unknown key optim.epoch; [optim] keys: objective, epochs, batch_size"),
    (["decoder.attention_dim=64"], "--set: unknown key decoder.attention_dim; decoder kind 'merge' keys: kind, "
                                   "embed_dim, hidden_dim, dropout"),
    (["decoder.kind=lstm9"], "--set: decoder.kind must be one of merge, sat"),
    (["decoding.beam=50"], "--set: decoding.beam must be from 1 to 20, got '50'"),
    (["optim.lr=0"], "--set: optim.lr must be above 0 and at most 10, got '0'"),
    (["run.amp=maybe"], "--set: run.amp must be true or false, got 'maybe'"),
    (["optim.objective=scst"], "optim.objective = scst fine-tunes a cross-entropy model: set run.init_from"),
    (["lr"], "--set 'lr': expected table.key=value"),
])
def test_a_bad_setting_is_one_line_naming_the_dotted_field(overrides, message):
    with pytest.raises(ArtcapError) as e:
        load_config(None, overrides)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_toml_table_errors_name_the_file_and_the_field(tmp_path):
    cases = {'[optim]\nlr = "fast"\n': "optim.lr must be above 0 and at most 10, got 'fast'",
             "[decoding]\nmax_len = 0\n": "decoding.max_len must be from 1 to 200, got 0",
             "[optimiser]\nlr = 0.1\n": "unknown table 'optimiser'; tables: data, encoder",
             "decoding = 3\n": "decoding must be a [decoding] table, got 3",
             "[decoder]\nkind = \"merge\"\ngrid_size = 7\n": "unknown key decoder.grid_size; decoder kind 'merge' keys",
             "[data\n": "invalid TOML"}
    for text, message in cases.items():
        path = _write(tmp_path / "c.toml", text)
        with pytest.raises(ArtcapError) as e:
            load_config(path)
        assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_decoding_max_len_is_the_datas_unless_given():
    assert config_from({}).max_len(23) == 23
    given = config_from({"decoding.max_len": 12})
    assert given.max_len(23) == 12
    assert "max_len = 12" in given.to_toml() and "max_len =" not in config_from({}).to_toml()


# ---- old flat configs ---------------------------------------------------------------------------------------

FLAT_RUN_CONFIG = """data = "a.csv"
images = "wikiart"
preset = "artemis"
skip_missing = false
split_seed = 2021
encoder = "efficientnet-lite0"
encoder_weights = "imagenet"
image_size = 224
feature_cache = ""
feature_batch_size = 16
num_workers = 1
grid_size = 7
decoder = "merge"
embed_dim = 128
hidden_dim = 256
dropout = 0.5
emotion_grounded = true
emotion_dim = 9
emotion_in_output = false
matcher = false
emotion_head = true
epochs = 10
batch_size = 64
steps_per_epoch = 0
lr = 0.001
warmup_steps = 0
lr_schedule = "constant"
min_lr = 0.0
grad_clip = 0.0
init_from = ""
select_by = "val_loss"
objective = "xe"
scst_samples = 5
grounding_weight = 0.0
seed = 0
device = "auto"
amp = true
checkpoint_every = 0
checkpoint_minutes = 5.0
out = "runs/old"
beam = 5
length_alpha = 0.0
no_repeat_ngram = 2
max_word_repeats = 2
emotion_guidance = 0.0
rerank = false
coherent = false
max_len = 0
"""


def test_a_flat_run_config_loads_with_one_note_and_migrates(tmp_path, capsys):
    """Every key an older artcap wrote into a run folder's config.toml (train --resume reads it)."""
    old = _write(tmp_path / "config.toml", FLAT_RUN_CONFIG)
    assert set(FLAT_KEYS) == {line.split(" = ")[0] for line in FLAT_RUN_CONFIG.splitlines()}
    config = load_config(old, ["epochs=12"])  # flat --set too: one note for both
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(old) in err and "--set" in err and "artcap config migrate" in err, err
    assert (config.data.captions, config.decoder.kind, config.decoder.embed_dim, config.emotion.grounded,
            config.emotion.head, config.optim.epochs, config.decoding.beam, config.run.out) == \
           ("a.csv", "merge", 128, True, True, 12, 5, "runs/old")
    assert config.max_len(31) == 31  # max_len = 0 meant the data's
    sat = load_config(_write(tmp_path / "sat.toml", FLAT_RUN_CONFIG.replace('decoder = "merge"', 'decoder = "sat"')
                             .replace("grid_size = 7", "grid_size = 5")))
    assert isinstance(sat.decoder, SatSettings) and sat.decoder.grid_size == 5

    new = _write(tmp_path / "new.toml", migrate_text(old))
    capsys.readouterr()
    assert load_config(new, ["optim.epochs=12"]) == config and capsys.readouterr().err == ""


def test_config_migrate_command_prints_the_tables(tmp_path):
    old = _write(tmp_path / "old.toml", 'data = "a.csv"\ndecoder = "sat"\nbeam = 3\n')
    done = subprocess.run([sys.executable, "-m", "artcap", "config", "migrate", str(old)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    new = _write(tmp_path / "new.toml", done.stdout)
    assert "[decoder]\nkind = \"sat\"" in done.stdout and set(SECTIONS) <= {
        line.strip("[]") for line in done.stdout.splitlines() if line.startswith("[")}
    assert load_config(new) == load_config(old)
    bad = subprocess.run([sys.executable, "-m", "artcap", "config", "migrate", str(tmp_path / "missing.toml")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "config file not found" in bad.stderr
