"""How many of a real collection's candidate pairs reach the pixels, and what they cost there.

    python benchmarks/duplicates_gate.py --work benchmarks/out/duplicates   # after duplicates.py

On the collection that ``benchmarks/duplicates.py`` built in ``--work``: the candidate pairs
of the pass (each item's k = 10 nearest by the codes), how many pass the gate (8x8 block
means), the CPU milliseconds a pair of those takes in ``pair_scores`` (the pass's settings),
and the CPU milliseconds a stored picture takes to decode and to become a thumbnail. Prints.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lookalike.search import alignment, duppass
from lookalike.search.collection import Collection
from lookalike.search.duplicates import DEFAULT_K, NEAR_THRESHOLD


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="benchmarks/out/duplicates")
    coll = Collection.open(Path(ap.parse_args().work) / "coll")
    n = len(coll)
    start = time.process_time()
    pictures = np.stack([coll.store.picture(r) for r in range(n)])
    decode = time.process_time() - start
    start = time.process_time()
    thumbs = alignment.thumbnails(pictures)
    thumb = time.process_time() - start
    shape = alignment.thumb_shape(*pictures.shape[1:3])
    nbr = duppass._Neighbours(np.asarray(coll.embeddings), n, DEFAULT_K + 1).search(np.arange(n))
    left, right = np.repeat(np.arange(n), nbr.shape[1]), nbr.ravel()
    keep = (right >= 0) & (right != left)
    key = np.unique(np.minimum(left, right)[keep] * n + np.maximum(left, right)[keep])
    a, b = key // n, key % n
    feats, _ = duppass.gate_features(thumbs, shape)
    go = np.einsum("mp,mp->m", feats[a], feats[b]) >= alignment.GATE
    alignment.pair_scores(thumbs[a[:8]], thumbs[b[:8]], shape)  # (builds the warp operators)
    start = time.process_time()
    alignment.pair_scores(thumbs[a[go]], thumbs[b[go]], shape,
                          refine_above=NEAR_THRESHOLD - alignment.HALF_MARGIN)
    pixels = time.process_time() - start
    print(f"{n} items, {len(a)} candidate pairs, {go.sum()} pass the gate "
          f"({go.mean():.0%}); pixels {pixels / max(1, go.sum()) * 1e3:.2f} CPU ms a pair; "
          f"decode {decode / n * 1e3:.2f} and thumbnail {thumb / n * 1e3:.2f} CPU ms a picture")


if __name__ == "__main__":
    main()
