"""Conditioning is one seam (artcap.conditions): the emotion is its first condition and captions exactly as before;
a condition defined here, with one registry call, trains and decodes without touching the pipeline."""

import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from artcap.captioner import Captioner
from artcap.conditions import EMOTION, NO_VALUE, Condition, get_condition, register_condition
from artcap.decode import ConditionContrast, DecodingConfig, generate
from artcap.errors import ArtcapError

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
# The last commit whose pipeline threaded the emotion by hand: the reference the shipped models must caption like.
# A later change that alters captions on purpose (a new decoding default) moves it to that change's commit.
REFERENCE_COMMIT = "a144cce"

# Captions of shipped models on real paintings, printed as JSON: run once on the reference tree and once on this one.
CAPTION_SCRIPT = r"""
import json, sys
from artcap import Captioner
images = sys.argv[1:]
out = {}
for model, asks in [("default", [dict(), dict(emotion="fear"), dict(emotion="amusement", beam=3, emotion_guidance=1.5),
                                  dict(emotion=["awe", "sadness", "anger", "contentment"], beam=1, rerank=False)]),
                    ("sat", [dict(), dict(emotion="disgust", emotion_guidance=1.0)])]:
    captioner = Captioner.load(model, backend="torch")
    for n, ask in enumerate(asks):
        described = captioner.describe(images, with_attention=captioner.has_attention, **ask)
        out[f"{model}/{n}"] = [[d.caption, d.emotion, d.emotion_scores,
                                None if d.attention is None else d.attention.round(5).tolist()] for d in described]
print(json.dumps(out))
"""


def _reference_source(tmp_path: Path) -> Path:
    """The package's code as it was at REFERENCE_COMMIT, unpacked from git (skip where there is no git history)."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", REFERENCE_COMMIT, "src/artcap"],
                                 capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"the reference commit {REFERENCE_COMMIT} is not in this checkout's history: {e}")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    # The reference code runs on today's shipped weights: a model retrained since must still caption alike.
    models = tmp_path / "src" / "artcap" / "models"
    shutil.rmtree(models)
    shutil.copytree(REPO / "src" / "artcap" / "models", models)
    return tmp_path / "src"


def _captions(source: Path, images: list[Path]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run([sys.executable, "-c", CAPTION_SCRIPT, *map(str, images)], capture_output=True,
                          text=True, env=env, cwd=source, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_shipped_models_caption_exactly_as_before_the_seam(shared_data, tmp_path):
    """Captions, emotions (auto, asked, one per image), guidance, beam + rerank and attention maps of the shipped
    default and sat models on real paintings: identical to the reference tree's, computed by its own code."""
    splits = json.loads((REPO / "src" / "artcap" / "models" / "default" / "splits.json").read_text())
    images = [shared_data / "artemis-mini" / "wikiart" / f"{i}.jpg" for i in splits["test"][::60][:4]]
    before = _captions(_reference_source(tmp_path), images)
    after = _captions(REPO / "src", images)
    assert after == before
    assert len({c[0] for c in after["default/0"]}) >= 2  # real, varied captions were compared


# ---- a second condition, defined only here ----

PERIOD = Condition("period", ("early", "late"), read=lambda row: row.column("period"))


def _period_of(row: dict) -> str:
    """Which half of art history a style belongs to: a column this test writes, as a user would."""
    early = {"Baroque", "Rococo", "Northern_Renaissance", "High_Renaissance", "Early_Renaissance", "Romanticism",
             "Ukiyo_e", "Mannerism_Late_Renaissance", "Realism"}
    return "early" if row["art_style"] in early else "late"


@pytest.fixture(scope="module")
def period_csv(artemis_subset, tmp_path_factory):
    """The real ArtEmis subset with a `period` column."""
    csv_path, images = artemis_subset
    out = tmp_path_factory.mktemp("period") / "with_period.csv"
    with_period_column(csv_path, out, lambda row, _: _period_of(row))
    return out, images


