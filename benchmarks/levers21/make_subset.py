# ruff: noqa
# Exploration script of issue 21's colour levers, kept as run (paths under /tmp/colour21); see docs/benchmarks.md.
import sys; sys.path.insert(0, "benchmarks")
import numpy as np, colour, icondata
from pathlib import Path
meta = icondata.load_meta(Path("/tmp/colour21/icons64"))
dbn, qn = colour._labels(meta)
names = np.unique(qn)
keep = np.random.default_rng(0).choice(names, len(names) // 3, replace=False)
dbi = np.flatnonzero(np.isin(dbn, keep)); qi = np.flatnonzero(np.isin(qn, keep))
# distractors: also keep a random third of the database items of other names
other = np.flatnonzero(~np.isin(dbn, keep))
dbi = np.sort(np.concatenate([dbi, np.random.default_rng(1).choice(other, len(other) // 3, replace=False)]))
np.savez("/tmp/colour21/subset.npz", db=dbi, q=qi)
print(len(dbi), len(qi))
