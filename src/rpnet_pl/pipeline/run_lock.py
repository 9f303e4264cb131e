"""One writer per run folder: ``rpnet pipeline`` / ``rpnet ablation`` hold ``<run>/.rpnet-lock`` while they
run steps into it.

The lock is an advisory ``flock`` on that file, which the kernel releases when its process ends,
however it ends; the file holds the holder (host, pid, start time) for the error a second writer
gets. A holder record left in the file by a process that died (``kill -9``) is reported and taken
over. The tasks of one SLURM job and the ranks of one DDP run are one writer: only task / rank 0
takes the lock. A per-image command whose ``--out`` lies in a run folder (one that has a ``.rpnet-lock``)
takes that run's lock too (:func:`output_lock`), unless the pipeline that holds it started the command
(it says so in ``RPNET_RUN_LOCK``).
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

from rpnet_pl.utils.errors import ConfigError

log = logging.getLogger(__name__)

LOCK = ".rpnet-lock"
#: the environment variable by which a lock holder tells its step processes which run it holds
HELD = "RPNET_RUN_LOCK"


class RunLocked(ConfigError):
    """Another process is writing into the run folder."""


def _holder_text(record: dict) -> str:
    return (f"{record.get('command', 'rpnet')} (pid {record.get('pid', '?')} on {record.get('host', '?')}, "
            f"since {record.get('since', '?')})")


def _read(handle) -> dict:
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


@contextlib.contextmanager
def run_lock(run: Path, command: str = "rpnet pipeline") -> Iterator[None]:
    """Hold ``run``'s lock for the block; a second holder is a :class:`RunLocked` error naming the first."""
    if any(os.environ.get(rank, "0") != "0" for rank in ("SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")):
        yield  # the job's task 0 / the run's rank 0 holds it for all of them
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


def run_of(out: str | Path) -> Path | None:
    """The run folder that ``out`` lies in: the nearest of it and its three parents that has a lock file
    (a step's output is ``<run>/<step>/<output>``); None outside a run."""
    path = Path(out).resolve()
    for folder in [path, *path.parents][:4]:
        if (folder / LOCK).is_file():
            return folder
    return None


@contextlib.contextmanager
def output_lock(out: str | Path, command: str) -> Iterator[None]:
    """:func:`run_lock` of the run that ``out`` lies in, for a command run by hand; nothing outside a
    run, or when the pipeline holding the lock started the command."""
    run = run_of(out)
    if run is None or os.environ.get(HELD) == str(run):
        yield
        return
    with run_lock(run, command):
        yield
