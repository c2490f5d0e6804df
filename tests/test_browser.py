"""The page at ``/`` in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, against ``lookalike serve`` running in a subprocess on a free loopback port.

If the browser cannot start, these tests fail: they are how we know the page works."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from lookalike.data.datasets import load_dataset
from servers import serving

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TOKEN = "browser-test-token-0123456789"


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``lookalike serve`` on a copy of the re-ranking collection; yields the page's URL."""
    path = shutil.copytree(trained.collection, tmp_path_factory.mktemp("browser") / "collection")
    with serving(path) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (make system)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def watch(page: Page) -> list[str]:
    """The page's script errors and console errors (a Content-Security-Policy violation is
    one), as they come."""
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    return problems


@pytest.fixture()
def page(browser: Browser, server: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    problems = watch(page)
    answer = page.goto(server)
    assert answer is not None
    csp = answer.headers["content-security-policy"]
    # the page's own script and style only: no inline script, no eval
    assert "default-src 'self'" in csp and "unsafe" not in csp and "script-src" not in csp
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


def shown(page: Page, answer: dict) -> list[int]:
    """Wait until the page shows the search answer's results, in its order; their ids."""
    want = [r["id"] for r in answer["results"]]
    results = page.locator("#results .result")
    expect(results).to_have_count(len(want))
    for i, item in enumerate(want):
        expect(results.nth(i)).to_have_attribute("data-id", str(item))
    return want


def same_ranking(answer: dict, found: tuple[np.ndarray, np.ndarray]) -> None:
    """The service's answer is the library's ranking: the same distances (to float rounding:
    another process) and the same ids in the same order, wherever a distance is not tied."""
    ids = [r["id"] for r in answer["results"]]
    dist = np.array([r["distance"] for r in answer["results"]])
    want_d, want_i = found[0][0], found[1][0].tolist()
    assert np.allclose(dist, want_d, atol=1e-5), (dist, want_d)
    for r, (got, want) in enumerate(zip(ids, want_i, strict=True)):
        tied = any(abs(want_d[r] - want_d[j]) <= 1e-5 for j in (r - 1, r + 1) if 0 <= j < len(want_d))
        assert got == want or tied, (ids, want_i)
    assert set(ids) == set(want_i) or abs(want_d[-1] - want_d[-2]) <= 1e-5


def test_upload_draw_click_and_toggle(page: Page, tmp_path: Path, trained) -> None:
    from lookalike.data.images import decode_image
    from lookalike.search.collection import Collection

    library = Collection.open(trained.collection)  # what the server serves a copy of
    results = page.locator("#results .result")
    status = page.locator("#status")

    # pick a file: the results grid fills, each card with its label and distance, in the
    # library's order for that image
    upload = digit_png(tmp_path)
    with page.expect_response("**/api/search") as answer:
        page.set_input_files("#file", upload)
    assert len(shown(page, answer.value.json())) == 12
    same_ranking(answer.value.json(), library.search_images(decode_image(upload)[None], 12))
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
    shown(page, answer.value.json())
    expect(status).to_contain_text("results")
    thumbnails_loaded(page)
    page.screenshot(path=tmp_path / "drawing.png", full_page=True)

    # click a result: it becomes the query, its results the library's (re-ranked, itself left out)
    clicked = int(results.nth(2).get_attribute("data-id") or -1)
    with page.expect_response("**/api/search") as answer:
        results.nth(2).click()
    expect(page.locator("#query-text")).to_contain_text(f"item #{clicked}")
    reranked = shown(page, answer.value.json())
    assert clicked not in reranked
    same_ranking(answer.value.json(), library.search_ids([clicked], 12))

    # the toggle: exact (the library's plain nearest codes), then re-ranked again
    with page.expect_response("**/api/search") as answer:
        page.click("label[for=ranking-exact]")
    exact = shown(page, answer.value.json())
    expect(status).to_contain_text("exact")
    same_ranking(answer.value.json(), library.search_ids([clicked], 12, rerank=False))
    assert exact != reranked  # (the two rankings differ here, so the toggle is seen)
    with page.expect_response("**/api/search") as answer:
        page.click("label[for=ranking-rerank]")
    assert shown(page, answer.value.json()) == reranked
    expect(status).to_contain_text("re-ranked")
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


def stats_of(url: str) -> dict:
    with urllib.request.urlopen(url + "api/stats", timeout=30) as answer:
        return json.load(answer)


def test_docs_work_offline(browser: Browser, server: str) -> None:
    """``/docs`` with every request beyond loopback blocked: Swagger UI comes from the
    server itself, starts without inline script, and lists every endpoint."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    elsewhere: list[str] = []
    served: list[str] = []

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOOPBACK:
            served.append(route.request.url)
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_loopback)
    page = context.new_page()
    problems = watch(page)
    try:
        answer = page.goto(server + "docs")
        assert answer is not None and answer.status == 200
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe" not in csp
        operations = page.locator(".opblock")
        expect(operations).to_have_count(11)
        paths = {p.replace("\u200b", "") for p in page.locator(".opblock-summary-path").all_inner_texts()}
        assert paths == {"/api/search", "/api/items", "/api/items/{item_id}",
                         "/api/items/{item_id}/image", "/api/items/{item_id}/original",
                         "/api/health", "/api/stats",
                         "/api/duplicates", "/api/duplicates/move", "/api/duplicates/undo"}
        # an operation opens, with the responses the schema declares
        stats = page.locator(".opblock-get", has_text="/api/stats")
        stats.locator(".opblock-summary").click()
        codes = stats.locator(".responses-table tr.response")
        expect(codes).to_have_count(2)
        assert [c.get_attribute("data-code") for c in codes.all()] == ["200", "503"]
    finally:
        context.close()
    assert elsewhere == [] and problems == []
    # (the block was in force: Swagger UI's script came through it, from the server)
    assert server + "docs-assets/swagger-ui-bundle.js" in served


def test_the_page_asks_for_the_token_only_for_a_change(browser: Browser, trained, tmp_path: Path
                                                       ) -> None:
    path = shutil.copytree(trained.collection, tmp_path / "collection")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with serving(path, "--token-file", str(token_file)) as url:
        count = stats_of(url)["count"]
        context = browser.new_context(viewport={"width": 1200, "height": 800})
        page = context.new_page()
        problems = watch(page)
        dialog = page.locator("#token-dialog")
        status = page.locator("#status")
        try:
            page.goto(url)
            expect(page.locator("#stats")).to_contain_text(f"{count:,} images")
            # searching needs no token: nothing is asked
            page.set_input_files("#file", digit_png(tmp_path))
            expect(page.locator("#results .result")).to_have_count(12)
            expect(dialog).to_be_hidden()
            # adding does: asked, a wrong token refused and asked again, the right one taken
            page.click("#add-query")
            expect(dialog).to_be_visible()
            expect(page.locator("#token-why")).to_contain_text("needs the service's token")
            page.fill("#token-input", "not-the-token-0123456789")
            page.click("#token-ok")
            expect(page.locator("#token-why")).to_contain_text("refused that token")
            assert stats_of(url)["count"] == count
            page.fill("#token-input", TOKEN)
            page.click("#token-ok")
            expect(status).to_contain_text("digit.png added as item #")
            expect(dialog).to_be_hidden()
            expect(page.locator("#stats")).to_contain_text(f"{count + 1:,} images")
            assert stats_of(url)["count"] == count + 1
            assert page.evaluate("sessionStorage.getItem('lookalike-token')") == TOKEN
            # kept for the tab: the next change is sent with it, without asking
            with page.expect_response("**/api/items") as added:
                page.click("#add-query")
            assert added.value.status == 201
            expect(status).to_contain_text("in the collection already")
            expect(dialog).to_be_hidden()
        finally:
            context.close()
        # the only console errors: the two 401s (no token, then the wrong one)
        assert [p for p in problems if "status of 401" not in p] == [] and len(problems) == 2, problems

        # another tab has no token; cancelling the dialog adds nothing and says why
        context = browser.new_context(viewport={"width": 1200, "height": 800})
        page = context.new_page()
        try:
            page.goto(url)
            page.set_input_files("#file", digit_png(tmp_path))
            expect(page.locator("#results .result")).to_have_count(12)
            page.click("#add-query")
            expect(page.locator("#token-dialog")).to_be_visible()
            page.click("#token-cancel")
            expect(page.locator("#status.error")).to_contain_text("needs the service's token")
            expect(page.locator("#token-dialog")).to_be_hidden()
        finally:
            context.close()
        assert stats_of(url)["count"] == count + 1


# ---------------------------------------------------------------------------- a photo library
@pytest.fixture(scope="module")
def photo_server(trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``lookalike serve`` on a folder of real JPEGs with EXIF (tests/photolib.py); yields
    the page's URL and the library's root."""
    from photolib import make_library

    root = make_library(tmp_path_factory.mktemp("photo-browser"), trained.model)
    with serving(root / "coll") as url:
        yield url, root


def natural_width(page: Page, selector: str, timeout_s: float = 10) -> int:
    script = (f"(() => {{ const i = document.querySelector({selector!r}); "
              "return i && i.complete ? i.naturalWidth : 0; })()")
    deadline = time.monotonic() + timeout_s
    while (width := page.evaluate(script)) == 0 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    return int(width)


def direct(url: str, upload: Path, params: dict, fields: dict) -> list[int]:
    """The ids the service answers to the same search sent without the page."""
    import httpx

    r = httpx.post(url + "api/search", params=params, timeout=60,
                   files={"file": (upload.name, upload.read_bytes(), "image/jpeg")}, data=fields)
    assert r.status_code == 200, r.text
    return [x["id"] for x in r.json()["results"]]


def test_a_photo_library_page(browser: Browser, photo_server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = photo_server
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    problems = watch(page)
    results = page.locator("#results .result")
    upload = root / "photos" / "home" / "h0.jpg"
    try:
        page.goto(url)
        expect(page.locator("#stats")).to_contain_text("18 images")
        # tiles: the file's name, its full path and date on hover, a distance that fits
        with page.expect_response("**/api/search") as answer:
            page.set_input_files("#file", upload)
        found = answer.value.json()
        assert len(shown(page, found)) == 12
        for i, r in enumerate(found["results"]):
            card = results.nth(i)
            expect(card.locator(".name")).to_have_text(r["name"])
            title = card.get_attribute("title") or ""
            assert r["path"] in title and f"taken {r['taken'].replace('T', ' ')}" in title
            tile, dist = card.bounding_box(), card.locator(".distance").bounding_box()
            assert tile and dist and dist["x"] + dist["width"] <= tile["x"] + tile["width"]
            text = card.locator(".distance").inner_text()
            assert len(text) <= 6 and abs(float(text) - r["distance"]) <= 0.01 * max(1, r["distance"])
        # clicking a picture opens its original file at full size (40x30 pixels)
        results.first.locator(".thumb").click()
        expect(page.locator("#viewer")).to_be_visible()
        expect(page.locator("#viewer-title")).to_have_text(found["results"][0]["name"])
        assert natural_width(page, "#viewer-image") == 40
        page.click("#viewer-close")
        expect(page.locator("#viewer")).to_be_hidden()
        page.screenshot(path=tmp_path / "library.png", full_page=True)

        # the filter field narrows the search (query parameters of the same search)
        page.fill("#filter", "in:trips/* camera:canon")
        with page.expect_response("**/api/search?*") as answer:
            page.press("#filter", "Enter")
        assert "in=trips%2F*" in answer.value.url and "camera=canon" in answer.value.url
        trips = shown(page, answer.value.json())
        assert len(trips) == 6
        assert all(n.startswith("t") for n in results.locator(".name").all_inner_texts())
        filtered = {"in": "trips/*", "camera": "canon"}
        assert trips == direct(url, upload, filtered, {"k": "12", "rerank": "true"})

        # more like one result, less like another, search again
        more, less = trips[0], trips[1]
        results.nth(0).locator(".more").click()
        results.nth(1).locator(".less").click()
        expect(page.locator("#refine")).to_contain_text("1 more like, 1 less like")
        with page.expect_response("**/api/search?*") as answer:
            page.click("#refine")
        again = answer.value.json()
        assert again["like"] == [more] and again["unlike"] == [less]
        ids = shown(page, again)
        assert more not in ids and less not in ids and len(ids) == 4
        fields = {"k": "12", "rerank": "true", "like": str(more), "unlike": str(less)}
        assert ids == direct(url, upload, filtered, fields)

        # a box dragged over the query picture searches that region
        box = page.locator("#query-image").bounding_box()
        assert box is not None
        x, y, w, h = box["x"], box["y"], box["width"], box["height"]
        page.mouse.move(x + 0.5 * w, y + 0.1 * h)
        page.mouse.down()
        with page.expect_response("**/api/search?*") as answer:
            page.mouse.move(x + 0.8 * w, y + 0.5 * h, steps=4)
            page.mouse.move(x + 0.99 * w, y + 0.9 * h, steps=4)
            page.mouse.up()
        region = answer.value.json()
        assert region["crop"] == pytest.approx([0.5, 0.1, 0.49, 0.8], abs=0.02)
        expect(page.locator("#crop-box")).to_be_visible()
        expect(page.locator("#query-text")).to_contain_text("a region")
        crop = ",".join(str(v) for v in region["crop"])
        assert shown(page, region) == direct(url, upload, filtered, {**fields, "crop": crop})
        with page.expect_response("**/api/search?*") as answer:
            page.click("#whole")
        assert answer.value.json()["crop"] is None
        expect(page.locator("#crop-box")).to_be_hidden()
        page.screenshot(path=tmp_path / "marked.png", full_page=True)
        # a bad filter is said on the page, and nothing is sent
        page.fill("#filter", "colour:red")
        page.press("#filter", "Enter")
        expect(page.locator("#status.error")).to_contain_text('"colour:red" is not one of')
    finally:
        context.close()
    assert problems == []
