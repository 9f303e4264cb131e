"""utils.cpus: the cores a process may use (affinity capped by the cgroup quota) and OMP_NUM_THREADS set to them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from rpnet_pl.utils.cpus import cgroup_cpus, cgroup_folders, limit_threads, quota_cpus, usable_cpus


@pytest.mark.parametrize("quota, period, cores", [
    (200_000, 100_000, 2), (150_000, 100_000, 2), (50_000, 100_000, 1), (100_000, 100_000, 1),
    (-1, 100_000, None), (0, 100_000, None), (100_000, 0, None)])
def test_quota_cpus_rounds_up_and_reads_unlimited_as_none(quota: int, period: int, cores: int | None) -> None:
    assert quota_cpus(quota, period) == cores


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _member(tmp_path: Path, *lines: str) -> Path:
    """A /proc/self/cgroup with these lines."""
    return _write(tmp_path / "proc-cgroup", "\n".join(lines) + "\n")


def test_cgroup_folders_are_the_leaf_and_its_ancestors_of_each_hierarchy(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    member = _member(tmp_path, "12:memory:/m", "4:cpu,cpuacct:/docker/abc", "0::/user.slice/app")
    assert cgroup_folders(root, member) == [root / "cpu/docker/abc", root / "cpu/docker", root / "cpu",
                                            root / "user.slice/app", root / "user.slice", root]


def test_cgroup_cpus_takes_the_tightest_quota_v2_and_v1(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    member = _member(tmp_path, "0::/a/b")
    assert cgroup_cpus(root, member) is None                                # nothing written: no quota
    _write(root / "a/b/cpu.max", "max 100000\n")
    assert cgroup_cpus(root, member) is None                                # v2 unlimited
    _write(root / "a/cpu.max", "250000 100000\n")
    assert cgroup_cpus(root, member) == 3                                   # the parent's 2.5 cores
    _write(root / "a/b/cpu.max", "100000 100000\n")
    assert cgroup_cpus(root, member) == 1                                   # the leaf's is tighter
    v1 = tmp_path / "v1"
    member = _member(tmp_path, "3:cpu,cpuacct:/docker/x")
    _write(v1 / "cpu/docker/x/cpu.cfs_quota_us", "400000\n")
    _write(v1 / "cpu/docker/x/cpu.cfs_period_us", "100000\n")
    _write(v1 / "cpu/cpu.cfs_quota_us", "-1\n")
    _write(v1 / "cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpus(v1, member) == 4


def test_usable_cpus_is_the_affinity_capped_by_the_quota(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})   # a 4-core mask
    member = _member(tmp_path, "0::/")
    assert usable_cpus(tmp_path / "cg", member) == 4                          # no quota
    _write(tmp_path / "cg/cpu.max", "150000 100000")
    assert usable_cpus(tmp_path / "cg", member) == 2                          # 1.5 cores
    _write(tmp_path / "cg/cpu.max", "800000 100000")
    assert usable_cpus(tmp_path / "cg", member) == 4                          # a quota above the mask


def test_limit_threads_sets_omp_num_threads_when_the_quota_binds(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    member = _member(tmp_path, "0::/")
    _write(tmp_path / "cg/cpu.max", "150000 100000")
    environ: dict[str, str] = {}
    assert limit_threads(tmp_path / "cg", member, environ) == 2
    assert environ == {"OMP_NUM_THREADS": "2"}
    environ = {"OMP_NUM_THREADS": "3"}                                      # the user's choice stays
    assert limit_threads(tmp_path / "cg", member, environ) is None
    assert environ == {"OMP_NUM_THREADS": "3"}
    _write(tmp_path / "cg/cpu.max", "400000 100000")                        # the quota allows the mask
    environ = {}
    assert limit_threads(tmp_path / "cg", member, environ) is None and environ == {}
