"""The duplicates page at ``/duplicates`` in a real browser: headless Chromium (Debian's
``chromium``) driven by Playwright, against ``lookalike serve --move-to DIR --token-file``
in a subprocess, on real files (tests/dupdata.py). The user changes a keeper, skips a
group, confirms two, moves their copies (asked for the token), then undoes the move."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from dupdata import GROUPS, index_photos, tree
from lookalike.search.collection import Collection
from servers import serving
from test_browser import browser, watch  # noqa: F401 - the fixture, and the console watch

TOKEN = "duppage-test-token-0123456789"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("duppage")
    index_photos(root)
    return root


def _member(page, root: Path, rel: str):  # type: ignore[no-untyped-def]
    return page.locator(".dup-member", has_text=str(root / "photos" / rel))


def _group(page, root: Path, rel: str):  # type: ignore[no-untyped-def]
    return page.locator(".dup-group", has=_member(page, root, rel))


def _thumbnails(page, timeout_s: float = 10) -> list[int]:  # type: ignore[no-untyped-def]
    """Wait until every card's thumbnail has loaded; their natural widths. (Polled: the
    page's Content-Security-Policy forbids ``wait_for_function``'s eval.)"""
    script = ("Array.from(document.querySelectorAll('.dup-member img'))"
              ".map(i => i.complete ? i.naturalWidth : -1)")
    deadline = time.monotonic() + timeout_s
    while True:
        widths = page.evaluate(script)
        if widths and min(widths) >= 0 or time.monotonic() > deadline:
            return list(widths)
        page.wait_for_timeout(50)


def test_review_change_keeper_skip_confirm_move_and_undo(browser: Browser, photos: Path,  # noqa: F811
                                                         tmp_path: Path) -> None:
    root = photos
    before = tree(root / "photos")
    count = len(Collection.open(root / "coll"))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with serving(root / "coll", "--move-to", str(root / "dups"), "--token-file", str(token_file)) as url:
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        problems = watch(page)
        try:
            answer = page.goto(url + "duplicates")
            assert answer is not None
            csp = answer.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "unsafe" not in csp and "script-src" not in csp
            groups = page.locator(".dup-group")
            expect(groups).to_have_count(len(GROUPS))
            expect(page.locator("#summary")).to_contain_text(f"5 group(s) among {count} images")
            expect(page.locator("#move-to")).to_contain_text(str(root / "dups"))
            # every keeper marked, as the rule chose; sizes and dates shown
            for files in GROUPS.values():
                for rel, keeps in files:
                    card = _member(page, root, rel)
                    expect(card.locator(".badge")).to_have_text("keep" if keeps else "move")
            expect(_member(page, root, "phone/d-2018.jpg")).to_contain_text("taken 2018-06-01 12:00:00")
            expect(_member(page, root, "2019/a.png")).to_contain_text("64×64 PNG")
            expect(_group(page, root, "2019/a.png").locator(".reason")).to_contain_text("most pixels")
            # the thumbnails loaded (from the service's stored pictures)
            assert _thumbnails(page) == [160] * sum(len(f) for f in GROUPS.values())
            apply = page.locator("#apply")
            expect(apply).to_be_disabled()
            # group a: keep the small copy instead; confirm it
            group_a = _group(page, root, "2019/a.png")
            _member(page, root, "phone/a-small.jpg").locator("input[type=radio]").check()
            expect(_member(page, root, "phone/a-small.jpg").locator(".badge")).to_have_text("keep")
            expect(_member(page, root, "2019/a.png").locator(".badge")).to_have_text("move")
            group_a.locator(".confirm").check()
            # group b: confirmed, then skipped (a skipped group is not moved); group c confirmed
            group_b = _group(page, root, "2019/b.png")
            group_b.locator(".confirm").check()
            group_b.locator(".skip").click()
            expect(group_b).to_have_class("dup-group skipped")
            _group(page, root, "2019/c-q95.jpg").locator(".confirm").check()
            expect(apply).to_have_text("Move the copies of 2 confirmed groups")
            # moving is a change: the token is asked for, then the two copies move
            apply.click()
            expect(page.locator("#token-dialog")).to_be_visible()
            page.fill("#token-input", TOKEN)
            with page.expect_response("**/api/duplicates/move") as moved:
                page.click("#token-ok")
            assert moved.value.status == 200
            expect(page.locator("#status")).to_contain_text("Moved 2 file(s)")
            expect(groups).to_have_count(len(GROUPS) - 2)
            gone = {"2019/a.png", "phone/c-q60.jpg"}
            assert tree(root / "photos") == {r: h for r, h in before.items() if r not in gone}
            assert {r: h for r, h in tree(root / "dups").items() if r.endswith((".png", ".jpg"))} == {
                r: before[r] for r in gone}
            # undo: every byte back, the groups found again
            with page.expect_response("**/api/duplicates/undo") as undone:
                page.click("#undo")
            assert undone.value.status == 200
            expect(page.locator("#status")).to_contain_text("Put back 2 file(s)")
            assert tree(root / "photos") == before
            expect(groups).to_have_count(len(GROUPS))
            page.screenshot(path=tmp_path / "duplicates.png", full_page=True)
            assert (tmp_path / "duplicates.png").read_bytes()[:4] == b"\x89PNG"
        finally:
            context.close()
    # the only console error: the 401 that asked for the token
    assert [p for p in problems if "status of 401" not in p] == [] and len(problems) == 1, problems


def test_the_page_says_when_moving_is_off(browser: Browser, photos: Path, tmp_path: Path) -> None:  # noqa: F811
    path = shutil.copytree(photos / "coll", tmp_path / "coll")
    with serving(path) as url:
        context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
        page = context.new_page()
        try:
            page.goto(url + "duplicates")
            expect(page.locator(".dup-group")).to_have_count(len(GROUPS))
            expect(page.locator("#move-to")).to_contain_text("Moving is off")
            page.locator(".dup-group .confirm").first.check()
            expect(page.locator("#apply")).to_be_disabled()
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"
        finally:
            context.close()


def test_both_pages_share_one_set_image(browser: Browser, photos: Path, tmp_path: Path) -> None:  # noqa: F811
    """setImage lives in static/api.js alone; with --token-reads the duplicates page's
    thumbnails come through it, fetched with the token."""
    static = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "app" / "static"
    defined = {p.name for p in static.glob("*.js") if "r.ok ? r.blob()" in p.read_text()}
    assert defined == {"api.js"}
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    path = shutil.copytree(photos / "coll", tmp_path / "coll")
    with serving(path, "--token-file", str(token_file), "--token-reads") as url:
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        try:
            page.goto(url + "duplicates")
            expect(page.locator("#token-dialog")).to_be_visible()
            page.fill("#token-input", TOKEN)
            page.click("#token-ok")
            expect(page.locator(".dup-group")).to_have_count(len(GROUPS))
            widths = _thumbnails(page)
            assert widths and min(widths) > 0, widths
            assert all(src.startswith("blob:") for src in page.evaluate(
                "Array.from(document.querySelectorAll('.dup-member img')).map(i => i.src)"))
        finally:
            context.close()


def test_the_search_page_uses_the_shared_set_image(browser: Browser, photos: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    """The search page (static/app.js) with --token-reads: its results' images come through
    api.js's setImage, fetched with the token."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    path = shutil.copytree(photos / "coll", tmp_path / "coll")
    with serving(path, "--token-file", str(token_file), "--token-reads") as url:
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        try:
            page.goto(url)
            expect(page.locator("#token-dialog")).to_be_visible()
            page.fill("#token-input", TOKEN)
            page.click("#token-ok")
            expect(page.locator("#token-dialog")).to_be_hidden()
            page.set_input_files("#file", photos / "photos" / "2019" / "a.png")
            images = page.locator("#results .result img")
            expect(images.first).to_be_visible()
            deadline = time.monotonic() + 10
            script = ("Array.from(document.querySelectorAll('#results .result img'))"
                      ".map(i => [i.src, i.complete ? i.naturalWidth : 0])")
            while not all(w > 0 for _, w in page.evaluate(script)) and time.monotonic() < deadline:
                page.wait_for_timeout(50)
            got = page.evaluate(script)
            assert got and all(src.startswith("blob:") and w > 0 for src, w in got), got
        finally:
            context.close()
