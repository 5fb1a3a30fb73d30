"""The family of captioners end to end, on a real (tiny) emotion-grounded Show-Attend-Tell model with its emotion
classifiers: attention maps in JSON and as pictures, captions steered by emotion, emotion scores, the HTTP API's
explain/emotion options, folder jobs and evaluation; and the shipped models by name."""

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config

from artcap.captioner import Captioner, emotion_name, shipped_models
from artcap.cli import main
from artcap.data import EMOTIONS
from artcap.errors import ArtcapError

ARTCAP = [sys.executable, "-m", "artcap"]


@pytest.fixture(scope="module")
def sat_run(artemis_subset, feature_cache_dir, tmp_path_factory):
    """A real run: SAT over a 7x7 grid, emotion-grounded, with the image and text emotion classifiers."""
    from artcap.train import train

    out = tmp_path_factory.mktemp("family") / "sat"
    return train(tiny_config(artemis_subset, feature_cache_dir, out, decoder="sat", emotion_grounded=True,
                             emotion_head=True, epochs=2, max_len=12), progress=False)


@pytest.fixture(scope="module")
def paintings(shared_data):
    return sorted((shared_data / "artemis-mini" / "wikiart" / "Impressionism").glob("*.jpg"))[:3]


def caption_json(capsys, *args) -> dict:
    assert main(["caption", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_the_run_ships_a_grid_model_with_both_emotion_classifiers(sat_run):
    model = sat_run / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["decoder"]["kind"] == "sat" and config["decoder"]["num_emotions"] == 9
    assert config["features"] == {"kind": "grid", "grid_size": 7}
    assert config["emotion"]["emotions"] == list(EMOTIONS)
    for name in ("emotion.safetensors", "text_emotion.json", "text_emotion.safetensors"):
        assert (model / name).is_file(), name


@pytest.mark.slow
def test_json_records_carry_attention_maps_and_emotions(sat_run, paintings, capsys):
    records = caption_json(capsys, *map(str, paintings), "--model", str(sat_run))["captions"]
    assert len(records) == 3
    for record in records:
        assert record["error"] is None and record["caption"]
        assert [w["word"] for w in record["words"]] == record["caption"].split()
        for word in record["words"]:
            grid = np.asarray(word["attention"])
            assert grid.shape == (7, 7) and grid.sum() == pytest.approx(1.0, abs=1e-3)
        assert record["emotion"] in EMOTIONS  # auto: the classifier's choice
        assert sum(record["emotion_scores"].values()) == pytest.approx(1.0, abs=1e-3)  # 4 decimals each
        assert list(record["emotion_scores"]) == list(EMOTIONS)


@pytest.mark.slow
def test_explain_writes_one_picture_per_image(sat_run, paintings, tmp_path):
    assert main(["caption", *map(str, paintings[:2]), "--model", str(sat_run), "--explain", str(tmp_path)]) == 0
    pictures = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pictures] == sorted(f"{p.name}.png" for p in paintings[:2])
    with Image.open(pictures[0]) as picture:
        assert picture.width > 400 and len(set(picture.convert("L").getdata())) > 50  # a real figure, not blank


def test_a_model_without_attention_refuses_explain_in_one_line(tmp_path, capsys, shared_data):
    painting = next((shared_data / "artemis-mini" / "wikiart" / "Impressionism").glob("*.jpg"))
    assert main(["caption", str(painting), "--explain", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no attention" in err and not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("asked, grounded_on", [("fear", "fear"), ("something-else", "something else"),
                                                 ("Something Else", "something else")])
def test_captions_are_grounded_on_the_emotion_asked_for(sat_run, paintings, capsys, asked, grounded_on):
    records = caption_json(capsys, str(paintings[0]), "--model", str(sat_run), "--emotion", asked)["captions"]
    assert records[0]["emotion"] == grounded_on


@pytest.mark.slow
def test_emotion_names_and_ungrounded_models_fail_in_one_line(sat_run, paintings, capsys):
    assert main(["caption", str(paintings[0]), "--model", str(sat_run), "--emotion", "happy"]) == 2
    assert "unknown emotion 'happy'" in capsys.readouterr().err
    assert main(["caption", str(paintings[0]), "--model", "paper" if "paper" in shipped_models() else "default",
                 "--emotion", "awe"]) == 2
    assert "not emotion-grounded" in capsys.readouterr().err
    with pytest.raises(ArtcapError, match="unknown emotion"):
        emotion_name("joy")


@pytest.mark.slow
def test_python_emotions_and_steering_change_the_caption(sat_run, paintings):
    captioner = Captioner.load(sat_run)
    scores = captioner.emotions(paintings)
    assert len(scores) == 3 and all(sum(s.values()) == pytest.approx(1.0, abs=1e-3) for s in scores)
    # The emotion asked for changes what the decoder would say next (a 2-epoch model's argmax may not move yet).
    import torch

    from artcap.conditions import EMOTION

    features = captioner.encode(paintings[:1]).repeat(len(EMOTIONS), 1, 1)
    memory = captioner.decoder.init_memory(features, {"emotion": EMOTION.ids(list(EMOTIONS))})
    bos = torch.full((len(EMOTIONS),), captioner.vocab.bos_id)
    logits, _, _ = captioner.decoder.step(memory, bos, None)
    assert torch.cdist(logits, logits).max() > 1e-3


@pytest.mark.slow
def test_folder_jobs_record_the_emotion_and_refuse_another_on_resume(sat_run, paintings, tmp_path, capsys):
    folder = tmp_path / "c"
    folder.mkdir()
    for p in paintings:
        (folder / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "captions.jsonl"
    assert main(["caption", str(folder), "--model", str(sat_run), "--emotion", "awe", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["emotion"] for r in records} == {"awe"} and {r["asked_emotion"] for r in records} == {"awe"}
    assert main(["caption", str(folder), "--model", str(sat_run), "--emotion", "fear", "--out", str(out)]) == 2
    assert "asked_emotion was awe, now fear" in capsys.readouterr().err


@pytest.mark.slow
def test_the_api_explains_and_steers(sat_run, paintings):
    from artcap.server import create_app, serve_in_background

    app = create_app(Captioner.load(sat_run))
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        limits = http.get("/v1/limits").json()
        assert limits["grounded"] and limits["attention"] and limits["emotion_classifier"]
        image = {"image": ("p.jpg", paintings[0].read_bytes(), "image/jpeg")}
        answer = http.post("/v1/captions", files=image, data={"explain": "true", "emotion": "sadness"}).json()
        assert answer["emotion"] == "sadness" and len(answer["emotion_scores"]) == 9
        assert [w["word"] for w in answer["words"]] == answer["caption"].split()
        assert np.asarray(answer["words"][0]["attention"]).sum() == pytest.approx(1.0, abs=1e-3)
        assert http.post("/v1/captions", files=image, data={"emotion": "joy"}).status_code == 422


@pytest.mark.slow
def test_evaluate_reports_alignment_steerability_and_the_human_rows(sat_run, artemis_subset):
    from artcap.evaluate import evaluate

    csv_path, images = artemis_subset
    result = evaluate(sat_run, csv_path, images, split="val", with_meteor=False, progress=False, backend="torch")
    emotion = result["emotion"]
    assert set(emotion["alignment"]) == {result["model"], "human"}
    assert set(emotion["steerability"]) == {*EMOTIONS, "overall"}
    assert 0 <= emotion["steerability"]["overall"] <= 1
    assert emotion["image_classifier"]["prior_kl"] > 0
    assert "human (leave-one-out)" in result["table"]


def test_every_shipped_model_loads_by_name_and_captions(shared_data):
    painting = next((shared_data / "artemis-mini" / "wikiart" / "Impressionism").glob("*.jpg"))
    listed = subprocess.run([*ARTCAP, "models"], capture_output=True, text=True, check=True).stdout
    for name in shipped_models():
        assert listed.count(f"{name}") >= 1
        assert Captioner.load(name).caption([painting])[0]


def test_explain_with_the_shipped_sat_draws_a_map_for_every_word(shared_data, tmp_path, capsys):
    if "sat" not in shipped_models():
        pytest.skip("no shipped sat model (build it: python scripts/make_shipped_model.py sat)")
    painting = shared_data / "artemis-mini" / "wikiart" / "Impressionism" / \
        "valentin-serov_portrait-of-the-artist-isaac-levitan-1900.jpg"  # a val portrait
    assert main(["caption", str(painting), "--model", "sat", "--explain", str(tmp_path)]) == 0
    capsys.readouterr()
    with Image.open(tmp_path / f"{painting.name}.png") as picture:
        assert picture.width > 400 and len(set(picture.convert("L").getdata())) > 50  # a real figure, not blank
    (record,) = caption_json(capsys, str(painting), "--model", "sat")["captions"]
    maps = np.asarray([w["attention"] for w in record["words"]])
    assert maps.shape == (len(record["caption"].split()), 7, 7)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-3)
