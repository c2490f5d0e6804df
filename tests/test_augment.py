from __future__ import annotations

import torch

from lookalike.augment import augment, nt_xent


def test_views_differ_stay_in_range_and_follow_the_seed() -> None:
    x = torch.rand(16, 1, 28, 28)
    a = augment(x, 1.0, generator=torch.Generator().manual_seed(0))
    b = augment(x, 1.0, generator=torch.Generator().manual_seed(0))
    c = augment(x, 1.0, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)


def test_zero_strength_is_identity_and_flip_mirrors() -> None:
    x = torch.rand(8, 3, 12, 10)
    assert torch.equal(augment(x, 0.0), x)
    y = augment(x, 0.0, flip=True, generator=torch.Generator().manual_seed(0))
    for a, b in zip(x, y, strict=True):
        assert torch.equal(a, b) or torch.equal(a.flip(-1), b)


def test_nt_xent_prefers_matching_views() -> None:
    z = torch.nn.functional.normalize(torch.randn(32, 16), dim=1)
    matched = nt_xent(z, z, 0.1)
    shuffled = nt_xent(z, z[torch.randperm(32, generator=torch.Generator().manual_seed(0))], 0.1)
    assert matched < shuffled
