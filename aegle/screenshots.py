"""Screenshots of the dashboard's views in Debian's Chromium (``aegle demo --screenshots DIR``; the README's pictures).

Playwright drives ``/usr/bin/chromium`` (the ``chromium`` package; no browser is downloaded) against a running
service, logs in with the login link of each token and saves one PNG per view at a laptop width.
"""

from __future__ import annotations

import re
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 860


def capture(url: str, clinician_token: str, operator_token: str, viewer_path: str, out: Path) -> list[Path]:
    """Save ``ward.png``, ``studies.png``, ``viewer.png`` (the page at ``viewer_path``) and ``operator.png`` into
    ``out``; returns their paths. Raises ``RuntimeError`` when Playwright or Chromium is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise RuntimeError("screenshots need playwright (pip install -e '.[dev]')") from exc
    if not CHROMIUM.exists():
        raise RuntimeError(f"screenshots need Debian's chromium ({CHROMIUM}; scripts/setup installs it)")
    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            for token, views in ((clinician_token, ("ward", "studies", "viewer")), (operator_token, ("operator",))):
                context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
                page = context.new_page()
                page.set_default_timeout(30_000)
                page.goto(f"{url}/dashboard/login#token={token}")
                page.wait_for_url(re.compile(r".*/dashboard/(ward|operator)$"))
                for view in views:
                    page.goto(url + (viewer_path if view == "viewer" else f"/dashboard/{view}"))
                    _wait(page, view)
                    path = out / f"{view}.png"
                    page.screenshot(path=str(path), full_page=view == "operator")  # its tables run below the fold
                    saved.append(path)
                context.close()
        finally:
            browser.close()
    return saved


def _wait(page: object, view: str) -> None:
    """Until the view shows its data (rows, rendered images, checks)."""
    ready = {
        "ward": "#ward-body tr td.v[data-t]",
        "studies": "#studies-body tr a",
        "viewer": "#viewer[data-rendered]",
        "operator": "#checks tbody tr",
    }[view]
    page.locator(ready).first.wait_for()  # type: ignore[attr-defined]
    page.wait_for_timeout(1500)  # type: ignore[attr-defined]  # trends and ages fill in
