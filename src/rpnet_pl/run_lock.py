"""One writer per run folder: ``rpnet pipeline`` / ``rpnet ablation`` hold ``<run>/.lock`` while they
run steps into it.

The lock is an advisory ``flock`` on that file, which the kernel releases when its process ends,
however it ends; the file holds the holder (host, pid, start time) for the error a second writer
gets. A holder record left in the file by a process that died (``kill -9``) is reported and taken
over. The tasks of one SLURM job are one writer: only task 0 takes the lock.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

from rpnet_pl.errors import ConfigError

log = logging.getLogger(__name__)

LOCK = ".lock"


class RunLocked(ConfigError):
    """Another process is writing into the run folder."""


def _holder_text(record: dict) -> str:
    return (f"{record.get('command', 'rpnet')} (pid {record.get('pid', '?')} on {record.get('host', '?')}, "
            f"since {record.get('since', '?')})")


def _read(handle) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except ValueError:
        return {}


@contextlib.contextmanager
def run_lock(run: Path, command: str = "rpnet pipeline") -> Iterator[None]:
    """Hold ``run``'s lock for the block; a second holder is a :class:`RunLocked` error naming the first."""
    if os.environ.get("SLURM_PROCID", "0") != "0":  # the job's task 0 holds it for all of them
        yield
        return
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(handle)
            raise RunLocked(f"{run}: in use by {_holder_text(holder)}; wait for it to end or stop it, or write "
                            "elsewhere (--runs / --name)") from None
        left = _read(handle)
        if left:
            log.warning("%s: took over the lock left by %s, which is no longer running", run, _holder_text(left))
        record = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                  "since": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
