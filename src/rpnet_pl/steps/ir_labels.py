"""IR labels for the boundary network (spec "Stage 2: IRN", IRN's cam_to_ir_label step).

From each image's high-res CAMs: background at ``fg_threshold`` (0.30) -> argmax -> denseCRF,
and the same at ``bg_threshold`` (0.05); confident foreground from the first map, confident
background from the second, 255 elsewhere. One VOC-palette PNG per image, written atomically.
With ``calibration_split`` the two thresholds are chosen on a labelled split instead
(:mod:`rpnet_pl.steps.calibration`).

The work is per image and CPU bound (the CRF), so it runs on a process pool. It resumes: an
image whose PNG exists, decodes and has the image's size is skipped; a corrupted one is redone.
"""
from __future__ import annotations

import functools
import inspect
import logging
import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rpnet_pl.data.classes import IGNORE_INDEX, voc_palette
from rpnet_pl.data.datasets import DatasetName, Reader, build_reader
from rpnet_pl.utils.cpus import usable_cpus
from rpnet_pl.utils.errors import DatasetError, IncompleteStepError
from rpnet_pl.utils.io import read_label_png, write_label_png
from rpnet_pl.ops.cam import cam_to_ir_label
from rpnet_pl.ops.crf import crf_inference_label
from rpnet_pl.ops.params import IR_LABELS
from rpnet_pl.utils.progress import CountProgress, progress_log
from rpnet_pl.steps.calibration import calibrate_ir_labels, calibration_line, write_calibration
from rpnet_pl.steps.cam_inference import cam_path, read_cam
from rpnet_pl.pipeline.registry import IRLabelsOptions

log = logging.getLogger(__name__)

CRF_OPTIONS: tuple[str, ...] = tuple(
    name for name, p in inspect.signature(crf_inference_label).parameters.items() if p.kind is p.KEYWORD_ONLY
)


def ir_label_path(out_dir: str | Path, image_id: str) -> Path:
    return Path(out_dir) / f"{image_id}.png"


def label_is_complete(path: Path, shape: tuple[int, int]) -> bool:
    """True if ``path`` is a readable label PNG of size ``shape`` (H, W)."""
    if not path.is_file():
        return False
    try:
        return read_label_png(path).shape == tuple(shape)
    except DatasetError:
        return False


def ir_label(
    cams_dir: str | Path,
    image_id: str,
    image: np.ndarray,
    fg_threshold: float = IR_LABELS.fg_threshold,
    bg_threshold: float = IR_LABELS.bg_threshold,
    crf_fn: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = crf_inference_label,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W) uint8 IR label of one image from its high-res CAM record (spec "Stage 2").

    ``labels``: the image's class indices; a CAM file whose classes differ (from another run or
    dataset) or whose size differs from the image is a DatasetError naming the file."""
    path = cam_path(cams_dir, image_id)
    rec = read_cam(cams_dir, image_id)
    keys = [int(k) for k in np.asarray(rec["keys"]).reshape(-1)]
    if labels is not None and sorted(keys) != sorted(int(c) for c in labels):
        raise DatasetError(f"{path}: CAM classes {keys} differ from the image's labels "
                           f"{[int(c) for c in labels]} (a CAM file of another run or dataset?)")
    cams = np.asarray(rec["high_res"], dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != len(keys):
        raise DatasetError(f"{path}: {cams.shape[0] if cams.ndim else 0} high-res CAM channel(s) for "
                           f"{len(keys)} class key(s)")
    if cams.shape[1:] != image.shape[:2]:
        raise DatasetError(f"{path}: high-res CAM size {cams.shape[2]}x{cams.shape[1]} differs from its image "
                           f"{image.shape[1]}x{image.shape[0]}")
    return cam_to_ir_label(cams, rec["keys"], image, fg_thres=fg_threshold, bg_thres=bg_threshold,
                           crf_fn=crf_fn, ignore_index=IGNORE_INDEX)


# -- worker side ---------------------------------------------------------------------------------
_JOB: dict[str, Any] = {}


def _init_job(reader: Reader, cams_dir: str, out_dir: str, fg: float, bg: float,
              crf_fn: Callable | None) -> None:
    _JOB.update(reader=reader, cams_dir=cams_dir, out_dir=out_dir, fg=fg, bg=bg, crf_fn=crf_fn,
                palette=voc_palette())


def _do_one(image_id: str) -> bool:
    """Write one image's IR label unless a complete one exists; True if written."""
    job = _JOB
    image = job["reader"].image(image_id)
    out = ir_label_path(job["out_dir"], image_id)
    if label_is_complete(out, image.shape[:2]):
        return False
    label = ir_label(job["cams_dir"], image_id, image, job["fg"], job["bg"], job["crf_fn"],
                     labels=job["reader"].labels(image_id))
    write_label_png(out, label, job["palette"])
    return True


