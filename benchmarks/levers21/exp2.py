# ruff: noqa
# Exploration script of issue 21's colour levers, kept as run (paths under /tmp/colour21); see docs/benchmarks.md.
import sys; sys.path.insert(0, "/tmp/colour21")
from evalc import *
d = sys.argv[1]
g = {v: (gem(load(d, "db", v)).numpy(), gem(load(d, "q", v)).numpy()) for v in sys.argv[2].split(",")}
base = whiten(*g["192"])
score("baseline GeM3 192", *base)
for v in g:
    if v == "192": continue
    a = ((g["192"][0] + g[v][0]) / 2, (g["192"][1] + g[v][1]) / 2)
    score(f"mean GeM 192+{v}, whitened on the mean", *whiten(*a))
    cv = whiten(*g[v])
    score(f"alone {v}", *cv)
    score(f"mean of codes 192+{v} (each whitened own)", l2(base[0] + cv[0]), l2(base[1] + cv[1]))
    # whitening fitted on plain 192, applied to both views
    mean, mat = fit_whitening(g["192"][0][SAMPLE], 512, 0.25)
    w = lambda f: l2((l2(f) - mean) @ mat)
    score(f"mean of codes 192+{v} (plain whitening)", l2(w(g["192"][0]) + w(g[v][0])), l2(w(g["192"][1]) + w(g[v][1])))
if len(g) > 2:
    a = (sum(x[0] for x in g.values()) / len(g), sum(x[1] for x in g.values()) / len(g))
    score(f"mean GeM of all {list(g)}", *whiten(*a))
