"""The web page in real headless Chromium, against a real server with the shipped model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from artcap.server import create_app, serve_in_background

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


def test_page_captions_a_dropped_painting(browser, base_url, shared_data):
    from selenium.webdriver.common.by import By

    painting = sorted((shared_data / "artemis-mini" / "wikiart").glob("*/*.jpg"))[0]
    upload(browser, base_url, painting)
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
