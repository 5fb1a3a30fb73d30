"""Decoding options mean the same on every surface: one table, every DecodingConfig field (and the
per-request emotion) x every surface — the CLI to stdout, `--out` JSONL and CSV record files, `--ray`,
the Python API, the HTTP API and the page in a real browser — gives the Python API's captions and
records the setting it used. The shipped `fast` model (emotion-grounded, with an emotion classifier
and a caption matcher, so every field matters) on real ArtEmis paintings.

Every surface runs with torch's image network (`--backend torch`) and one torch thread, as each Ray
actor does here: the captions are then the same numbers everywhere, not merely close."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import fields
from pathlib import Path

import httpx
import pytest

from artcap import settings
from artcap.cli import main
from artcap.decode import DecodingConfig
from artcap.errors import ArtcapError
from artcap.server import create_app, serve_in_background
from test_page_browser import browser  # noqa: F401 - the headless Chromium fixture

pytestmark = pytest.mark.slow  # real model, real Ray, real server, real browser

MODEL = "fast"
# The row's setting -> the options of its case: a value that changes these paintings' captions (checked
# below, so a surface that dropped the setting would be caught). With the matcher reranking, the beam's
# length ranking does not pick the caption: length_alpha's case turns rerank off.
CASES = {
    "beam": {"beam": 2},
    "max_len": {"max_len": 4},
    "length_alpha": {"length_alpha": 2.0, "rerank": False},
    "no_repeat_ngram": {"no_repeat_ngram": 0},
    "max_word_repeats": {"max_word_repeats": 1},
    "emotion_guidance": {"emotion_guidance": 3.0},
    "rerank": {"rerank": False},
    "coherent": {"coherent": True, "max_len": 6},  # cut at 6 words, only coherent decoding avoids "... feel like"
    "emotion": {"emotion": "awe"},  # not a decoding setting: a per-request condition, the same everywhere
}
SURFACES = ["python", "stdout", "out-jsonl", "out-csv", "ray", "api", "page"]


def test_every_decoding_setting_has_a_row_and_a_flag_on_every_command():
    assert set(CASES) - {"emotion"} == {f.name for f in fields(DecodingConfig)}
    from artcap.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for command in ("caption", "evaluate"):
        assert {f.name for f in fields(DecodingConfig)} <= {a.dest for a in commands[command]._actions}, command


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fast():
    from artcap.captioner import Captioner

    return Captioner.load(MODEL, backend="torch")


@pytest.fixture(scope="module")
def paintings(shared_data) -> list[Path]:
    return sorted((shared_data / "artemis-mini" / "wikiart").glob("*/*.jpg"))[::97][:2]


def python_captions(captioner, paths: list[Path], options: dict) -> list[tuple[str, dict]]:
    decoding = {k: v for k, v in options.items() if k != "emotion"}
    used = {**captioner.resolve_decoding(**decoding).to_dict()}
    descriptions = captioner.describe(paths, emotion=options.get("emotion"), **decoding)
    return [(d.caption, {**used, "emotion": d.emotion}) for d in descriptions]


def test_each_case_changes_the_captions(fast, paintings):
    """Without its setting, a case's captions differ: a surface that dropped the setting would fail."""
    for name, options in CASES.items():
        without = {k: v for k, v in options.items() if k != name}
        assert python_captions(fast, paintings, options) != python_captions(fast, paintings, without), name


# ---- the surfaces: each returns [(caption, the settings it says it used)] in the order of the paintings ----

def cli_flags(options: dict) -> list[str]:
    flags = []
    for name, value in options.items():
        if isinstance(value, bool):
            flags.append(settings.flag_name(name) if value else "--no-" + name.replace("_", "-"))
        else:
            flags.append(f"{settings.flag_name(name)}={value}")
    return flags


