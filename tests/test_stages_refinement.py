"""`rpnet eval-refinement`: pseudo masks after each refinement step, on hand-computed maps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rpnet_pl.cli import main
from rpnet_pl.data.datasets import build_reader
from rpnet_pl.data.transforms import eval_transform, to_chw
from rpnet_pl.ops.metrics import confusion_matrix, miou
from rpnet_pl.ops.params import RandomWalkParams
from rpnet_pl.steps.eval_refinement import refinement_breakdown, refinement_steps
from rpnet_pl.stages.checkpoints import build_stage
from rpnet_pl.steps.cam_inference import read_cam
from tests.conftest import TINY_WALK, save_stage_checkpoint, tiny_refine_stage, write_uniform_cams

# x4 bilinear (align_corners=False) of a 1D step [1, 1, 0, 0]: output i samples source (i + 0.5) / 4 - 0.5
STEP_UP = np.array([1, 1, 1, 1, 1, 1, 0.875, 0.625, 0.375, 0.125, 0, 0, 0, 0, 0, 0])


def _block_cam() -> torch.Tensor:
    cams = torch.zeros(1, 4, 4)
    cams[0, :2, :2] = 1.0
    return cams


def test_cam_step_is_the_upsampled_cam_against_the_background_threshold() -> None:
    steps = refinement_steps(_block_cam(), torch.zeros(4, 4), torch.tensor([3]), (16, 16), exp_times=())
    expected = np.where(np.outer(STEP_UP, STEP_UP) > 0.25, 3, 0)
    np.testing.assert_array_equal(steps["cam"], expected)
    # no boundary: damping changes nothing
    np.testing.assert_array_equal(steps["cam x (1-B)"], expected)
    assert list(steps) == ["cam", "cam x (1-B)"]


def test_a_boundary_over_the_cam_damps_it_to_background() -> None:
    boundary = torch.zeros(4, 4)
    boundary[:2, :2] = 1.0
    steps = refinement_steps(_block_cam(), boundary, torch.tensor([3]), (16, 16), exp_times=())
    assert (steps["cam x (1-B)"] == 0).all()
    assert (steps["cam"] == 3).sum() == (np.outer(STEP_UP, STEP_UP) > 0.25).sum()


def test_a_long_walk_without_boundaries_floods_the_map() -> None:
    steps = refinement_steps(_block_cam(), torch.zeros(4, 4), torch.tensor([3]), (16, 16), exp_times=(0, 8),
                             radius=2)
    assert (steps["walk 2^8"] == 3).all()  # 256 steps mix a 4x4 map completely; global max -> 1 everywhere
    assert (steps["walk 2^0"] == 3).sum() > (steps["cam"] == 3).sum()  # one step already spreads


def test_breakdown_sums_every_image(tiny_voc: Path, tmp_path: Path) -> None:
    stage, cams = tiny_refine_stage(), tmp_path / "cams"
    write_uniform_cams(tiny_voc, cams)
    result = refinement_breakdown(stage, cams, str(tiny_voc), split="train", exp_times=(1,), params=TINY_WALK)
    assert result["n_images"] == 4 and list(result["steps"]) == ["cam", "cam x (1-B)", "walk 2^1"]
    assert 0.0 < result["mean_boundary"] < 1.0
    # the same confusion matrix built image by image here
    reader = build_reader("voc", str(tiny_voc), "train")
    conf = np.zeros((21, 21), dtype=np.int64)
    for image_id in reader.ids:
        image = torch.from_numpy(to_chw(eval_transform()(image=reader.image(image_id))["image"]))[None]
        with torch.no_grad():
            boundary = stage.model.boundary(image)
        rec = read_cam(cams, image_id)
        gt = reader.mask(image_id)
        steps = refinement_steps(torch.from_numpy(rec["cam"]), boundary, torch.from_numpy(rec["keys"]), gt.shape,
                                 exp_times=(1,), radius=2)
        conf += confusion_matrix(steps["walk 2^1"], gt, 21)
    assert result["steps"]["walk 2^1"]["miou"] == pytest.approx(miou(conf))
    assert result["steps"]["walk 2^1"]["fg_fraction"] == pytest.approx(conf[:, 1:].sum() / conf.sum())


def test_ground_truth_boundary_replaces_the_learned_one(tiny_voc: Path, tmp_path: Path) -> None:
    from rpnet_pl.ops.affinity import mask_boundary

    stage, cams = tiny_refine_stage(), tmp_path / "cams"
    write_uniform_cams(tiny_voc, cams)
    result = refinement_breakdown(stage, cams, str(tiny_voc), split="train", exp_times=(8,),
                                  boundary_source="ground_truth", params=TINY_WALK)
    assert result["boundary_source"] == "ground_truth"
    reader = build_reader("voc", str(tiny_voc), "train")
    conf = np.zeros((21, 21), dtype=np.int64)
    means = []
    for image_id in reader.ids:
        gt = reader.mask(image_id)
        boundary = mask_boundary(gt, ((gt.shape[0] - 1) // 4 + 1, (gt.shape[1] - 1) // 4 + 1))
        means.append(boundary.mean())
        rec = read_cam(cams, image_id)
        steps = refinement_steps(torch.from_numpy(rec["cam"]), torch.from_numpy(boundary),
                                 torch.from_numpy(rec["keys"]), gt.shape, exp_times=(8,), radius=2)
        conf += confusion_matrix(steps["walk 2^8"], gt, 21)
    assert result["mean_boundary"] == pytest.approx(float(np.mean(means)))
    assert result["steps"]["walk 2^8"]["miou"] == pytest.approx(miou(conf))
    with pytest.raises(ValueError, match="boundary_source"):
        refinement_breakdown(stage, cams, str(tiny_voc), boundary_source="oracle")


def test_cli_prints_the_table_and_writes_json(tiny_voc: Path, tmp_path: Path, capsys) -> None:
    stage, cams = tiny_refine_stage(), tmp_path / "cams"
    write_uniform_cams(tiny_voc, cams)
    ckpt = save_stage_checkpoint(stage, tmp_path / "irn.ckpt")
    out = tmp_path / "breakdown.json"
    assert main(["eval-refinement", "--ckpt", str(ckpt), "--cams", str(cams), "--root", str(tiny_voc),
                 "--exp-times", "0", "--radius", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| cam x (1-B) |" in printed and "| walk 2^0 |" in printed and "4 image(s), split train" in printed
    assert set(json.loads(out.read_text())["steps"]) == {"cam", "cam x (1-B)", "walk 2^0"}
    assert "learned boundary" in printed
    assert main(["eval-refinement", "--ckpt", str(ckpt), "--cams", str(cams), "--root", str(tiny_voc),
                 "--exp-times", "0", "--radius", "2", "--boundary", "ground-truth", "--out", str(out)]) == 0
    assert "ground truth boundary" in capsys.readouterr().out
    assert json.loads(out.read_text())["boundary_source"] == "ground_truth"


def test_cli_missing_checkpoint_is_a_clear_error(tiny_voc: Path, tmp_path: Path, capsys) -> None:
    assert main(["eval-refinement", "--ckpt", str(tmp_path / "none.ckpt"), "--cams", str(tmp_path),
                 "--root", str(tiny_voc)]) == 2
    assert "none.ckpt: refine checkpoint not found" in capsys.readouterr().err


def test_irn_losses_hand_computed() -> None:
    """Boundary 0.5 everywhere (logits 0): every pair affinity is 0.5. An all-background label has
    only positive background pairs: pos_bg = -log(0.5 + 1e-5), the others 0; zero displacement on
    background costs nothing. loss = (pos_bg / 2) / 2."""
    from rpnet_pl.stages.checkpoints import build_stage
    from rpnet_pl.stages.refine import irn_losses

    out = {"edge_logits": torch.zeros(1, 1, 6, 6, requires_grad=True), "displacement": torch.zeros(1, 2, 6, 6)}
    terms = irn_losses(out, torch.zeros(1, 24, 24, dtype=torch.long), radius=2)
    pos_bg = -np.log(0.5 + 1e-5)
    assert terms["pos_bg_loss"].item() == pytest.approx(pos_bg, rel=1e-4)
    assert terms["pos_fg_loss"].item() == 0 and terms["neg_loss"].item() == 0
    assert terms["dp_bg_loss"].item() == 0 and terms["dp_fg_loss"].item() == 0
    assert terms["loss"].item() == pytest.approx(pos_bg / 4, rel=1e-4)
    assert terms["edge"].shape == (1, 6, 6) and torch.allclose(terms["edge"], torch.full((1, 6, 6), 0.5))
    terms["loss"].backward()  # d loss / d logit >= 0: descent lowers the boundary and raises the affinity
    assert (out["edge_logits"].grad >= 0).all() and out["edge_logits"].grad.sum() > 0
    no_dp = irn_losses(out, torch.zeros(1, 24, 24, dtype=torch.long), radius=2, displacement=False)
    assert "dp_bg_loss" not in no_dp and no_dp["loss"].item() == pytest.approx(pos_bg / 4, rel=1e-4)


@pytest.mark.parametrize("pad_to", [None, 64])
def test_breakdown_pads_as_configured(tiny_voc: Path, tmp_path: Path, pad_to: int | None) -> None:
    stage, cams = tiny_refine_stage(), tmp_path / "cams"
    write_uniform_cams(tiny_voc, cams)
    result = refinement_breakdown(stage, cams, str(tiny_voc), split="train", exp_times=(),
                                  params=RandomWalkParams(radius=2, pad_to=pad_to or 0))
    reader = build_reader("voc", str(tiny_voc), "train")
    means = []
    for image_id in reader.ids:
        image = torch.from_numpy(to_chw(eval_transform()(image=reader.image(image_id))["image"]))[None]
        with torch.no_grad():
            means.append(float(stage.model.boundary(image, pad_to=pad_to).mean()))
    assert result["mean_boundary"] == pytest.approx(np.mean(means), rel=1e-5)


def test_walk_over_the_object_boundary_completes_a_partial_cam() -> None:
    """Table I's "+ BR" in miniature: a CAM on one corner of an object spreads over the whole object
    and stops at its boundary (the boundary drawn from the mask, as `--boundary ground-truth`)."""
    from rpnet_pl.ops.affinity import mask_boundary

    gt = np.zeros((48, 48), dtype=np.int64)
    gt[6:30, 6:30] = 3  # 24 x 24 px: stride-4 cells 1..7, whose rings 1 and 7 are mixed
    boundary = torch.from_numpy(mask_boundary(gt, (12, 12)))
    assert boundary[1, 1:8].eq(1).all() and boundary[2:7, 2:7].eq(0).all() and boundary[9:, 9:].eq(0).all()
    cams = torch.zeros(1, 12, 12)
    cams[0, 2:4, 2:4] = 1.0  # the "discriminative part": 4 of the 25 inner cells
    steps = refinement_steps(cams, boundary, torch.tensor([3]), (48, 48), exp_times=(8,), radius=5)

    def iou(pred: np.ndarray) -> float:
        return float(((pred == 3) & (gt == 3)).sum() / ((pred == 3) | (gt == 3)).sum())

    assert iou(steps["cam"]) < 0.25
    assert iou(steps["walk 2^8"]) > 0.75
    assert (steps["walk 2^8"][gt == 0] == 0).mean() > 0.97  # the boundary holds: background stays background
    inner = steps["walk 2^8"][8:28, 8:28]  # the pixels of the inner cells 2..6
    assert (inner == 3).all()


def test_stride4_labels_sample_like_pil_nearest() -> None:
    """IRN reduces IR labels with PIL's nearest resize at 0.25: pixel 4i + 2 (not 4i)."""
    from PIL import Image

    from rpnet_pl.stages.refine import nearest_indices, stride4_labels

    assert nearest_indices(16, 4).tolist() == [2, 6, 10, 14]
    assert nearest_indices(18, 5).tolist() == [1, 5, 9, 12, 16]  # floor((i + .5) * 3.6)
    label = (torch.arange(18)[:, None] * 10 + torch.arange(18)[None, :]).to(torch.uint8)[None]  # (1, 18, 18)
    out = stride4_labels(label, (6, 6))  # IRN: round(18 / 4) = round(4.5) = 4 rows and columns (numpy rounds to even)
    pil = np.asarray(Image.fromarray(label[0].numpy()).resize((4, 4), Image.NEAREST))
    assert out[0, :4, :4].numpy().tolist() == pil.tolist() == [[22, 26, 31, 35], [62, 66, 71, 75],
                                                                 [112, 116, 121, 125], [152, 156, 161, 165]]
    assert torch.all(out[0, 4:] == 255) and torch.all(out[0, :, 4:] == 255)  # padded to the network's size


