"""Open a page in a real headless Chromium (Debian's /usr/bin/chromium) through Playwright.

CI installs Chromium (``.ci/run``) and sets CAMBENCH_REQUIRE_CHROMIUM=1, so there the browser
tests fail rather than skip when it is missing.
"""
import os
import shutil
from contextlib import contextmanager

import pytest

CHROMIUM = os.environ.get("CAMBENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def need_chromium():
    if CHROMIUM is None:
        if os.environ.get("CAMBENCH_REQUIRE_CHROMIUM"):
            pytest.fail("Chromium not found (apt-get install chromium), and CAMBENCH_REQUIRE_CHROMIUM is set")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api")


@contextmanager
def chromium_page():
    """A page whose console errors and uncaught exceptions are collected in ``page.problems``."""
    api = need_chromium()
    with api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.problems = []
            page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: page.problems.append(f"request failed: {r.url}"))
            yield page
        finally:
            browser.close()
