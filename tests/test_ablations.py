"""Ablation sweeps: each paper table's variants, run names and table layout."""
from __future__ import annotations

from pathlib import Path

import pytest

from rpnet_pl.results.ablations import get_sweep, run_name, sweeps, table
from rpnet_pl.cli import main
from rpnet_pl.pipeline.config import load_experiment
from rpnet_pl.utils.errors import ConfigError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_every_table_has_its_sweep() -> None:
    s = sweeps()
    assert {v.table for v in s.values()} == {"II", "III", "IV", "V", "VI", "VII"}
    assert [v.label for v in s["beta"].variants] == ["0.1", "0.3", "0.5", "0.7", "0.9"]
    assert len(s["blocks"].variants) == 7
    assert len(s["backbone"].variants) == 14 and len(s["data-volume"].variants) == 10
    assert s["group-size"].variants[0].overrides == ("classifier.model.method=cam",)


def test_variant_overrides_apply() -> None:
    v = get_sweep("blocks", backbone="resnet50").variants[4]
    cfg = load_experiment(EXPERIMENTS / "base.yaml", v.overrides)
    assert v.label == "block2 + block4"
    assert cfg["classifier"]["model"]["levels"] == [2, 4] and cfg["classifier"]["model"]["backbone"] == "resnet50"
    dv = get_sweep("data-volume").variants[6]
    cfg = load_experiment(EXPERIMENTS / "base.yaml", dv.overrides)
    assert (dv.label, dv.column) == ("1/8", "Baseline")
    assert cfg["classifier"]["data"]["data_volume"] == 0.125 and cfg["classifier"]["model"]["method"] == "cam"


def test_table_layout_and_names() -> None:
    sweep = get_sweep("data-volume")
    text = table(sweep, {("1", "Baseline"): 0.483, ("1", "Ours"): 0.528, ("1/16", "Ours"): 0.469})
    assert "| Data Volume | Baseline | Ours |" in text
    assert "| 1 | 48.3 | 52.8 |" in text and "| 1/16 | - | 46.9 |" in text
    assert run_name("beta", get_sweep("beta").variants[0]) == "ablation-beta/0-1-miou"
    with pytest.raises(ConfigError, match="unknown ablation"):
        get_sweep("nope")


def test_dry_run_lists_each_variant(capsys, tmp_path: Path) -> None:
    assert main(["ablation", "gaussian", str(EXPERIMENTS / "base.yaml"), "--runs", str(tmp_path),
                 "--logger", "none", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count(" fit classifier ") == 2 and "ablation-gaussian/ours-w-gf-miou" in out


def test_table_iii_rows_are_registered_backbones() -> None:
    """The backbone sweep's rows name backbones of the one registry (models.backbones.BACKBONES)."""
    from rpnet_pl.results.ablations import TABLE_III_BACKBONES
    from rpnet_pl.models.backbones import BACKBONES

    assert set(TABLE_III_BACKBONES) <= set(BACKBONES)
    assert [v.label for v in sweeps()["backbone"].variants][::2] == list(TABLE_III_BACKBONES)
