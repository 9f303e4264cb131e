"""Stage 2, ``refine``: IRN boundary refinement (Ahn et al. 2019, the paper's [4], "+ BR" in Table I).

Training (`rpnet fit refine`) learns IRNet's boundary (and displacement) branches from IR labels.
The ``pseudo_masks`` step (:mod:`rpnet_pl.steps.pseudo_masks`) then turns the trained network's
boundary map into a transition matrix and random-walks the CAM seeds into pseudo masks. (The
pair-label math of the boundary loss is :mod:`rpnet_pl.ops.affinity`.)
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from rpnet_pl.data.classes import voc_palette
from rpnet_pl.models.irn import displacement_losses
from rpnet_pl.ops.affinity import affinity_from_boundary, affinity_labels, affinity_loss
from rpnet_pl.stages.common import StageModule
from rpnet_pl.stages.visuals import denormalise, gray, log_images, overlay_labels, resize_map

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


class RefineStage(StageModule):
    """Trains the boundary and displacement branches of the :class:`~rpnet_pl.models.irn.IRNet` it is
    given (backbone frozen) on IR labels.

    Loss (spec): (pos_bg/2 + pos_fg/2 + neg)/2 + (displacement fg + bg)/2.

    Two radii, two names: ``boundary_radius`` here is the pixel-pair radius of the affinity and
    displacement losses (IRN: 10 at stride 4); the random walk's transition radius (IRN: 5) is the
    ``pseudo_masks`` step's ``radius``.

    The network's ``self_attention`` (RPNet's copy of IRN, with a non-local block on backbone levels
    3-5, see :class:`IRNet`) trains at ``lr * attention_lr_mult`` (RPNet: 2x); ``experiments/base.yaml``
    turns it on, the CAM baselines (IRN's own network) leave it off.
    """

    def __init__(
        self,
        net: nn.Module,
        boundary_radius: int = 10,
        lr: float = 0.1,
        weight_decay: float = 1e-4,
        momentum: float = 1e-4,
        poly_power: float = 0.9,
        displacement_loss: bool = True,
        label_reduction: LabelReduction = "pil",
        displacement_lr_mult: float = 10.0,
        attention_lr_mult: float = 2.0,
        checkpoint_every_n_steps: int | None = None,
        progress_every_n_steps: int | None = None,
        image_log_every_n_steps: int = 200,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = net
        self.save_network_and_hyperparameters(net)

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """IRN's objective (:func:`irn_losses`) on ``image`` (B, 3, H, W) and IR ``label`` (B, H, W)."""
        return irn_losses(self.model(batch["image"]), batch["label"], self.hparams.boundary_radius,
                          displacement=self.hparams.displacement_loss,
                          reduction=self.hparams.get("label_reduction", "pil"))

    def log_samples(self, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> None:
        """First image of the batch, its IR label and the predicted boundary probability."""
        image = denormalise(batch["image"][0])
        boundary = resize_map(out["edge"][0], tuple(batch["image"].shape[-2:]))
        tiles = [image, overlay_labels(image, batch["label"][0].cpu().numpy(), voc_palette()), gray(boundary)]
        log_images(self.loggers, "train/samples", tiles, self.global_step, ["image", "IR label", "boundary"])

    def optimizer_groups(self) -> list[tuple[Any, float]]:
        """The boundary branch at ``lr``, the displacement branch at ``lr * displacement_lr_mult`` (IRN:
        10x) and, with ``self_attention``, the non-local blocks at ``lr * attention_lr_mult`` (RPNet: 2x);
        every group with the stage's weight decay and momentum."""
        hp = self.hparams
        edge_params, dp_params, attention_params = self.model.param_groups()
        return [(edge_params, hp.lr), (dp_params, hp.lr * hp.displacement_lr_mult),
                (attention_params, hp.lr * hp.attention_lr_mult)]  # empty: dropped by poly_sgd
