"""Ranking metrics over the full database ranking (docs/protocol.md).

All functions take ``relevance``: ``bool (n_queries, n_ranked)``, row ``i`` telling for
each database item *in ranked order* whether it is relevant to query ``i``.

Conventions:

* **AP** of a query = mean over its relevant items of the precision at their rank; a
  query with no relevant item in the database scores 0 (scikit-learn's LRAP gives 1).
  Over a full ranking without ties it equals scikit-learn's
  ``label_ranking_average_precision_score`` for that query.
* **LRAP@n** as in the articles (scikit-learn's LRAP on the first ``n`` results), computed
  correctly: the mean, over the relevant items among the first ``n``, of the precision at
  their rank; a query with *no* relevant item among its first ``n`` scores **0**, not 1.
* Ties in distance are broken by database order (a stable sort).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np


def _precisions(relevance: np.ndarray) -> np.ndarray:
    hits = np.cumsum(relevance, axis=1, dtype=np.float64)
    return hits / np.arange(1, relevance.shape[1] + 1)


def average_precision(relevance: np.ndarray) -> np.ndarray:
    """AP per query, ``float64 (n_queries,)``; 0 for a query with no relevant item."""
    rel = np.asarray(relevance, dtype=bool)
    n_rel = rel.sum(axis=1)
    total = np.where(rel, _precisions(rel), 0.0).sum(axis=1)
    return np.divide(total, n_rel, out=np.zeros(len(rel)), where=n_rel > 0)


def precision_at(relevance: np.ndarray, k: int) -> np.ndarray:
    """Fraction of the first ``k`` results that are relevant, ``float64 (n_queries,)``.

    When fewer than ``k`` items are ranked, the denominator is still ``k``."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    return np.asarray(relevance[:, :k], dtype=bool).sum(axis=1) / float(k)


def lrap_at(relevance: np.ndarray, n: int) -> np.ndarray:
    """The articles' LRAP over the first ``n`` results, per query; 0 when none is relevant."""
    return average_precision(np.asarray(relevance[:, :n], dtype=bool))


def ranked_blocks(queries: np.ndarray, database: np.ndarray, block: int = 256,
                  exclude: np.ndarray | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, order)``: for each block of queries, the database indices sorted by
    squared Euclidean distance (``int64 (len(rows), n_database)``, stable).

    ``exclude`` (``int64 (n_queries,)``, -1 for none) drops that database index from a
    query's ranking (the query itself when it is in the database): it is moved last.
    """
    q = np.asarray(queries, dtype=np.float32)
    db = np.asarray(database, dtype=np.float32)
    db_sq = np.einsum("ij,ij->i", db, db)
    for start in range(0, len(q), block):
        rows = slice(start, min(start + block, len(q)))
        qb = q[rows]
        d = db_sq[None, :] - 2.0 * (qb @ db.T) + np.einsum("ij,ij->i", qb, qb)[:, None]
        if exclude is not None:
            ex = exclude[rows]
            has = ex >= 0
            d[np.flatnonzero(has), ex[has]] = np.inf
        yield rows, np.argsort(d, axis=1, kind="stable")


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: np.ndarray,
    database: np.ndarray,
    database_labels: np.ndarray,
    ks: Sequence[int] = (1, 10, 100),
    lrap_ns: Sequence[int] = (),
    exclude: np.ndarray | None = None,
    block: int = 256,
) -> dict[str, object]:
    """mAP over the full Euclidean ranking, P@k for each ``k``, and the LRAP@n curve.

    Args:
        queries: ``float32 (n_q, d)`` codes; database: ``float32 (n_db, d)``.
        query_labels, database_labels: integer labels, used only to score.
        exclude: optional per-query database index to leave out (see :func:`ranked_blocks`);
            an excluded item is not counted as relevant either.

    Returns:
        ``{"mAP": float, "P@1": float, ..., "LRAP@n": {"n": [...], "value": [...]}}``
        (the curve only when ``lrap_ns`` is given).
    """
    if len(query_labels) != len(queries) or len(database_labels) != len(database):
        raise ValueError("labels must have one entry per query / database item")
    if len(queries) == 0 or len(database) == 0:
        raise ValueError("need at least one query and one database item")
    n_ranked = len(database) - (0 if exclude is None else 1)
    return ranking_metrics(ranked_blocks(queries, database, block, exclude), query_labels,
                           database_labels, ks, lrap_ns, n_ranked=max(n_ranked, 1))


def ranking_metrics(
    rankings: Iterable[tuple[slice, np.ndarray]],
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    ks: Sequence[int] = (1, 10, 100),
    lrap_ns: Sequence[int] = (),
    n_ranked: int | None = None,
) -> dict[str, object]:
    """The metrics of :func:`retrieval_metrics` for any ranking: ``rankings`` yields
    ``(rows, order)`` with ``order`` ``int (len(rows), n)`` database indices best first
    (as :func:`ranked_blocks` does). Only the first ``n_ranked`` columns count."""
    ql = np.asarray(query_labels)
    dl = np.asarray(database_labels)
    ap_sum = 0.0
    p_sums = dict.fromkeys(ks, 0.0)
    lrap_sums = dict.fromkeys(lrap_ns, 0.0)
    for rows, order in rankings:
        rel = dl[order[:, :n_ranked]] == ql[rows, None]
        ap_sum += float(average_precision(rel).sum())
        for k in ks:
            p_sums[k] += float(precision_at(rel, k).sum())
        for n in lrap_ns:
            lrap_sums[n] += float(lrap_at(rel, n).sum())
    nq = len(ql)
    out: dict[str, object] = {"mAP": ap_sum / nq}
    out.update({f"P@{k}": p_sums[k] / nq for k in ks})
    if lrap_ns:
        out["LRAP@n"] = {"n": list(lrap_ns), "value": [lrap_sums[n] / nq for n in lrap_ns]}
    return out


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k ids (``int64 (n, k)``, -1 padding ignored) that
    the approximate top-k contains."""
    hits = total = 0
    for a, e in zip(np.asarray(approx_ids), np.asarray(exact_ids), strict=True):
        e = e[e >= 0]
        hits += len(np.intersect1d(a[a >= 0], e))
        total += len(e)
    return hits / total if total else 1.0
