"""Richer queries over a collection: several examples in one query, examples to move away
from, a region of a picture, and metadata filters (:mod:`lookalike.search.filters`).

* :func:`combine` makes one query code of several: Rocchio's relevance feedback, the mean
  of the examples' codes minus ``unlike_weight`` times the mean of the counter-examples',
  brought to the examples' mean length (so a distance to it reads like one to a code).
* :class:`Crop` is a region of a picture, in fractions of its width and height;
  :func:`stored_region` is one of a stored item's picture.
* :func:`search` is :meth:`Collection.search` with a :class:`~lookalike.search.filters.Filter`
  and several ids left out per query (the examples themselves): with a filter, the exact
  nearest passing items (an exact scan of their codes), re-ranked among them when the
  collection re-ranks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..data.images import load_image
from ..errors import LookalikeError
from .files import original
from .filters import Filter, nearest_among, passing

if TYPE_CHECKING:
    from .collection import Collection

#: How far the counter-examples push (Rocchio's gamma, with the examples' weight 1).
UNLIKE_WEIGHT = 0.5


@dataclass(frozen=True)
class Crop:
    """A region of a picture: its left ``x`` and top ``y`` and its width ``w`` and height
    ``h``, each a fraction of the picture's width or height (``Crop(0, 0, 1, 1)`` is all of it).

    Raises:
        LookalikeError: a region that is empty or not inside the picture.
    """

    x: float
    y: float
    w: float
    h: float

    def __post_init__(self) -> None:
        vals = (self.x, self.y, self.w, self.h)
        if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in vals) \
                or min(vals) < 0 or self.w <= 0 or self.h <= 0 \
                or self.x + self.w > 1 + 1e-6 or self.y + self.h > 1 + 1e-6:
            raise LookalikeError(f"bad crop {','.join(str(v) for v in vals)}: expected X,Y,W,H as "
                                 "fractions of the picture, W and H above 0, X+W and Y+H at most 1")

    @classmethod
    def parse(cls, text: str | Sequence[float]) -> Crop:
        """``"X,Y,W,H"`` (or four numbers) as a crop."""
        parts = re.split(r"[,\s]+", text.strip()) if isinstance(text, str) else list(text)
        try:
            if len(parts) != 4:
                raise ValueError
            return cls(*(float(p) for p in parts))
        except (TypeError, ValueError):
            raise LookalikeError(f"bad crop {text!r}: expected X,Y,W,H, four fractions such as "
                                 "0.25,0.25,0.5,0.5") from None

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The region of ``uint8 (H, W, C)``, at least one pixel a side."""
        height, width = image.shape[:2]
        x0, y0 = min(width - 1, int(round(self.x * width))), min(height - 1, int(round(self.y * height)))
        x1 = max(x0 + 1, min(width, int(round((self.x + self.w) * width))))
        y1 = max(y0 + 1, min(height, int(round((self.y + self.h) * height))))
        return np.ascontiguousarray(image[y0:y1, x0:x1])

    def to_list(self) -> list[float]:
        return [self.x, self.y, self.w, self.h]


def stored_region(coll: Collection, item_id: int, crop: Crop) -> np.ndarray:
    """The region ``crop`` of stored item ``item_id``'s picture, ``uint8 (h, w, C)``: of
    its original file at full size (:func:`~lookalike.search.files.original`), else (a
    dataset's item, an upload's, a file gone) of the picture the collection stores.

    Raises:
        LookalikeError: an unknown item.
    """
    found = original(coll, int(item_id))
    return crop.apply(load_image(found) if found is not None else coll.image(int(item_id)))


def combine(like: np.ndarray, unlike: np.ndarray | None = None,
            unlike_weight: float = UNLIKE_WEIGHT) -> np.ndarray:
    """One query code ``float32 (d,)`` from the codes of examples ``like`` ``(p, d)``, p >= 1,
    and of counter-examples ``unlike`` ``(n, d)`` (none: the examples' mean), at the
    examples' mean length.

    Raises:
        LookalikeError: no example, or a negative weight.
    """
    pos = np.asarray(like, np.float64).reshape(-1, np.shape(like)[-1])
    if not len(pos):
        raise LookalikeError("give at least one example to search like")
    if not np.isfinite(unlike_weight) or unlike_weight < 0:
        raise LookalikeError(f"unlike_weight must be 0 or more, got {unlike_weight}")
    query = pos.mean(0)
    if unlike is not None and len(unlike):
        query = query - unlike_weight * np.asarray(unlike, np.float64).reshape(-1, pos.shape[1]).mean(0)
    norm = np.linalg.norm(query)
    if norm > 0:
        query *= np.linalg.norm(pos, axis=1).mean() / norm
    return query.astype(np.float32)


def search(coll: Collection, codes: np.ndarray, k: int, *, where: Filter | None = None,
           exclude: Sequence[Sequence[int]] | None = None, rerank: bool | None = None,
           cwd: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``coll`` for each code of ``float32 (m, d)``: ``(distances, ids)`` of
    shape ``(m, k)``, nearest first, padded with +inf / -1; as :meth:`Collection.search`
    (distances are squared Euclidean, or ``1 - score`` re-ranked).

    ``where``: only items passing it are returned, and these are the true nearest passing
    ones (exact) whenever at least ``k`` pass; ``exclude``: per query, ids never returned
    (its own items); ``cwd``: where the filter's relative paths start (default: this
    process's current directory).
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise LookalikeError(f"k must be a positive integer, got {k}")
    q = np.ascontiguousarray(np.asarray(codes, np.float32).reshape(-1, coll.dim))
    skips = [tuple(sorted({int(i) for i in e if int(i) >= 0})) for e in exclude] if exclude \
        else [()] * len(q)
    if len(skips) != len(q):
        raise LookalikeError("give one list of excluded ids per query")
    if not where and all(len(s) <= 1 for s in skips):
        own = np.array([s[0] if s else -1 for s in skips], np.int64)
        return coll.search(q, k, own, rerank)
    reranked = coll.reranked(rerank)
    wide = coll.breadth(k, reranked)
    out_d = np.full((len(q), k), np.inf, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    rows, gathered = passing(coll, where, cwd) if where else (None, None)
    for skip in set(skips):
        at = [r for r, s in enumerate(skips) if s == skip]
        if rows is not None:
            dist, ids = nearest_among(coll.store, rows, q[at], wide, gathered, skip)
        else:
            dist, ids = coll.backend.search(q[at], wide + len(skip))
            dead = np.isin(ids, np.asarray(skip, np.int64))
            dist, ids = np.where(dead, np.inf, dist), np.where(dead, -1, ids)
            order = np.argsort(dead, axis=1, kind="stable")  # the dropped ones last
            dist, ids = np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)
        d, i = coll.refine(q[at], dist, ids, k, np.full(len(at), -1, np.int64), reranked)
        out_d[at], out_i[at] = d, i
    return out_d, out_i


__all__ = ["UNLIKE_WEIGHT", "Crop", "combine", "search", "stored_region"]
