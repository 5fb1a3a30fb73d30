"""The web page in real headless Chromium, against real servers on loopback: the shipped model (merge decoder, no
attention, emotion-grounded, with the emotion classifier) and a tiny real SAT model, emotion-grounded, with an emotion head (trained here)."""

from __future__ import annotations

import csv
import re
from dataclasses import replace
from pathlib import Path

import pytest

from artcap.server import create_app, serve_in_background
from conftest import tiny_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_url(captioner):
    with serve_in_background(create_app(captioner)) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"headless browser test needs {' and '.join(missing)} (Debian: apt install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1200,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP violations are logged to the console
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def upload(browser, base_url: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(base_url + "/")
    browser.find_element(By.ID, "image-input").send_keys(str(path))


def wait_until_done(browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "error").is_displayed()
        or d.find_element(By.ID, "caption-beam").text not in ("", "…")
    )


def csp_violations(browser) -> list[str]:
    """The console's Content-Security-Policy complaints since the last call (e.g. an inline style or script)."""
    return [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]


def a_painting(shared_data: Path) -> Path:
    return sorted((shared_data / "artemis-mini" / "wikiart").glob("*/*.jpg"))[0]


def test_page_captions_a_dropped_painting(browser, base_url, shared_data):
    from selenium.webdriver.common.by import By

    upload(browser, base_url, a_painting(shared_data))
    wait_until_done(browser)
    error = browser.find_element(By.ID, "error")
    assert not error.is_displayed(), error.text
    beam = browser.find_element(By.ID, "caption-beam").text
    greedy = browser.find_element(By.ID, "caption-greedy").text
    for caption in (beam, greedy):
        assert re.fullmatch(r"[a-z][a-z' ,.-]*", caption.lower()) and len(caption.split()) >= 2, caption
    preview = browser.find_element(By.ID, "preview")
    assert preview.get_attribute("alt") == beam  # the caption describes the image to screen readers
    assert browser.execute_script("return arguments[0].naturalWidth", preview) > 0  # the painting is shown
    assert browser.find_element(By.ID, "image-input").get_attribute("id") == browser.find_element(
        By.CSS_SELECTOR, "label[for=image-input]").get_attribute("for")
    assert csp_violations(browser) == []
    # The default model has no attention but is emotion-grounded, with the emotion classifier: the caption is plain
    # text with no overlay, the grounding line names the classifier's (auto) emotion, and the emotion chart shows.
    assert browser.find_elements(By.CSS_SELECTOR, "#caption-beam button") == []
    for extra in ("attention-overlay", "attention-note"):
        assert not browser.find_element(By.ID, extra).is_displayed(), extra
    grounded = browser.find_element(By.ID, "grounded-on")
    assert grounded.is_displayed() and "auto" in grounded.text.lower()
    assert browser.find_element(By.ID, "emotions").is_displayed()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#emotion-chart .emotion-bar")) == 9


def test_page_shows_api_errors(browser, base_url, tmp_path):
    from selenium.webdriver.common.by import By

    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("these are notes, not a painting")
    upload(browser, base_url, not_an_image)
    wait_until_done(browser)
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed()
    assert "415" in error.text and "notes.jpg" in error.text, error.text


def test_page_loads_nothing_from_elsewhere(browser, base_url):
    browser.get(base_url + "/")
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(url.startswith(base_url) for url in urls), urls


# --------------------------------------------------------------------- attention + emotion-grounded model
SAT_PAINTINGS = 40  # enough for train/val splits; few, so grid extraction and one epoch take seconds

OVERLAY_PIXELS_JS = """
const canvas = document.getElementById("attention-overlay");
if (canvas.hidden || !canvas.width) return 0;
const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0;
for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
return painted;
"""

# Records the form fields (all but the image) of every caption request the page sends, then sends it as usual.
RECORD_REQUESTS_JS = """
window.captionForms = [];
const send = window.fetch;
window.fetch = (url, options) => {
  if (options && options.body instanceof FormData) {
    window.captionForms.push(Object.fromEntries([...options.body].filter(([key]) => key !== "image")));
  }
  return send(url, options);
};
"""


@pytest.fixture(scope="module")
def sat_model(artemis_subset, feature_cache_dir, tmp_path_factory) -> Path:
    """A real SAT decoder (1 epoch), grounded on emotions, plus an emotion head trained on the same paintings."""
    from artcap.corpus import load_corpus
    from artcap.emotion import EmotionSettings, save_emotion_head, train_emotion_head
    from artcap.train import train

    folder = tmp_path_factory.mktemp("page-sat")
    subset = (first_paintings(artemis_subset[0], folder / "subset.csv", SAT_PAINTINGS), artemis_subset[1])
    config = tiny_config(subset, feature_cache_dir, folder / "run", decoder="sat", emotion_grounded=True, epochs=1)
    run = train(config, progress=False)
    corpus = load_corpus(config, progress=False)  # the run's grid features, read back from the cache
    # The head reads pooled features; a grid's mean is the pooled vector (as Captioner computes it).
    grid = corpus.features[list(range(len(corpus.image_row)))].astype("float32")
    head, report = train_emotion_head(replace(corpus, features=grid.mean(axis=1)),
                                      EmotionSettings(epochs=5, members=1, lr=1e-3))
    save_emotion_head(run / "model", head, report)
    return run


