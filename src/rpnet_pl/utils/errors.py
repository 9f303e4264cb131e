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


class IncompleteStepError(RuntimeError):
    """A step ended without doing its work (no optimiser step, no checkpoint, images not written): it
    is not marked done. The message names the step and why."""


class Stopped(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM, raised by the ``rpnet`` command's signal handler (not a
    ``KeyboardInterrupt``, which Lightning turns into ``exit 1``): the command prints one line, where
    it stopped and how to resume, and exits 128 + the signal. ``where``: the step it stopped in."""

    def __init__(self, signum: int, where: str = "", how: str = "") -> None:
        super().__init__(signum, where, how)
        self.signum = signum
        self.where = where
        #: how to go on, when it is not the command's usual resume (e.g. a step with no resume point yet)
        self.how = how
