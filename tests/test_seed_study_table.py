"""scripts/seed_study_table.py: the loss-spike census of a classifier's CSV log, on hand-written logs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("seed_study_table", ROOT / "scripts" / "seed_study_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(path: Path, values: list[str]) -> Path:
    rows = ["epoch,step,train/loss_cls,train/loss_ss"] + [f"0,{i},{v},0.01" for i, v in enumerate(values)]
    path.write_text("\n".join(rows + ["0,99,,"]) + "\n")  # a row without Lc (e.g. a seed-monitor row) is skipped
    return path


def test_loss_spike_hand_computed(tmp_path: Path) -> None:
    loss_spike = _table_module().loss_spike
    assert loss_spike(_log(tmp_path / "a.csv", ["1.39", "0.8", "0.4"])) == (None, False)  # never above 2
    assert loss_spike(_log(tmp_path / "b.csv", ["1.39", "46.8", "3.0", "0.5"])) == (46.8, False)
    assert loss_spike(_log(tmp_path / "c.csv", ["1.39", "788", "nan", "nan"])) == (788.0, True)  # worst finite, NaN
    assert loss_spike(_log(tmp_path / "d.csv", ["1.0", "inf"])) == (None, True)  # only a non-finite value
    assert loss_spike(_log(tmp_path / "e.csv", ["1.5", "2.5"]), limit=3.0) == (None, False)
    assert loss_spike(tmp_path / "missing.csv") == (None, False)
