from __future__ import annotations

import pytest
import torch

from lookalike.config import TrainConfig
from lookalike.data.augment import augment, jitter_intensity, nt_xent
from lookalike.errors import LookalikeError


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
    assert torch.equal(augment(x, 0.0, flip=False, generator=torch.Generator().manual_seed(0)), x)
    # flip: over a seeded batch each image comes back either as it was or as its exact left-right
    # mirror, and both happen (random images are never their own mirror)
    x = torch.rand(64, 3, 12, 10)
    assert not any(torch.equal(a, a.flip(-1)) for a in x)
    y = augment(x, 0.0, flip=True, generator=torch.Generator().manual_seed(0))
    kept = [torch.equal(a, b) for a, b in zip(x, y, strict=True)]
    mirrored = [torch.equal(a.flip(-1), b) for a, b in zip(x, y, strict=True)]
    assert all(k != m for k, m in zip(kept, mirrored, strict=True))  # exactly one of the two
    assert 16 <= sum(mirrored) <= 48, sum(mirrored)  # about half (binomial, p = 0.5)
    assert torch.equal(y, augment(x, 0.0, flip=True, generator=torch.Generator().manual_seed(0)))


def test_nt_xent_prefers_matching_views() -> None:
    z = torch.nn.functional.normalize(torch.randn(32, 16), dim=1)
    matched = nt_xent(z, z, 0.1)
    shuffled = nt_xent(z, z[torch.randperm(32, generator=torch.Generator().manual_seed(0))], 0.1)
    assert matched < shuffled


def test_intensity_jitter_keeps_black_and_order_and_follows_the_seed() -> None:
    x = torch.rand(64, 1, 8, 8)
    x[:, :, :2] = 0.0  # a black band
    y = jitter_intensity(x, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(y, jitter_intensity(x, 1.0, torch.Generator().manual_seed(0)))
    assert y.min() >= 0 and y.max() <= 1
    assert torch.all(y[:, :, :2] == 0)  # black stays black
    # each image's grey levels keep their order (a monotone change per image)
    flat_x, flat_y = x.flatten(1), y.flatten(1)
    for a, b in zip(flat_x, flat_y, strict=True):
        order = torch.argsort(a)
        assert torch.all(b[order][1:] >= b[order][:-1] - 1e-6)
    # and the change is real: mean brightness varies across images far more than noise
    ratio = flat_y.mean(1) / flat_x.mean(1)
    assert ratio.max() - ratio.min() > 0.3
    assert torch.equal(augment(x, 0.0, jitter=0.0), x)


def test_jitter_is_validated() -> None:
    with pytest.raises(LookalikeError, match="jitter"):
        TrainConfig(jitter=3.0)
