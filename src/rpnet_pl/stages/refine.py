"""Stage 2: IRN boundary refinement (Ahn et al. 2019, the paper's [4], "+ BR" in Table I).

Training learns the boundary (and displacement) branches from IR labels; prediction turns a
boundary map into a transition matrix and random-walks the CAM seeds into pseudo masks, one palette
PNG per image, skipping images whose PNG is already complete.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from rpnet_pl.data.classes import voc_palette
from rpnet_pl.io import write_label_png
from rpnet_pl.models.irn import IRN_INFER_PAD, IRNet, displacement_losses
from rpnet_pl.ops.affinity import affinity_from_boundary, affinity_labels, affinity_loss, mask_boundary
from rpnet_pl.ops.params import RANDOM_WALK, REFINEMENT_EXP_TIMES
from rpnet_pl.ops.random_walk import propagate_cams, sem_seg_from_rw
from rpnet_pl.stages.cam_inference import read_cam
from rpnet_pl.stages.common import poly_sgd, set_memory_format, training_callbacks
from rpnet_pl.stages.ir_labels import label_is_complete
from rpnet_pl.stages.visuals import denormalise, gray, image_logging_due, log_images, overlay_labels, resize_map

log = logging.getLogger(__name__)

LabelReduction = Literal["pil", "cv2"]


def nearest_indices(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each output pixel of a nearest-neighbour resize ``n_in -> n_out``, as PIL's
    ``Image.NEAREST`` does it: ``floor((i + 0.5) * n_in / n_out)`` (for a 4x reduction: 4i + 2)."""
    i = torch.arange(n_out, dtype=torch.float64)
    return torch.floor((i + 0.5) * (n_in / n_out)).long().clamp_(0, max(n_in - 1, 0))


def stride4_labels(label: torch.Tensor, size: tuple[int, int], reduction: LabelReduction = "pil") -> torch.Tensor:
    """IR labels (B, H, W) -> the stride-4 label map IRN trains on, cut/padded (255) to ``size``.

    ``reduction="pil"`` (RPNet's copy of IRN, default): ``pil_rescale(label, 0.25, order=0)``, a PIL
    nearest resize to ``round(H / 4) x round(W / 4)`` that samples pixel ``4i + 2``
    (:func:`nearest_indices`). ``"cv2"`` (IRN's own master): ``cv2.resize(..., fx=0.25,
    interpolation=INTER_NEAREST)``, which samples pixel ``4i``.
    """
    H, W = label.shape[-2:]
    hh, ww = max(1, int(np.round(H * 0.25))), max(1, int(np.round(W * 0.25)))
    if reduction == "pil":
        rows, cols = nearest_indices(H, hh).to(label.device), nearest_indices(W, ww).to(label.device)
        small = label[:, rows][:, :, cols]
    elif reduction == "cv2":
        small = label[:, ::4, ::4][:, :hh, :ww]
    else:
        raise ValueError(f"label reduction must be 'pil' or 'cv2', got {reduction!r}")
    h, w = size
    out = torch.full((label.shape[0], h, w), 255, dtype=label.dtype, device=label.device)
    hh, ww = min(h, small.shape[1]), min(w, small.shape[2])
    out[:, :hh, :ww] = small[:, :hh, :ww]
    return out


def irn_objective(edge_logits: torch.Tensor, displacement: torch.Tensor | None, label4: torch.Tensor,
                  radius: int) -> dict[str, torch.Tensor]:
    """IRN's objective from stride-4 labels (``train_irn.py``): ``loss = (pos_bg/2 + pos_fg/2 + neg)/2``
    plus ``(dp_fg + dp_bg)/2`` when ``displacement`` is given; every term is returned.

    edge_logits: (B, 1, h4, w4); displacement: (B, 2, h4, w4) raw (training mode) or None;
    label4: (B, h4, w4) IR labels at stride 4 (255 ignore). ``edge`` is the boundary probability,
    ``affinity`` (B, D, h', w') and the pair masks are returned for inspection.
    """
    edge = torch.sigmoid(edge_logits[:, 0].float())  # (B, h4, w4)
    aff = affinity_from_boundary(edge, radius)  # (B, D, h', w')
    pos_bg, pos_fg, neg = affinity_labels(label4, radius)
    pos_bg_loss, pos_fg_loss, neg_loss = affinity_loss(aff, pos_bg, pos_fg, neg)
    terms = {"edge": edge, "affinity": aff, "pos_bg": pos_bg, "pos_fg": pos_fg, "neg": neg,
             "pos_bg_loss": pos_bg_loss, "pos_fg_loss": pos_fg_loss, "neg_loss": neg_loss,
             "loss": (pos_bg_loss / 2 + pos_fg_loss / 2 + neg_loss) / 2}
    if displacement is not None:
        terms["dp_fg_loss"], terms["dp_bg_loss"] = displacement_losses(displacement.float(), label4, radius,
                                                                        pairs=(pos_bg, pos_fg))
        terms["loss"] = terms["loss"] + (terms["dp_fg_loss"] + terms["dp_bg_loss"]) / 2
    return terms


