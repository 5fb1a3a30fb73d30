"""Screenshot the web page after captioning examples/landscape.jpg, in headless Chromium at a fixed size.

    python benchmarks/screenshot_page.py                  # the shipped model -> docs/screenshot.png
    python benchmarks/screenshot_page.py --model DIR      # an attention model -> docs/screenshot-attention.png,
                                                          # taken while a caption word is hovered
Options: --image PATH (a picture you may publish), --out PATH, --word TEXT (the word to hover; default: the one
whose attention is most concentrated).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from artcap.captioner import Captioner
from artcap.server import create_app, serve_in_background

ROOT = Path(__file__).resolve().parents[1]
# Fixed viewport sizes (CSS pixels, scale 1), so that screenshots retaken later compare; an attention model's page
# is taller (the emotion chart).
VIEWPORT = (1100, 840)
ATTENTION_VIEWPORT = (1100, 980)
CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-device-scale-factor=1",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or run folder (default: the shipped model)")
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "landscape.jpg")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: docs/screenshot.png, or docs/screenshot-attention.png for an attention model")
    parser.add_argument("--word", default=None, help="attention models: the caption word to hover")
    args = parser.parse_args()
    if not args.image.is_file():
        sys.exit(f"{args.image}: not found; pass --image with a picture you may publish (never one from the shared data)")

    captioner = Captioner.load(args.model)
    out = args.out or ROOT / "docs" / ("screenshot-attention.png" if captioner.has_attention else "screenshot.png")
    with serve_in_background(create_app(captioner)) as url, \
            tempfile.TemporaryDirectory(prefix="artcap-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        width, height = ATTENTION_VIEWPORT if captioner.has_attention else VIEWPORT
        for flag in (*CHROME_FLAGS, f"--window-size={width},{height + 200}", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
        browser = webdriver.Chrome(service=service, options=options)
        try:
            # The window's size includes the browser's own bars: set the page's viewport itself.
            browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            shown = caption_on_page(browser, url, args.image)
            if captioner.has_attention:
                shown += f"; hovering {hover_word(browser, args.word)!r}"
            out.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(out))
            print(f"{out}: {shown}")
        finally:
            browser.quit()


def caption_on_page(browser, url: str, image: Path) -> str:
    browser.get(url + "/")
    browser.find_element(By.ID, "image-input").send_keys(str(image.resolve()))
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "caption-beam").text not in ("", "…")
        or d.find_element(By.ID, "error").is_displayed()
    )
    if browser.find_element(By.ID, "error").is_displayed():
        sys.exit(f"the page shows an error: {browser.find_element(By.ID, 'error').text}")
    return f"caption {browser.find_element(By.ID, 'caption-beam').text!r}"


def hover_word(browser, wanted: str | None) -> str:
    """Point at a caption word (the asked one, else the one with the most concentrated map); returns it."""
    buttons = browser.find_elements(By.CSS_SELECTOR, "#caption-beam button.word")
    if not buttons:
        sys.exit("the page shows no caption words: is this an attention model?")
    if wanted is not None:
        matching = [b for b in buttons if b.text == wanted]
        if not matching:
            sys.exit(f"no word {wanted!r} in the caption {' '.join(b.text for b in buttons)!r}")
        target = matching[0]
    else:
        target = max(buttons, key=lambda b: peak_attention(browser, b))
    ActionChains(browser).move_to_element(target).perform()
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "attention-overlay").is_displayed())
    return target.text


def peak_attention(browser, button) -> float:
    """How concentrated a word's map is, read from the overlay it draws (its most opaque pixel)."""
    ActionChains(browser).move_to_element(button).perform()
    return browser.execute_script("""
        const canvas = document.getElementById("attention-overlay");
        if (canvas.hidden) return 0;
        const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let alpha = [];
        for (let i = 3; i < pixels.length; i += 4) alpha.push(pixels[i]);
        alpha.sort((a, b) => a - b);
        // the spread between the 99th and the 50th percentile of opacity: high for a focused map
        return alpha[Math.floor(alpha.length * 0.99)] - alpha[Math.floor(alpha.length * 0.5)];
    """)


if __name__ == "__main__":
    main()
