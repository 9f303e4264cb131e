"""The ``cam`` step (`rpnet cam`): the CAM file of every image of a split (:class:`WriteCam`, the
trained classifier's plain branch, multi-scale + flip) on the per-image driver
(:func:`~rpnet_pl.steps.inference.run_per_image`); the record's helpers are
:mod:`rpnet_pl.steps.cam_inference`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpnet_pl.models.reference_weights import is_reference_checkpoint
from rpnet_pl.ops.params import CAM_INFERENCE
from rpnet_pl.pipeline.registry import CamOptions
from rpnet_pl.stages.checkpoints import build_stage
from rpnet_pl.stages.classifier import ClassifierStage, reference_classifier_args
from rpnet_pl.steps.cam_inference import cam_is_complete, cam_path, cam_record, multiscale_cam, write_cam
from rpnet_pl.steps.inference import run_per_image


@dataclass(frozen=True)
class WriteCam:
    """One image's CAM file in ``out``: the classifier's plain branch over ``scales`` (and flips)
    (:func:`multiscale_cam`); an image whose file is complete is skipped (returns None)."""

    out: str
    scales: tuple[float, ...] = CAM_INFERENCE.scales
    flip: bool = CAM_INFERENCE.flip

    def __call__(self, stage: ClassifierStage, batch: dict[str, Any]) -> str | None:
        image_id = batch["id"][0]
        if cam_is_complete(cam_path(self.out, image_id)):
            return None
        strided, high = multiscale_cam(stage.model.cam, batch["image"], self.scales, self.flip)
        write_cam(self.out, image_id, cam_record(strided, high, batch["labels"][0]))
        return image_id


def make_cams(ckpt: str | Path, out: str | Path, root: str, dataset: str = "voc", split: str = "train_aug",
              scales: tuple[float, ...] = CAM_INFERENCE.scales, flip: bool = True, devices: int | str = "auto",
              num_nodes: int = 1, accelerator: str = "auto", backbone: str | None = None) -> int:
    """`rpnet cam`: write the CAM file of every image of ``split`` that has none yet; returns how many
    images were processed. Under DDP each rank writes a disjoint share of the images. ``ckpt`` is a
    Lightning checkpoint of ours or a state dict saved by the public RPNet / IRN code (``backbone``:
    its backbone, read from the tensor shapes when not given)."""
    def from_reference() -> ClassifierStage:  # sess/res50_cam.pth of the public RPNet / IRN code
        return build_stage("classifier", **reference_classifier_args(ckpt, backbone))

    build = from_reference if Path(ckpt).is_file() and is_reference_checkpoint(ckpt) else None
    work = WriteCam(str(out), tuple(scales), flip)
    todo, _ = run_per_image(ClassifierStage, ckpt, "classifier", work, "CAMs", root=root, dataset=dataset, split=split,
                            done=lambda reader, i: cam_is_complete(cam_path(out, i)), devices=devices,
                            num_nodes=num_nodes, accelerator=accelerator, build=build)
    return todo


def cam_step(o: CamOptions) -> int:
    """The ``cam`` step (`rpnet cam`): :func:`make_cams` with the step's options."""
    n = make_cams(o.ckpt, o.out, root=o.root, dataset=o.dataset, split=o.split, scales=o.scales, flip=o.flip,
                  devices=o.lightning_devices, num_nodes=o.num_nodes, accelerator=o.accelerator, backbone=o.backbone)
    print(f"wrote {n} CAM file(s) to {o.out}")
    return 0
