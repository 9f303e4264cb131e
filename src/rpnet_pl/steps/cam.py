"""The ``cam`` step (`rpnet cam`): the CAM file of every image of a split, written by
:meth:`ClassifierStage.predict_step <rpnet_pl.stages.classifier.ClassifierStage.predict_step>` on the
per-image driver (:func:`~rpnet_pl.steps.inference.run_per_image`); the record's helpers are
:mod:`rpnet_pl.steps.cam_inference`."""
from __future__ import annotations

from pathlib import Path

from rpnet_pl.models.reference_weights import is_reference_checkpoint
from rpnet_pl.ops.params import CAM_INFERENCE
from rpnet_pl.pipeline.registry import CamOptions
from rpnet_pl.stages.classifier import ClassifierStage, reference_classifier_args
from rpnet_pl.steps.cam_inference import cam_is_complete, cam_path
from rpnet_pl.steps.inference import run_per_image


def make_cams(ckpt: str | Path, out: str | Path, root: str, dataset: str = "voc", split: str = "train_aug",
              scales: tuple[float, ...] = CAM_INFERENCE.scales, flip: bool = True, devices: int | str = "auto",
              num_nodes: int = 1, accelerator: str = "auto", backbone: str | None = None) -> int:
    """`rpnet cam`: write the CAM file of every image of ``split`` that has none yet; returns how many
    images were processed. Under DDP each rank writes a disjoint share of the images. ``ckpt`` is a
    Lightning checkpoint of ours or a state dict saved by the public RPNet / IRN code (``backbone``:
    its backbone, read from the tensor shapes when not given)."""
    overrides = {"cam_out": str(out), "cam_scales": tuple(scales), "cam_flip": flip}

    def from_reference() -> ClassifierStage:  # sess/res50_cam.pth of the public RPNet / IRN code
        return ClassifierStage(**reference_classifier_args(ckpt, backbone), **overrides)

    build = from_reference if Path(ckpt).is_file() and is_reference_checkpoint(ckpt) else None
    todo, _ = run_per_image(ClassifierStage, ckpt, "classifier", overrides, root=root, dataset=dataset, split=split,
                            done=lambda reader, i: cam_is_complete(cam_path(out, i)), devices=devices,
                            num_nodes=num_nodes, accelerator=accelerator, build=build)
    return todo


def cam_step(o: CamOptions) -> int:
    """The ``cam`` step (`rpnet cam`): :func:`make_cams` with the step's options."""
    n = make_cams(o.ckpt, o.out, root=o.root, dataset=o.dataset, split=o.split, scales=o.scales, flip=o.flip,
                  devices=o.lightning_devices, num_nodes=o.num_nodes, accelerator=o.accelerator, backbone=o.backbone)
    print(f"wrote {n} CAM file(s) to {o.out}")
    return 0
