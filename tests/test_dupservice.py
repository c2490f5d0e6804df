"""The duplicates routes of the service: the groups with their keepers, and moves and
undos on real files behind the same token rules as every other change."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dupdata import GROUPS, index_photos, reset, tree
from lookalike.app.security import Access
from lookalike.app.service import create_app
from lookalike.search.collection import Collection

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TOKEN = "dupservice-test-token-0123456789"


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dupservice")
    coll = index_photos(root)
    shutil.copytree(coll, root / "coll.master")
    return root, root / "coll.master"


@pytest.fixture()
def root(master: tuple[Path, Path]) -> Path:
    reset(*master)
    return master[0]


def _client(root: Path, **options: object) -> Iterator[TestClient]:
    with TestClient(create_app(root / "coll", **options)) as c:  # type: ignore[arg-type]
        yield c


@pytest.fixture()
def client(root: Path) -> Iterator[TestClient]:
    yield from _client(root, move_to=root / "dups", access=Access(token=TOKEN))


def _rel(root: Path, source: str) -> str:
    return str(Path(source).relative_to(root / "photos"))


def test_the_groups_come_with_keepers_sizes_and_dates(client: TestClient, root: Path) -> None:
    answer = client.get("/api/duplicates").json()
    assert answer["keep"] == "best" and answer["move_to"] == str(root / "dups")
    got = {frozenset(_rel(root, m["source"]) for m in g["members"]):
           next(_rel(root, m["source"]) for m in g["members"] if m["id"] == g["keeper"])
           for g in answer["groups"]}
    assert got == {frozenset(r for r, _ in files): next(r for r, k in files if k)
                   for files in GROUPS.values()}
    members = {_rel(root, m["source"]): m for g in answer["groups"] for m in g["members"]}
    assert members["phone/d-2018.jpg"]["taken"] == "2018-06-01T12:00:00"
    assert (members["2019/a.png"]["width"], members["2019/a.png"]["format"]) == (64, "PNG")
    assert members["2019/a.png"]["bytes"] == (root / "photos/2019/a.png").stat().st_size
    thumb = client.get(members["2019/a.png"]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    newest = client.get("/api/duplicates", params={"keep": "newest"}).json()
    assert any(_rel(root, m["source"]) == "2019/d-2021.jpg" and m["id"] == g["keeper"]
               for g in newest["groups"] for m in g["members"])
    bad = client.get("/api/duplicates", params={"keep": "largest"})
    assert bad.status_code == 400 and "keep rule" in bad.json()["detail"]


def _confirm(answer: dict, keeper_rel: str, root: Path) -> dict:
    """The group holding ``keeper_rel``, with it as the keeper."""
    for g in answer["groups"]:
        ids = {_rel(root, m["source"]): m["id"] for m in g["members"]}
        if keeper_rel in ids:
            return {"ids": sorted(ids.values()), "keeper": ids[keeper_rel]}
    raise AssertionError(keeper_rel)


def test_a_move_needs_the_token_and_the_undo_restores_every_byte(client: TestClient, root: Path) -> None:
    before = tree(root / "photos")
    count = len(Collection.open(root / "coll"))
    answer = client.get("/api/duplicates").json()
    # the user changed group a's keeper to the small copy, and confirmed groups a and e
    body = {"groups": [_confirm(answer, "phone/a-small.jpg", root), _confirm(answer, "2019/e.jpg", root)]}
    for headers in ({}, {"Authorization": "Bearer not-the-token-0123456789"}):
        refused = client.post("/api/duplicates/move", json=body, headers=headers)
        assert refused.status_code == 401
    assert tree(root / "photos") == before and not (root / "dups").exists()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    moved = client.post("/api/duplicates/move", json=body, headers=auth)
    assert moved.status_code == 200, moved.text
    out = moved.json()
    gone = {"2019/a.png", "2019/e-copy.jpg", "phone/e-copy-2.jpg"}
    assert len(out["moved"]) == 3 and out["count"] == count - 3
    assert tree(root / "photos") == {r: h for r, h in before.items() if r not in gone}
    assert {r: h for r, h in tree(root / "dups").items() if r.endswith((".png", ".jpg"))} == {
        r: before[r] for r in gone}
    # the service's searches see the change: the moved items are gone
    assert client.get(f"/api/items/{out['moved'][0]}").status_code == 404
    # the same groups again: they are no longer found, so nothing moves
    again = client.post("/api/duplicates/move", json=body, headers=auth)
    assert again.status_code == 409 and "reload" in again.json()["detail"]
    # undo: without the token refused; with it, every byte back
    undo = {"manifest": out["manifest"]}
    assert client.post("/api/duplicates/undo", json=undo).status_code == 401
    back = client.post("/api/duplicates/undo", json=undo, headers=auth)
    assert back.status_code == 200 and back.json()["put_back"] == 3, back.text
    assert tree(root / "photos") == before
    for name in ("../coll/manifest.json", "lookalike-moves-x.json", "x.json"):
        assert client.post("/api/duplicates/undo", json={"manifest": name},
                           headers=auth).status_code == 404


def test_forged_groups_are_refused(client: TestClient, root: Path) -> None:
    before = tree(root / "photos")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answer = client.get("/api/duplicates").json()
    a = _confirm(answer, "2019/a.png", root)
    other = next(m["id"] for g in answer["groups"] for m in g["members"] if m["id"] not in a["ids"])
    for group in ({"ids": [a["keeper"], other], "keeper": a["keeper"]},  # not a group found
                  {"ids": a["ids"], "keeper": other},  # a keeper from elsewhere
                  {"ids": a["ids"][:1] + a["ids"][:1], "keeper": a["keeper"]}):
        answer_ = client.post("/api/duplicates/move", json={"groups": [group]}, headers=auth)
        assert answer_.status_code == 409, answer_.text
    assert client.post("/api/duplicates/move", json={"groups": []}, headers=auth).status_code == 422
    assert tree(root / "photos") == before


def test_moving_off_or_read_only(root: Path) -> None:
    before = tree(root / "photos")
    for options, status in (({}, 409), ({"move_to": root / "dups", "access": Access(read_only=True)}, 403)):
        for c in _client(root, **options):
            answer = c.get("/api/duplicates").json()
            assert len(answer["groups"]) == len(GROUPS)
            body = {"groups": [_confirm(answer, "2019/a.png", root)]}
            refused = c.post("/api/duplicates/move", json=body)
            assert refused.status_code == status, refused.text
            if status == 409:
                assert answer["move_to"] is None and "--move-to" in refused.json()["detail"]
    assert tree(root / "photos") == before and not (root / "dups").exists()


def test_reads_use_the_shared_collection_and_a_change_closes_its_own(
        client: TestClient, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET opens no collection; a move opens one for its change and closes it; a group
    given twice in one request moves its files once."""
    opened: list[Collection] = []
    closed: list[Collection] = []
    real_open, real_close = Collection.open.__func__, Collection.close  # type: ignore[attr-defined]

    def open_(cls: type[Collection], *args: object, **kwargs: object) -> Collection:
        coll = real_open(cls, *args, **kwargs)
        opened.append(coll)
        return coll

    def close(self: Collection) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(Collection, "open", classmethod(open_))
    monkeypatch.setattr(Collection, "close", close)
    answer = client.get("/api/duplicates").json()
    assert len(answer["groups"]) == len(GROUPS) and opened == []
    e = _confirm(answer, "2019/e.jpg", root)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    moved = client.post("/api/duplicates/move", json={"groups": [e, e]}, headers=auth)
    assert moved.status_code == 200, moved.text
    assert len(moved.json()["moved"]) == 2 and len(opened) == 1
    assert all(any(c is o for c in closed) for o in opened)
    manifest = (root / "dups" / moved.json()["manifest"]).read_text()
    assert manifest.count('"from"') == 2


