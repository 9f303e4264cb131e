"""IR labels (``RUN/ir_labels/labels/*.png``) against the ground truth (``SegmentationClassAug``): the
share of pixels marked confident foreground / background / ignored, the confident foreground's
precision (right class) and the share of the ground-truth foreground it covers, and how much of the
confident background is ground-truth foreground (docs/results.md).

    python scripts/ir_label_stats.py RUN DATA      # RUN: a run folder; DATA: its dataset root (VOC layout)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE = 255


def ir_label_counts(label: np.ndarray, gt: np.ndarray) -> dict[str, int]:
    """Pixel counts of one IR label against its ground truth (pixels the ground truth ignores left out)."""
    valid = gt != IGNORE
    fg = (label > 0) & (label != IGNORE) & valid
    gt_fg = (gt > 0) & valid
    bg = (label == 0) & valid
    return {"pixels": int(valid.sum()), "fg": int(fg.sum()), "fg_right": int((fg & (label == gt)).sum()),
            "gt_fg": int(gt_fg.sum()), "gt_fg_covered": int((gt_fg & (label == gt)).sum()), "bg": int(bg.sum()),
            "bg_wrong": int((bg & gt_fg).sum()), "ignored": int(((label == IGNORE) & valid).sum())}


def summary(n: dict[str, int]) -> str:
    pct = lambda a, b: 100.0 * a / max(b, 1)  # noqa: E731
    return (f"confident fg {pct(n['fg'], n['pixels']):.0f} % of pixels (precision {pct(n['fg_right'], n['fg']):.1f} %, "
            f"covers {pct(n['gt_fg_covered'], n['gt_fg']):.0f} % of GT fg), confident bg {pct(n['bg'], n['pixels']):.0f} % "
            f"({pct(n['bg_wrong'], n['bg']):.1f} % of it GT fg), ignored {pct(n['ignored'], n['pixels']):.0f} %")


def main(run: Path, data: Path) -> int:
    labels = sorted((run / "ir_labels" / "labels").glob("*.png"))
    gt_dir = data / "VOCdevkit" / "VOC2012" / "SegmentationClassAug"
    if not labels:
        print(f"error: {run / 'ir_labels' / 'labels'}: no IR label PNGs", file=sys.stderr)
        return 2
    total: dict[str, int] = {}
    for path in labels:
        gt_path = gt_dir / path.name
        if not gt_path.is_file():
            print(f"error: {gt_path}: no ground truth for IR label {path}", file=sys.stderr)
            return 2
        label, gt = np.asarray(Image.open(path)).astype(np.int64), np.asarray(Image.open(gt_path)).astype(np.int64)
        if label.shape != gt.shape:
            print(f"error: {path}: size {label.shape} differs from its ground truth {gt_path} {gt.shape}", file=sys.stderr)
            return 2
        for k, v in ir_label_counts(label, gt).items():
            total[k] = total.get(k, 0) + v
    print(f"{run}: {summary(total)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
