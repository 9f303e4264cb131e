"""Parity with the public IRN / RPNet code: the shipped cases (computed by running that code) through
our functions, one test per group, and `rpnet parity`'s errors and exit status."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rpnet_pl.cli import main
from rpnet_pl.parity import GROUPS, ParityCaseError, default_cases_dir, load_case, run_case, run_parity, summarise

torch.set_num_threads(1)
CASES = default_cases_dir()


def test_every_group_is_shipped() -> None:
    shipped = {p.stem.rsplit("_", 1)[0] for p in CASES.glob("*.npz")}
    assert shipped == set(GROUPS)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_matches_the_reference(group: str) -> None:
    files = sorted(CASES.glob(f"{group}_*.npz"))
    assert files
    for f in files:
        result = run_case(f)
        failed = [c for c in result.checks if not c.passed]
        assert not failed, f"{f.name}: {failed}"
        assert result.checks  # every case compares something


def test_a_perturbed_case_fails(tmp_path: Path) -> None:
    """The checks can fail: the reference head's output moved by 1e-3 is caught, and so is one
    flipped label of a pseudo mask."""
    _, case = load_case(CASES / "rpnet_head_0.npz")
    case["plain_cam_x"] = case["plain_cam_x"] + 1e-3
    np.savez(tmp_path / "rpnet_head_0.npz", **case)
    _, rw = load_case(CASES / "random_walk_0.npz")
    rw["pseudo_mask"] = rw["pseudo_mask"].copy()
    rw["pseudo_mask"][0, 0] = 255
    np.savez(tmp_path / "random_walk_0.npz", **rw)
    results = run_parity(tmp_path)
    assert [r.passed for r in results] == [False, False]
    bad = {c.name for r in results for c in r.checks if not c.passed}
    assert bad == {"plain_cam_x", "pseudo_mask"}
    rows = {r["group"]: r for r in summarise(results)}
    assert rows["random_walk"]["mismatched"] == 1


def test_cli_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for f in sorted(CASES.glob("path_index_*.npz")) + [CASES / "irn_loss_0.npz"]:
        shutil.copy(f, tmp_path / f.name)
    assert main(["parity", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 passed, 0 failed" in out and "path_index" in out and "FAIL" not in out
    _, case = load_case(tmp_path / "irn_loss_0.npz")
    case["total_loss"] = np.asarray(case["total_loss"] + 0.01, dtype=np.float32)
    np.savez(tmp_path / "irn_loss_0.npz", **case)
    assert main(["parity", str(tmp_path)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_bad_case_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, case = load_case(CASES / "ir_labels_0.npz")
    del case["crf_t"]
    np.savez(tmp_path / "ir_labels_7.npz", **case)
    with pytest.raises(ParityCaseError, match=r"ir_labels_7.npz: a ir_labels case needs key\(s\) crf_t"):
        run_parity(tmp_path)
    (tmp_path / "ir_labels_7.npz").unlink()
    (tmp_path / "mystery_0.npz").write_bytes(b"")
    with pytest.raises(ParityCaseError, match="mystery_0.npz: unknown case group 'mystery'"):
        run_parity(tmp_path)
    (tmp_path / "mystery_0.npz").unlink()
    (tmp_path / "random_walk_0.npz").write_bytes(b"not a zip")
    assert main(["parity", str(tmp_path)]) == 2
    assert "random_walk_0.npz: cannot read" in capsys.readouterr().err
    with pytest.raises(ParityCaseError, match="no case files"):
        run_parity(tmp_path / "empty") if (tmp_path / "empty").mkdir() is None else None


def test_modes_of_the_gpu_path_are_checked_with_the_same_tolerances(capsys: pytest.CaptureFixture[str]) -> None:
    """``rpnet parity --bf16 / --channels-last`` runs the cases in the GPU path's modes (on
    this CPU here). channels-last alone changes the layout, not the arithmetic of the case: the
    head still matches within the fp32 tolerances. bf16 autocast rounds the head's 1x1 convolutions
    and matmuls to 8 bits of mantissa, far beyond rtol 1e-4: the check says so, with the error."""
    from rpnet_pl.parity import ParityMode

    head = CASES / "rpnet_head_0.npz"
    assert run_case(head, ParityMode(channels_last=True)).passed
    bf16 = run_case(head, ParityMode(bf16=True))
    assert not bf16.passed
    worst = max(c.rel_err for c in bf16.checks if not c.passed)
    assert 1e-4 < worst < 0.5  # bf16-sized, not a broken check
    # the random walk turns autocast off around its sparse product, as in the pseudo-mask step
    assert run_case(CASES / "random_walk_0.npz", ParityMode(bf16=True)).passed
    assert main(["parity", "--bf16", "--channels-last", str(CASES)]) == 1
    out = capsys.readouterr().out
    assert "cpu, bf16 autocast, channels_last" in out.splitlines()[0] and "FAIL" in out


def test_parity_on_cuda_without_a_gpu_is_one_line(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["parity", "--device", "cuda"]) == 2
    assert "rpnet parity --device cuda: no CUDA device here" in capsys.readouterr().err
