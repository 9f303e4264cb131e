"""The segmenter's per-image steps on the driver (:func:`~rpnet_pl.steps.inference.run_per_image`):
``eval_seg`` (`rpnet eval-seg`: predictions of a split, with and without denseCRF, scored against the
ground truth) and ``predict_seg`` (`rpnet predict-seg`: the benchmark's files). The PNGs are written by
:meth:`SegmenterStage.predict_step <rpnet_pl.stages.segmenter.SegmenterStage.predict_step>`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rpnet_pl.pipeline.layout import METRICS
from rpnet_pl.pipeline.registry import EvalSegOptions, PredictSegOptions
from rpnet_pl.stages.segmenter import SegmenterStage
from rpnet_pl.steps.evaluate import evaluate_masks, format_report, seg_result_line
from rpnet_pl.steps.inference import image_shape, run_per_image
from rpnet_pl.steps.ir_labels import label_is_complete
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.utils.io import write_json
from rpnet_pl.utils.progress import progress_log

VOC_SERVER_DIR = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"


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

    overrides = {"pred_dir": str(pred_dir), "crf_dir": str(crf_dir) if crf_dir else None, "eval_scales": tuple(scales),
                 "eval_flip": flip, "crf_params": crf_params, "label_format": label_format}
    return run_per_image(SegmenterStage, ckpt, "segmenter", overrides, root=root, dataset=dataset, split=split,
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
