"""Training parity of the segmenter against kazuto1011/deeplab-pytorch's ``main.py train``: the
shipped cases pass, and each way of getting the recipe wrong fails its own check."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rpnet_pl.models import deeplab as deeplab_models
from rpnet_pl.parity import GROUPS, default_cases_dir, load_case, run_case
from rpnet_pl.parity_training import deeplab as td

CASES = sorted(default_cases_dir().glob("train_deeplab_*.npz"))


def failed_checks(case: dict) -> set[str]:
    return {c.name for c in td.check_train_deeplab(case) if not c.passed}


@pytest.fixture(scope="module")
def case() -> dict:
    return load_case(CASES[0])[1]


def test_the_group_is_registered_and_its_cases_are_small_and_distinct() -> None:
    assert GROUPS[td.GROUP][1] is td.check_train_deeplab
    assert len(CASES) >= 2
    cases = [load_case(p)[1] for p in CASES]
    assert len({int(c["seed"]) for c in cases}) == len(cases)
    assert all(p.stat().st_size < 300_000 for p in CASES)


@pytest.mark.parametrize("path", CASES, ids=lambda p: Path(p).stem)
def test_shipped_case_passes(path: Path) -> None:
    result = run_case(path)
    assert result.passed, [c for c in result.checks if not c.passed]
    assert [c.name for c in result.checks] == ["names", "loss", "group_sizes", "lr", "lr_final", "final_weights",
                                               "weight_change"]
    _, c = load_case(path)
    assert int(c["steps"]) >= 10 and len(c["loss"]) == int(c["steps"])
    assert c["lr"][-1, 0] < 0.5 * c["lr"][0, 0]  # the poly decay shows within the case
    assert np.any(c["labels"] == 255) and np.any(c["labels"] < 255)
    assert np.count_nonzero(c["delta"][:, 2]) > 0 and np.count_nonzero(c["delta"][:, 2] == 0) > 0  # frozen ones too


def test_reference_names() -> None:
    assert td.reference_name("backbone.body.conv1.weight") == "layer1.conv1.conv.weight"
    assert td.reference_name("backbone.body.bn1.running_var") == "layer1.conv1.bn.running_var"
    assert td.reference_name("backbone.body.layer3.0.conv2.weight") == "layer4.block1.conv3x3.conv.weight"
    assert td.reference_name("backbone.body.layer1.2.bn3.bias") == "layer2.block3.increase.bn.bias"
    assert td.reference_name("backbone.body.layer4.0.downsample.1.weight") == "layer5.block1.shortcut.bn.weight"
    assert td.reference_name("head.branches.3.bias") == "aspp.c3.bias"
    with pytest.raises(KeyError):
        td.reference_name("head.fc6.weight")


def _config(monkeypatch: pytest.MonkeyPatch, **changes: object) -> None:
    base = td.segmenter_config()
    monkeypatch.setattr(td, "segmenter_config", lambda: {**base, **changes})


def _backbone(monkeypatch: pytest.MonkeyPatch, **changes: object) -> None:
    build = deeplab_models.build_backbone
    monkeypatch.setattr(deeplab_models, "build_backbone", lambda *a, **k: build(*a, **{**k, **changes}))


def test_head_at_the_backbone_rate_fails(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _config(monkeypatch, head_lr_mult=1.0)
    assert {"lr", "lr_final", "loss", "final_weights", "weight_change"} <= failed_checks(case)


def test_trainable_batchnorm_fails(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _backbone(monkeypatch, freeze_bn=False)  # batch statistics, moving running statistics, trainable affine
    assert {"loss", "group_sizes", "weight_change"} <= failed_checks(case)


def test_trainable_batchnorm_affine_fails(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _backbone(monkeypatch, freeze_bn_affine=False)  # IRN's FixedBatchNorm: frozen statistics only
    failed = failed_checks(case)
    assert {"group_sizes", "weight_change"} <= failed and "names" not in failed


def test_a_frozen_stem_fails(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _config(monkeypatch, freeze_stem=True)  # the reference trains its stem convolution at 1x
    assert {"group_sizes", "weight_change"} <= failed_checks(case)


def test_head_biases_as_weights_fail(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _config(monkeypatch, head_bias_lr_mult=10.0, head_bias_weight_decay=5e-4)  # one head group at 10x
    assert {"lr", "lr_final", "loss", "final_weights"} <= failed_checks(case)


def test_no_momentum_fails(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _config(monkeypatch, momentum=0.0)  # the IRN / RPNet optimiser's effective momentum
    assert {"loss", "final_weights", "weight_change"} <= failed_checks(case)


def test_another_poly_horizon_fails(case: dict) -> None:
    assert {"lr", "lr_final"} <= failed_checks({**case, "max_steps": np.array(int(case["max_steps"]) * 2)})


def test_a_changed_reference_weight_fails(case: dict) -> None:
    wrong = case["final"].copy()
    wrong[0, 1] *= 1.001
    assert failed_checks({**case, "final": wrong}) == {"final_weights"}


def test_no_weight_decay_fails(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _config(monkeypatch, weight_decay=0.0)
    assert {"final_weights", "weight_change"} <= failed_checks(case)
