"""Typed errors for problems a user can cause and fix.

Every message names the bad value and says what to do instead; the CLI prints it as one line and exits
non-zero, without a traceback.
"""

from __future__ import annotations


class BigModelsError(Exception):
    """Base class: a problem with the user's input, not a bug in bigmodels."""


class ConfigError(BigModelsError, ValueError):
    """An unknown or mistyped config key or value."""


class ModelNotFoundError(BigModelsError, LookupError):
    """A model name that is not in the registry."""


class DataError(BigModelsError):
    """Missing, unreadable or malformed data."""


class CheckpointError(BigModelsError):
    """A checkpoint that cannot be read or does not match the model."""


class TrainingError(BigModelsError):
    """Training cannot go on (for example the loss became NaN)."""


class ExportError(BigModelsError):
    """A model that cannot be exported (ONNX), or whose export disagrees with it."""