def test_stride4_labels_cv2_reduction_is_irn_masters() -> None:
    from rpnet_pl.stages.refine import stride4_labels

    label = torch.arange(64, dtype=torch.uint8).reshape(1, 8, 8)
    assert stride4_labels(label, (2, 2), "cv2")[0].tolist() == [[0, 4], [32, 36]]  # pixel 4i
    assert stride4_labels(label, (2, 2), "pil")[0].tolist() == [[18, 22], [50, 54]]  # pixel 4i + 2
    with pytest.raises(ValueError):
        stride4_labels(label, (2, 2), "other")  # type: ignore[arg-type]


@pytest.mark.parametrize("self_attention", [False, True])
def test_optimiser_groups_and_the_non_local_blocks(self_attention: bool) -> None:
    """Edge branch at lr, displacement at 10 lr and (RPNet's copy of IRN) the non-local blocks of levels
    3-5 at 2 lr, every group with the stage's weight decay and momentum."""
    stage = build_stage("refine", backbone="resnet18", pretrained=False, lr=0.05, weight_decay=3e-4, momentum=1e-4,
                        self_attention=self_attention)
    opt, _ = stage.make_optimizer(max_steps=10)
    expected = [0.05, 0.5] + ([0.1] if self_attention else [])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(expected)
    assert {g["weight_decay"] for g in opt.param_groups} == {3e-4}
    assert {g["momentum"] for g in opt.param_groups} == {1e-4}
    assert sorted(stage.model.attention) == (["3", "4", "5"] if self_attention else [])
    if self_attention:
        assert {id(p) for p in opt.param_groups[2]["params"]} == {id(p) for p in stage.model.attention.parameters()}
