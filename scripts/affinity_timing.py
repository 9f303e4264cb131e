"""Forward + backward of ``affinity_from_boundary`` (IRN's affinities at its training radius) for
the source tree given, so that an older checkout is measured the same way:

    python scripts/affinity_timing.py [SRC_DIR] [--size 64] [--batch 2] [--radius 10] [--runs 5]

Prints the min and median seconds of ``affinity_from_boundary(b, radius).sum().backward()`` on a
random (batch, size, size) map, after one warm-up call.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("src", nargs="?", default=str(Path(__file__).resolve().parents[1] / "src"))
p.add_argument("--size", type=int, default=64)
p.add_argument("--batch", type=int, default=2)
p.add_argument("--radius", type=int, default=10)
p.add_argument("--runs", type=int, default=5)
args = p.parse_args()
if not (Path(args.src) / "rpnet_pl").is_dir():
    p.error(f"{args.src}: no rpnet_pl package here (give a checkout's src/ folder)")
sys.path.insert(0, args.src)

import torch  # noqa: E402

from rpnet_pl.ops.affinity import affinity_from_boundary  # noqa: E402

boundary = torch.rand(args.batch, args.size, args.size, generator=torch.Generator().manual_seed(0),
                      requires_grad=True)
times = []
for i in range(args.runs + 1):
    start = time.perf_counter()
    affinity_from_boundary(boundary, args.radius).sum().backward()
    if i:  # the first call is the warm-up
        times.append(time.perf_counter() - start)
print(f"{args.src}: {args.batch}x{args.size}x{args.size}, radius {args.radius}: "
      f"min {min(times):.3f} s, median {statistics.median(times):.3f} s ({args.runs} runs, "
      f"{torch.get_num_threads()} threads)")
