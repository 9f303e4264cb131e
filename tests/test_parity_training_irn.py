"""Training parity of the refiner: the shipped cases (``train_irn``: IRN's ``train_irn.run``, 10 steps;
``train_irn_rpnet``: the same script of RPNet's copy of IRN, with its non-local blocks) pass with our
RefineStage, and each kind of training difference fails its own check."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rpnet_pl import parity
from rpnet_pl.models.backbones import Backbone
from rpnet_pl.models import irn as irn_model
from rpnet_pl.models.irn import IRNet
from rpnet_pl.models.reference_weights import load_reference_checkpoint, map_reference_state_dict
from rpnet_pl.parity_training import irn as train_irn
from rpnet_pl.parity_training import seeded_state
from rpnet_pl.stages import refine
from rpnet_pl.stages.refine import RefineStage

CASES = sorted(parity.default_cases_dir().glob("train_irn_[0-9]*.npz"))
RPNET_CASES = sorted(parity.default_cases_dir().glob("train_irn_rpnet_[0-9]*.npz"))


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    return parity.load_case(CASES[0])[1]


@pytest.fixture(scope="module")
def rpnet_case() -> dict[str, np.ndarray]:
    return parity.load_case(RPNET_CASES[0])[1]


def _failed(checks: list) -> set[str]:
    return {c.name for c in checks if not c.passed}


@pytest.mark.parametrize("group, cases, checker", [("train_irn", CASES, train_irn.check_train_irn),
                                                    ("train_irn_rpnet", RPNET_CASES, train_irn.check_train_irn_rpnet)])
def test_cases_are_shipped_and_registered(group: str, cases: list[Path], checker) -> None:
    assert len(cases) >= 2 and all(p.stat().st_size < 300_000 for p in cases)
    assert parity.GROUPS[group][1] is checker
    assert {parity.load_case(p)[0] for p in cases} == {group}
    seeds = {int(parity.load_case(p)[1]["seed"]) for p in cases}
    assert len(seeds) == len(cases)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_shipped_case_passes(path: Path) -> None:
    result = parity.run_case(path)
    assert result.passed, [(c.name, c.abs_err, c.rel_err) for c in result.checks if not c.passed]
    names = {c.name for c in result.checks}
    assert {"group_lr", "group_sizes", "group_momentum", "total_loss", "weights.backbone", "weights.edge",
            "weights.displacement", "final_displacement", "mean_shift"} <= names
    case = parity.load_case(path)[1]
    lr = case["group_lr"]
    assert lr.shape == (int(case["steps"]), 2) and np.allclose(lr[:, 1], 10 * lr[:, 0])
    assert lr[-1, 0] < 0.2 * lr[0, 0]  # the poly schedule visibly decays over the case's steps


def test_momentum_09_instead_of_the_quirk_fails(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A default experiment with the textbook momentum 0.9 (the reference's SGD momentum is its weight
    decay, 1e-4, passed positionally; its poly power 0.9 is the ``momentum`` argument)."""
    default = train_irn.default_refine_model()
    monkeypatch.setattr(train_irn, "default_refine_model", lambda: {**default, "momentum": 0.9})
    failed = _failed(train_irn.check_train_irn(case))
    assert {"group_momentum", "total_loss", "weights.displacement"} <= failed


def test_momentum_zero_is_measurable_in_the_trajectory(case: dict) -> None:
    """SGD without momentum against the reference's 1e-4 (its weight decay): over 10 steps the
    trajectories part by more than float32 rounding."""
    failed = _failed(train_irn.check_train_irn(case, momentum=0.0))
    assert {"group_momentum", "total_loss", "weights.displacement"} <= failed


