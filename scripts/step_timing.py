"""Plain side-by-side timing and op-level profile of one classifier training step, RPNet vs the CAM
baseline, for the source tree given (so an old checkout can be measured the same way).

    python scripts/step_timing.py [SRC_DIR] [THREADS] [LAYOUT] [--system-malloc]   # SRC_DIR default: this checkout's src/

ResNet-18, crop 512, 2 groups of 2 (the CPU bench's classifier case). LAYOUT: ``contiguous``,
``channels_last`` (the weights in NHWC, what ``model.channels_last`` and ``tools/bench.py
--channels-last`` do) or ``both`` (default). Per layout, the two steps are timed in turn, three
times; the best of the last two is kept. Then one profiled RPNet step (the last layout) prints its
phases, the operators with the most own CPU time, and the share of the convolutions.

As the ``rpnet`` command does, freed host memory is kept for reuse (``rpnet_pl.utils.host_memory``) when the
source tree has that module; ``--system-malloc`` keeps the C library's default, as ``rpnet
--system-malloc`` does.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

argv = [a for a in sys.argv[1:] if a != "--system-malloc"]
system_malloc = "--system-malloc" in sys.argv[1:]
src = argv[0] if len(argv) > 0 else str(Path(__file__).resolve().parents[1] / "src")
threads = int(argv[1]) if len(argv) > 1 else 1
layout = argv[2] if len(argv) > 2 else "both"
sys.path.insert(0, src)

kept = False
if not system_malloc:
    try:
        from rpnet_pl.utils.host_memory import keep_freed_memory
    except ImportError:  # an older checkout: the C library's default
        keep_freed_memory = None
    kept = bool(keep_freed_memory and keep_freed_memory())

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from rpnet_pl.models import CAMNet, RPNet  # noqa: E402

torch.set_num_threads(threads)
torch.manual_seed(0)
crop, groups, k = 512, 2, 2
images = torch.randn(groups, k, 3, crop, crop)
labels = torch.zeros(groups, k, 20)
labels[:, :, 3] = 1.0
layouts = {"both": [False, True], "contiguous": [False], "channels_last": [True]}[layout]


def build(channels_last: bool) -> tuple[dict, dict]:
    models = {"rpnet": RPNet(backbone="resnet18", pretrained=False, group_size=k).train(),
              "cam": CAMNet(backbone="resnet18", pretrained=False).train()}
    if channels_last:
        for mod in models.values():
            mod.to(memory_format=torch.channels_last)
    return models, {m: torch.optim.SGD([p for p in mod.parameters() if p.requires_grad], lr=1e-6)
                    for m, mod in models.items()}


def step(method: str) -> None:
    opts[method].zero_grad(set_to_none=True)
    with record_function("step/forward"):
        loss = models[method].training_losses(images, labels)["loss"]
    with record_function("step/backward"):
        loss.backward()
    with record_function("step/optimizer"):
        opts[method].step()


for channels_last in layouts:
    models, opts = build(channels_last)
    times: dict[str, list[float]] = {"rpnet": [], "cam": []}
    for _ in range(3):
        for method in ("rpnet", "cam"):
            t0 = time.perf_counter()
            step(method)
            times[method].append(time.perf_counter() - t0)
    best = {m: min(v[1:]) for m, v in times.items()}
    print(f"{src}, {threads} thread(s), {'channels_last' if channels_last else 'contiguous'}, "
          f"{'freed memory kept' if kept else 'system malloc'}: "
          f"RPNet {best['rpnet']:.2f} s, baseline {best['cam']:.2f} s, ratio {best['rpnet'] / best['cam']:.2f}x",
          flush=True)

with profile(activities=[ProfilerActivity.CPU]) as prof:
    step("rpnet")
events = prof.key_averages()
print("RPNet step phases (ms):", {e.key: round(e.cpu_time_total / 1000) for e in events if e.key.startswith("step/")})
for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]:
    print(f"  {e.key:40s} own {e.self_cpu_time_total / 1000:8.0f} ms  calls {e.count}")
total = sum(e.self_cpu_time_total for e in events)
conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key)
print(f"convolutions (forward and backward): {conv / 1000:.0f} ms of {total / 1000:.0f} ms own CPU time "
      f"({100 * conv / total:.0f} %)")
