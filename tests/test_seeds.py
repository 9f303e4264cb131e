"""Mean ± std over seeds and the seed folders, by hand."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from rpnet_pl.pipeline.seeds import Stat, format_pct, mean_std, seed_dir_name, seed_folders


def test_mean_std_hand_computed() -> None:
    # (0.5, 0.6, 0.7): mean 0.6; squared deviations 0.01 + 0 + 0.01 over n - 1 = 2 -> std 0.1
    s = mean_std([0.5, 0.6, 0.7])
    assert s is not None and s.n == 3
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1)
    # None (a seed without that number) is left out; one value has std 0
    assert mean_std([None, 0.25]) == Stat(0.25, 0.0, 1)
    assert mean_std([None, None]) is None and mean_std([]) is None
    two = mean_std([0.60, 0.64])
    assert two is not None and two.std == pytest.approx(math.sqrt(2 * 0.02 ** 2))


def test_format_pct() -> None:
    assert format_pct(None) == "-"
    assert format_pct(0.6514) == "65.1"
    assert format_pct(Stat(0.6, 0.1, 3)) == "60.0 ± 10.0 (n=3)"


def test_seed_folders_sorted_by_number(tmp_path: Path) -> None:
    for name in ("seed10", "seed2", "seedx", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "seed3").write_text("a file, not a run")
    assert [p.name for p in seed_folders(tmp_path)] == ["seed2", "seed10"]
    assert seed_folders(tmp_path / "missing") == [] and seed_dir_name(4) == "seed4"
