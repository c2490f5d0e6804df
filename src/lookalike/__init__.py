"""lookalike: content-based image retrieval with convolutional (denoising) autoencoders.

The library's layers, each a module with one job:

* data: :mod:`.images` (decode, conform), :mod:`.datasets`, :mod:`.idx`, :mod:`.download`
* models: :mod:`.config`, :mod:`.models`, :mod:`.training`, :mod:`.modelio`, :mod:`.encoders`
* search: :mod:`.backends`, :mod:`.collection`, :mod:`.clustering`
* scoring and output: :mod:`.metrics`, :mod:`.evaluation`, :mod:`.figures`, :mod:`.report`
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import InputSpec, ModelConfig, TrainConfig
from .errors import CollectionError, DataError, ImageError, LookalikeError, ModelError

__all__ = [
    "CollectionError",
    "DataError",
    "ImageError",
    "InputSpec",
    "LookalikeError",
    "ModelConfig",
    "ModelError",
    "TrainConfig",
    "__version__",
]
