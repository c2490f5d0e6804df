# ruff: noqa
# Exploration script of issue 21's colour levers, kept as run (paths under /tmp/colour21); see docs/benchmarks.md.
import sys; sys.path.insert(0, "/tmp/colour21")
from evalc import *
d = sys.argv[1]
L = lambda n: (np.load(f"{d}/db_{n}.npy").astype(np.float32), np.load(f"{d}/q_{n}.npy").astype(np.float32))
gd, gq = gem(load(d, "db", "192")).numpy(), gem(load(d, "q", "192")).numpy()
base = whiten(gd, gq)
score("baseline", *base)
for k in ("14g", "15a", "15g"):
    md, mq = L(f"mid{k}")
    w = whiten(md, mq, min(512, md.shape[1]))
    score(f"mid {k} alone", *w)
    score(f"concat head + mid {k} (whitened codes, equal weight)", l2(np.hstack([base[0], w[0]])), l2(np.hstack([base[1], w[1]])))
