"""Checkpoints saved by an earlier version of the stages still load, and the per-image steps give
the same outputs from them.

An earlier version kept each per-image step's settings and output folders (``cam_scales``,
``cam_out``, ``rw_radius``, ``bg_threshold``, ``pred_dir``, ...) among the stages' hyper-parameters,
so its checkpoints hold them. For each stage built from ``experiments/demo.yaml`` with seeded
weights (:func:`rpnet_pl.parity_training.seed_module`, each tensor from its name), the file
``tests/data/old_checkpoints.json`` holds

* the hyper-parameters that version saved in the stage's checkpoint;
* what `rpnet cam`, `rpnet pseudo-masks` and `rpnet eval-seg` wrote from those checkpoints on a
  small generated VOC tree: the CAMs' checksums, each label map's SHA-256, the mIoUs.

The test rebuilds each checkpoint (today's seeded state dict, whose names the golden tests hold, with
the recorded hyper-parameters) and runs today's steps on it. The file was written by
``python tests/test_old_checkpoints.py`` with the earlier version's ``src`` first on ``PYTHONPATH``;
it is not rewritten by today's code.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "data" / "old_checkpoints.json"
STAGES = ("classifier", "refine", "segmenter")
RTOL, ATOL = 1e-4, 1e-6
ITEMS = {"2007_000001": [1], "2007_000002": [1, 2], "2007_000003": [2], "2007_000004": [15]}


def _seeded_stage(step: str):
    """The stage of ``step`` as ``experiments/demo.yaml`` builds it, with seeded weights."""
    import torch

    from rpnet_pl.parity_training import seed_module
    from rpnet_pl.pipeline.config import load_experiment, section

    args = dict(section(load_experiment(ROOT / "experiments" / "demo.yaml"), step).get("model") or {})
    args.update(weights=None, pretrained=False)
    torch.manual_seed(0)
    try:
        from rpnet_pl.stages.checkpoints import build_stage
    except ImportError:  # the earlier version, which recorded the file: a stage built its own network
        from rpnet_pl.pipeline.registry import STEPS, load

        stage = load(STEPS[step].stage)(**args)
    else:
        stage = build_stage(step, **args)
    seed_module(stage.model, 0)
    return stage


def _save(stage, hparams: dict[str, Any], path: Path) -> Path:
    import pytorch_lightning as pl
    import torch

    torch.save({"state_dict": stage.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": pl.__version__}, path)
    return path


def _labels_sha(folder: Path) -> dict[str, str]:
    from PIL import Image

    out = {}
    for png in sorted(folder.glob("*.png")):
        with Image.open(png) as im:
            out[png.stem] = hashlib.sha256(np.ascontiguousarray(np.asarray(im)).tobytes()).hexdigest()
    return out


def _cam_sums(folder: Path) -> dict[str, list[float]]:
    from rpnet_pl.steps.cam_inference import read_cam

    out = {}
    for npy in sorted(folder.glob("*.npy")):
        record = read_cam(folder, npy.stem)
        out[npy.stem] = [float(np.asarray(record[k], dtype=np.float64).sum()) for k in ("cam", "high_res")] + [
            float(np.abs(np.asarray(record[k], dtype=np.float64)).sum()) for k in ("cam", "high_res")]
    return out


def run_steps(work: Path, hparams: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Checkpoints with ``hparams`` (per stage) in ``work``, and what the three steps write from them."""
    from rpnet_pl.cli import main
    from tests.conftest import make_voc_tree

    make_voc_tree(work / "data", ITEMS, size=(40, 56))
    root = str(work / "data")
    ckpts = {step: _save(_seeded_stage(step), hparams[step], work / f"{step}.ckpt") for step in STAGES}
    common = ["--root", root, "--devices", "1", "--accelerator", "cpu"]
    assert main(["cam", "--ckpt", str(ckpts["classifier"]), "--out", str(work / "cams"), "--split", "train",
                 "--scales", "1.0", "0.5", *common]) == 0
    assert main(["pseudo-masks", "--ckpt", str(ckpts["refine"]), "--cams", str(work / "cams"), "--out",
                 str(work / "masks"), "--split", "train", "--pad-to", "64", *common]) == 0
    assert main(["eval-seg", "--ckpt", str(ckpts["segmenter"]), "--out", str(work / "seg"), "--split", "val",
                 *common]) == 0
    metrics = json.loads((work / "seg" / "metrics.json").read_text())
    return {"cams": _cam_sums(work / "cams"), "masks": _labels_sha(work / "masks"),
            "pred": _labels_sha(work / "seg" / "pred"), "pred_crf": _labels_sha(work / "seg" / "pred_crf"),
            "miou": {k: v["miou"] for k, v in metrics.items()}}


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return json.loads(RECORD.read_text())


