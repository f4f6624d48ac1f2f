"""Headless Chromium for the report tests: Debian's /usr/bin/chromium driven by Playwright for Python.

Playwright's own browser build needs a download; machines without internet have the distribution's
package instead (``make test`` installs it with apt, like ImageMagick). Never skipped: a machine
without it fails here with the reason.

Playwright's sync API marks an event loop as running in the thread that uses it, where the library's
own ``asyncio.run`` (the CLI, the test helpers) would then refuse to start: so the browser lives in a
thread of its own and the tests hand it whole visits (``Browser.visit``), getting plain data back.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CORPUS_TEST_CHROMIUM", "/usr/bin/chromium")


@dataclass
class Visit:
    """What a page showed: ``result`` of the script evaluated once it loaded, console errors (and failed
    requests), and every request for something outside the report folder (refused)."""

    result: Any
    errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)


class Browser:
    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        self._playwright: Any = None
        self._browser: Any = None
        self._thread.submit(self._start).result()

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        # --no-sandbox: tests may run as root or in a container, where Chromium's sandbox cannot start
        self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])

    def visit(self, folder: Path, script: str, *, page: str = "index.html", screenshot: Path | None = None) -> Visit:
        """Open ``folder/page`` from disk, wait for it to load, evaluate ``script`` there."""
        return self._thread.submit(self._visit, folder, script, page, screenshot).result()

    def _visit(self, folder: Path, script: str, page_name: str, screenshot: Path | None) -> Visit:
        base = folder.resolve().as_uri() + "/"
        context = self._browser.new_context(viewport={"width": 1280, "height": 900})
        visit = Visit(None)

        def route(r: Any) -> None:
            if r.request.url.startswith(base):
                r.continue_()
            else:
                visit.outside.append(r.request.url)
                r.abort()

        try:
            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda m: visit.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: visit.errors.append(str(e)))
            page.on("requestfailed", lambda r: visit.errors.append(f"request failed: {r.url}"))
            page.goto(base + page_name, wait_until="load")  # "load": every <img> has loaded or failed
            visit.result = page.evaluate(script)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            context.close()
        return visit

    def close(self) -> None:
        def stop() -> None:
            if self._browser is not None:
                self._browser.close()
            if self._playwright is not None:
                self._playwright.stop()

        self._thread.submit(stop).result()
        self._thread.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (scripts/setup.sh installs Debian's chromium)")
    b = Browser()
    try:
        yield b
    finally:
        b.close()
