"""The project's error types.

Every error a user can cause by bad input is a :class:`LookalikeError`, which is a
``ValueError``; the CLI turns it into a one-line message and exit code 2.
"""

from __future__ import annotations


class LookalikeError(ValueError):
    """Base class for every error caused by bad input (a path, a file, a value)."""


class ImageError(LookalikeError):
    """An image could not be read or decoded (corrupt, not an image, too large)."""


class DataError(LookalikeError):
    """A dataset could not be found or read, or has an unexpected shape."""


class ModelError(LookalikeError):
    """A model directory is missing, damaged, or not a lookalike model."""


class CollectionError(LookalikeError):
    """A collection directory is missing, damaged, or does not fit the model."""


class RemoteError(CollectionError):
    """A remote index (a Milvus server, Milvus Lite) could not be reached or refused a call."""
