"""Golden values of every network stage as `make demo` builds it, to hold a refactor of the package
to the same numbers: for the classifier (RPNet and the CAM baseline), the refine stage and the
segmenter, each built from ``experiments/demo.yaml``'s section with seeded weights
(:func:`rpnet_pl.parity_training.seed_module`: each tensor from its name), the recorded values are

* the state dict's names and one checksum per tensor (sum, sum of |x|);
* every loss term of ``training_losses`` on a fixed batch;
* the optimiser's groups (learning rate, momentum, weight decay, tensors) from ``make_optimizer``;
* the weights after one optimiser step (a checksum over all of them);
* the per-image output on a fixed image: the classifier's multi-scale CAMs, the refiner's boundary
  map, the segmenter's class probabilities (checksums).

``tests/data/golden.json`` is written by ``python tests/test_golden.py`` from today's code: do that only
for a change meant to move these numbers, and say which in the commit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rpnet_pl.ops.params import CAM_INFERENCE
from rpnet_pl.steps.cam_inference import multiscale_cam

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden.json"
STAGES = ("classifier_rpnet", "classifier_cam", "refine", "segmenter")
RTOL, ATOL = 1e-4, 1e-6  # float32 kernels differ across CPUs by far less; a change of the stage by far more


def _model_args(step: str, **overrides: Any) -> dict[str, Any]:
    from rpnet_pl.pipeline.config import load_experiment, section

    args = dict(section(load_experiment(ROOT / "experiments" / "demo.yaml"), step).get("model") or {})
    args.update(weights=None, pretrained=False, **overrides)
    return args


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 3, size, size) normalised-looking inputs, the same on every machine."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _checksum(x: torch.Tensor) -> list[float]:
    x = x.detach().double()
    return [float(x.sum()), float(x.abs().sum())]


def build(name: str):
    """The stage ``name`` with seeded weights, and a fixed training batch for it."""
    from rpnet_pl.parity_training import seed_module
    from rpnet_pl.stages.checkpoints import build_stage

    torch.manual_seed(0)
    if name.startswith("classifier"):
        stage = build_stage("classifier", **_model_args("classifier", method=name.split("_")[1]))
        labels = torch.zeros(2, 2, 20)
        labels[0, :, 3] = labels[1, :, 7] = 1  # each group shares a class
        labels[0, 1, 11] = 1
        batch = {"images": _images(4, 64, 1).reshape(2, 2, 3, 64, 64), "labels": labels}
    elif name == "refine":
        stage = build_stage("refine", **_model_args("refine"))
        label = torch.zeros(2, 96, 96, dtype=torch.long)
        label[:, 20:70, 30:80] = 5
        label[:, 60:90, 10:40] = 12
        label[:, 0:8, :] = 255
        batch = {"image": _images(2, 96, 2), "label": label}
    else:
        stage = build_stage("segmenter", **_model_args("segmenter"))
        label = torch.zeros(2, 64, 64, dtype=torch.long)
        label[:, 10:40, 20:50] = 3
        label[:, 50:, :] = 255
        batch = {"image": _images(2, 64, 3), "label": label}
    seed_module(stage.model, 0)
    return stage, batch


def record(name: str) -> dict[str, Any]:
    """What the golden file holds for one stage (module docstring)."""
    stage, batch = build(name)
    state = stage.model.state_dict()
    out: dict[str, Any] = {"keys": list(state), "tensors": [_checksum(v) for v in state.values()]}
    stage.train()
    opt, _ = stage.make_optimizer(max_steps=100)
    out["groups"] = [[g["lr"], g["momentum"], g["weight_decay"], len(g["params"])] for g in opt.param_groups]
    terms = stage.training_losses(batch)
    out["losses"] = {k: float(v.detach()) for k, v in terms.items() if torch.is_tensor(v) and v.ndim == 0}
    opt.zero_grad()
    terms["loss"].backward()
    opt.step()
    out["after_one_step"] = _checksum(torch.cat([p.detach().flatten() for p in stage.model.parameters()]))
    stage.eval()
    with torch.no_grad():
        image = _images(1, 80, 4)
        if name.startswith("classifier"):
            strided, high = multiscale_cam(stage.model.cam, image, CAM_INFERENCE.scales, CAM_INFERENCE.flip)
            out["inference"] = _checksum(strided) + _checksum(high)
        elif name == "refine":
            out["inference"] = _checksum(stage.model.boundary(image, pad_to=None))
        else:
            out["inference"] = _checksum(stage.probs(image))
    return out


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())


def _close(ours: Any, ref: Any) -> bool:
    return np.allclose(np.asarray(ours, dtype=float), np.asarray(ref, dtype=float), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", STAGES)
def test_stage_matches_its_golden_values(name: str, golden: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    ours, ref = record(name), golden[name]
    assert ours["keys"] == ref["keys"]  # names: old checkpoints load by them
    bad = [k for k, a, b in zip(ours["keys"], ours["tensors"], ref["tensors"]) if not _close(a, b)]
    assert not bad, f"initial tensors differ: {bad[:5]}"
    assert len(ours["groups"]) == len(ref["groups"]) and _close(ours["groups"], ref["groups"]), ours["groups"]
    assert set(ours["losses"]) == set(ref["losses"])
    for k in ref["losses"]:
        assert _close(ours["losses"][k], ref["losses"][k]), (k, ours["losses"][k], ref["losses"][k])
    assert _close(ours["after_one_step"], ref["after_one_step"]), (ours["after_one_step"], ref["after_one_step"])
    assert _close(ours["inference"], ref["inference"]), (ours["inference"], ref["inference"])


def test_a_changed_stage_fails_its_golden_values(golden: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: the segmenter's head at the backbone's rate moves the weights after one step."""
    import tests.test_golden as me

    original = me._model_args
    monkeypatch.setattr(me, "_model_args", lambda step, **kw: {**original(step, **kw), "head_lr_mult": 1.0})
    ours = record("segmenter")
    assert not _close(ours["groups"], golden["segmenter"]["groups"])
    assert not _close(ours["after_one_step"], golden["segmenter"]["after_one_step"])


if __name__ == "__main__":  # write the golden file from today's code
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    GOLDEN.write_text(json.dumps({name: record(name) for name in STAGES}, indent=0) + "\n")
    print(f"wrote {GOLDEN}")
