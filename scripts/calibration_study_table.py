"""Table of the thresholds study (scripts/calibration_study.sh): per set and method, fixed against
calibrated thresholds (the walk's background b*, as `thresholds: calibrated` does; and b* with the IR
labels' rule), each number mean ± std over seeds on the scored split (segmentation: val).

Columns:
- seeds @0.15 / @t* / best: the CAM seeds' mIoU at VOC's threshold, at the threshold chosen on the
  calibration list (t*, ``ir_labels/labels/calibration.json``), and at the scored split's own best
  (the bound a calibration can reach);
- t*, b*: the thresholds chosen on the calibration list (seeds, hence the IR labels' fg = 2 t* and
  bg = t* / 3; walk background), one per seed;
- pseudo masks: mIoU of the masks the run wrote (fixed: bg 0.25; calibrated: b*), and the scored
  split's own best over the walk's saved scores;
- segmentation: the segmenter's val mIoU without / with CRF.

    python scripts/calibration_study_table.py OUT      # OUT as given to calibration_study.sh
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rpnet_pl.pipeline.seeds import format_pct, mean_std, seed_folders

METHODS = {"demo-cam": "CAM baseline", "demo": "RPNet"}
SETS = {"default": "default", "voclike": "VOC-like"}
MODES = {"fixed": "fixed", "walk": "b* (`calibrated`)", "calibrated": "b* + IR rule"}
FIXED_SEED_THRESHOLD = "0.15"


def load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def at(sweep: dict[str, Any] | None, threshold: float | str | None) -> float | None:
    """The mIoU of a metrics.json sweep at ``threshold`` (None when either is missing)."""
    if not sweep or threshold is None:
        return None
    row = sweep.get("thresholds", {}).get(str(float(threshold)))
    return None if row is None else row["miou"]


def seed_row(run: Path) -> dict[str, float | None]:
    """One seed folder's numbers (None where the run has not written them)."""
    cam, masks, seg = (load(run / s / "metrics.json") for s in ("eval_cam", "eval_pseudo_masks", "eval_seg"))
    ir_cal = load(run / "ir_labels" / "labels" / "calibration.json")
    walk_cal = load(run / "pseudo_masks" / "masks" / "calibration.json")
    t_star = ir_cal["best_threshold"] if ir_cal else None
    return {
        "seeds_fixed": at(cam, FIXED_SEED_THRESHOLD),
        "seeds_calibrated": at(cam, t_star),
        "seeds_best": cam.get("best_miou") if cam else None,
        "t_star": t_star,
        "b_star": walk_cal["best_threshold"] if walk_cal else None,
        "masks": masks.get("miou") if masks else None,
        "masks_best": masks.get("best_miou") if masks else None,
        "seg": seg["without_crf"]["miou"] if seg else None,
        "seg_crf": seg["with_crf"]["miou"] if seg else None,
    }


def cell(rows: list[dict], key: str, percent: bool = True) -> str:
    values = [r[key] for r in rows if r[key] is not None]
    if not values:
        return "-"
    if percent:
        return format_pct(mean_std(values))
    return "/".join(f"{v:g}" for v in values)


def table(out: Path) -> str:
    lines = ["| set | method | thresholds | seeds @0.15 | seeds @t* | seeds best | t* | b* | pseudo masks "
             "| masks best | segmentation | + CRF |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for set_name, set_label in SETS.items():
        for method, method_label in METHODS.items():
            for mode, mode_label in MODES.items():
                folder = out / set_name / f"{mode}-{method}"
                rows = [seed_row(f) for f in seed_folders(folder)]
                if not rows:
                    continue
                lines.append(" | ".join([
                    f"| {set_label}", method_label, mode_label, cell(rows, "seeds_fixed"),
                    cell(rows, "seeds_calibrated"), cell(rows, "seeds_best"), cell(rows, "t_star", False),
                    cell(rows, "b_star", False), cell(rows, "masks"), cell(rows, "masks_best"),
                    cell(rows, "seg"), cell(rows, "seg_crf")]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: calibration_study_table.py OUT")
    text = table(Path(sys.argv[1]))
    if len(text.splitlines()) == 2:
        sys.exit(f"{sys.argv[1]}: no run of scripts/calibration_study.sh here (SET/MODE-METHOD/seedK folders)")
    print(text)
