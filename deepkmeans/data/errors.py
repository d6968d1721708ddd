"""Dataset errors, reported to the user as one line."""

from __future__ import annotations

from deepkmeans.errors import DeepKMeansError


class DatasetError(DeepKMeansError, ValueError):
    """A dataset directory or file is missing or malformed."""
