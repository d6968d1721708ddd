"""User-facing error types: the CLI prints these as one line instead of a traceback."""

from __future__ import annotations


class DeepKMeansError(Exception):
    """Base class for errors caused by user input (files, configs, arguments)."""


class ConfigError(DeepKMeansError, ValueError):
    """A configuration file or value is invalid."""


class FormatError(DeepKMeansError, ValueError):
    """A compressed file is missing, truncated, corrupt or of an unknown version."""


class PlanWarning(UserWarning):
    """The config asked for something the model cannot give (a layer left dense, a penalty that is zero)."""
