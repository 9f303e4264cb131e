"""Progress lines a person can read in a terminal and in a step's ``log.txt``.

Every line goes through the ``rpnet_pl.progress`` logger; ``rpnet pipeline`` echoes that logger's
lines from a step's output to the terminal (see :mod:`rpnet_pl.pipeline.runner`). No torch here, so
per-image workers stay light.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

#: Progress lines of long steps; the pipeline echoes this logger's lines to the terminal.
progress_log = logging.getLogger("rpnet_pl.progress")  # the name `rpnet pipeline` looks for in a step's output


def format_eta(seconds: float) -> str:
    """7384.2 -> '2:03:04'; unknown (inf/nan) -> '?'."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


#: A reporter stays silent for this many seconds: a step that ends sooner prints no progress line.
QUIET_SECONDS = 5.0


class CountProgress:
    """``done / total`` with images/s and ETA for per-image steps, logged every ``every`` items
    (default: about 20 lines in all) once ``quiet_s`` seconds have passed, and a final line at the
    end when it logged any line before or the whole run took ``quiet_s`` or more. A step that is done
    within ``quiet_s`` logs nothing. ``clock`` (seconds) is :func:`time.monotonic` unless a test
    gives another."""

    def __init__(self, name: str, total: int, every: int | None = None, quiet_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.total, self.done = name, int(total), 0
        self.every = every or max(1, self.total // 20)
        self.quiet_s = QUIET_SECONDS if quiet_s is None else float(quiet_s)
        self.lines = 0  # how many lines were logged
        self._clock = clock
        self._start = clock()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; log a line each time a multiple of ``every`` is passed after the quiet
        time, and one when the total is reached (if any line came before or the run was not quick)."""
        before, self.done = self.done, self.done + n
        loud = self.lines > 0 or self._clock() - self._start >= self.quiet_s
        if not loud:
            return
        if self.done // self.every > before // self.every or self.done >= self.total > before:
            self.lines += 1
            progress_log.info(self.line())

    def line(self) -> str:
        """``cam: 120/1464 images, 3.2 images/s, ETA 0:07:00``."""
        elapsed = self._clock() - self._start
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - self.done) / rate if rate > 0 and math.isfinite(rate) else float("nan")
        return f"{self.name}: {self.done}/{self.total} images, {rate:.3g} images/s, ETA {format_eta(eta)}"