def test_the_recorded_checkpoints_hold_the_retired_settings(recorded: dict[str, Any]) -> None:
    """What makes them old: the step settings that the stages no longer take."""
    from rpnet_pl.stages.checkpoints import RETIRED_HPARAMS

    held = {step: set(recorded["hparams"][step]) & RETIRED_HPARAMS for step in STAGES}
    assert held == {"classifier": {"cam_scales", "cam_flip", "cam_out"},
                    "refine": {"rw_radius", "rw_beta", "rw_exp_times", "bg_threshold", "rw_pad_to", "cams_dir",
                               "out_dir", "scores_dir"},
                    "segmenter": {"pred_dir", "crf_dir", "crf_params", "label_format"}}


@pytest.mark.parametrize("step", STAGES)
def test_an_old_checkpoint_loads_without_its_step_settings(step: str, recorded: dict[str, Any], tmp_path: Path) -> None:
    from rpnet_pl.pipeline.networks import NETWORKS, flat_model
    from rpnet_pl.pipeline.registry import STEPS, load
    from rpnet_pl.stages.checkpoints import RETIRED_HPARAMS, load_stage_checkpoint

    old = recorded["hparams"][step]
    stage = load_stage_checkpoint(load(STEPS[step].stage), _save(_seeded_stage(step), old, tmp_path / "old.ckpt"), step)
    assert not set(stage.hparams) & RETIRED_HPARAMS
    assert stage.hparams["net"]["class_path"] in NETWORKS[step].values()  # given its network, rebuilt from the flat ones
    kept = {k: v for k, v in old.items() if k not in RETIRED_HPARAMS and not k.startswith("_")}
    flat = json.loads(json.dumps(flat_model(step, dict(stage.hparams))))
    if step == "classifier" and kept.get("method") == "cam":  # RPNet's settings: no CAMNet argument
        kept = {k: v for k, v in kept.items() if k in flat}
    assert {k: flat.get(k) for k in kept} == kept


def test_the_steps_write_what_they_wrote_from_old_checkpoints(recorded: dict[str, Any], tmp_path: Path) -> None:
    ours, ref = run_steps(tmp_path, recorded["hparams"]), recorded["outputs"]
    assert set(ours["cams"]) == set(ref["cams"])
    for image_id, sums in ref["cams"].items():
        np.testing.assert_allclose(ours["cams"][image_id], sums, rtol=RTOL, atol=ATOL, err_msg=image_id)
    for key in ("masks", "pred", "pred_crf"):
        assert ours[key] == ref[key], key
    assert ours["miou"] == pytest.approx(ref["miou"], rel=RTOL)


if __name__ == "__main__":  # record, with the earlier version's src first on PYTHONPATH
    import tempfile

    sys.path.insert(1, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        hparams = {step: json.loads(json.dumps(dict(_seeded_stage(step).hparams))) for step in STAGES}
        outputs = run_steps(Path(tmp), hparams)
    RECORD.write_text(json.dumps({"hparams": hparams, "outputs": outputs}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RECORD}")
