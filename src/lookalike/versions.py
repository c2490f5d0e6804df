"""Library versions recorded in every manifest, so an artefact says what made it."""

from __future__ import annotations

import platform
from importlib import metadata


def versions() -> dict[str, str]:
    """``{package: version}`` for lookalike and the libraries its results depend on."""
    out = {"python": platform.python_version()}
    for name in ("lookalike", "torch", "numpy", "faiss-cpu", "scikit-learn", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
