"""Screenshot the top of a report for docs/: python scripts/screenshot_report.py runs/smoke/report.html docs/report-smoke.png

Drives Debian's chromium through Playwright (as the tests do)."""

import shutil
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright


def main(report: str, out: str, height: int = 2600, width: int = 1024) -> None:
    full = Path(out).with_suffix(".full.png")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(Path(report).resolve().as_uri())
        page.screenshot(path=str(full), full_page=True)
        browser.close()
    image = Image.open(full)
    top = image.crop((0, 0, image.size[0], min(image.size[1], height)))
    top = top.resize((width, int(top.size[1] * width / image.size[0])), Image.LANCZOS)
    top.convert("P", palette=Image.ADAPTIVE, colors=192).save(out, optimize=True)
    full.unlink()


if __name__ == "__main__":
    main(*sys.argv[1:3])