def first_paintings(source: Path, out: Path, count: int) -> Path:
    """The rows of the first `count` paintings of an ArtEmis CSV."""
    with open(source, newline="", encoding="utf-8") as f_in, open(out, "w", newline="", encoding="utf-8") as f_out:
        reader = csv.DictReader(f_in)
        writer = csv.DictWriter(f_out, reader.fieldnames)
        writer.writeheader()
        paintings: set[str] = set()
        for row in reader:
            paintings.add(row["painting"])
            if len(paintings) > count:
                break
            writer.writerow(row)
    return out


@pytest.fixture(scope="module")
def sat_url(sat_model):
    from artcap.captioner import Captioner

    captioner = Captioner.load(sat_model)
    assert captioner.has_attention and captioner.is_grounded and captioner.emotion_head is not None
    with serve_in_background(create_app(captioner)) as url:
        yield url


@pytest.fixture(scope="module")
def sat_page(browser, sat_url, shared_data):
    """The page after captioning one painting with the SAT model (emotion: auto)."""
    from selenium.webdriver.common.by import By

    upload(browser, sat_url, a_painting(shared_data))
    wait_until_done(browser)
    error = browser.find_element(By.ID, "error")
    assert not error.is_displayed(), error.text
    return browser


def test_caption_words_show_their_attention_on_hover_and_focus(sat_page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser = sat_page
    words = browser.find_elements(By.CSS_SELECTOR, "#caption-beam button.word")
    assert words and " ".join(w.text for w in words) == browser.find_element(By.ID, "preview").get_attribute("alt")
    assert browser.execute_script(OVERLAY_PIXELS_JS) == 0  # nothing pointed at: no overlay
    overlay = browser.find_element(By.ID, "attention-overlay")

    ActionChains(browser).move_to_element(words[-1]).perform()
    assert browser.execute_script(OVERLAY_PIXELS_JS) > 1000
    assert overlay.get_attribute("aria-label").startswith(f"Where “{words[-1].text}” looked")
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
    assert browser.execute_script(OVERLAY_PIXELS_JS) == 0 and not overlay.is_displayed()

    # Keyboard: the words take focus (they are buttons), each labelled with where it looked.
    browser.execute_script("document.getElementById('image-input').focus()")
    ActionChains(browser).send_keys(Keys.TAB).perform()  # from the file chooser, Tab reaches the first word
    assert browser.switch_to.active_element == words[0]
    assert browser.execute_script(OVERLAY_PIXELS_JS) > 1000
    assert re.fullmatch(rf"{re.escape(words[0].text)}: looked (mostly at the [a-z ]+|all over the painting)",
                        words[0].get_attribute("aria-label"))
    assert words[0].text in browser.find_element(By.ID, "attention-note").text
    if len(words) > 1:
        words[0].send_keys(Keys.ARROW_RIGHT)
        assert browser.switch_to.active_element == words[1]
        assert f"“{words[1].text}”" in overlay.get_attribute("aria-label")
        words[1].send_keys(Keys.ARROW_LEFT)
    words[0].send_keys(Keys.ESCAPE)
    assert browser.execute_script(OVERLAY_PIXELS_JS) == 0
    assert csp_violations(browser) == []  # the overlay is placed and drawn without inline styles


def test_emotion_chart_shows_nine_emotions_and_steers_the_caption(sat_page, sat_url):
    from selenium.webdriver.support.ui import WebDriverWait
    from selenium.webdriver.common.by import By

    browser = sat_page
    assert browser.find_element(By.ID, "emotions").is_displayed()
    bars = browser.find_elements(By.CSS_SELECTOR, "#emotion-chart .emotion-bar")
    names = [b.find_element(By.CLASS_NAME, "emotion-name").text for b in bars]
    limits = browser.execute_script("return fetch('/v1/limits').then(r => r.json())")
    assert names == limits["emotions"] and len(names) == 9
    percents = [int(b.find_element(By.CLASS_NAME, "emotion-percent").text.rstrip("%")) for b in bars]
    assert abs(sum(percents) - 100) <= 5, percents
    width = "return arguments[0].getBoundingClientRect().width"
    for bar, percent in zip(bars, percents):  # each bar is drawn to scale
        fill = browser.execute_script(width, bar.find_element(By.CLASS_NAME, "emotion-fill"))
        track = browser.execute_script(width, bar.find_element(By.CLASS_NAME, "emotion-track"))
        assert 100 * fill / track == pytest.approx(percent, abs=1)

    grounded = browser.find_element(By.ID, "grounded-on")
    auto_choice = browser.find_element(By.ID, "grounded-emotion").text
    assert auto_choice in names and "auto" in grounded.text.lower()
    other = next(name for name in names if name != auto_choice)

    browser.execute_script(RECORD_REQUESTS_JS)
    bars[names.index(other)].click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "grounded-emotion").text == other)
    wait_until_done(browser)
    assert browser.execute_script("return window.captionForms") == [{"emotion": other, "explain": "true"}]
    assert "auto" not in browser.find_element(By.ID, "grounded-on").text.lower()
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(url.startswith(sat_url) for url in urls), urls  # words, maps and chart need nothing from elsewhere
    pressed = browser.find_elements(By.CSS_SELECTOR, "#emotion-chart [aria-pressed=true]")
    assert [p.get_attribute("data-emotion") for p in pressed] == [other]
    assert browser.find_element(By.ID, "preview").get_attribute("alt") == " ".join(
        w.text for w in browser.find_elements(By.CSS_SELECTOR, "#caption-beam button.word"))
    assert csp_violations(browser) == []