def irn_losses(out: dict[str, torch.Tensor], ir_label: torch.Tensor, radius: int,
               displacement: bool = True, reduction: LabelReduction = "pil") -> dict[str, torch.Tensor]:
    """IRN's objective on one batch (spec "Stage 2"), see :func:`irn_objective`.

    out: IRNet's output (``edge_logits`` (B, 1, h4, w4), ``displacement`` (B, 2, h4, w4));
    ir_label: (B, H, W) IR labels at full size (255 ignore), reduced by :func:`stride4_labels`.
    """
    label = stride4_labels(ir_label, tuple(out["edge_logits"].shape[-2:]), reduction)
    return irn_objective(out["edge_logits"], out["displacement"] if displacement else None, label, radius)


class AffinityStage(pl.LightningModule):
    """Trains IRNet's boundary and displacement branches (backbone frozen) on IR labels.

    Loss (spec): (pos_bg/2 + pos_fg/2 + neg)/2 + (displacement fg + bg)/2.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        radius: int = 10,
        lr: float = 0.1,
        weight_decay: float = 1e-4,
        momentum: float = 0.0,
        poly_power: float = 0.9,
        displacement_loss: bool = True,
        label_reduction: LabelReduction = "pil",
        displacement_lr_mult: float = 10.0,
        rw_radius: int = RANDOM_WALK.radius,
        rw_beta: float = RANDOM_WALK.beta,
        rw_exp_times: int = RANDOM_WALK.exp_times,
        bg_threshold: float = RANDOM_WALK.bg_threshold,
        rw_pad_to: int | None = IRN_INFER_PAD,
        cams_dir: str | None = None,
        out_dir: str | None = None,
        checkpoint_every_n_steps: int | None = None,
        progress_every_n_steps: int | None = None,
        image_log_every_n_steps: int = 200,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = IRNet(backbone=backbone, pretrained=pretrained, weights=weights)

    def setup(self, stage: str) -> None:
        """``channels_last``: the network's weights in NHWC, which speeds up convolutions on GPUs with
        tensor cores (inputs follow the weights' layout); pair it with ``trainer.precision: bf16-mixed``."""
        set_memory_format(self.model, self.hparams.get("channels_last", False))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms = irn_losses(self.model(batch["image"]), batch["label"], self.hparams.radius,
                           displacement=self.hparams.displacement_loss,
                           reduction=self.hparams.get("label_reduction", "pil"))
        bs = batch["image"].shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=bs)
        for key in ("pos_bg_loss", "pos_fg_loss", "neg_loss", "dp_fg_loss", "dp_bg_loss"):
            if key in terms:
                self.log(f"train/{key}", terms[key], batch_size=bs)
        edge, loss = terms["edge"], terms["loss"]
        if image_logging_due(self, self.hparams.image_log_every_n_steps):
            self._log_samples(batch, edge)
        return loss

    @torch.no_grad()
    def _log_samples(self, batch: dict[str, Any], edge: torch.Tensor) -> None:
        """First image of the batch, its IR label and the predicted boundary probability."""
        image = denormalise(batch["image"][0])
        boundary = resize_map(edge[0], tuple(batch["image"].shape[-2:]))
        tiles = [image, overlay_labels(image, batch["label"][0].cpu().numpy(), voc_palette()), gray(boundary)]
        log_images(self.loggers, "train/samples", tiles, self.global_step, ["image", "IR label", "boundary"])

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        edge_params, dp_params = self.model.param_groups()  # IRN: displacement branch at 10x lr
        opt, sched = poly_sgd([(edge_params, hp.lr), (dp_params, hp.lr * hp.displacement_lr_mult)],
                              max_steps=int(self.trainer.estimated_stepping_batches),
                              weight_decay=hp.weight_decay, momentum=hp.momentum, power=hp.poly_power)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_callbacks(self) -> list[pl.Callback]:
        return training_callbacks(self._trainer, self.hparams.checkpoint_every_n_steps,
                                  self.hparams.get("progress_every_n_steps"))

    # -- pseudo masks ------------------------------------------------------------------------
    def pseudo_mask(self, image: torch.Tensor, cam_record: dict[str, Any]) -> "np.ndarray":
        """Random-walk one image's strided CAMs over its boundary map (spec "Pseudo masks").

        image (1, 3, H, W) normalised; returns (H, W) int64 class ids (numpy).
        """
        hp = self.hparams
        boundary = self.model.boundary(image, pad_to=hp.rw_pad_to or None)  # (h4, w4), flip-averaged
        cams = torch.as_tensor(cam_record["cam"], dtype=torch.float32, device=boundary.device)  # (K, h4, w4)
        keys = torch.as_tensor(cam_record["keys"], dtype=torch.long)
        h4, w4 = boundary.shape
        cams = cams[:, :h4, :w4]
        if cams.shape[-2:] != boundary.shape:
            cams = F.pad(cams, (0, w4 - cams.shape[-1], 0, h4 - cams.shape[-2]))
        rw = propagate_cams(cams, boundary, radius=hp.rw_radius, beta=hp.rw_beta, exp_times=hp.rw_exp_times)
        return sem_seg_from_rw(rw, keys, tuple(image.shape[-2:]), bg=hp.bg_threshold)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> str | None:
        hp = self.hparams
        if not (hp.cams_dir and hp.out_dir):
            raise ValueError("cams_dir and out_dir must be set for pseudo-mask prediction")
        image_id = batch["id"][0]
        path = Path(hp.out_dir) / f"{image_id}.png"
        if label_is_complete(path, tuple(batch["image"].shape[-2:])):
            return None
        label = self.pseudo_mask(batch["image"], read_cam(hp.cams_dir, image_id))
        write_label_png(path, label.astype(np.uint8), voc_palette())
        return image_id