def test_unfrozen_backbone_batchnorm_fails(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backbone's BatchNorms follow ``train()`` (batch statistics, running statistics updated)."""
    monkeypatch.setattr(IRNet, "train", lambda self, mode=True: nn.Module.train(self, mode))
    monkeypatch.setattr(Backbone, "train", lambda self, mode=True: nn.Module.train(self, mode))
    failed = _failed(train_irn.check_train_irn(case))
    assert {"weights.backbone", "pos_aff_loss", "total_loss"} <= failed


def test_trainable_stem_fails(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stem convolution and its BatchNorm in the boundary branch's optimiser group."""
    param_groups = IRNet.param_groups

    def with_stem(self: IRNet) -> tuple[list, list, list]:
        edge, dp, attention = param_groups(self)
        stem = [p for name, p in self.backbone.body.named_parameters() if name.startswith(("conv1.", "bn1."))]
        for p in stem:
            p.requires_grad_(True)
        return edge + stem, dp, attention

    monkeypatch.setattr(IRNet, "param_groups", with_stem)
    assert "group_sizes" in _failed(train_irn.check_train_irn(case))


def test_displacement_terms_without_their_weight_fail(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """``(dp_fg + dp_bg)`` added without its 1/2."""
    objective = refine.irn_objective

    def unweighted(*args, **kwargs):
        terms = objective(*args, **kwargs)
        terms["loss"] = terms["loss"] + (terms["dp_fg_loss"] + terms["dp_bg_loss"]) / 2
        return terms

    monkeypatch.setattr(refine, "irn_objective", unweighted)
    failed = _failed(train_irn.check_train_irn(case))
    assert "total_loss" in failed and "weights.displacement" in failed
    assert "weights.edge" not in failed  # the boundary branch gets no gradient from the displacement terms


@pytest.mark.parametrize("override, check", [
    ({"poly_power": 1.0}, "group_lr"),
    ({"displacement_lr_mult": 1.0}, "group_lr"),
    ({"weight_decay": 5e-4}, "group_weight_decay"),
    ({"boundary_radius": 8}, "pos_aff_loss"),
])
def test_optimiser_and_loss_settings_fail_their_check(case: dict, override: dict, check: str) -> None:
    assert check in _failed(train_irn.check_train_irn(case, **override))


def test_a_moved_reference_value_fails(case: dict) -> None:
    moved = dict(case)
    moved["total_loss"] = case["total_loss"] * np.r_[np.ones(len(case["total_loss"]) - 1), 1 + 3e-4]
    sums = case["checksums"].copy()
    edge = [i for i, n in enumerate(case["checksum_names"]) if str(n).startswith("edge_out.")][0]
    sums[edge, 2] *= 1 + 1e-3
    moved["checksums"] = sums
    assert {"total_loss", "weights.edge"} == _failed(train_irn.check_train_irn(moved))


def test_default_experiment_matches_the_stage_defaults() -> None:
    """Without the repository (an installed package) the check builds the stage from its own defaults:
    the same optimiser and loss settings as ``experiments/base.yaml``'s ``refine.model``."""
    section = train_irn.default_refine_model()
    assert section, "experiments/base.yaml has no refine.model section"
    stage_defaults = {k: p.default for k, p in inspect.signature(RefineStage.__init__).parameters.items()}
    for key in ("boundary_radius", "lr", "weight_decay", "momentum", "poly_power", "displacement_loss",
                "label_reduction", "displacement_lr_mult"):
        assert section.get(key, stage_defaults[key]) == stage_defaults[key], key


def test_the_cv2_label_reduction_fails(case: dict) -> None:
    """``label_reduction: cv2`` samples pixel 4i instead of PIL's 4i + 2: other pair labels, other losses."""
    failed = _failed(train_irn.check_train_irn(case, label_reduction="cv2"))
    assert {"reduced_labels", "pos_aff_loss", "total_loss"} <= failed


def test_a_reference_irn_state_dict_loads(case: dict) -> None:
    """An ``AffinityDisplacementLoss`` state dict as IRN saves it: the canonical tensors, its
    ``disp_target`` buffer and the ``mean_shift.*`` alias of ``fc_dp7.4.*``, and no running variance for
    the mean shift."""
    with train_irn.resnet_blocks(tuple(case["blocks"])):
        model = IRNet("resnet50", pretrained=False)
    names = train_irn.reference_names_to_ours(case["init_names"])
    target = model.state_dict()
    state = seeded_state({ref: target[ours].shape for ref, ours in names.items()}, 7)
    shift = torch.tensor([0.5, -0.25])
    state.update({"fc_dp7.4.running_mean": shift, "mean_shift.running_mean": shift,
                  "disp_target": torch.zeros(1, 2, 5, 1), "path_indices0": torch.zeros(2, 2, 5, dtype=torch.long)})
    mapping = map_reference_state_dict(state, kind="irn")
    assert not mapping.unmatched and {"disp_target", "mean_shift.running_mean"} <= set(mapping.ignored)
    load_reference_checkpoint(model, state, kind="irn")
    torch.testing.assert_close(model.mean_shift.running_mean, shift)
    torch.testing.assert_close(model.edge_out.weight, state["fc_edge6.weight"])


# -- RPNet's copy of IRN (train_irn_rpnet) ---------------------------------------------------------
@pytest.mark.parametrize("path", RPNET_CASES, ids=lambda p: p.name)
def test_shipped_rpnet_case_passes(path: Path) -> None:
    result = parity.run_case(path)
    assert result.passed, [(c.name, c.abs_err, c.rel_err) for c in result.checks if not c.passed]
    assert {"group_lr", "group_sizes", "total_loss", "weights.attention", "weights.edge",
            "final_displacement", "mean_shift"} <= {c.name for c in result.checks}
    case = parity.load_case(path)[1]
    lr = case["group_lr"]  # edge 1x, displacement 10x, non-local blocks 2x
    assert lr.shape == (int(case["steps"]), 3)
    assert np.allclose(lr[:, 1], 10 * lr[:, 0]) and np.allclose(lr[:, 2], 2 * lr[:, 0])
    assert any(str(n).startswith("self_atten5.") for n in case["init_names"])


def test_rpnet_attention_group_at_the_base_lr_fails(rpnet_case: dict) -> None:
    """The non-local blocks trained at ``lr`` instead of RPNet's ``2 lr``."""
    failed = _failed(train_irn.check_train_irn_rpnet(rpnet_case, attention_lr_mult=1.0))
    assert {"group_lr", "weights.attention"} <= failed
    assert "weights.backbone" not in failed


def test_rpnet_case_without_the_blocks_fails(rpnet_case: dict) -> None:
    """IRN's own network against RPNet's copy: two optimiser groups, other losses from the first step."""
    failed = _failed(train_irn.check_train_irn_rpnet(rpnet_case, self_attention=False))
    assert {"group_sizes", "group_lr", "checksum_names", "pos_aff_loss", "total_loss"} <= failed


def test_irn_case_with_the_blocks_fails(case: dict) -> None:
    """RPNet's copy against jiwoon-ahn/irn's network: a third optimiser group and the blocks' tensors."""
    failed = _failed(train_irn.check_train_irn(case, self_attention=True))
    assert {"group_sizes", "group_lr", "checksum_names"} <= failed


def test_rpnet_blocks_with_batch_statistics_in_eval_fail(rpnet_case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """RPNet's IRN ``Net.train()`` calls ``super().train(mode)``: its non-local BatchNorms use their running
    statistics in eval mode. Blocks that always normalise with the pass's statistics (``norm="batch"``, the
    RPNet classifier's semantics) train identically but give other maps after training."""
    block = irn_model.NonLocalBlock
    monkeypatch.setattr(irn_model, "NonLocalBlock", lambda channels, **kw: block(channels, **{**kw, "norm": "batch"}))
    failed = _failed(train_irn.check_train_irn_rpnet(rpnet_case))
    assert {"final_edge_logits", "final_displacement"} <= failed
    assert not failed & {"total_loss", "weights.edge", "weights.displacement", "weights.attention"}
