"""What rate this CPU's convolutions reach, for docs/benchmarks.md: every oneDNN
primitive of RPNet's extra-scale backbone pass (frozen ResNet-18, BatchNorm folded, channels-last,
4 images at 256 + 768 + 1024 px, freed memory kept as by ``rpnet``), grouped by implementation and
shape, with GFLOP/s from oneDNN's own execution times (``ONEDNN_VERBOSE``); then a 4096^3 matrix
product (MKL's GEMM, the path PyTorch takes for small single-threaded 1x1 convolutions).

    python scripts/conv_rates.py [THREADS]   # default 1; about 30 s
"""
from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1

if os.environ.get("CONV_RATES_CHILD") != "1":  # run the pass in a child with oneDNN's log on
    env = {**os.environ, "CONV_RATES_CHILD": "1", "ONEDNN_VERBOSE": "1"}
    log = subprocess.run([sys.executable, __file__, str(threads)], env=env, capture_output=True, text=True,
                         check=True).stdout
    timed = log.split("=====timed")[1].splitlines()
    groups: dict[tuple[str, str, str], list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for line in timed:
        fields = line.split(",")
        if len(fields) < 8 or fields[3] != "exec":
            continue
        kind, impl, desc, ms = fields[5], fields[6], fields[-2], float(fields[-1])
        flops, shape = 0.0, ""
        if kind == "convolution":
            d = dict(re.findall(r"([a-z]+)(\d+)", desc))
            flops = 2.0 * int(d["mb"]) * int(d["ic"]) * int(d["oc"]) / int(d.get("g", 1)) * int(d["kh"]) * int(d["kw"]) \
                * int(d["oh"]) * int(d["ow"])
            shape = f"{d['ic']} -> {d['oc']}, {d['kh']}x{d['kw']} /{d['sh']}, out {d['oh']}x{d['ow']}"
        g = groups[(kind, impl.split(":")[0], shape)]
        g[0] += 1
        g[1] += ms
        g[2] += flops
    total = sum(g[1] for g in groups.values())
    print(f"extra-scale backbone pass, {threads} thread(s): oneDNN time {total:.0f} ms")
    print("| primitive | implementation | shape | calls | ms | GFLOP/s |")
    print("|---|---|---|---:|---:|---:|")
    for (kind, impl, shape), (n, ms, flops) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:20]:
        rate = f"{flops / ms / 1e6:.0f}" if flops else ""
        print(f"| {kind} | {impl} | {shape} | {n} | {ms:.1f} | {rate} |")
    print(log.split("=====timed")[1].split("=====gemm")[1].strip())
    sys.exit(0)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import torch  # noqa: E402

from rpnet_pl.utils.host_memory import keep_freed_memory  # noqa: E402
from rpnet_pl.models.backbones import build_backbone  # noqa: E402

keep_freed_memory()  # as the rpnet command does: no page faults inside the timed primitives
torch.set_num_threads(threads)
torch.manual_seed(0)
backbone = build_backbone("resnet18", pretrained=False, output_stride=16, dilated=False).eval()
backbone.to(memory_format=torch.channels_last)
extra = [torch.randn(4, 3, s, s) for s in (256, 768, 1024)]
with torch.no_grad():
    for x in extra:  # warm-up: weight reorders and first touches
        backbone(x, stem=False)
    print("=====timed", flush=True)
    for x in extra:
        backbone(x, stem=False)
print("=====gemm", flush=True)
a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
torch.mm(a, b)
t0 = time.perf_counter()
for _ in range(3):
    torch.mm(a, b)
print(f"4096^3 matrix product (MKL GEMM): {2 * 4096 ** 3 * 3 / (time.perf_counter() - t0) / 1e9:.0f} GFLOP/s")
