"""The page's manifest box in real headless Chromium: a manifest on a loopback publisher, captioned
canvas by canvas, a missing image shown as its one-line error, a bad URL as the page's error."""

from __future__ import annotations

import pytest

from artcap.captioner import Captioner
from artcap.server import create_app, serve_in_background

from iiif_loopback import Publisher, canvas, manifest
from test_page_browser import browser, csp_violations  # noqa: F401  (the browser fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_url():
    with serve_in_background(create_app(Captioner.load("fast", backend="torch"))) as url:
        yield url


@pytest.fixture(scope="module")
def publisher(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("www")
    (root / "img").mkdir()
    painting = sorted((shared_data / "artemis-mini" / "wikiart").rglob("*.jpg"))[0]
    (root / "img" / "0.jpg").write_bytes(painting.read_bytes())
    server = Publisher(root)
    yield server
    server.close()


def submit(browser, base_url: str, manifest_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(base_url + "/")
    box = browser.find_element(By.ID, "iiif-url")
    box.clear()
    box.send_keys(manifest_url)
    browser.find_element(By.ID, "iiif-submit").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "iiif-error").is_displayed()
        or d.find_elements(By.CSS_SELECTOR, "#iiif-canvases li"))


def test_manifest_box_shows_a_caption_per_canvas(browser, base_url, publisher):
    from selenium.webdriver.common.by import By

    url = manifest(publisher, "m", [canvas(publisher, 1, publisher.url("img/0.jpg")),
                                    canvas(publisher, 2, publisher.url("img/missing.jpg"))])
    submit(browser, base_url, url)
    items = browser.find_elements(By.CSS_SELECTOR, "#iiif-canvases li")
    assert [i.find_element(By.CLASS_NAME, "canvas-label").text for i in items] == ["Painting 1", "Painting 2"]
    assert len(items[0].find_element(By.CLASS_NAME, "canvas-caption").text.split()) >= 3
    assert "404" in items[1].find_element(By.CLASS_NAME, "canvas-error").text
    assert "1 of 2 canvases" in browser.find_element(By.ID, "iiif-status").text
    assert not csp_violations(browser)


def test_manifest_box_shows_a_bad_manifest_as_one_line(browser, base_url, publisher):
    from selenium.webdriver.common.by import By

    (publisher.root / "page.json").write_text("<html>not a manifest</html>")
    submit(browser, base_url, publisher.url("page.json"))
    error = browser.find_element(By.ID, "iiif-error")
    assert error.is_displayed() and "not JSON" in error.text and "\n" not in error.text
    assert not browser.find_elements(By.CSS_SELECTOR, "#iiif-canvases li")
