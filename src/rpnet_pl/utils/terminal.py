"""What a command shows on the terminal: one line per error a user can act on, no library noise, and a
stop on Ctrl-C or SIGTERM that unwinds (:class:`~rpnet_pl.utils.errors.Stopped`) instead of a traceback."""
from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from typing import Any

from rpnet_pl.utils.errors import Stopped

#: What the machine, not the code, is wrong about: full disk, quota, read-only, permissions.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR)

#: Library warnings every step's log repeated without telling the user anything they can act on.
_NOISY_WARNINGS = (
    r"LightningCLI's args parameter is intended",  # we pass args on purpose (`rpnet fit STAGE ...`)
    r"No seed found, seed set to",  # LightningCLI's default seed; its INFO line stays
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning vs torch's pytree API
    r"Found \d+ module\(s\) in eval mode at the start of training",  # frozen BatchNorm, by design
)
_NOISY_LOG_LINES = (
    "💡 Tip:",  # advertisements for other Lightning products
    "will override existing callbacks passed to Trainer",  # our resume-point callback, by design
    "`weights_only` was not set",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISY_LOG_LINES)


def quiet_library_noise() -> None:
    """Drop the library warnings and log lines listed above from the terminal and every log.txt."""
    import warnings

    for pattern in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                 "pytorch_lightning.trainer.connectors.checkpoint_connector"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error. An error raised in a DataLoader worker arrives with the worker's
    traceback folded into its message; its last line is the original one-line message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    last = lines[-1]
    for prefix in (f"{type(exc).__module__}.{type(exc).__name__}: ", f"{type(exc).__name__}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last if "Original Traceback" in str(exc) else " ".join(lines)


def stop_on_signals() -> dict[int, Any]:
    """Ctrl-C and SIGTERM raise :class:`Stopped` in this process (a forked DataLoader worker gets the
    ``KeyboardInterrupt`` torch's worker loop exits on quietly). Returns the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    pid = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != pid:
            raise KeyboardInterrupt
        raise Stopped(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def stopped_line(stop: Stopped, command: str) -> str:
    """Where `rpnet COMMAND` stopped on a signal and how to resume it."""
    name = "Ctrl-C" if stop.signum == signal.SIGINT else signal.Signals(stop.signum).name
    where = stop.where or f"`rpnet {command}`"
    if stop.how:
        how = stop.how
    elif command in ("pipeline", "ablation"):
        how = ("re-run the same command to resume: complete steps are skipped, training resumes from its "
               "checkpoints/last.ckpt")
    elif command == "fit":
        how = ("the resume point is checkpoints/last.ckpt under the trainer's default_root_dir: pass it as "
               "--ckpt_path (rpnet pipeline does so itself)")
    else:
        how = "re-run the same command: complete outputs are skipped"
    return f"{name} during {where}; {how}"
