# ruff: noqa
# Exploration script of issue 21's colour levers, kept as run (paths under /tmp/colour21); see docs/benchmarks.md.
import sys; sys.path.insert(0, "/tmp/colour21")
from evalc import *
d = sys.argv[1]
fd, fq = load(d, "db", "192"), load(d, "q", "192")
print("map", tuple(fd.shape))
gd, gq = gem(fd).numpy(), gem(fq).numpy()
score("baseline GeM3 192, whitened", *whiten(gd, gq))
for p in (2.0, 4.0):
    score(f"GeM{p} 192, whitened", *whiten(gem(fd, p).numpy(), gem(fq, p).numpy()))
for L in (2, 3):
    score(f"R-MAC GeM3 L={L}, whitened", *whiten(rmac(fd, 3, L).numpy(), rmac(fq, 3, L).numpy()))
score("R-MAC max(p=inf~20) L=3, whitened", *whiten(rmac(fd, 20, 3).numpy(), rmac(fq, 20, 3).numpy()))
score("GeM3 + R-MAC L=3 whole x2", *whiten(rmac(fd, 3, 3, 2.0).numpy(), rmac(fq, 3, 3, 2.0).numpy()))
