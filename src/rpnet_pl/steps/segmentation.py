"""The segmenter's per-image steps on the driver (:func:`~rpnet_pl.steps.inference.run_per_image`):
``eval_seg`` (`rpnet eval-seg`: predictions of a split, with and without denseCRF, scored against the
ground truth) and ``predict_seg`` (`rpnet predict-seg`: the benchmark's files). The PNGs are written by
:class:`WritePrediction`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from rpnet_pl.data.classes import COCO_CATEGORY_IDS, IGNORE_INDEX, voc_palette
from rpnet_pl.ops.params import SEG_INFERENCE
from rpnet_pl.pipeline.layout import METRICS
from rpnet_pl.pipeline.registry import EvalSegOptions, PredictSegOptions
from rpnet_pl.stages.segmenter import SegmenterStage, multiscale_probs
from rpnet_pl.steps.evaluate import evaluate_masks, format_report, seg_result_line
from rpnet_pl.steps.inference import image_shape, run_per_image
from rpnet_pl.steps.ir_labels import label_is_complete
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.utils.io import write_json, write_label_png
from rpnet_pl.utils.progress import progress_log

VOC_SERVER_DIR = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"


def to_coco_ids(label: np.ndarray) -> np.ndarray:
    """Labels 1..80 -> COCO category ids (0 stays background, 255 stays ignore); uint8 fits (max id 90)."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[1:81] = COCO_CATEGORY_IDS
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut[label]


def write_labels(folder: str, image_id: str, label: np.ndarray, label_format: str = "voc") -> None:
    """``folder/ID.png``: a VOC palette PNG, or (``label_format="coco"``) COCO category ids."""
    if label_format == "coco":
        write_label_png(Path(folder) / f"{image_id}.png", to_coco_ids(label))
    else:
        write_label_png(Path(folder) / f"{image_id}.png", label, voc_palette())


@dataclass(frozen=True)
class WritePrediction:
    """One image's prediction in ``pred_dir`` (the argmax of the segmenter's softmax averaged over
    ``scales`` and flips, :func:`multiscale_probs`) and, with ``crf_dir``, its denseCRF-refined labels
    there (``crf_params``: :class:`~rpnet_pl.ops.params.ProbCRFParams`' names); an image whose
    outputs are complete is skipped (returns None)."""

    pred_dir: str
    crf_dir: str | None = None
    scales: tuple[float, ...] = SEG_INFERENCE.scales
    flip: bool = SEG_INFERENCE.flip
    crf_params: dict[str, float] | None = None
    label_format: Literal["voc", "coco"] = "voc"

    def __call__(self, stage: SegmenterStage, batch: dict[str, Any]) -> str | None:
        image_id = batch["id"][0]
        size = tuple(batch["image"].shape[-2:])
        if label_is_complete(Path(self.pred_dir) / f"{image_id}.png", size) and (
                not self.crf_dir or label_is_complete(Path(self.crf_dir) / f"{image_id}.png", size)):
            return None
        probs = multiscale_probs(stage.model, batch["image"], self.scales, self.flip)
        write_labels(self.pred_dir, image_id, probs.argmax(0).cpu().numpy().astype(np.uint8), self.label_format)
        if self.crf_dir:
            from rpnet_pl.ops.crf import crf_inference_prob

            refined = crf_inference_prob(batch["raw"][0].cpu().numpy(), probs.cpu().numpy(), **(self.crf_params or {}))
            write_labels(self.crf_dir, image_id, refined.argmax(0).astype(np.uint8), self.label_format)
        return image_id


def predict_segmentation(ckpt: str | Path, pred_dir: str | Path, root: str, dataset: str = "voc", split: str = "val",
                         crf_dir: str | Path | None = None, scales: Sequence[float] = (1.0,), flip: bool = True,
                         crf_params: dict[str, float] | None = None, label_format: str = "voc",
                         devices: int | str = "auto", num_nodes: int = 1, accelerator: str = "auto") -> tuple[int, bool]:
    """Write the predictions (and CRF-refined predictions) of every image of ``split`` not yet done.

    Returns (images processed, whether this process is global rank 0). Under DDP every rank waits for
    the others before returning, so rank 0 may then read all the predictions.
    """
    def done(reader: Any, i: str) -> bool:
        shape = image_shape(reader, i)
        return label_is_complete(Path(pred_dir) / f"{i}.png", shape) and (
            crf_dir is None or label_is_complete(Path(crf_dir) / f"{i}.png", shape))

    work = WritePrediction(str(pred_dir), str(crf_dir) if crf_dir else None, tuple(scales), flip, crf_params,
                           label_format)  # type: ignore[arg-type]
    return run_per_image(SegmenterStage, ckpt, "segmenter", work, "predictions", root=root, dataset=dataset, split=split,
                         done=done, devices=devices, num_nodes=num_nodes, accelerator=accelerator)


def eval_seg_step(o: EvalSegOptions) -> int:
    """The ``eval_seg`` step (`rpnet eval-seg`): predictions of ``o.split`` in ``OUT/pred`` (and
    ``OUT/pred_crf``), scored against the ground truth into ``OUT/metrics.json``."""
    out = Path(o.out)
    crf_dir = out / "pred_crf" if o.crf else None
    _, rank_zero = predict_segmentation(
        o.ckpt, out / "pred", o.root, o.dataset, o.split, crf_dir=crf_dir, scales=o.scales, flip=o.flip,
        crf_params=o.crf_params, devices=o.lightning_devices, num_nodes=o.num_nodes, accelerator=o.accelerator)
    if not rank_zero:  # under DDP one process scores the predictions all ranks wrote
        return 0
    results = {"without_crf": evaluate_masks(out / "pred", o.root, o.dataset, o.split, weak=False)}
    if crf_dir is not None:
        results["with_crf"] = evaluate_masks(crf_dir, o.root, o.dataset, o.split, weak=False)
    for key, res in results.items():
        print(format_report(res, title=f"{o.split} ({key.replace('_', ' ')})"))
        print()
    print(f"wrote {write_json(out / METRICS, results)}")
    progress_log.info(seg_result_line(results))
    return 0


def predict_seg_step(o: PredictSegOptions) -> int:
    """The ``predict_seg`` step (`rpnet predict-seg`): the benchmark's files of ``o.split`` (VOC's
    server layout, COCO's ``results/``), or predictions of any folder of images (``o.images``)."""
    if not (o.images or o.root):
        raise ConfigError("predict-seg needs --root (a dataset) or --images (a folder of images)")
    out = Path(o.out)
    dataset, root, fmt = o.dataset, o.root, o.dataset
    if o.images:  # any folder of images: palette PNGs (VOC ids) unless --dataset coco
        dataset, root, fmt = "folder", o.images, "coco" if o.dataset == "coco" else "voc"
        folder = out / "predictions"
    elif o.dataset == "voc":
        folder = out / VOC_SERVER_DIR
    else:
        folder = out / "results" / f"coco_{o.split}"
    devices = {"devices": o.lightning_devices, "num_nodes": o.num_nodes, "accelerator": o.accelerator}
    if o.crf:
        predict_segmentation(o.ckpt, out / "raw", root, dataset, o.split, crf_dir=folder, scales=o.scales,
                             flip=o.flip, crf_params=o.crf_params, label_format=fmt, **devices)
    else:
        predict_segmentation(o.ckpt, folder, root, dataset, o.split, scales=o.scales, flip=o.flip,
                             label_format=fmt, **devices)
    print(f"predictions in {folder}")
    return 0
