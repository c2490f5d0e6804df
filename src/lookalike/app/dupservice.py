"""The duplicates review in the service: the page at ``/duplicates`` and the JSON it uses.

* ``GET /api/duplicates[?keep=best]``: the groups, each with its keeper, the reason, and
  per item its source, size in pixels and bytes, format and date taken;
* ``POST /api/duplicates/move``: ``{"groups": [{"ids": [...], "keeper": id}, ...]}``, the
  groups the user confirmed (each exactly a group the service finds now, its keeper one of
  its files): their other files move into the folder given to ``lookalike serve
  --move-to DIR`` (:func:`lookalike.search.dupmove.move`); 409 without one;
* ``POST /api/duplicates/undo``: ``{"manifest": NAME}``, a manifest in that folder.

Moves and undos are changes: behind the same guards as every other change (the token,
read-only). The browser never names a path: the folder is the server's, the files those
of the groups it finds. Reads use the service's shared collection (its snapshot); a move
or an undo opens the collection for its change, one at a time in this process, and
closes it. A change another process (a second worker, a ``lookalike duplicates`` run) is
making in the move folder meanwhile answers 409: try again.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..search import dupmove
from ..search.collection import Collection
from ..search.duplicates import find_groups
from ..search.dupreview import Decision, GroupLike, decide
from ..search.keeper import KeepRule
from .schemas import MAX_ID, error_responses
from .security import PAGE_CSP, Access, guards
from .shared import SharedCollection

STATIC = Path(__file__).resolve().parent / "static"
THUMBNAIL = 160
_MANIFEST = re.compile(re.escape(dupmove.PREFIX) + r"[0-9A-Za-z]+\.json")


class DupMember(BaseModel):
    id: int
    source: str
    path: str | None = Field(None, description="the file (absolute, from the catalogue)")
    width: int | None = None
    height: int | None = None
    format: str | None = None
    bytes: int | None = None
    taken: str | None = Field(None, description="EXIF date taken, ISO")
    problem: str | None = Field(None, description="why it is neither kept nor moved")
    thumbnail_url: str


class DupGroup(BaseModel):
    tier: str
    keeper: int | None = Field(description="null: fewer than two files, nothing to do")
    keeper_path: str | None = Field(None, description="the file kept (an item may show several)")
    reason: str
    members: list[DupMember]


class DupAnswer(BaseModel):
    keep: str
    move_to: str | None = Field(description="where moves go; null: moving is off")
    count: int
    groups: list[DupGroup]


class MoveGroup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[int] = Field(min_length=2, max_length=10_000)
    keeper: int = Field(ge=0, le=MAX_ID)
    keeper_path: str | None = Field(None, max_length=4096, description=(
        "which file of the keeper to keep, when the item shows several (a path the group "
        "listed; another is not one: the rule chooses among the item's files)"))


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    groups: list[MoveGroup] = Field(min_length=1, max_length=100_000)


class UndoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    manifest: str = Field(max_length=200, description="a manifest's file name in the move folder")


class NotDone(BaseModel):
    id: int
    why: str


class MoveAnswer(BaseModel):
    manifest: str
    moved: list[int]
    not_moved: list[NotDone]
    count: int


class UndoAnswer(BaseModel):
    manifest: str
    put_back: int
    added: int
    not_put_back: list[NotDone]
    count: int


@contextlib.contextmanager
def _changing(path: Path) -> Iterator[Collection]:
    """The collection opened for one change, closed after; another process's move in the
    folder meanwhile is a 409."""
    with contextlib.closing(Collection.open(path)) as coll:
        try:
            yield coll
        except dupmove.Busy as exc:
            raise HTTPException(409, f"{exc}: try again") from None


def duplicates_router(shared: SharedCollection, access: Access, move_to: Path | None) -> APIRouter:
    """The routes above, for the service's collection ``shared`` (reads from its snapshot;
    a move or an undo opens the collection for its change and closes it: the snapshot then
    reads that commit, as it reads another process's)."""
    router = APIRouter()
    reads, writes = guards(access, write=False), guards(access, write=True)
    read_errors = (401,) if reads else ()
    write_errors = (403,) if access.read_only else (401,) if writes else ()
    found: dict[tuple[int, str], list[GroupLike]] = {}
    one_change = threading.Lock()

    def groups(coll: Collection) -> list[GroupLike]:
        """The groups of this commit (found once per commit)."""
        key = (coll.generation, str(coll.manifest.get("updated")))
        if key not in found:
            found.clear()
            found[key] = list(find_groups(coll))
        return found[key]

    def answer(request: Request, decisions: list[Decision], rule: KeepRule, count: int
               ) -> dict[str, Any]:
        root = request.scope.get("root_path", "")
        return {"keep": str(rule), "move_to": str(move_to) if move_to else None, "count": count,
                "groups": [{**d.to_dict(), "members": [
                    {**m.to_dict(), "thumbnail_url": f"{root}/api/items/{m.id}/image?size={THUMBNAIL}"}
                    for m in d.members]} for d in decisions]}

    @router.get("/duplicates", include_in_schema=False)
    def page() -> Response:
        return FileResponse(STATIC / "duplicates.html", headers={
            "Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @router.get("/api/duplicates", tags=["duplicates"], response_model=DupAnswer,
                summary="Duplicate groups, each with the copy to keep and why",
                dependencies=reads, responses=error_responses(400, *read_errors, 422))
    def list_groups(request: Request, keep: str = Query(
            "best", max_length=300, description="best, newest or in:GLOB")) -> dict[str, Any]:
        rule = KeepRule.parse(keep)
        coll = shared.current()
        return answer(request, decide(coll, groups(coll), rule), rule, len(coll))

    @router.post("/api/duplicates/move", tags=["duplicates"], response_model=MoveAnswer,
                 summary="Move the copies of the confirmed groups into the move folder",
                 dependencies=writes,
                 responses=error_responses(400, *write_errors, 409, 422))
    def move(body: MoveRequest) -> dict[str, Any]:
        folder = _folder(move_to)
        with one_change, _changing(shared.path) as coll:
            dupmove.finish_pending(coll, folder)
            now = {frozenset(g.ids): g for g in groups(coll)}
            confirmed: dict[frozenset[int], GroupLike] = {}
            for g in body.groups:
                match = now.get(frozenset(g.ids))
                if match is None or g.keeper not in g.ids:
                    raise HTTPException(409, f"the group of items {sorted(g.ids)[:5]} is not one "
                                             "of the groups found now (reload the page)")
                confirmed[frozenset(g.ids)] = match  # (a group given twice is one)
            decisions = decide(coll, list(confirmed.values()), chosen={g.keeper for g in body.groups},
                               chosen_paths={g.keeper_path for g in body.groups if g.keeper_path})
            out = dupmove.move(coll, decisions, folder)
            return {"manifest": out.manifest.name, "moved": [int(e["id"]) for e in out.done],
                    "not_moved": [{"id": int(e["id"]), "why": why} for e, why in out.skipped],
                    "count": len(coll)}

    @router.post("/api/duplicates/undo", tags=["duplicates"], response_model=UndoAnswer,
                 summary="Put back the files a move moved, and add them to the collection",
                 dependencies=writes,
                 responses=error_responses(400, *write_errors, 404, 409, 422))
    def undo(body: UndoRequest) -> dict[str, Any]:
        folder = _folder(move_to)
        if not _MANIFEST.fullmatch(body.manifest) or not (folder / body.manifest).is_file():
            raise HTTPException(404, f"no manifest {body.manifest!r} in the move folder")
        with one_change, _changing(shared.path) as coll:
            out = dupmove.undo(coll, folder / body.manifest)
            return {"manifest": body.manifest, "put_back": len(out.done), "added": out.added,
                    "not_put_back": [{"id": int(e["id"]), "why": why} for e, why in out.skipped],
                    "count": len(coll)}

    return router


def _folder(move_to: Path | None) -> Path:
    if move_to is None:
        raise HTTPException(409, "moving is off: start the service with --move-to DIR")
    return move_to


def move_folder(path: str | os.PathLike[str] | None) -> Path | None:
    """``lookalike serve --move-to DIR`` made absolute (None: moving is off)."""
    return None if path is None else Path(os.path.abspath(path))
