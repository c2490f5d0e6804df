# ruff: noqa
# Exploration script of issue 21's colour levers, kept as run (paths under /tmp/colour21); see docs/benchmarks.md.
import sys; sys.path.insert(0, "/tmp/colour21")
from evalc import *
d = sys.argv[1]
fd, fq = load(d, "db", "192"), load(d, "q", "192")
gd, gq = gem(fd).numpy(), gem(fq).numpy()
for dim, pw in ((512, 0.25), (512, 0.5), (256, 0.25), (1024, 0.25), (1024, 0.5), (768, 0.35), (512, 0.0)):
    score(f"GeM3 whiten dim {dim} power {pw}", *whiten(gd, gq, dim, pw))
# R-MAC with regional whitening (the original recipe): whiten each region, sum, normalise
regs = rmac_regions(6, 6, 3)
rd = [gem(fd[:, :, a:b, c:e]).numpy() for a, b, c, e in regs]
rq = [gem(fq[:, :, a:b, c:e]).numpy() for a, b, c, e in regs]
allr = np.concatenate([r[SAMPLE] for r in rd])[::3]
mean, mat = fit_whitening(allr, 512, 0.25)
w = lambda f: l2((l2(f) - mean) @ mat)
sd = l2(sum(w(r) for r in rd)); sq = l2(sum(w(r) for r in rq))
score("R-MAC regional whitening (1 fit on all regions)", sd, sq)
sd2 = l2(sum(w(r) for r in rd[:5])); sq2 = l2(sum(w(r) for r in rq[:5]))
score("R-MAC L=2 regional whitening", sd2, sq2)
score("global + 0.5 * regional (L3) whitened codes", l2(w(rd[0]) * 2 + sum(w(r) for r in rd[1:]) / 13 * 2), l2(w(rq[0]) * 2 + sum(w(r) for r in rq[1:]) / 13 * 2))
