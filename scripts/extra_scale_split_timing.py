"""Issue 14: would splitting RPNet's extra-scale forwards by image across the cores (inter-op, one
thread each) beat one forward of the whole batch on all cores (intra-op)? Times a frozen, folded,
channels-last ResNet-18 over the extra scales of a 512 crop (256 + 768 + 1024 px): 4 images on
2 threads, against 2 processes of 2 images on 1 thread each, running at once (an upper bound for
any in-process split). Best of 3 after a warm-up; needs the machine alone.

    python scripts/extra_scale_split_timing.py
"""
from __future__ import annotations

import sys, time, torch, torch.multiprocessing as mp
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src"))
from rpnet_pl.models.backbones import build_backbone
def make():
    torch.manual_seed(0)
    bb = build_backbone("resnet18", pretrained=False, output_stride=16, dilated=False).eval()
    bb.to(memory_format=torch.channels_last); bb.fold_bn = True
    return bb
def run(n, threads, reps=3, q=None):
    torch.set_num_threads(threads)
    bb = make()
    xs = [torch.randn(n, 3, s, s).contiguous(memory_format=torch.channels_last) for s in (256, 768, 1024)]
    ts = []
    with torch.no_grad():
        [bb(x, stem=False) for x in xs]
        for _ in range(reps):
            t = time.perf_counter(); [bb(x, stem=False) for x in xs]; ts.append(time.perf_counter() - t)
    if q: q.put(min(ts))
    return min(ts)
if __name__ == "__main__":
    print("4 images, 2 threads:", round(run(4, 2), 2))
    ctx = mp.get_context("spawn"); q = ctx.Queue()
    ps = [ctx.Process(target=run, args=(2, 1, 3, q)) for _ in range(2)]
    [p.start() for p in ps]; [p.join() for p in ps]
    print("2 x (2 images, 1 thread) concurrently:", [round(q.get(), 2) for _ in range(2)])
    print("4 images, 2 threads again:", round(run(4, 2), 2))
