"""scripts/calibration_study_table.py on hand-written run folders: each column read from the file it names."""
from __future__ import annotations

import json
from pathlib import Path

from tests.scripts_module import load_script


def _module():  # type: ignore[no-untyped-def]
    return load_script("calibration_study_table")


def _json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _seed(run: Path, cam_sweep: dict[str, float], masks: float, seg: tuple[float, float],
          t_star: float | None = None, b_star: float | None = None) -> None:
    _json(run / "eval_cam" / "metrics.json", {"thresholds": {t: {"miou": m} for t, m in cam_sweep.items()},
                                              "best_miou": max(cam_sweep.values())})
    _json(run / "eval_pseudo_masks" / "metrics.json", {"miou": masks, "best_miou": masks + 0.5})
    _json(run / "eval_seg" / "metrics.json", {"without_crf": {"miou": seg[0]}, "with_crf": {"miou": seg[1]}})
    if t_star is not None:
        _json(run / "ir_labels" / "labels" / "calibration.json", {"best_threshold": t_star})
    if b_star is not None:
        _json(run / "pseudo_masks" / "masks" / "calibration.json", {"best_threshold": b_star})


def test_seed_row_reads_each_number_from_its_file(tmp_path: Path) -> None:
    m = _module()
    sweep = {"0.1": 0.20, "0.15": 0.25, "0.45": 0.30}
    _seed(tmp_path / "r", sweep, 0.12, (0.10, 0.11), t_star=0.45, b_star=0.35)
    assert m.seed_row(tmp_path / "r") == {
        "seeds_fixed": 0.25, "seeds_calibrated": 0.30, "seeds_best": 0.30, "t_star": 0.45, "b_star": 0.35,
        "masks": 0.12, "masks_best": 0.62, "seg": 0.10, "seg_crf": 0.11}
    assert m.at({"thresholds": {"0.1": {"miou": 0.2}}}, 0.1) == 0.2   # a float threshold finds its key
    assert m.at({"thresholds": {}}, 0.1) is None and m.at(None, 0.1) is None


def test_table_has_a_row_per_set_method_and_mode_with_mean_and_std(tmp_path: Path) -> None:
    m = _module()
    sweep = {"0.15": 0.20, "0.3": 0.40}
    for k, (masks, seg) in enumerate([(0.10, 0.20), (0.20, 0.40)]):
        _seed(tmp_path / "default" / "fixed-demo" / f"seed{k}", sweep, masks, (seg, seg))
        _seed(tmp_path / "default" / "calibrated-demo" / f"seed{k}", sweep, masks, (seg, seg), t_star=0.3, b_star=0.1 + k)
    lines = m.table(tmp_path).splitlines()
    assert len(lines) == 4   # header, rule, two rows: the absent runs are left out
    fixed, calibrated = lines[2].split(" | "), lines[3].split(" | ")
    assert fixed[:3] == ["| default", "RPNet", "fixed"] and fixed[4] == "-" and fixed[6:8] == ["-", "-"]
    assert fixed[8] == "15.0 ± 7.1 (n=2)"                           # pseudo masks 10 and 20
    assert calibrated[2] == "b* + IR rule" and calibrated[4] == "40.0 ± 0.0 (n=2)"   # seeds at t* = 0.3
    assert calibrated[6:8] == ["0.3/0.3", "0.1/1.1"]                 # t*, b* per seed


def test_a_folder_without_study_runs_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "calibration_study_table.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == f"{tmp_path}: no run of scripts/calibration_study.sh here (SET/MODE-METHOD/seedK folders)"
