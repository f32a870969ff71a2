"""Open a report in Debian's headless Chromium (``apt-get install chromium``) and look at it."""

import os
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def need_chromium() -> None:
    """Skip (fail on CI) when Chromium is not installed."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def load(html: Path, shot: Path) -> dict[str, Any]:
    """Load ``html`` offline: console problems and network requests, headings, images, SVGs."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
            page.on(
                "request",
                lambda r: (
                    None
                    if r.url.startswith(("file:", "data:"))
                    else problems.append(f"request: {r.url}")
                ),
            )
            start = time.perf_counter()
            page.goto(html.resolve().as_uri(), wait_until="load")
            wall = time.perf_counter() - start
            timing = page.evaluate(
                "(() => { const n = performance.getEntriesByType('navigation')[0];"
                " return {load: n.loadEventEnd - n.startTime}; })()"
            )
            found = {
                "problems": problems,
                "wall": wall,
                "load": timing["load"],
                "headings": page.locator("h2").all_inner_texts(),
                "height": page.evaluate("document.body.scrollHeight"),
                "images": page.evaluate("document.images.length"),
                "broken": page.evaluate(
                    "Array.from(document.images).filter(i => !i.complete || !i.naturalWidth).length"
                ),
                "svgs": page.evaluate(
                    "Array.from(document.querySelectorAll('svg')).map(s => s.getBBox().width)"
                ),
                "links": page.evaluate(
                    "Array.from(document.querySelectorAll('nav a')).map(a => a.hash)"
                    ".filter(h => !document.getElementById(h.slice(1))).length"
                ),
            }
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return found
