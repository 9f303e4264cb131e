"""Errors a user can act on: each names the file and what is wrong with it."""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file or tree is missing or malformed. The message names the path."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or of another stage. The message names the file."""


class ConfigError(ValueError):
    """A configuration value is invalid or inconsistent."""


class TrainingDivergedError(RuntimeError):
    """A training loss became NaN or infinite. The message names the stage, the step and the loss."""