def test_a_move_under_way_elsewhere_is_409(client: TestClient, root: Path) -> None:
    import fcntl
    import os

    from lookalike.search import dupmove

    before = tree(root / "photos")
    answer = client.get("/api/duplicates").json()
    body = {"groups": [_confirm(answer, "2019/a.png", root)]}
    (root / "dups").mkdir()
    fd = os.open(root / "dups" / dupmove.LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # (another process, a second worker: the same lock)
        busy = client.post("/api/duplicates/move", json=body,
                           headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        os.close(fd)
    assert busy.status_code == 409 and "try again" in busy.json()["detail"], busy.text
    assert tree(root / "photos") == before
    done = client.post("/api/duplicates/move", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert done.status_code == 200, done.text


def test_an_item_shown_by_two_files_keeps_the_file_chosen(client: TestClient, root: Path) -> None:
    """A byte copy of 2019/e.jpg catalogued as its item: each file is a member; the keeper
    chosen by path stays and the item's other file moves."""
    from lookalike.search import files

    e, copy = root / "photos" / "2019" / "e.jpg", root / "photos" / "2019" / "e-copy-3.jpg"
    copy.write_bytes(e.read_bytes())
    coll = Collection.open(root / "coll")
    e_id = files.rows(files.db(coll), "f.path = ?", (str(e),))[0].id
    files.catalogue(coll, [copy], [e_id])
    coll.close()
    answer = client.get("/api/duplicates").json()
    g = next(g for g in answer["groups"] if any(m["path"] == str(copy) for m in g["members"]))
    assert g["keeper"] == e_id and g["keeper_path"] == str(e) and len(g["members"]) == 4
    body = {"groups": [{"ids": sorted({m["id"] for m in g["members"]}), "keeper": e_id,
                        "keeper_path": str(copy)}]}
    moved = client.post("/api/duplicates/move", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert moved.status_code == 200, moved.text
    assert copy.is_file() and not e.exists() and (root / "dups" / "2019" / "e.jpg").is_file()
