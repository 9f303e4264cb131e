"""host_memory: freed host memory kept for reuse (no page faults on the second large tensor), and
handed back on request. Each case runs in a fresh interpreter: the setting is process-wide."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from bench import format_section, get_profile

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting exists for glibc only")

PROBE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from rpnet_pl.utils.host_memory import keep_freed_memory, proc_status_kib, release_freed_memory

    def rss_mib():
        return proc_status_kib("VmRSS") / 1024

    kept = keep_freed_memory() if sys.argv[1] == "keep" else False
    faults = []
    for _ in range(24):  # a 64 MiB tensor, written, freed; 24 times
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.ones(16 * 2**20)
        del t
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    held = rss_mib()
    released = release_freed_memory()
    print(json.dumps({"kept": kept, "faults": faults, "held": held, "after_release": rss_mib(),
                      "released": released}))
""")


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_without_page_faults_and_released_on_request() -> None:
    default, kept = probe("default"), probe("keep")
    pages = 64 * 2**20 // 4096  # 16384 pages of 4 KiB
    # the C library's default: every 64 MiB tensor is a fresh mmap, faulted in page by page
    # (huge pages, where the kernel gives them, fault fewer times but still every time)
    assert not default["kept"] and min(default["faults"]) > 20
    # kept: the first tensors fault their pages in (glibc grows the heap a few times, 4-9 here
    # depending on the address layout, before a freed block fits an aligned request of the same
    # size); then the same pages are reused
    assert kept["kept"] and kept["faults"][0] > 20
    assert all(f < 0.01 * pages for f in kept["faults"][-8:]), kept["faults"]
    # the 64 MiB stay resident until released, then go back to the kernel
    assert kept["held"] - kept["after_release"] > 48 and kept["released"]


def test_bench_section_names_the_allocator() -> None:
    section = format_section([], get_profile("cpu"), "python tools/bench.py", allocator="freed memory kept for reuse")
    assert "- Host allocator: freed memory kept for reuse" in section
    assert "Host allocator" not in format_section([], get_profile("cpu"), "python tools/bench.py")


def test_rpnet_command_keeps_freed_memory_unless_told_not_to(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from rpnet_pl import cli

    calls: list[bool] = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True) or True)
    cli.main([])  # no command: prints the help, after the setting
    assert calls == [True]
    cli.main(["--system-malloc"])
    assert calls == [True]
    assert "--system-malloc" in capsys.readouterr().out