def with_period_column(csv_path, out, value_of, rows: int | None = None) -> None:
    """Copy an ArtEmis CSV (its first `rows` rows; None: all) to `out` with a `period` column holding
    value_of(row, row_number)."""
    with open(csv_path, newline="", encoding="utf-8") as f_in, open(out, "w", newline="", encoding="utf-8") as f_out:
        reader = csv.DictReader(f_in)
        writer = csv.DictWriter(f_out, [*reader.fieldnames, "period"])
        writer.writeheader()
        for i, row in enumerate(reader):
            if rows is not None and i == rows:
                break
            writer.writerow({**row, "period": value_of(row, i)})


@pytest.fixture(scope="module")
def period_run(period_csv, feature_cache_dir, tmp_path_factory):
    from artcap.train import train

    register_condition(PERIOD)  # the one line a new condition takes
    out = tmp_path_factory.mktemp("runs") / "period"
    config = tiny_config(period_csv, feature_cache_dir, out, epochs=1, steps_per_epoch=6, emotion_grounded=True,
                         **{"data.conditions": "period"})
    return train(config, progress=False), config


def test_a_condition_registered_in_a_test_trains_and_decodes(period_run, period_csv):
    from artcap.corpus import caption_table, load_corpus
    from artcap.model_folder import ModelFolder

    run, config = period_run
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["decoder"]["conditions"] == {"period": PERIOD.dim} and saved["decoder"]["num_emotions"] == 9
    history = json.loads((run / "history.json").read_text())
    assert history[0]["steps"] == 6 and history[0]["val_loss"] is not None

    corpus = load_corpus(config, progress=False)
    table = caption_table(corpus, "train", 30)
    assert set(table.conditions["period"].tolist()) == {0, 1}  # both periods were read from the column
    folder = ModelFolder.load(run / "model")
    assert folder.decoder.period.proj.in_features == 2 and folder.decoder.emotion.proj.in_features == 9

    rows = [corpus.image_row[i] for i in corpus.data.split_ids("val")[:6]]
    features = torch.from_numpy(corpus.features[rows])
    decoding = DecodingConfig(beam=2, max_len=12)
    asked = {"emotion": torch.full((6,), 1), "period": torch.zeros(6, dtype=torch.long)}
    captions = generate(folder.decoder, features, folder.vocab, decoding, asked)
    assert all(c.split() for c in captions)
    with torch.no_grad():
        early, _ = folder.decoder(features, torch.full((6, 1), folder.vocab.bos_id), None, asked)
        late, _ = folder.decoder(features, torch.full((6, 1), folder.vocab.bos_id), None,
                                 {**asked, "period": torch.ones(6, dtype=torch.long)})
    assert not torch.allclose(early, late)  # the period reaches the words
    guided = generate(folder.decoder, features, folder.vocab, decoding, asked, guidance={"period": 2.0})
    assert len(guided) == 6


def test_the_captioner_asks_for_a_registered_conditions_value(period_run, shared_data):
    run, _ = period_run
    captioner = Captioner.load(run / "model", backend="torch")
    assert captioner.conditions == ["emotion", "period"]
    images = sorted((shared_data / "artemis-mini" / "wikiart").rglob("*.jpg"))[:2]
    early = captioner.caption(images, emotion="awe", conditions={"period": "Early"})
    assert len(early) == 2 and all(early)
    with pytest.raises(ArtcapError, match="conditioned on period: give conditions="):
        captioner.caption(images, emotion="awe")
    with pytest.raises(ArtcapError, match="unknown period 'middle'; use one of: early, late"):
        captioner.caption(images, emotion="awe", conditions={"period": "middle"})
    with pytest.raises(ArtcapError, match="not conditioned on school"):
        captioner.caption(images, emotion="awe", conditions={"period": "late", "school": "x"})


def test_training_refuses_captions_without_the_conditions_value(artemis_subset, feature_cache_dir, tmp_path):
    """The plain subset has no `period` column: every caption lacks the value; one line says so."""
    from artcap.train import train

    register_condition(PERIOD)
    config = tiny_config(artemis_subset, feature_cache_dir, tmp_path / "run", epochs=1, steps_per_epoch=1,
                         **{"data.conditions": "period"})
    with pytest.raises(ArtcapError, match=r"conditioned on period, but \d+ training caption\(s\) have no value"):
        train(config, progress=False)


