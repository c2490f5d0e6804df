"""What a stream of files (``index``, ``add``, ``sync``) is encoded within, without importing
PyTorch: an ONNX Runtime collection's ``add`` or ``sync`` must never load it
(``tests/test_runtime.py``)."""

from __future__ import annotations

import contextlib
from typing import Any


def batches_at_once(encoder: Any) -> contextlib.AbstractContextManager[int]:
    """The encoder's own ``batches_at_once()`` where it has one (a PyTorch model's:
    :meth:`lookalike.models.encoders.ModelEncoder.batches_at_once`); it yields how many
    batches run at once. Other encoders yield 1 (ONNX Runtime keeps its own threads)."""
    at_once = getattr(encoder, "batches_at_once", None)
    return at_once() if at_once is not None else contextlib.nullcontext(1)