def _init_worker(*args: Any) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no worker tracebacks
    _init_job(*args)


def make_ir_labels(
    cams_dir: str | Path,
    out_dir: str | Path,
    root: str | Path,
    dataset: DatasetName = "voc",
    split: str = "train_aug",
    fg_threshold: float = IR_LABELS.fg_threshold,
    bg_threshold: float = IR_LABELS.bg_threshold,
    crf: bool = True,
    workers: int | None = None,
    chunksize: int | None = None,
    **crf_kwargs: float,
) -> int:
    """Write ``out_dir/ID.png`` IR labels for every labelled image of ``split`` (spec "Stage 2").

    ``crf=False`` skips the denseCRF (exact thresholding; for tests and ablations);
    ``crf_kwargs`` go to :func:`rpnet_pl.ops.crf.crf_inference_label` (``t``, ``gt_prob``,
    ``gauss_sxy``, ``gauss_compat``, ``bi_sxy``, ``bi_srgb``, ``bi_compat``). ``workers``:
    processes (default: the usable cores, :func:`~rpnet_pl.utils.cpus.usable_cpus`; 0 or 1 runs in this process). Resumable: complete
    PNGs are skipped. Returns the number of PNGs written.
    """
    if not 0.0 <= bg_threshold <= fg_threshold:
        raise ValueError(f"need 0 <= bg_threshold <= fg_threshold, got {bg_threshold} and {fg_threshold}")
    unknown = sorted(set(crf_kwargs) - set(CRF_OPTIONS))
    if unknown:
        raise TypeError(f"unknown CRF option(s) {unknown}; known: {list(CRF_OPTIONS)}")
    if crf_kwargs and not crf:
        raise ValueError("CRF options given with crf=False")
    reader = build_reader(dataset, root, split, weak=True)
    ids = list(reader.ids)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Fail early, naming the first missing CAM, for the images that still need one.
    todo = [i for i in ids if not ir_label_path(out_dir, i).is_file()]
    missing = [cam_path(cams_dir, i) for i in todo if not cam_path(cams_dir, i).is_file()]
    if missing:
        raise DatasetError(f"{cams_dir}: {len(missing)} of {len(ids)} CAM file(s) of split {split!r} are "
                           f"missing (first: {missing[0]})")
    crf_fn = functools.partial(crf_inference_label, **crf_kwargs) if crf else None
    init_args = (reader, str(cams_dir), str(out_dir), float(fg_threshold), float(bg_threshold), crf_fn)
    workers = usable_cpus() if workers is None else int(workers)
    workers = min(workers, len(ids))
    written = 0
    progress = CountProgress("IR labels", len(ids))
    if workers <= 1:
        _init_job(*init_args)
        for image_id in ids:
            written += _do_one(image_id)
            progress.update()
    else:
        chunksize = chunksize or max(1, min(32, len(ids) // (workers * 4)))
        # spawn: the parent may hold torch/OpenMP threads, which fork does not copy safely.
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                   initializer=_init_worker, initargs=init_args)
        try:
            for done in pool.map(_do_one, ids, chunksize=chunksize):
                written += done
                progress.update()
        except BaseException:  # an error or Ctrl-C: do not wait for the queued images
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    log.info("IR labels: %d image(s), %d written to %s", len(ids), written, out_dir)
    missing = [i for i in ids if not ir_label_path(out_dir, i).is_file()]
    if missing:
        raise IncompleteStepError(f"{out_dir}: IR labels of {len(missing)} of the {len(ids)} images of {split!r} "
                                  f"were not written (first: {missing[0]}); re-run: complete ones are skipped")
    return written


def ir_labels_step(o: IRLabelsOptions) -> int:
    """The ``ir_labels`` step (`rpnet ir-labels`): :func:`make_ir_labels` with the step's options; with
    ``calibration_split``, at the thresholds chosen on that split
    (:func:`rpnet_pl.steps.calibration.calibrate_ir_labels`), recorded in ``OUT/calibration.json``."""
    fg, bg, record = o.fg_threshold, o.bg_threshold, None
    if o.calibration_split is not None:
        record = calibrate_ir_labels(o.cams, o.root, o.dataset, o.calibration_split)
        fg, bg = record["used"]["fg_threshold"], record["used"]["bg_threshold"]
    n = make_ir_labels(o.cams, o.out, o.root, dataset=o.dataset, split=o.split, fg_threshold=fg,
                       bg_threshold=bg, crf=o.crf, workers=o.workers)
    print(f"wrote {n} IR label PNG(s) to {o.out}")
    if record is not None:
        print(f"wrote {write_calibration(o.out, record)}")
        progress_log.info(calibration_line(record))
    return 0