def run_cli(argv: list[str], capsys) -> str:
    capsys.readouterr()
    code = main(["caption", *argv, "--model", MODEL, "--backend", "torch", "-q"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def stdout_surface(paths, options, tmp_path, capsys, **_):
    doc = json.loads(run_cli([*map(str, paths), "--format", "json", *cli_flags(options)], capsys))
    by_path = {Path(r["path"]).name: r for r in doc["captions"]}
    return [(by_path[p.name]["caption"], {**doc["decoding"], "emotion": by_path[p.name]["emotion"]}) for p in paths]


def record_rows(out: Path) -> dict[str, dict]:
    if out.suffix == ".csv":
        with open(out, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:  # CSV cells are text: read each setting back as its field's type
            for f_ in fields(DecodingConfig):
                row[f_.name] = settings.parse(DecodingConfig, f_.name, row[f_.name], str(out))
    else:
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return {Path(r["path"]).name: r for r in rows}


def out_surface(suffix: str, extra: list[str] = ()):
    def surface(paths, options, tmp_path, capsys, **_):
        out = tmp_path / f"records{suffix}"
        run_cli([*map(str, paths), "--out", str(out), *cli_flags(options), *extra], capsys)
        rows = record_rows(out)
        names = [f.name for f in fields(DecodingConfig)]
        return [(rows[p.name]["caption"], {**{k: rows[p.name][k] for k in names}, "emotion": rows[p.name]["emotion"]})
                for p in paths]
    return surface


def ray_surface(paths, options, tmp_path, capsys, request, **_):
    request.getfixturevalue("local_ray")
    return out_surface(".jsonl", ["--ray", "local"])(paths, options, tmp_path, capsys)


def api_surface(paths, options, request, **_):
    url = request.getfixturevalue("api_url")
    answers = []
    for path in paths:
        form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}
        response = httpx.post(f"{url}/v1/captions", files={"image": (path.name, path.read_bytes())}, data=form,
                              timeout=120)
        assert response.status_code == 200, response.text
        body = response.json()
        answers.append((body["caption"], {**body["decoding"], "emotion": body["emotion"]}))
    return answers


def page_surface(paths, options, request, **_):
    url, page = request.getfixturevalue("api_url"), request.getfixturevalue("browser")
    return [caption_on_the_page(page, url, path, options) for path in paths]


def python_surface(paths, options, request, **_):
    return python_captions(request.getfixturevalue("fast"), paths, options)


SURFACE_RUNNERS = {"python": python_surface, "stdout": stdout_surface, "out-jsonl": out_surface(".jsonl"),
                   "out-csv": out_surface(".csv"), "ray": ray_surface, "api": api_surface, "page": page_surface}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def api_url(fast):
    with serve_in_background(create_app(fast)) as url:
        yield url


@pytest.fixture(scope="module")
def expected(fast, paintings):
    return {name: python_captions(fast, paintings, options) for name, options in CASES.items()}


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("case", list(CASES))
def test_a_setting_gives_the_same_captions_and_records_on_every_surface(case, surface, paintings, expected,
                                                                        tmp_path, capsys, request):
    got = SURFACE_RUNNERS[surface](paintings, CASES[case], tmp_path=tmp_path, capsys=capsys, request=request)
    assert [caption for caption, _ in got] == [caption for caption, _ in expected[case]], (case, surface)
    for (_, used), (_, reference) in zip(got, expected[case]):
        assert used == reference, (case, surface)  # every setting it used, the asked one included


# ---- the page: the decoding controls are built from /v1/limits' parameter schema ----------------------

def caption_on_the_page(page, url: str, path: Path, options: dict) -> tuple[str, dict]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page.get(url + "/")
    wait = WebDriverWait(page, 60)
    wait.until(lambda d: d.find_element(By.ID, "decoding-options").is_displayed())
    page.find_element(By.CSS_SELECTOR, "#decoding-options summary").click()
    for name, value in options.items():
        if name == "emotion":
            continue
        control = page.find_element(By.CSS_SELECTOR, f'input[data-parameter="{name}"]')
        if control.get_attribute("type") == "checkbox":
            if control.is_selected() != value:
                control.click()
        else:
            control.clear()
            control.send_keys(str(value))
    page.find_element(By.ID, "image-input").send_keys(str(path))
    used = wait_for_answer(page)
    if "emotion" in options:  # a click on the emotion's bar re-captions the painting under it
        page.find_element(By.CSS_SELECTOR, f'#emotion-chart button[data-emotion="{options["emotion"]}"]').click()
        wait.until(lambda d: d.find_element(By.ID, "grounded-emotion").text == options["emotion"])
        used = wait_for_answer(page)
    emotion = page.find_element(By.ID, "grounded-emotion").text
    return page.find_element(By.ID, "caption-beam").text, {**used, "emotion": emotion}


def wait_for_answer(page) -> dict:
    """The settings the page says the answer used ("Decoding: beam 2, max_len 30, ..."), once it is shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(page, 60).until(
        lambda d: d.find_element(By.ID, "error").is_displayed()
        or (d.find_element(By.ID, "decoding-used").text and d.find_element(By.ID, "caption-beam").text != "…"))
    assert not page.find_element(By.ID, "error").is_displayed(), page.find_element(By.ID, "error").text
    text = page.find_element(By.ID, "decoding-used").text.removeprefix("Decoding: ")
    pairs = dict(re.fullmatch(r"(\w+) (.+)", item).groups() for item in text.split(", "))
    return {name: settings.parse(DecodingConfig, name, value, "the page") for name, value in pairs.items()}


# ---- emotion: '' is refused everywhere (leave it out, or say auto) ----------------------------------------

def test_an_empty_emotion_is_refused_on_every_surface(fast, paintings, tmp_path, capsys, request):
    with pytest.raises(ArtcapError, match="emotion is empty"):
        fast.caption(paintings, emotion="")
    for extra in ([], ["--out", str(tmp_path / "x.jsonl")]):
        capsys.readouterr()
        assert main(["caption", str(paintings[0]), "--model", MODEL, "--emotion=", *extra]) == 2
        error = capsys.readouterr().err
        assert "emotion is empty" in error and error.count("\n") == 1
    assert not (tmp_path / "x.jsonl").exists()
    url = request.getfixturevalue("api_url")
    for where in ("params", "data"):
        response = httpx.post(f"{url}/v1/captions", files={"image": ("p.jpg", paintings[0].read_bytes())},
                              timeout=60, **{where: {"emotion": ""}})
        assert response.status_code == 422 and "emotion must be auto or one of" in response.json()["error"]
