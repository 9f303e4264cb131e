"""Evaluate CAM seeds and label maps against the ground truth (IRN's eval_cam / eval_sem_seg; our
steps eval_cam / eval_pseudo_masks / eval_seg). The refinement diagnostic lives beside it, in
:mod:`rpnet_pl.steps.eval_refinement`.

* :func:`evaluate_cams`: spec "CAM inference and evaluation": prepend a constant background
  channel (the threshold) to the normalised CAMs, argmax, one confusion matrix over the split
  per threshold; report the sweep (the paper's "seeds" column, 0.15/0.16 for ResNet-50 CAMs).
* :func:`evaluate_masks`: label PNGs (pseudo masks, IR labels, DeepLab predictions) against the
  ground truth (the paper's Table I "+BR" pseudo-mask figure and the val/test mIoU); beside pseudo
  masks made with ``--save-scores``, also a background-threshold sweep over the walk's saved scores
  (:mod:`rpnet_pl.steps.walk_scores`), laid out as the seeds' sweep.

Both return plain JSON-ready dicts (nan -> None); :func:`format_report` renders one as text, and
:func:`cam_result_line` / :func:`masks_result_line` / :func:`seg_result_line` the one line each
evaluation step logs when it finishes (logger ``rpnet_pl.progress``: the pipeline echoes it).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rpnet_pl.pipeline import layout
from rpnet_pl.data.classes import IGNORE_INDEX
from rpnet_pl.data.datasets import DatasetName, build_reader
from rpnet_pl.utils.errors import DatasetError
from rpnet_pl.utils.io import read_label_png
from rpnet_pl.ops.cam import ThresholdSweep
from rpnet_pl.ops.params import DEFAULT_THRESHOLDS  # eval-cam's sweep, declared with the method's numbers
from rpnet_pl.ops.metrics import confusion_matrix, format_iou_table, iou_from_confusion, miou, precision_recall
from rpnet_pl.ops.random_walk import labels_from_scores, walk_scores_at_image_size
from rpnet_pl.utils.progress import CountProgress, progress_log
from rpnet_pl.pipeline.seeds import format_pct
from rpnet_pl.steps.cam_inference import cam_path, read_cam
from rpnet_pl.steps.walk_scores import image_size, read_walk_scores, scores_tensor, walk_scores_path
from rpnet_pl.pipeline.registry import EvalCamOptions, EvalMasksOptions


def json_number(v: float) -> float | None:
    """JSON-safe float: nan -> None."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def per_class_json(values: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    """Class name -> JSON-safe IoU (nan -> None)."""
    return {name: json_number(float(v)) for name, v in zip(names, values)}


def _thr_key(t: float) -> str:
    return f"{t:g}"


def _missing(paths: Sequence[Path], what: str, folder: str | Path, split: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{folder}: {len(missing)} of {len(paths)} {what} file(s) of split {split!r} "
                           f"are missing (first: {missing[0]})")


def _summary(conf: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    precision, recall = precision_recall(conf)
    return {
        "miou": json_number(miou(conf)),
        "per_class_iou": per_class_json(iou_from_confusion(conf), names),
        "precision": per_class_json(precision, names),
        "recall": per_class_json(recall, names),
        "confusion": np.asarray(conf, dtype=np.int64).tolist(),  # rows: ground truth, columns: prediction
    }


def _cam_at_image_size(rec: dict[str, np.ndarray], shape: tuple[int, int], use_high_res: bool) -> np.ndarray:
    """(K, H, W) float32 CAMs at the image size: the high-res map as stored, or the stride-4 map
    upsampled x4 bilinearly and cropped to the image (keeps the stride-4 grid aligned)."""
    if use_high_res:
        return np.asarray(rec["high_res"], dtype=np.float32)
    cam = torch.from_numpy(np.asarray(rec["cam"], dtype=np.float32))
    if cam.shape[0] == 0:
        return np.zeros((0, *shape), dtype=np.float32)
    up = F.interpolate(cam[None], size=(cam.shape[1] * 4, cam.shape[2] * 4), mode="bilinear",
                       align_corners=False)[0]
    return up[:, : shape[0], : shape[1]].numpy()


def evaluate_cams(
    cams_dir: str | Path,
    root: str | Path,
    dataset: DatasetName = "voc",
    split: str = "train",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    use_high_res: bool = True,
) -> dict[str, Any]:
    """mIoU of the CAM seeds of ``split`` for each background threshold (spec "Eval").

    Reads ``cams_dir/ID.npy`` (see :func:`rpnet_pl.steps.cam_inference.read_cam`) for every
    labelled image of the split and its ground-truth mask. Returns ``{"split", "dataset",
    "n_images", "thresholds": {"0.15": {"miou", "per_class"}}, "best_threshold", "best_miou",
    "per_class_iou", "precision", "recall"}`` (the last three per class name, at the best
    threshold; None where a class is absent from both gt and prediction).
    A missing CAM file raises a DatasetError naming how many are missing and the first one.
    """
    reader = build_reader(dataset, root, split, weak=True)
    names = reader.class_names
    _missing([cam_path(cams_dir, i) for i in reader.ids], "CAM", cams_dir, split)
    sweep = ThresholdSweep(thresholds, reader.num_classes, IGNORE_INDEX)
    progress = CountProgress("eval CAMs", len(reader.ids))
    for image_id in reader.ids:
        rec = read_cam(cams_dir, image_id)
        gt = reader.mask(image_id)
        cams = _cam_at_image_size(rec, gt.shape, use_high_res)
        if cams.shape[1:] != gt.shape:
            raise DatasetError(f"{cam_path(cams_dir, image_id)}: CAM size {cams.shape[2]}x{cams.shape[1]} "
                               f"differs from its mask {gt.shape[1]}x{gt.shape[0]}")
        sweep.update(cams, rec["keys"], gt)
        progress.update()
    best = _summary(sweep.confusion[sweep.best()[0]], names)
    return {
        "split": split,
        "dataset": dataset,
        "n_images": len(reader.ids),
        "cam": "high_res" if use_high_res else "strided",
        **sweep_json(sweep, names),
        "per_class_iou": best["per_class_iou"],
        "precision": best["precision"],
        "recall": best["recall"],
    }


def sweep_json(sweep: ThresholdSweep, names: Sequence[str]) -> dict[str, Any]:
    """A threshold sweep as ``metrics.json`` holds it (``eval_cam``'s and ``eval_pseudo_masks``'s alike):
    ``thresholds: {t: {miou, per_class}}``, ``best_threshold``, ``best_miou``, ``best_at_edge``."""
    best_t, best_m = sweep.best()
    results = sweep.results()
    return {
        "thresholds": {
            _thr_key(t): {"miou": json_number(m), "per_class": per_class_json(iou, names)}
            for t, (m, iou) in results.items()
        },
        "best_threshold": best_t,
        "best_miou": json_number(best_m),
        "best_at_edge": sweep_edge({t: m for t, (m, _) in results.items()}),
    }


def sweep_edge(miou_by_threshold: dict[float, float]) -> str | None:
    """"low" / "high" when the sweep's best mIoU lies at its smallest / largest threshold and beats
    the neighbouring one (the optimum may lie beyond the sweep), else None. One threshold: None."""
    ts = sorted(t for t, m in miou_by_threshold.items() if not math.isnan(m))
    if len(ts) < 2:
        return None
    if miou_by_threshold[ts[-1]] > max(miou_by_threshold[t] for t in ts[:-1]):
        return "high"
    if miou_by_threshold[ts[0]] > max(miou_by_threshold[t] for t in ts[1:]):
        return "low"
    return None


def evaluate_masks(
    masks_dir: str | Path,
    root: str | Path,
    dataset: DatasetName = "voc",
    split: str = "train",
    ignore_pred: bool = False,
    weak: bool = True,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """mIoU of label PNGs ``masks_dir/ID.png`` against the ground truth of ``split`` (IRN's
    eval_sem_seg; the paper's pseudo-mask and val/test figures).

    Each PNG must have its mask's size (DatasetError naming the file otherwise). With
    ``ignore_pred`` pixels predicted 255 are left out (to score IR labels on their confident
    pixels); otherwise a 255 prediction on a labelled pixel is an error. ``weak=True`` evaluates
    the images the weakly supervised stages produce outputs for (those with a class label);
    ``weak=False`` every id of the split file. Returns ``{"split", "dataset", "n_images", "miou",
    "per_class_iou", "precision", "recall"}``.

    When ``masks_dir/scores`` holds the walk's scores (`rpnet pseudo-masks --save-scores`), the
    masks are also re-made from them at each of ``thresholds`` (:func:`sweep_walk_scores`) and the
    result gains the sweep's keys (:func:`sweep_json`) and ``masks_threshold``, the threshold the
    PNGs were made with; the figures above stay those of the PNGs.
    """
    reader = build_reader(dataset, root, split, weak=weak)
    names = reader.class_names
    masks_dir = Path(masks_dir)
    paths = [masks_dir / f"{i}.png" for i in reader.ids]
    _missing(paths, "label PNG", masks_dir, split)
    c = reader.num_classes
    conf = np.zeros((c, c), dtype=np.int64)
    scores_dir = layout.walk_scores_dir(masks_dir)
    sweep = ThresholdSweep(thresholds, c, IGNORE_INDEX) if scores_dir.is_dir() else None
    if sweep is not None:
        _missing([walk_scores_path(scores_dir, i) for i in reader.ids], "walk score", scores_dir, split)
    written: set[float] = set()
    progress = CountProgress(f"eval {masks_dir.name}", len(reader.ids))
    for image_id, path in zip(reader.ids, paths):
        gt = reader.mask(image_id)
        pred = read_label_png(path)
        if pred.shape != gt.shape:
            raise DatasetError(f"{path}: size {pred.shape[1]}x{pred.shape[0]} differs from the ground truth "
                               f"{gt.shape[1]}x{gt.shape[0]}")
        try:
            conf += confusion_matrix(pred, gt, c, IGNORE_INDEX, ignore_pred=ignore_pred)
        except ValueError as exc:
            raise DatasetError(f"{path}: {exc}") from None
        if sweep is not None:
            written.add(sweep_walk_scores(sweep, walk_scores_path(scores_dir, image_id), pred, gt))
        progress.update()
    result = {"split": split, "dataset": dataset, "n_images": len(reader.ids), **_summary(conf, names)}
    if sweep is not None:
        result.update(sweep_json(sweep, names), masks_threshold=written.pop() if len(written) == 1 else None)
    return result


def sweep_walk_scores(sweep: ThresholdSweep, path: Path, mask: np.ndarray | None, gt: np.ndarray) -> float:
    """Add one image's saved walk scores to ``sweep``: its mask at every threshold, made as the
    ``pseudo_masks`` step makes it (:func:`~rpnet_pl.ops.random_walk.walk_scores_at_image_size` once,
    then :func:`~rpnet_pl.ops.random_walk.labels_from_scores`). ``mask`` (the PNG) must be what the
    scores give at the step's threshold (DatasetError otherwise: scores of another run); None: the
    scores alone (the calibrated step's sweep, made before it writes its masks). Returns that threshold."""
    record = read_walk_scores(path)
    if image_size(record) != gt.shape:
        raise DatasetError(f"{path}: image size {image_size(record)} differs from the ground truth {gt.shape}")
    scores = walk_scores_at_image_size(scores_tensor(record), image_size(record))  # (K, H, W), once
    bg = float(record["bg_threshold"])
    if mask is not None and not np.array_equal(labels_from_scores(scores, record["keys"], bg), mask):
        raise DatasetError(f"{path}: these scores at threshold {bg:g} do not give the mask beside them (left by "
                           f"another run? delete {path.parent} or re-run `rpnet pseudo-masks --save-scores`)")
    for t in sweep.thresholds:
        sweep.update_labels(t, labels_from_scores(scores, record["keys"], t), gt)
    return bg


def _values(per_class: dict[str, float | None], names: Sequence[str]) -> np.ndarray:
    return np.array([np.nan if per_class.get(n) is None else per_class[n] for n in names], dtype=np.float64)


def format_report(result: dict[str, Any], title: str | None = None) -> str:
    """Text report of an :func:`evaluate_cams` / :func:`evaluate_masks` result: the threshold
    sweep (when there is one), then a Table-XI-style per-class table with precision and recall
    rows (x100; the last column is the mean over classes)."""
    names = list(result["per_class_iou"])
    lines: list[str] = []
    if title:
        lines += [title, ""]
    if "thresholds" in result:
        lines += ["| threshold | mIoU |", "|---|---|"]
        for t, v in result["thresholds"].items():
            m = v["miou"]
            lines.append(f"| {t} | {'-' if m is None else f'{100 * m:.1f}'} |")
        best = result["best_miou"]
        lines += ["", f"best threshold {result['best_threshold']:g}: mIoU "
                      f"{'-' if best is None else f'{100 * best:.1f}'}", ""]
        edge = result.get("best_at_edge")
        if edge:
            lines += [f"note: the best threshold is the sweep's {'largest' if edge == 'high' else 'smallest'}; "
                      "the optimum may lie beyond it (widen --thresholds)", ""]
        row = f"IoU @ {result['best_threshold']:g}"
    if "miou" in result:  # label maps: the table is of the PNGs (the sweep above, if any, of their walk scores)
        row = "IoU"
        if "thresholds" in result:
            m, t = result["miou"], result.get("masks_threshold")
            lines += [f"masks as written{'' if t is None else f' (threshold {t:g})'}: mIoU "
                      f"{'-' if m is None else f'{100 * m:.1f}'}", ""]
    lines.append(format_iou_table(_values(result["per_class_iou"], names), names, row_name=row))
    for key in ("precision", "recall"):
        lines.append(format_iou_table(_values(result[key], names), names, row_name=key).splitlines()[2])
    lines.append(f"({result['n_images']} image(s), split {result['split']})")
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    """0.5234 -> '52.3%' (the report's :func:`~rpnet_pl.pipeline.seeds.format_pct` with a sign); None -> '-'."""
    return format_pct(v) + ("" if v is None else "%")


def cam_result_line(metrics: dict[str, Any]) -> str:
    """The ``eval_cam`` step's result (its metrics.json): ``CAM seeds: best mIoU 52.3% at threshold
    0.16 (sweep 0.05-0.6, best inside it)``; a best at the sweep's edge says so."""
    ts = sorted(float(t) for t in metrics.get("thresholds") or {})
    best_t = metrics.get("best_threshold")
    line = f"CAM seeds: best mIoU {_pct(metrics.get('best_miou'))} at threshold " + (
        "-" if best_t is None else f"{best_t:g}")
    if len(ts) < 2:
        return line + " (one threshold, no sweep)"
    sweep = f"sweep {ts[0]:g}-{ts[-1]:g}"
    edge = metrics.get("best_at_edge")
    if edge in ("high", "low"):
        side, beyond = ("largest", "above") if edge == "high" else ("smallest", "below")
        return line + f" ({sweep}: the best is its {side} threshold, the optimum may lie {beyond} it)"
    if best_t is not None and float(best_t) in (ts[0], ts[-1]):  # an end of the sweep, tied with another
        side, other = ("largest", "smaller") if float(best_t) == ts[-1] else ("smallest", "larger")
        return line + f" ({sweep}: its {side} threshold, but a {other} one is as good)"
    return line + f" ({sweep}, best inside it)"


def foreground_precision_recall(confusion: Sequence[Sequence[int]]) -> tuple[float, float]:
    """Precision and recall of the foreground, every class but background (index 0) pooled, from a
    confusion matrix (rows: ground truth, columns: prediction): foreground pixels predicted as any
    foreground class / all pixels predicted foreground, and / all foreground pixels. nan when the
    denominator is 0."""
    conf = np.asarray(confusion, dtype=np.float64)
    both = conf[1:, 1:].sum()
    predicted, actual = conf[:, 1:].sum(), conf[1:, :].sum()
    return (both / predicted if predicted else float("nan")), (both / actual if actual else float("nan"))


def masks_result_line(metrics: dict[str, Any]) -> str:
    """The ``eval_pseudo_masks`` step's result (its metrics.json): ``mIoU 61.2%, foreground precision
    80.1% recall 75.3% (12 images, split train)``."""
    precision, recall = foreground_precision_recall(metrics["confusion"]) if metrics.get("confusion") else (
        float("nan"), float("nan"))
    return (f"mIoU {_pct(metrics.get('miou'))}, foreground precision {_pct(json_number(precision))} "
            f"recall {_pct(json_number(recall))} ({metrics.get('n_images', '?')} images, "
            f"split {metrics.get('split', '?')})")


def seg_result_line(metrics: dict[str, Any]) -> str:
    """The ``eval_seg`` step's result (its metrics.json, ``{"without_crf": ..., "with_crf": ...}``):
    ``segmenter mIoU 65.1% without CRF, 67.3% with CRF (12 images, split val)``; ``with CRF not
    run`` when there is no CRF result."""
    plain, crf = metrics.get("without_crf") or {}, metrics.get("with_crf")
    with_crf = "with CRF not run" if crf is None else f"{_pct(crf.get('miou'))} with CRF"
    return (f"segmenter mIoU {_pct(plain.get('miou'))} without CRF, {with_crf} "
            f"({plain.get('n_images', '?')} images, split {plain.get('split', '?')})")


def eval_cam_step(o: EvalCamOptions) -> int:
    """The ``eval_cam`` step (`rpnet eval-cam`): :func:`evaluate_cams`, printed and written to ``o.out``."""
    from rpnet_pl.utils.io import write_json

    result = evaluate_cams(o.cams, o.root, dataset=o.dataset, split=o.split,
                           thresholds=o.thresholds or DEFAULT_THRESHOLDS, use_high_res=not o.strided)
    print(format_report(result, title=f"CAM seeds: {o.cams}"))
    if o.out:
        print(f"wrote {write_json(o.out, result)}")
    progress_log.info(cam_result_line(result))
    return 0


def eval_masks_step(o: EvalMasksOptions) -> int:
    """The ``eval_pseudo_masks`` step (`rpnet eval-pseudo-masks`): :func:`evaluate_masks` of any folder
    of label PNGs, printed and written to ``o.out``."""
    from rpnet_pl.utils.io import write_json

    result = evaluate_masks(o.masks, o.root, dataset=o.dataset, split=o.split, ignore_pred=o.ignore_pred,
                            weak=not o.all_images, thresholds=o.thresholds or DEFAULT_THRESHOLDS)
    print(format_report(result, title=f"label maps: {o.masks}"))
    if o.out:
        print(f"wrote {write_json(o.out, result)}")
    progress_log.info(masks_result_line(result))
    return 0
