"""The paper-table make targets, checked through their dry runs (DRY=1 prints the commands only)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / ".installed").exists(),
                                reason="needs make and the installed .venv (make test provides both)")


def _dry(target: str, tmp_path: Path, *extra: str) -> str:
    done = subprocess.run(["make", "--no-print-directory", target, "DRY=1", f"RUNS={tmp_path}", *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_table_1_runs_baseline_and_rpnet_on_voc_and_coco(tmp_path: Path) -> None:
    out = _dry("table-1", tmp_path, "VOC_DATA=/d/voc", "COCO_DATA=/d/coco")
    pipelines = re.findall(r"rpnet pipeline .*--data '?([^' ]+)'? --dry-run\s+(\S+)", out)
    assert pipelines == [("/d/voc", "experiments/voc_baseline_resnet50.yaml"),
                         ("/d/voc", "experiments/voc_resnet50.yaml"),
                         ("/d/coco", "experiments/coco_baseline_resnet50.yaml"),
                         ("/d/coco", "experiments/coco_resnet50.yaml")]
    assert out.rstrip().endswith(f"rpnet report {tmp_path}")
    assert not (tmp_path / "report.md").exists()  # a dry run writes nothing


def test_paths_with_spaces_reach_every_step_whole(tmp_path: Path) -> None:
    runs, data = tmp_path / "my runs", "/d/my voc"
    out = _dry("voc-resnet50", runs, f"DATA={data}")
    assert f"--runs '{runs}' " in out and f"--data '{data}' " in out  # make's own command line
    run = runs / "voc-resnet50"
    assert f"fit classifier --config '{run}/classifier/config.yaml'" in out  # the planned steps, shell-quoted
    assert f"--root '{data}'" in out


def test_table_8_lists_every_step_of_four_backbones(tmp_path: Path) -> None:
    out = _dry("table-8", tmp_path)
    for backbone in ("resnet50", "resnet101", "resnext50", "resnext101"):
        run = tmp_path / f"voc-{backbone}"
        assert f"fit classifier --config {run}/classifier/config.yaml" in out
        assert f"eval-seg --ckpt {run}/segmenter/checkpoints/last.ckpt" in out
        assert re.search(rf"pseudo-masks --ckpt {run}/refine/checkpoints/last.ckpt .*--pad-to 512", out)
        assert f"predict-seg --ckpt {run}/segmenter/checkpoints/last.ckpt --out {run}/predict_seg" in out


def test_demo_voclike_runs_both_chains_to_the_pseudo_masks_and_the_diagnosis(tmp_path: Path) -> None:
    out = _dry("demo-voclike", tmp_path, "SYNTH_VOCLIKE=/d/voclike")
    runs = tmp_path / "voclike"
    for run in ("demo-cam", "demo"):
        assert f"fit classifier --config {runs}/{run}/classifier/config.yaml" in out
        assert f"eval-pseudo-masks --masks {runs}/{run}/pseudo_masks/masks" in out and "--root /d/voclike" in out
        assert f"{runs}/{run}/segmenter" not in out  # stops at the pseudo masks
        for boundary in ("learned", "ground-truth"):
            assert re.search(rf"eval-refinement --ckpt {runs}/{run}/refine/checkpoints/last.ckpt .*--boundary "
                             rf"{boundary} --out {runs}/{run}/eval_refinement_{boundary}.json", out)
    assert not runs.exists() and not Path("/d/voclike").exists()  # a dry run writes nothing


def test_demo_pretrained_runs_both_chains_on_imagenet_lite0_and_reports(tmp_path: Path) -> None:
    out = _dry("demo-pretrained", tmp_path)
    runs = tmp_path / "demo-pretrained"
    for run in ("demo-pretrained-cam", "demo-pretrained"):
        config = runs / run / "classifier" / "config.yaml"
        assert f"fit classifier --config {config}" in out
        assert f"fit refine --config {runs}/{run}/refine/config.yaml" in out
        assert f"predict-seg --ckpt {runs}/{run}/segmenter/checkpoints/last.ckpt" in out
    assert out.rstrip().endswith(f"rpnet report {runs}")
    assert not runs.exists()


def test_seeds_run_every_pipeline_and_ablation_once_per_seed(tmp_path: Path) -> None:
    out = _dry("voc-resnet50", tmp_path, "SEEDS=0 1", "SET=classifier.model.beta=0.3")
    for k in (0, 1):
        assert f"fit classifier --config {tmp_path}/voc-resnet50/seed{k}/classifier/config.yaml" in out
        assert f"predict-seg --ckpt {tmp_path}/voc-resnet50/seed{k}/segmenter/checkpoints/last.ckpt" in out
    assert f"{tmp_path}/voc-resnet50/classifier" not in out
    out = _dry("ablation-gaussian", tmp_path, "SEEDS=3")
    assert re.findall(r"fit classifier --config (\S+)", out) == [
        f"{tmp_path}/ablation-gaussian/ours-w-gf-miou/seed3/classifier/config.yaml",
        f"{tmp_path}/ablation-gaussian/ours-w-o-gf-miou/seed3/classifier/config.yaml"]
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_a_dry_demo_writes_no_dataset(tmp_path: Path) -> None:
    synth = tmp_path / "synth"
    out = _dry("demo", tmp_path, f"SYNTH={synth}")
    assert f"rpnet data synth --out {synth}" in out and f"rpnet data check {synth} --dataset voc" in out
    assert "pipeline experiments/demo.yaml" in out
    assert not synth.exists()


def test_demo_runs_its_two_chains_side_by_side_on_a_share_of_the_cores(tmp_path: Path) -> None:
    """Every line of a chain carries its name, each chain gets half the usable cores as torch's threads,
    and the target fails when one chain fails (a stand-in ``rpnet`` that fails the baseline's)."""
    fake = tmp_path / "rpnet"
    fake.write_text('#!/bin/bash\n[ "$1" = pipeline ] || exit 0\necho "$2 threads=$OMP_NUM_THREADS"\n'
                    '[ "$2" != experiments/demo_cam.yaml ]\n')
    fake.chmod(0o755)
    done = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", "demo", f"RPNET={fake}",
                           f"RUNS={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"})
    from rpnet_pl.utils.cpus import usable_cpus

    share = max(1, usable_cpus() // 2)
    assert f"[demo_cam] experiments/demo_cam.yaml threads={share}" in done.stdout
    assert f"[demo] experiments/demo.yaml threads={share}" in done.stdout
    assert done.returncode != 0  # the baseline's chain failed: so does make, before the report
    out = _dry("demo", tmp_path)
    for run in ("demo-cam", "demo"):
        assert re.search(rf"^\[{run.replace('-', '_')}\] .* fit classifier --config {tmp_path}/demo/{run}/classifier/config.yaml$",
                         out, re.M)
