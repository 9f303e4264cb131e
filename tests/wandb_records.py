"""Read back what W&B wrote offline: the records of a ``run-*.wandb`` file (wandb 0.31 writes no
``wandb-summary.json`` offline), for the tests of rpnet_pl.pipeline.tracking.

The file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version), then 32 KiB
blocks of chunks, each ``crc32 (4) | length (2, little-endian) | type (1: full, 2: first, 3: middle,
4: last) | payload``; a record is one full chunk or first..last, and is a ``wandb_internal_pb2.Record``.

W&B's service (``wandb-core``, a child process) writes a run's records to that file in 32 KiB blocks
and flushes the last one when it closes the run's stream, which happens *after* ``run.finish()`` has
returned (the SDK only informs the service that the run is done). Until then the file of a small run
holds its 7-byte header and nothing else; on a loaded machine that lasts long enough for a reader in
the same process to see a run with no run record (empty job type and group). So :func:`read_run`
waits, within a bound, for the run's exit record. When the process exits, W&B's teardown waits for
every stream, so a run read from another process is complete.
"""
from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7
CHUNK_HEADER = 7


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B record file"
    out, pending, pos = [], b"", HEADER
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        payload = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


@dataclass
class OfflineRun:
    """What one offline run holds: its run record, config, history rows, summary and media files."""

    folder: Path
    group: str = ""
    job_type: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    #: the exit record's code (1: closed as failed)
    exit_code: int | None = None

    @property
    def media(self) -> list[Path]:
        return sorted((self.folder / "files" / "media").rglob("*.*")) if (self.folder / "files").is_dir() else []


def _item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def finished_records(path: Path, timeout: float = 60.0) -> list[Any]:
    """The records of a finished run's file, once W&B's service has flushed them: re-read until they
    hold the exit record (at most ``timeout`` seconds; then an error naming the file)."""
    deadline = time.monotonic() + timeout
    while True:
        out = records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in out):
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: no exit record after {timeout:.0f} s ({len(out)} records): the run was "
                                 "never finished, or W&B's service never flushed it")
        time.sleep(0.05)


def read_run(folder: Path, timeout: float = 60.0) -> OfflineRun:
    """One finished offline run (:func:`finished_records`)."""
    run = OfflineRun(folder)
    (record_file,) = folder.glob("run-*.wandb")
    for r in finished_records(record_file, timeout):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.group, run.job_type, run.name = r.run.run_group, r.run.job_type, r.run.display_name
            run.config.update({_item_key(i): json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            run.config.update({_item_key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            run.history.append({_item_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            run.summary.update({_item_key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "exit":
            run.exit_code = r.exit.exit_code
    return run


def offline_runs(root: Path) -> list[OfflineRun]:
    """Every offline run under ``root``, each once W&B has flushed it (:func:`read_run`)."""
    return [read_run(p) for p in sorted(root.rglob("offline-run-*")) if p.is_dir()]