def test_unknown_and_misused_conditions_are_one_line_errors():
    from artcap.conditions import parse_condition_names

    with pytest.raises(ArtcapError, match="unknown condition 'colour'"):
        parse_condition_names("colour")
    with pytest.raises(ArtcapError, match="set emotion.grounded = true instead"):
        parse_condition_names("emotion")
    with pytest.raises(ValueError, match="registered twice"):
        register_condition(Condition("emotion", ("a", "b"), read=lambda row: None))
    assert register_condition(EMOTION) is get_condition("emotion")


# ---- guidance over any condition: the contrast against all of a condition's values ----

@settings(max_examples=8, deadline=None)
@given(kind=st.sampled_from(["merge", "sat"]), guidance=st.floats(0.25, 4.0), seed=st.integers(0, 2**16))
def test_guidance_contrasts_the_asked_value_against_every_value_of_that_condition(kind, guidance, seed):
    """ConditionContrast's first-word scores on a decoder with two conditions, guided on the second: equal to
    log p(w|v) + g (log p(w|v) - log mean_v' p(w|v')) computed from teacher-forced passes, the emotion held."""
    from artcap.decoders import DecoderConfig, create_decoder

    register_condition(PERIOD)
    torch.manual_seed(seed)
    model = create_decoder(DecoderConfig(12, 8, kind=kind, embed_dim=8, hidden_dim=8, dropout=0.0,
                                         num_emotions=9, emotion_dim=4, conditions={"period": 3})).eval()
    features = torch.randn(3, 8) if kind == "merge" else torch.randn(3, 4, 8)
    asked = {"emotion": torch.tensor([0, 4, 8]), "period": torch.tensor([1, 0, 1])}
    bos = torch.full((3,), 1)
    with torch.no_grad():
        contrast = ConditionContrast(model, "period", guidance)
        scores, _, _ = contrast.step(contrast.init_memory(features, asked), bos)
        own = F.log_softmax(model(features, bos.unsqueeze(1), None, asked)[0][:, 0], dim=-1)
        every = torch.stack([F.log_softmax(model(features, bos.unsqueeze(1), None,
                                                 {**asked, "period": torch.full((3,), v)})[0][:, 0], dim=-1)
                             for v in range(2)], dim=1)
    expected = own + guidance * (own - (torch.logsumexp(every, dim=1) - torch.log(torch.tensor(2.0))))
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def test_a_value_outside_a_condition_reads_as_missing():
    assert PERIOD.id_of("early") == 0 and PERIOD.id_of("medieval") == NO_VALUE and PERIOD.id_of(None) == NO_VALUE
    assert EMOTION.dominant(["fear", None, "awe", "fear"]) == EMOTION.values.index("fear")


@settings(max_examples=10, deadline=None)
@given(values=st.lists(st.sampled_from(["early", "late", "Early", "", "medieval"]), min_size=6, max_size=6))
def test_every_caption_carries_its_rows_value_into_the_table(values, artemis_subset, tmp_path_factory):
    """Whatever a CSV column holds, each caption's id in the table is its own row's value (NO_VALUE for a blank or
    a value outside the condition): read through data.Annotation, kept with its caption through the preset."""
    from artcap.corpus import Corpus, caption_table
    from artcap.data import prepare, read_annotations

    register_condition(PERIOD)
    csv_path, images = artemis_subset
    out = tmp_path_factory.mktemp("values") / "rows.csv"
    with_period_column(csv_path, out, lambda _, i: values[i], rows=len(values))
    annotations = read_annotations(out, images)
    ids = sorted({a.image_id for a in annotations})
    data = prepare(annotations, "paper", {"train": ids, "val": [], "test": []})
    table = caption_table(Corpus(annotations, data, None, {i: n for n, i in enumerate(ids)}), "train", 40)
    expected = [PERIOD.id_of(a.column("period")) for i in ids for a in data.sources[i]]
    assert table.conditions["period"].tolist() == expected
    assert len(expected) == len(values) and expected.count(NO_VALUE) == sum(v not in PERIOD.values for v in values)