def make_sem_seg_labels(ckpt: str | Path, cams_dir: str | Path, out: str | Path, root: str, dataset: str = "voc",
                        split: str = "train_aug", radius: int = RANDOM_WALK.radius, beta: float = RANDOM_WALK.beta,
                        exp_times: int = RANDOM_WALK.exp_times, bg_threshold: float = RANDOM_WALK.bg_threshold,
                        pad_to: int | None = IRN_INFER_PAD,
                        devices: int | str = "auto", num_nodes: int = 1, accelerator: str = "auto") -> int:
    """`rpnet sem-seg-labels`: pseudo masks for every image of ``split`` without a complete PNG."""
    from rpnet_pl.data.datamodules import InferenceDataModule
    from rpnet_pl.stages.common import inference_trainer

    from rpnet_pl.stages.checkpoints import load_stage_checkpoint

    stage = load_stage_checkpoint(
        AffinityStage, ckpt, "affinity", pretrained=False, weights=None, cams_dir=str(cams_dir), out_dir=str(out),
        rw_radius=radius, rw_beta=beta, rw_exp_times=exp_times, bg_threshold=bg_threshold, rw_pad_to=pad_to)
    dm = InferenceDataModule(root=root, dataset=dataset, split=split)  # type: ignore[arg-type]
    reader = dm.reader
    from PIL import Image

    def done(i: str) -> bool:
        with Image.open(reader.image_path(i)) as im:
            return label_is_complete(Path(out) / f"{i}.png", (im.size[1], im.size[0]))

    dm.skip_ids = {i for i in reader.ids if done(i)}
    todo = len(reader.ids) - len(dm.skip_ids)
    if todo == 0:
        return 0
    trainer = inference_trainer(devices=devices, num_nodes=num_nodes, accelerator=accelerator)
    trainer.predict(stage, datamodule=dm, return_predictions=False)
    return todo


# -- where refinement gains or loses -----------------------------------------------------------
def refinement_steps(cams: torch.Tensor, boundary: torch.Tensor, keys: torch.Tensor, image_size: tuple[int, int],
                     exp_times: Sequence[int] = REFINEMENT_EXP_TIMES, radius: int = RANDOM_WALK.radius,
                     beta: float = RANDOM_WALK.beta, bg: float = RANDOM_WALK.bg_threshold) -> dict[str, np.ndarray]:
    """Pseudo masks of one image after each step of the refinement (spec "Pseudo masks"):

    * ``cam``: the strided CAMs alone (x4 up, global max, background ``bg``, argmax);
    * ``cam x (1-B)``: the CAMs damped by the boundary map, no walk;
    * ``walk 2^e``: the full recipe with ``2 ** e`` random-walk steps, for each ``e`` in ``exp_times``.

    cams (K, h, w), boundary (h, w), keys (K,) class ids. Returns name -> (H, W) int64 label map.
    """
    out = {"cam": sem_seg_from_rw(cams, keys, image_size, bg=bg),
           "cam x (1-B)": sem_seg_from_rw(cams * (1.0 - boundary), keys, image_size, bg=bg)}
    for e in exp_times:
        rw = propagate_cams(cams, boundary, radius=radius, beta=beta, exp_times=e)
        out[f"walk 2^{e}"] = sem_seg_from_rw(rw, keys, image_size, bg=bg)
    return out


