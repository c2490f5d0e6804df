# ruff: noqa
# Exploration script of issue 21's colour levers, kept as run (paths under /tmp/colour21); see docs/benchmarks.md.
import sys; sys.path.insert(0, "/tmp/colour21")
from evalc import *
d = sys.argv[1]
gd, gq = gem(load(d, "db", "192")).numpy(), gem(load(d, "q", "192")).numpy()
base = whiten(gd, gq)
score("lite0 (adapted 960 images) baseline", *base)
w = {"0": base}
for n in ("1", "2"):
    fd, fq = load(d, "db", f"efficientnet-lite{n}_192"), load(d, "q", f"efficientnet-lite{n}_192")
    w[n] = whiten(gem(fd).numpy(), gem(fq).numpy())
    score(f"lite{n} pretrained GeM whitened 192", *w[n])
for combo in (("0", "1"), ("0", "2"), ("0", "1", "2")):
    score(f"ensemble {'+'.join(combo)} (concat whitened codes)", l2(np.hstack([w[c][0] for c in combo])), l2(np.hstack([w[c][1] for c in combo])))
