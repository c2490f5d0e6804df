"""lookalike: content-based image retrieval with convolutional (denoising) autoencoders.

The library's layers, each a subpackage of modules with one job:

* :mod:`.data`: image files, datasets, IDX files, augmentations
* :mod:`.models`: networks, training, model files, encoders
* :mod:`.search`: the collection, its segments and index, re-ranking, clustering, scoring
* :mod:`.app`: the command line, the HTTP service, figures, reports, the demo
* beside them: :mod:`.config`, :mod:`.errors`, :mod:`.fsutil`, :mod:`.versions`
* the front door, :mod:`.api`: ``train``, ``load_model``, ``index``, ``open``, ``evaluate``
  (the command line calls the same functions)::

      import lookalike as la
      coll = la.index("photos/", out="coll")   # trains the default model for the photos
      coll = la.index(la.train("photos/", out="model"), "photos/", out="coll2")
      hits = coll.search("query.jpg", k=10)
      hits = coll.search(["a.jpg", "b.jpg"], together=True, unlike=["c.jpg"],
                         where=la.Filter(paths=["trips/*"], after="2024-03"))
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any

from .config import InputSpec, ModelConfig, TrainConfig
from .errors import CollectionError, DataError, ImageError, LookalikeError, ModelError

_API = ("Crop", "Filter", "Hit", "Index", "evaluate", "index", "load_model", "open", "train")


def __getattr__(name: str) -> Any:
    """The front door's names, imported on first use (``import lookalike`` stays light:
    PyTorch loads only when a model is needed)."""
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'lookalike' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names and the front door's, which load on first use: so that
    ``dir(lookalike)`` and an IDE's completion (``la.<TAB>``) list them."""
    return sorted(set(globals()) | set(_API))

__all__ = [
    "CollectionError",
    "Crop",
    "Hit",
    "Index",
    "DataError",
    "Filter",
    "ImageError",
    "InputSpec",
    "LookalikeError",
    "ModelConfig",
    "ModelError",
    "TrainConfig",
    "__version__",
    "evaluate",
    "index",
    "load_model",
    "open",
    "train",
]
