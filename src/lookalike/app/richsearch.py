"""The service's filters, richer queries and original files (:mod:`lookalike.app.service`
routes them):

* :func:`filter_params`: the filter's query parameters of ``POST /api/search`` (``in``,
  ``after``, ``before``, ``label``, ``camera``, ``has_gps``), declared in the schema, as a
  :class:`~lookalike.search.filters.Filter`;
* :class:`RichQuery` and :func:`rich_search`: a search with a filter, more examples
  (``like``), counter-examples (``unlike``) or a region (``crop``), run on a snapshot
  without the batching of plain searches;
* :func:`file_facts`: the name, catalogued path and date of results, for the page's tiles.

The file an item was read from, the only file the service ever serves from disk, is
:func:`lookalike.search.files.original` (its catalogued path or its own source, never a
path a request names).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

import numpy as np
from fastapi import HTTPException, Query

from ..data.images import conform
from ..errors import LookalikeError
from ..search import queries
from ..search.collection import Collection
from ..search.files import db, of_ids
from ..search.filters import Filter
from .shared import Hit, UnknownItem


def filter_params(
    paths: Annotated[list[str] | None, Query(alias="in", description=(
        "only files whose path matches this glob ('trips/2024/*', '*.png', a folder name; "
        "'*' crosses folders); repeat for several"))] = None,
    after: Annotated[str | None, Query(description=(
        "taken at or after this date (EXIF date taken, else modification time): YYYY, "
        "YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM"))] = None,
    before: Annotated[str | None, Query(description="taken before this date (same forms)")] = None,
    labels: Annotated[list[str] | None, Query(
        alias="label", description="a label name or number; repeat for several")] = None,
    camera: Annotated[str | None, Query(
        description="the camera's make or model contains this")] = None,
    has_gps: Annotated[bool | None, Query(
        description="true: only photos with a GPS position; false: only those without")] = None,
) -> Filter:
    """The filter a search's query parameters ask for (422 for a bad one)."""
    try:
        return Filter(paths=tuple(paths or ()), after=after, before=before, labels=tuple(labels or ()),
                      camera=camera, has_gps=has_gps)
    except LookalikeError as exc:
        raise HTTPException(422, f"filter: {exc}") from None


@dataclass(frozen=True)
class RichQuery:
    """A query picture (``image``, ``uint8 (H, W, C)``) or a stored ``item``, with more
    examples and counter-examples (stored ids), a region and a filter."""

    k: int
    rerank: bool | None
    image: np.ndarray | None = None
    item: int | None = None
    like: tuple[int, ...] = ()
    unlike: tuple[int, ...] = ()
    crop: queries.Crop | None = None
    where: Filter = field(default_factory=Filter)


def _vector(coll: Collection, item_id: int) -> np.ndarray:
    try:
        return coll.vector(item_id)
    except LookalikeError:
        raise UnknownItem(f"no item with id {item_id}") from None


def rich_search(coll: Collection, q: RichQuery) -> list[Hit]:
    """The results of ``q`` on ``coll`` (a snapshot), nearest first; the examples and
    counter-examples themselves are left out."""
    own: list[int] = []
    if q.item is not None and q.crop is None:
        code = _vector(coll, q.item)
        own.append(q.item)
    else:
        if q.item is not None:
            assert q.crop is not None
            _vector(coll, q.item)  # (404 for an unknown one)
            picture = queries.stored_region(coll, q.item, q.crop)
            own.append(q.item)
        else:
            assert q.image is not None
            picture = q.crop.apply(q.image) if q.crop else q.image
        image = conform([picture], coll.input_spec)
        code = coll.encoder.encode(image)[0]
        own += [int(i) for i in coll.stored_ids(image) if i >= 0]
    like = [code] + [_vector(coll, i) for i in q.like]
    unlike = [_vector(coll, i) for i in q.unlike]
    if q.like or q.unlike:
        code = queries.combine(np.stack(like), np.stack(unlike) if unlike else None)
    dist, ids = queries.search(coll, code[None], q.k, where=q.where or None,
                               exclude=[[*own, *q.like, *q.unlike]], rerank=q.rerank)
    items = coll.items(ids[0])
    return [Hit(it.id, float(d), it.label, it.source)
            for d, it in zip(dist[0], items, strict=True) if it is not None]


def _when(taken: str | None, mtime_ns: int) -> str:
    return taken or datetime.fromtimestamp(mtime_ns / 1e9).isoformat(timespec="seconds")


def file_facts(coll: Collection, ids: list[int]) -> dict[int, tuple[str, str | None, str | None]]:
    """``{id: (name, path, date)}`` of ``ids``: the first catalogued file of each (path and
    date ``None`` for an item with none: its name is its source's last part)."""
    rows = of_ids(db(coll), ids)
    out: dict[int, tuple[str, str | None, str | None]] = {}
    for i in ids:
        if rows.get(i):
            r = rows[i][0]
            out[i] = (os.path.basename(r.path), r.path, _when(r.taken, r.mtime_ns))
    return out


def name_of(source: str) -> str:
    """The last part of a source (a path's file name, a dataset's ``name:split:i``)."""
    return os.path.basename(source.rstrip("/")) or source


def crop_of(values: list[float] | None) -> queries.Crop | None:
    """A request's ``crop`` (422 when bad)."""
    if values is None:
        return None
    try:
        return queries.Crop(*values)
    except LookalikeError as exc:
        raise HTTPException(422, f"crop: {exc}") from None
