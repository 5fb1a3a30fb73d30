"""Save docs/screenshot.png: the web page after captioning examples/landscape.jpg, in headless Chromium.

    python benchmarks/screenshot_page.py [--model DIR] [--image examples/landscape.jpg] [--out docs/screenshot.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from artcap.captioner import Captioner
from artcap.server import create_app, serve_in_background

ROOT = Path(__file__).resolve().parents[1]
CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1100,980", "--hide-scrollbars",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "landscape.jpg")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    args = parser.parse_args()
    if not args.image.is_file():
        sys.exit(f"{args.image}: not found; pass --image with a picture you may publish (never one from the shared data)")

    app = create_app(Captioner.load(args.model))
    with serve_in_background(app) as url, tempfile.TemporaryDirectory(prefix="artcap-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
        browser = webdriver.Chrome(service=service, options=options)
        try:
            browser.get(url + "/")
            browser.find_element(By.ID, "image-input").send_keys(str(args.image.resolve()))
            WebDriverWait(browser, 60).until(
                lambda d: d.find_element(By.ID, "caption-beam").text not in ("", "…")
                or d.find_element(By.ID, "error").is_displayed()
            )
            if browser.find_element(By.ID, "error").is_displayed():
                sys.exit(f"the page shows an error: {browser.find_element(By.ID, 'error').text}")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(args.out))
            print(f"{args.out}: caption {browser.find_element(By.ID, 'caption-beam').text!r}")
        finally:
            browser.quit()


if __name__ == "__main__":
    main()
