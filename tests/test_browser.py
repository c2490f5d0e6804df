"""The page at ``/`` in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, against ``lookalike serve`` running in a subprocess on a free loopback port.

If the browser cannot start, these tests fail: they are how we know the page works."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from lookalike.datasets import load_dataset

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``lookalike serve`` on a copy of the re-ranking collection; yields the page's URL."""
    path = shutil.copytree(trained.collection, tmp_path_factory.mktemp("browser") / "collection")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "-q", "serve", str(path),
                             "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        seen = []
        while True:
            line = lines.get(timeout=START_TIMEOUT_S)
            assert line is not None, f"lookalike serve exited: {''.join(seen)}"
            seen.append(line)
            if line.startswith("serving "):
                url = line.split(" at ", 1)[1].split()[0]
                break
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
        reader.join(timeout=15)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (make system)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser: Browser, server: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.goto(server)
    expect(page.locator("#stats")).to_contain_text("1,438 images")
    yield page
    context.close()
    # the only console errors allowed are the HTTP errors a test provoked on purpose
    assert [p for p in problems if "status of 400" not in p] == []


def digit_png(tmp_path: Path) -> Path:
    image = load_dataset("digits", "queries").images[0][:, :, 0]
    path = tmp_path / "digit.png"
    Image.fromarray(image).resize((64, 64), Image.Resampling.NEAREST).save(path)
    return path


def thumbnails_loaded(page: Page, timeout_s: float = 10) -> list[int]:
    """Wait until every result's thumbnail has loaded; returns their natural widths. (Polled
    with ``evaluate``: the page's Content-Security-Policy forbids ``wait_for_function``'s eval.)"""
    script = ("Array.from(document.querySelectorAll('#results img'))"
              ".map(i => i.complete ? i.naturalWidth : -1)")
    deadline = time.monotonic() + timeout_s
    while True:
        widths = page.evaluate(script)
        if widths and min(widths) >= 0 or time.monotonic() > deadline:
            return widths
        page.wait_for_timeout(50)


def draw_seven(page: Page) -> None:
    box = page.locator("#canvas").bounding_box()
    assert box is not None
    x, y, w = box["x"], box["y"], box["width"]
    page.mouse.move(x + 0.25 * w, y + 0.2 * w)
    page.mouse.down()
    for t in np.linspace(0, 1, 12):
        page.mouse.move(x + (0.25 + 0.5 * t) * w, y + 0.2 * w)
    for t in np.linspace(0, 1, 12):
        page.mouse.move(x + (0.75 - 0.3 * t) * w, y + (0.2 + 0.6 * t) * w)
    page.mouse.up()


def test_upload_draw_click_and_toggle(page: Page, tmp_path: Path) -> None:
    results = page.locator("#results .result")
    status = page.locator("#status")

    # pick a file: the results grid fills, each card with its label and distance
    page.set_input_files("#file", digit_png(tmp_path))
    expect(results).to_have_count(12)
    expect(status).to_contain_text("re-ranked")
    expect(page.locator("#query-text")).to_contain_text("digit.png")
    first = results.first
    assert first.locator(".label").inner_text() in [str(i) for i in range(10)]
    assert float(first.locator(".distance").inner_text()) >= 0
    assert thumbnails_loaded(page) == [112] * 12
    page.screenshot(path=tmp_path / "upload.png", full_page=True)

    # draw a digit: the page sends the drawing as a PNG and shows the results
    with page.expect_response("**/api/search") as answer:
        draw_seven(page)
    # the server decoded the upload as an image: the drawing, cropped and centred, at four
    # times the collection's 8x8 input
    assert answer.value.json()["query"] == {"filename": "drawing.png", "height": 32, "width": 32}
    expect(page.locator("#query-text")).to_contain_text("drawing.png")
    expect(results).to_have_count(12)
    expect(status).to_contain_text("results")
    thumbnails_loaded(page)
    page.screenshot(path=tmp_path / "drawing.png", full_page=True)

    # click a result: it becomes the query
    clicked = results.nth(2).get_attribute("data-id")
    results.nth(2).click()
    expect(page.locator("#query-text")).to_contain_text(f"item #{clicked}")
    expect(results).to_have_count(12)
    assert clicked not in [results.nth(i).get_attribute("data-id") for i in range(12)]

    # the toggle: exact, then re-ranked again
    page.click("label[for=ranking-exact]")
    expect(status).to_contain_text("exact")
    exact = [results.nth(i).get_attribute("data-id") for i in range(12)]
    page.click("label[for=ranking-rerank]")
    expect(status).to_contain_text("re-ranked")
    expect(results).to_have_count(12)
    assert len(exact) == 12
    thumbnails_loaded(page)
    page.screenshot(path=tmp_path / "results.png", full_page=True)
    for name in ("upload.png", "drawing.png", "results.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_an_error_is_shown(page: Page, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page.set_input_files("#file", bad)
    expect(page.locator("#status.error")).to_contain_text("notes.png: not a readable image")


def test_phone_sized_screen(browser: Browser, server: str, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, has_touch=True,
                                  is_mobile=True, device_scale_factor=2)
    page = context.new_page()
    try:
        page.goto(server)
        expect(page.locator("#stats")).to_contain_text("images")
        page.set_input_files("#file", digit_png(tmp_path))
        expect(page.locator("#results .result")).to_have_count(12)
        assert thumbnails_loaded(page) == [112] * 12
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"
        box = page.locator("#canvas").bounding_box()
        assert box is not None and box["x"] + box["width"] <= 375
        page.screenshot(path=tmp_path / "phone.png", full_page=True)
        assert (tmp_path / "phone.png").stat().st_size > 0
    finally:
        context.close()