BOUNDARY_SOURCES = ("learned", "ground_truth")


def refinement_breakdown(stage: AffinityStage, cams_dir: str | Path, root: str, dataset: str = "voc",
                         split: str = "train", exp_times: Sequence[int] = REFINEMENT_EXP_TIMES,
                         boundary_source: str = "learned") -> dict[str, Any]:
    """mIoU and foreground share of the pseudo masks after each step of :func:`refinement_steps` over
    a split with ground truth (a diagnosis of the Table I "+ BR" gain; `rpnet eval-refinement`).

    ``boundary_source="ground_truth"`` walks over the ideal boundary map drawn from each ground-truth
    mask (:func:`mask_boundary`) instead of IRN's: what the walk can do with these seeds when the
    boundary is right, which splits a loss between the boundary network and the seeds.
    Also reports the mean boundary probability. Uses the stage's random-walk settings. Returns
    ``{"split", "n_images", "boundary_source", "mean_boundary", "steps": {name: {"miou",
    "fg_fraction", "per_class_iou"}}}`` (nan -> None).
    """
    if boundary_source not in BOUNDARY_SOURCES:
        raise ValueError(f"boundary_source must be one of {BOUNDARY_SOURCES}, got {boundary_source!r}")
    from rpnet_pl.data.datamodules import InferenceDataModule
    from rpnet_pl.ops.metrics import confusion_matrix, iou_from_confusion, miou
    from rpnet_pl.stages.evaluate import json_number, per_class_json

    hp = stage.hparams
    dm = InferenceDataModule(root=root, dataset=dataset, split=split, with_mask=True, num_workers=0)  # type: ignore[arg-type]
    reader = dm.reader
    c = reader.num_classes
    conf: dict[str, np.ndarray] = {}
    boundary_sum, n = 0.0, 0
    stage.eval()
    with torch.no_grad():
        for item in dm.dataset_:
            image, gt = item["image"][None].to(stage.device), item["mask"].numpy()
            if boundary_source == "learned":
                boundary = stage.model.boundary(image, pad_to=hp.rw_pad_to or None)
            else:
                size4 = tuple((s - 1) // stage.model.stride + 1 for s in gt.shape)
                boundary = torch.as_tensor(mask_boundary(gt, size4, stage.model.stride), device=stage.device)
            record = read_cam(cams_dir, item["id"])
            cams = torch.as_tensor(record["cam"], dtype=torch.float32, device=boundary.device)
            keys = torch.as_tensor(record["keys"], dtype=torch.long)
            h4, w4 = boundary.shape
            cams = F.pad(cams[:, :h4, :w4], (0, max(0, w4 - cams.shape[-1]), 0, max(0, h4 - cams.shape[-2])))
            steps = refinement_steps(cams, boundary, keys, gt.shape, exp_times, radius=hp.rw_radius,
                                     beta=hp.rw_beta, bg=hp.bg_threshold)
            for name, pred in steps.items():
                conf.setdefault(name, np.zeros((c, c), dtype=np.int64))
                conf[name] += confusion_matrix(pred, gt, c)
            boundary_sum += float(boundary.mean())
            n += 1
    result: dict[str, Any] = {"split": split, "dataset": dataset, "n_images": n, "boundary_source": boundary_source,
                              "mean_boundary": boundary_sum / max(n, 1), "steps": {}}
    for name, m in conf.items():
        iou = iou_from_confusion(m)
        result["steps"][name] = {
            "miou": json_number(miou(m)),
            "fg_fraction": json_number(float(m[:, 1:].sum() / max(m.sum(), 1))),
            "per_class_iou": per_class_json(iou, reader.class_names),
        }
    return result


def format_breakdown(result: dict[str, Any]) -> str:
    """Markdown table of a :func:`refinement_breakdown` result."""
    lines = ["| step | mIoU (%) | predicted foreground (%) |", "|---|---:|---:|"]
    for name, row in result["steps"].items():
        m = "-" if row["miou"] is None else f"{100 * row['miou']:.1f}"
        lines.append(f"| {name} | {m} | {100 * row['fg_fraction']:.1f} |")
    lines.append(f"\n({result['n_images']} image(s), split {result['split']}, "
                 f"{result.get('boundary_source', 'learned').replace('_', ' ')} boundary, "
                 f"mean boundary probability {result['mean_boundary']:.3f})")
    return "\n".join(lines)
