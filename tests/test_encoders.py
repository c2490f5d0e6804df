"""The encoders' fast paths give the codes of the plain path: channels-last float32 codes
equal the model's own (contiguous) ones; bfloat16 codes rank like float32 ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.data.datasets import load_dataset
from lookalike.data.images import to_float
from lookalike.errors import LookalikeError
from lookalike.models.encoders import ModelEncoder, PixelEncoder
from lookalike.models.modelio import load_model
from lookalike.search.metrics import retrieval_metrics


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "database"), load_dataset("digits", "queries")


def test_fp32_fast_path_equals_the_plain_forward(trained, digits) -> None:
    model = load_model(trained.model)
    db, _ = digits
    fast = ModelEncoder(model, precision="fp32", batch_size=100).encode(db.images)
    with torch.inference_mode():
        plain = model.module.eval().encode(torch.from_numpy(to_float(db.images))).numpy()
    assert fast.dtype == np.float32 and fast.shape == plain.shape
    assert np.allclose(fast, plain, atol=1e-5)
    empty = ModelEncoder(model).encode(db.images[:0])
    assert empty.shape == (0, model.module.code_dim)


def test_bf16_codes_rank_like_fp32_codes(trained, digits) -> None:
    model = load_model(trained.model)
    db, q = digits
    f32 = ModelEncoder(model, precision="fp32")
    b16 = ModelEncoder(model, precision="bf16")
    assert b16.precision == "bf16" and f32.precision == "fp32"
    codes = {e.precision: (e.encode(db.images), e.encode(q.images)) for e in (f32, b16)}
    (d32, q32), (d16, q16) = codes["fp32"], codes["bf16"]
    assert d16.dtype == np.float32
    # bf16 really ran: its codes differ from fp32's by bfloat16's rounding (8 bits of mantissa;
    # measured 2e-3 here), far more than float32's own (~1e-7)
    assert np.abs(d16 - d32).max() > 1e-4
    cos = (d32 * d16).sum(1) / np.linalg.norm(d32, axis=1) / np.linalg.norm(d16, axis=1)
    assert cos.min() > 0.99
    top32 = np.argsort(((q32[:, None] - d32[None]) ** 2).sum(-1), axis=1)[:, :10]
    top16 = np.argsort(((q16[:, None] - d16[None]) ** 2).sum(-1), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top32, top16, strict=True)])
    assert overlap > 0.9
    m32 = retrieval_metrics(q32, q.labels, d32, db.labels, ks=(10,))
    m16 = retrieval_metrics(q16, q.labels, d16, db.labels, ks=(10,))
    assert abs(m32["mAP"] - m16["mAP"]) < 0.01 and abs(m32["P@10"] - m16["P@10"]) < 0.01


def test_precision_is_checked_and_pixels_are_scaled(trained, digits) -> None:
    with pytest.raises(LookalikeError, match="precision"):
        ModelEncoder(load_model(trained.model), precision="fp8")
    db, _ = digits
    pix = PixelEncoder(db.spec).encode(db.images[:3])
    assert pix.shape == (3, 64) and np.isclose(pix.max(), db.images[:3].max() / 255)
