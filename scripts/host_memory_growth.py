"""Resident memory and time of a CAM-inference loop over images of varying size, with freed host
memory kept for reuse (``rpnet_pl.utils.host_memory``, what the ``rpnet`` command does) or with the C
library's default: how much memory the faster allocator setting costs where sizes vary.

    python scripts/host_memory_growth.py [IMAGES] [--system-malloc]   # default 200 images

RPNet on a ResNet-18 (random weights, 2 threads), one image and its flip at scales 1, 0.5, 1.5
and 2, sides drawn from 250-500 px (seed 0). Prints the resident memory (VmRSS) and its peak
(VmHWM) every 25 images and the seconds so far.
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rpnet_pl.utils.host_memory import keep_freed_memory, proc_status_kib  # noqa: E402
from rpnet_pl.models import RPNet  # noqa: E402

args = [a for a in sys.argv[1:] if a != "--system-malloc"]
kept = False if "--system-malloc" in sys.argv[1:] else keep_freed_memory()
images = int(args[0]) if args else 200
torch.set_num_threads(2)
torch.manual_seed(0)
rng = random.Random(0)
model = RPNet(backbone="resnet18", pretrained=False, group_size=2).eval()


print(f"{'freed memory kept' if kept else 'system malloc'}, {images} images", flush=True)
t0 = time.perf_counter()
with torch.no_grad():
    for i in range(images):
        image = torch.randn(1, 3, rng.randint(250, 500), rng.randint(250, 500))
        pair = torch.cat([image, image.flip(-1)])
        for s in (1.0, 0.5, 1.5, 2.0):
            model.cam(pair if s == 1.0 else F.interpolate(pair, scale_factor=s, mode="bilinear"))
        if (i + 1) % 25 == 0 or i + 1 == images:
            print(f"{i + 1:4d} images: RSS {(proc_status_kib('VmRSS') or 0) // 1024} MiB, "
                  f"peak {(proc_status_kib('VmHWM') or 0) // 1024} MiB, "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
