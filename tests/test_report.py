"""`rpnet report` on a small fake runs folder."""
from __future__ import annotations

import json
from pathlib import Path

from rpnet_pl.cli import main
from rpnet_pl.report import find_runs, summarise_run, write_report


def _fake_run(root: Path, name: str, method: str, seeds: float, pseudo: float | None) -> None:
    run = root / name
    (run / "classifier").mkdir(parents=True)
    (run / "classifier" / "config.yaml").write_text(f"model:\n  method: {method}\n")
    (run / "eval_cam").mkdir()
    (run / "eval_cam" / "metrics.json").write_text(json.dumps({"best_miou": seeds, "best_threshold": 0.15}))
    if pseudo is not None:
        (run / "eval_sem_seg").mkdir()
        (run / "eval_sem_seg" / "metrics.json").write_text(json.dumps({"miou": pseudo}))
        (run / "eval_seg").mkdir()
        (run / "eval_seg" / "metrics.json").write_text(
            json.dumps({"without_crf": {"miou": 0.651}, "with_crf": {"miou": 0.664}}))


def test_report_tables(tmp_path: Path, capsys) -> None:
    _fake_run(tmp_path, "voc-cam", "cam", 0.483, None)
    _fake_run(tmp_path, "voc-rpnet", "rpnet", 0.508, 0.69)
    (tmp_path / "not-a-run").mkdir()
    assert [p.name for p in find_runs(tmp_path)] == ["voc-cam", "voc-rpnet"]
    s = summarise_run(tmp_path / "voc-rpnet")
    assert (s.method, s.seeds, s.pseudo_masks, s.val, s.val_crf) == ("rpnet", 0.508, 0.69, 0.651, 0.664)
    path, text = write_report(tmp_path)
    assert path == tmp_path / "report.md" and path.read_text() == text
    assert "| voc-cam | cam | 48.3 | - | - | - |" in text
    assert "| voc-rpnet | rpnet | 50.8 | 69.0 | 65.1 | 66.4 |" in text
    assert main(["report", str(tmp_path)]) == 0
    assert "voc-rpnet" in capsys.readouterr().out
