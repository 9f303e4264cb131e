"""Timing of the no-grad work behind RPNet's extra scales on this machine, for docs/benchmarks.md
(docs/benchmarks.md): a frozen ResNet-18's forward at 512 px and at the extra scales of a 512 crop (0.5, 1.5,
2: 256, 768 and 1024 px), 4 images, with the weights contiguous or channels-last and the
BatchNorms folded or not (``Backbone.fold_bn``); then one of the head's 1x1 convolutions
(2 x 512 x 64 x 64 -> 256 channels, the non-local blocks' theta at scale 2) in GFLOP/s.

    python scripts/backbone_timing.py [THREADS] [--profile] [--system-malloc]   # default 1; best of 3 after one warm-up

Then the extra scales with contiguous weights, run in the weights' layout or
channels-last (``Backbone.nhwc_without_grad``), and the stem's max-pool of the scale-2 pass
(4 x 64 x 512 x 512) by PyTorch's kernel and by ``max_pool_3x3_s2``, in both layouts. As the
``rpnet`` command does, freed host memory is kept for reuse (``--system-malloc``: the C library's
default; the third pass's table in docs/benchmarks.md was measured with that default).

Takes about 2 minutes on one core. ``--profile`` then prints ``torch.profiler``'s operator table
for the extra scales (channels-last, folded): which share of them is convolution, and so how much
fusing the elementwise work (ReLU, residual add) into the convolutions could still save.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rpnet_pl.utils.host_memory import keep_freed_memory  # noqa: E402
from rpnet_pl.models.backbones import build_backbone, max_pool_3x3_s2  # noqa: E402

args = [a for a in sys.argv[1:] if a not in ("--profile", "--system-malloc")]
if "--system-malloc" not in sys.argv[1:]:
    keep_freed_memory()
torch.set_num_threads(int(args[0]) if args else 1)
torch.manual_seed(0)


def best_of(fn: Callable[[], object], reps: int = 3) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


backbone = build_backbone("resnet18", pretrained=False, output_stride=16, dilated=False).eval()  # IRN's frozen policy
backbone.nhwc_without_grad = False  # the rows below: each pass in its weights' layout
at_512 = torch.randn(4, 3, 512, 512)
extra = [torch.randn(4, 3, s, s) for s in (256, 768, 1024)]
with torch.no_grad():
    for channels_last in (False, True):
        backbone.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for fold in (False, True):
            backbone.fold_bn = fold
            t512 = best_of(lambda: backbone(at_512, stem=False))
            t_extra = best_of(lambda: [backbone(x, stem=False) for x in extra])
            print(f"{'channels_last' if channels_last else 'contiguous':13s} fold_bn={fold!s:5s}: "
                  f"512 px {t512:.2f} s, extra scales (256 + 768 + 1024 px) {t_extra:.2f} s", flush=True)
    backbone.to(memory_format=torch.contiguous_format)
    backbone.fold_bn = True
    for nhwc in (False, True):
        backbone.nhwc_without_grad = nhwc
        t_extra = best_of(lambda: [backbone(x, stem=False) for x in extra])
        print(f"contiguous weights, folded, nhwc_without_grad={nhwc!s:5s}: extra scales {t_extra:.2f} s", flush=True)
    stem = torch.randn(4, 64, 512, 512)
    for layout in (torch.contiguous_format, torch.channels_last):
        s_in = stem.contiguous(memory_format=layout)
        t_kernel = best_of(lambda: F.max_pool2d(s_in, 3, 2, 1))
        t_ours = best_of(lambda: max_pool_3x3_s2(s_in))
        print(f"stem max-pool 4 x 64 x 512 x 512, {'channels_last' if layout is torch.channels_last else 'contiguous'}: "
              f"PyTorch's kernel {1000 * t_kernel:.0f} ms, max_pool_3x3_s2 {1000 * t_ours:.0f} ms", flush=True)
    x = torch.randn(2, 512, 64, 64)
    w, b = torch.randn(256, 512, 1, 1), torch.randn(256)
    t = best_of(lambda: F.conv2d(x, w, b))
    flops = 2 * 2 * 64 * 64 * 512 * 256
    print(f"1x1 conv 2 x 512 x 64 x 64 -> 256: {1000 * t:.1f} ms, {flops / t / 1e9:.0f} GFLOP/s")
    if "--profile" in sys.argv[1:]:
        from torch.profiler import ProfilerActivity, profile

        backbone.to(memory_format=torch.channels_last)
        backbone.fold_bn = True
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for x in extra:
                backbone(x, stem=False)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
        print(f"extra scales, channels-last, folded: convolutions {conv / 1e3:.0f} ms of {total / 1e3:.0f} ms "
              f"({100 * conv / total:.0f} %)")
