"""`daydream view` in a real headless Chromium (Debian's, driven by Playwright): the example run by
`daydream run`, the viewer started as a user starts it, pages clicked through with no console errors."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_run_cli import daydream

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parents[2] / "docs" / "screenshots"
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import shutil

    from tests.conftest import EXAMPLE_RAW

    data = tmp_path_factory.mktemp("data")
    shutil.copytree(EXAMPLE_RAW, data / "1_raw")
    run = daydream("run", "--data", str(data), "--experiment-id", "demo")
    output, _ = run.communicate(timeout=180)
    assert run.returncode == 0, output
    port = _free_port()
    server = daydream("view", "--data", str(data), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.2)
        yield url
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.communicate(timeout=10)


def test_click_through_leaderboard_generations_and_detail(viewer: str) -> None:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(viewer)
        page.click("text=demo")
        means = page.locator("table.leaderboard td.mean").all_inner_texts()
        assert means and all(float(m) > 0 for m in means)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "experiment.png"), full_page=True)
        page.click("text=generations")
        total = page.locator("tr.generation").count()
        assert total == 16
        first_template = page.locator("tr.generation td").nth(1).inner_text()
        page.fill("input[name=template]", first_template)
        page.click("button")
        assert 0 < page.locator("tr.generation").count() < total
        page.fill("input[name=template]", "")
        page.fill("input[name=q]", "SIMULATED")
        page.click("button")
        assert page.locator("tr.generation").count() == total
        page.locator("tr.generation a").first.click()
        assert page.locator("tr.answer").count() == 2
        page.screenshot(path=str(SCREENSHOTS / "generation.png"), full_page=True)
        page.goto(f"{viewer}/compare?a=demo&b=demo")
        assert page.locator("tr.same").count() > 0
        browser.close()
    assert errors == []
