"""Would splitting RPNet's extra-scale forwards by image across the cores (inter-op, one
thread each) beat one forward of the whole batch on all cores (intra-op)? Times a frozen, folded,
channels-last ResNet-18 over the extra scales of a 512 crop (256 + 768 + 1024 px): 4 images on
2 threads, against 2 processes of 2 images on 1 thread each, running at once (an upper bound for
any in-process split). Best of 3 after a warm-up; needs the machine alone.

    python scripts/extra_scale_split_timing.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from rpnet_pl.models.backbones import build_backbone  # noqa: E402

EXTRA_SIZES = (256, 768, 1024)  # scales 0.5, 1.5, 2 of a 512 crop


def extra_scales_time(images: int, threads: int, reps: int = 3, queue: Any = None) -> float:
    """Best of ``reps`` wall times (s) of the extra-scale forwards of ``images`` images on ``threads``
    threads; also put on ``queue`` when given (for the child processes)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", pretrained=False, output_stride=16, dilated=False).eval()
    backbone.to(memory_format=torch.channels_last)
    backbone.fold_bn = True
    inputs = [torch.randn(images, 3, s, s).contiguous(memory_format=torch.channels_last) for s in EXTRA_SIZES]
    times = []
    with torch.no_grad():
        for x in inputs:  # warm-up
            backbone(x, stem=False)
        for _ in range(reps):
            t0 = time.perf_counter()
            for x in inputs:
                backbone(x, stem=False)
            times.append(time.perf_counter() - t0)
    if queue is not None:
        queue.put(min(times))
    return min(times)


if __name__ == "__main__":
    print(f"4 images, 2 threads: {extra_scales_time(4, 2):.2f} s", flush=True)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=extra_scales_time, args=(2, 1, 3, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    halves = [queue.get() for _ in procs]
    print("2 x (2 images, 1 thread) at once: " + ", ".join(f"{t:.2f} s" for t in halves), flush=True)
    print(f"4 images, 2 threads again: {extra_scales_time(4, 2):.2f} s")
