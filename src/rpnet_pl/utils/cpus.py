"""How many CPU cores this process may use, and torch's threads held to that number.

torch sizes its intra-op thread pool from the cores it can see (the affinity mask), not from a
container's CPU quota: under ``docker run --cpus=2`` or a Kubernetes CPU limit of 2 on a 32-core host
it starts 16-32 threads that the kernel then throttles to two cores' worth of time, and every
operation waits on the slowest throttled thread. :func:`usable_cpus` takes the smaller of the
affinity mask and the tightest cgroup quota on the process's cgroup and its ancestors (v2
``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up; :func:`limit_threads`
sets ``OMP_NUM_THREADS`` to it, before torch is imported, unless the user chose a number. The
``rpnet`` command calls it at start.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import MutableMapping

CGROUP = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def quota_cpus(quota: int, period: int) -> int | None:
    """Cores a CFS quota of ``quota`` µs per ``period`` µs allows, rounded up; None when unlimited
    (a quota <= 0, as v1 writes -1) or the period is not positive."""
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _quota_in(folder: Path) -> int | None:
    """The quota one cgroup folder sets, in cores (v2 ``cpu.max``, else v1), None when none."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else quota_cpus(int(quota), int(period))
    except (OSError, ValueError):
        pass
    try:
        return quota_cpus(int((folder / "cpu.cfs_quota_us").read_text()),
                          int((folder / "cpu.cfs_period_us").read_text()))
    except (OSError, ValueError):
        return None


def cgroup_folders(root: Path = CGROUP, membership: Path = PROC_CGROUP) -> list[Path]:
    """This process's cgroup folders that may hold a CPU quota, leaf first, up to the hierarchy's
    root: v2 (``0::/path``) under ``root``, v1 (the ``cpu`` controller's line) under ``root/cpu``."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return [root, root / "cpu"]
    folders: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base = root
        elif "cpu" in controllers.split(","):
            base = root / "cpu"
        else:
            continue
        leaf = base / path.strip("/")
        folders += [leaf, *[p for p in leaf.parents if p.is_relative_to(base)]]
    return folders


def cgroup_cpus(root: Path = CGROUP, membership: Path = PROC_CGROUP) -> int | None:
    """The tightest CPU quota on this process's cgroup and its ancestors, in cores; None when none
    is set or readable."""
    quotas = [q for q in map(_quota_in, cgroup_folders(root, membership)) if q is not None]
    return min(quotas) if quotas else None


def visible_cpus() -> int:
    """Cores in this process's affinity mask (all cores off Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def usable_cpus(root: Path = CGROUP, membership: Path = PROC_CGROUP) -> int:
    """Cores this process may use: the affinity mask, capped by the cgroups' CPU quota."""
    visible = visible_cpus()
    quota = cgroup_cpus(root, membership)
    return max(1, min(visible, quota) if quota else visible)


def limit_threads(root: Path = CGROUP, membership: Path = PROC_CGROUP,
                  environ: MutableMapping[str, str] = os.environ) -> int | None:
    """When the cgroup quota allows fewer cores than the affinity mask shows and the user has not set
    ``OMP_NUM_THREADS``, set it to :func:`usable_cpus`: torch, MKL and OpenMP size their pools from it
    at import, and the pipeline's step processes inherit it. Returns the number set, else None."""
    if "OMP_NUM_THREADS" in environ:
        return None
    usable = usable_cpus(root, membership)
    if usable >= visible_cpus():
        return None
    environ["OMP_NUM_THREADS"] = str(usable)
    return usable


__all__ = ["cgroup_cpus", "cgroup_folders", "limit_threads", "quota_cpus", "usable_cpus", "visible_cpus"]
