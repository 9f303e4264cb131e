"""scripts/step_seconds.py: per-step seconds from the .done markers, and each step's share."""
from __future__ import annotations

from pathlib import Path

import yaml

from tests.scripts_module import load_script


def _script():  # type: ignore[no-untyped-def]
    return load_script("step_seconds")


def test_the_table_of_two_runs(tmp_path: Path, capsys) -> None:
    script = _script()
    for run, seconds in (("demo-cam", {"classifier": 30.0, "cam": 10.0}), ("demo", {"classifier": 50.0})):
        for step, s in seconds.items():
            (tmp_path / run / step).mkdir(parents=True)
            (tmp_path / run / step / ".done").write_text(yaml.safe_dump({"argv": [], "seconds": s}))
    (tmp_path / "demo" / "cam").mkdir()  # not complete: no marker
    assert script.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "| step | demo (s) | demo-cam (s) | share |", "|---|---:|---:|---:|",
        "| classifier | 50.0 | 30.0 | 89% |", "| cam | - | 10.0 | 11% |", "| all steps | 50.0 | 40.0 | 100% |"]
    assert script.main([str(tmp_path / "nothing")]) == 2
