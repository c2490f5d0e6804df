from __future__ import annotations

import pytest

from lookalike.errors import LookalikeError
from lookalike.search.evaluation import evaluate


def test_pixels_on_mnist_5k_match_benchmarks_md() -> None:
    # docs/protocol.md: raw pixels on mnist-5k, exact Euclidean search
    m = evaluate("pixels", "mnist-5k")
    assert m["mAP"] == pytest.approx(0.426, abs=5e-4)
    assert m["P@1"] == pytest.approx(0.931, abs=5e-4)
    assert m["P@10"] == pytest.approx(0.857, abs=5e-4)
    assert m["P@100"] == pytest.approx(0.658, abs=5e-4)
    curve = m["LRAP@n"]
    assert curve["n"][0] == 1 and curve["value"][0] == pytest.approx(m["P@1"])


def test_bad_target(tmp_path) -> None:
    with pytest.raises(LookalikeError, match="neither"):
        evaluate(tmp_path, "digits")
