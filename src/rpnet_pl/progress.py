"""Progress lines a person can read in a terminal and in a step's ``log.txt``.

Every line goes through the ``rpnet_pl.progress`` logger; ``rpnet pipeline`` echoes that logger's
lines from a step's output to the terminal (see :mod:`rpnet_pl.pipeline`). No torch here, so
per-image workers stay light.
"""
from __future__ import annotations

import logging
import math
import time

#: Progress lines of long steps; the pipeline echoes this logger's lines to the terminal.
progress_log = logging.getLogger("rpnet_pl.progress")


def format_eta(seconds: float) -> str:
    """7384.2 -> '2:03:04'; unknown (inf/nan) -> '?'."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class CountProgress:
    """``done / total`` with images/s and ETA for per-image steps, logged every ``every`` items
    (default: about 20 lines in all) and at the end."""

    def __init__(self, name: str, total: int, every: int | None = None) -> None:
        self.name, self.total, self.done = name, int(total), 0
        self.every = every or max(1, self.total // 20)
        self._start = time.monotonic()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; log a line each time a multiple of ``every`` or the total is passed."""
        before, self.done = self.done, self.done + n
        if self.done // self.every > before // self.every or self.done >= self.total > before:
            progress_log.info(self.line())

    def line(self) -> str:
        """``cam: 120/1464 images, 3.2 images/s, ETA 0:07:00``."""
        elapsed = time.monotonic() - self._start
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - self.done) / rate if rate > 0 and math.isfinite(rate) else float("nan")
        return f"{self.name}: {self.done}/{self.total} images, {rate:.3g} images/s, ETA {format_eta(eta)}"
