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


VERDICT_HEADING = "Verdict: which CAM to trust"


def assert_verdict_first(page, report_uri: str, method: str | None = None) -> None:
    """The report opens on its answer: the landing page shows the verdict on screen, before the
    workflow description (reports/workflow.rst), naming ``method`` if given; the results menu lists
    the verdict's category 'Answer' first, and its page opens in the report's viewer."""
    page.goto(report_uri)
    page.wait_for_load_state("networkidle")
    body = page.inner_text("body")
    assert VERDICT_HEADING in body, "no verdict on the landing page"
    assert body.index(VERDICT_HEADING) < body.index("cambench compared the CAM methods"), "verdict not first"
    verdict = page.locator("#cambench-verdict")
    box = verdict.bounding_box()
    # on screen at once, top included (Snakemake centres the landing page; a tall one loses its top)
    assert verdict.is_visible() and box is not None and 0 <= box["y"] < page.viewport_size["height"] / 2, box
    if method is not None:
        assert method in verdict.inner_text()
    first = min((page.get_by_text(c, exact=True).first for c in ("Answer", "Heatmaps", "Statistical tests")),
                key=lambda item: item.bounding_box()["y"])
    assert first.inner_text() == "Answer"
    first.click()
    page.wait_for_timeout(200)
    page.locator("tr", has_text="verdict: which CAM to trust").locator("a[iconname=eye]").click()
    page.wait_for_timeout(1000)
    viewer = [f for f in page.frames if f.url.startswith("data:text/html")]
    assert len(viewer) == 1 and VERDICT_HEADING in viewer[0].inner_text("body")
