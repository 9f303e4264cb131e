"""Time a background-threshold sweep of the pseudo masks from the walk's saved scores against
re-running the pseudo-mask step once per threshold (and scoring each run), on a VOC-layout set.

    rpnet data synth --out /tmp/synth41
    OMP_NUM_THREADS=2 python scripts/walk_scores_timing.py --root /tmp/synth41 --work /tmp/walk_scores_timing

The CAMs are made from the ground truth (each class's mask averaged over 4x4 cells, plus uniform noise)
and the refine network is randomly initialised: neither changes what is timed (a boundary pass, the
walk, the files), only the mIoU. Each step run goes through `rpnet pseudo-masks`'s own function
(:func:`rpnet_pl.steps.pseudo_masks.make_pseudo_masks`, Lightning and all) on the CPU. Prints one JSON object:
seconds of the step with and without ``save_scores``, of the sweep over the saved scores, of the
re-runs (each a step run + ``evaluate_masks``), the speed-up, the bytes a scores file takes, and how
far the sweep's mIoU lies from the re-runs' (the re-runs threshold float32 scores, the sweep float16).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from rpnet_pl.pipeline import layout
from rpnet_pl.data.datasets import build_reader
from rpnet_pl.utils.io import read_label_png
from rpnet_pl.ops.params import RANDOM_WALK
from rpnet_pl.steps.cam_inference import write_cam
from rpnet_pl.steps.evaluate import DEFAULT_THRESHOLDS, evaluate_masks
from rpnet_pl.stages.checkpoints import build_stage
from rpnet_pl.steps.pseudo_masks import make_pseudo_masks


def write_gt_cams(root: str, split: str, out: Path, seed: int = 0) -> None:
    """Stride-4 CAMs (K, ceil(H/4), ceil(W/4)) from each image's ground truth, with noise."""
    reader, rng = build_reader("voc", root, split), np.random.default_rng(seed)
    for image_id in reader.ids:
        gt, keys = reader.mask(image_id), np.array(reader.labels(image_id), dtype=np.int64)
        masks = torch.from_numpy(np.stack([(gt == k) for k in keys]).astype(np.float32))  # (K, H, W)
        cam = F.avg_pool2d(masks[None], 4, ceil_mode=True)[0].numpy()  # (K, ceil(H/4), ceil(W/4))
        cam = np.clip(cam + rng.uniform(0, 0.3, cam.shape), 0, None).astype(np.float32)
        cam /= cam.reshape(len(keys), -1).max(1)[:, None, None]
        write_cam(out, image_id, {"keys": keys, "cam": cam, "high_res": np.zeros((len(keys), *gt.shape), np.float16)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="VOC-layout root (rpnet data synth --out ROOT)")
    p.add_argument("--split", default="train")
    p.add_argument("--work", required=True, help="scratch folder (emptied first)")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--pad-to", type=int, default=0, help="the step's --pad-to (IRN: 512; 0: none)")
    p.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS))
    args = p.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    torch.manual_seed(0)
    stage = build_stage("refine", backbone=args.backbone, pretrained=False)
    ckpt = work / "refine.ckpt"
    work.mkdir(parents=True)
    torch.save({"state_dict": stage.state_dict(), "hyper_parameters": dict(stage.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    cams = work / "cams"
    write_gt_cams(args.root, args.split, cams)
    bg = RANDOM_WALK.bg_threshold

    def step(out: Path, threshold: float, save_scores: bool) -> float:
        start = time.perf_counter()
        make_pseudo_masks(ckpt, cams, out, root=args.root, split=args.split, bg_threshold=threshold,
                          pad_to=args.pad_to or None, save_scores=save_scores, devices=1, accelerator="cpu")
        return time.perf_counter() - start

    step(work / "warm-up", bg, False)  # imports, first-call allocations: in neither timing
    saved = work / "saved"
    step_with_scores = step(saved, bg, True)
    start = time.perf_counter()
    sweep = evaluate_masks(saved, args.root, split=args.split, thresholds=args.thresholds)
    sweep_s = time.perf_counter() - start

    reruns: dict[str, dict[str, float]] = {}
    for t in args.thresholds:
        out = work / f"rerun-{t:g}"
        seconds = step(out, t, False)
        start = time.perf_counter()
        m = evaluate_masks(out, args.root, split=args.split)["miou"]
        reruns[f"{t:g}"] = {"step_s": seconds, "eval_s": time.perf_counter() - start, "miou": m}
        if t != bg:
            shutil.rmtree(out)
    rerun_s = sum(r["step_s"] + r["eval_s"] for r in reruns.values())
    scores = list(layout.walk_scores_dir(saved).glob("*.npz"))
    # float16 (sweep) against float32 (re-run) thresholding at the step's default threshold: pixels that differ
    ids = [p.stem for p in scores]
    differ = sum(int((read_label_png(saved / f"{i}.png") != read_label_png(work / f"rerun-{bg:g}" / f"{i}.png")).sum())
                 for i in ids)
    pixels = sum(read_label_png(saved / f"{i}.png").size for i in ids)
    print(json.dumps({
        "images": len(scores), "split": args.split, "backbone": args.backbone, "pad_to": args.pad_to,
        "thresholds": len(args.thresholds), "torch_threads": torch.get_num_threads(),
        "step_s": reruns.get(f"{bg:g}", {}).get("step_s"), "step_with_scores_s": round(step_with_scores, 2),
        "sweep_from_scores_s": round(sweep_s, 2), "reruns_s": round(rerun_s, 2),
        "speed_up": round(rerun_s / sweep_s, 1),
        "scores_bytes_per_image": round(sum(p.stat().st_size for p in scores) / len(scores)),
        "mask_png_bytes_per_image": round(sum((saved / f"{i}.png").stat().st_size for i in ids) / len(ids)),
        "max_abs_miou_gap_sweep_vs_reruns": max(abs(sweep["thresholds"][k]["miou"] - r["miou"])
                                                for k, r in reruns.items()),
        "pixels_f16_vs_f32_differ": f"{differ}/{pixels}",
        "best_threshold": sweep["best_threshold"], "best_miou": sweep["best_miou"],
    }, indent=1))


if __name__ == "__main__":
    main()
