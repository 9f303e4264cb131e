"""W&B runs of what the suite measures: one run per step, the report's tables.

The training steps log through Lightning's ``WandbLogger`` while they train. Every other step's
run (:class:`StepRun`) is opened by the pipeline when the step starts (``--logger wandb``): its
progress lines are logged as they come, and its results from its outputs just after its done
marker; a failed step's run is closed as failed. ``rpnet report RUNS --wandb`` logs the complete
steps that have no W&B run yet (a runs folder made with another logger or before this existed). A step's W&B run belongs to the experiment's group, has
``job_type`` = the step and the run's resolved config, plus the varied keys of an ablation variant
as top-level config values. What it logs:

* evaluation steps: the mIoU in the summary (``miou``; ``eval_cam``, and ``eval_pseudo_masks`` over the
  walk's saved scores: ``best_miou``, ``best_threshold`` and the threshold sweep as history and a line
  chart; ``eval_seg``: ``without_crf/miou`` and
  ``with_crf/miou``), per-class IoU / precision / recall as a ``wandb.Table``, the confusion matrix
  with W&B's confusion-matrix chart;
* per-image steps: ``progress/images_done``, ``progress/images_total``, ``progress/images_per_s``
  while they run; images written, seconds and images/s (summary), and a few samples as
  ``wandb.Image`` with ``masks=`` (the step's masks and the ground truth, with the dataset's class
  names) so they can be toggled in the UI; CAMs as heat maps beside the image;
* ``rpnet report`` / ``rpnet ablation``: each table of ``report.md`` / ``table.md`` as a ``wandb.Table``
  in a report run of the group.

Offline unless a key is set (``WANDB_API_KEY``, and ``WANDB_MODE`` not ``offline``); ``WANDB_PROJECT``
(default ``rpnet-pl``), ``WANDB_ENTITY`` and ``WANDB_MODE`` are honoured. The files go under the
step's folder (``<step>/wandb/``), to be uploaded with ``wandb sync``. A W&B failure is one warning
line: the step's outputs are complete before anything is logged, and stay so.
"""
from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import yaml

from rpnet_pl.pipeline import layout
from rpnet_pl.pipeline.registry import CAM, EVAL_PSEUDO_MASKS, EVAL_SEG, IR_LABELS_STEP, PSEUDO_MASKS, STEPS

log = logging.getLogger(__name__)

#: How many sample images a step logs, and the steps that have images to show.
SAMPLES = 4
SAMPLED = (CAM.name, IR_LABELS_STEP.name, PSEUDO_MASKS.name, EVAL_SEG.name)
PROJECT = "rpnet-pl"


def mode() -> str:
    """``online`` with a key (and ``WANDB_MODE`` not offline / disabled), else ``WANDB_MODE`` or ``offline``."""
    env = os.environ.get("WANDB_MODE", "")
    if env in ("offline", "disabled", "dryrun"):
        return "disabled" if env == "disabled" else "offline"
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def start_run(folder: Path, *, name: str, group: str, job_type: str, config: dict[str, Any] | None = None,
              tags: Sequence[str] = ()) -> Any:
    """A W&B run with its files under ``folder``, or None (one warning) when W&B cannot start."""
    try:
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        return wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), entity=os.environ.get("WANDB_ENTITY"),
                          name=name, group=group, job_type=job_type, config=config or {}, tags=list(tags),
                          dir=str(folder), mode=mode(), reinit="create_new", settings=wandb.Settings(silent=True))
    except Exception as exc:  # no disk, bad key, no wandb: the science goes on; say so once
        log.warning("W&B: %s not logged (%s: %s)", name, type(exc).__name__, exc)
        return None


def finish_run(run: Any, name: str, failed: bool = False) -> None:
    """Close a W&B run (marked failed when its step failed); a W&B error is one warning."""
    if run is None:
        return
    try:
        run.finish(exit_code=1 if failed else 0)
    except Exception as exc:
        log.warning("W&B: could not close %s (%s: %s)", name, type(exc).__name__, exc)


@contextmanager
def wandb_run(folder: Path, *, name: str, **init: Any) -> Iterator[Any]:
    """:func:`start_run` as a context (None when W&B cannot start); any W&B error inside is one
    warning, never the caller's failure."""
    run = start_run(folder, name=name, **init)
    try:
        yield run
    except Exception as exc:
        log.warning("W&B: logging %s stopped (%s: %s)", name, type(exc).__name__, exc)
    finally:
        finish_run(run, name)


# -- what a step wrote ---------------------------------------------------------------------------
def _argv_value(argv: Sequence[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


def _done(folder: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load((folder / layout.DONE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def per_class_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """``[class, IoU, precision, recall]`` rows of an evaluation's ``metrics.json`` section."""
    iou, prec, rec = (metrics.get(k) or {} for k in ("per_class_iou", "precision", "recall"))
    return [[c, iou.get(c), prec.get(c), rec.get(c)] for c in iou]


def confusion_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """``[actual, predicted, pixels]`` rows of the non-zero cells of ``metrics["confusion"]``."""
    names = list((metrics.get("per_class_iou") or {}).keys())
    conf = metrics.get("confusion")
    if not conf or len(conf) != len(names):
        return []
    return [[names[i], names[j], int(n)] for i, row in enumerate(conf) for j, n in enumerate(row) if n]


def markdown_tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, columns, rows)`` of every markdown table of ``text``; the title is the nearest heading
    or line of text above it."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    lines = text.splitlines()
    title = ""
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):
            columns = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append((title or f"table {len(out) + 1}", columns, rows))
            continue
        if line:
            title = line.lstrip("#").strip()
        i += 1
    return out


def _log_tables(run: Any, prefix: str, metrics: dict[str, Any]) -> None:
    import wandb

    rows = per_class_rows(metrics)
    if rows:
        run.log({f"{prefix}per_class": wandb.Table(columns=["class", "iou", "precision", "recall"], data=rows)})
    cells = confusion_rows(metrics)
    if cells:
        table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=cells)
        run.log({f"{prefix}confusion_matrix": wandb.plot_table(
            "wandb/confusion_matrix/v1", table, {"Actual": "Actual", "Predicted": "Predicted",
                                                 "nPredictions": "nPredictions"},
            {"title": f"{prefix}confusion matrix (pixels)"})})


def step_scalars(step: str, folder: Path) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """(summary, history) of a complete step's folder: its seconds, image count and images/s; an
    evaluation's mIoU (``eval_seg``: ``without_crf/miou``, ``with_crf/miou``; ``eval_cam``: ``best_miou``,
    ``best_threshold``; ``eval_pseudo_masks``: ``miou``, and ``best_miou``, ``best_threshold`` when it
    swept the walk's saved scores) and per-class IoU (``iou/<class>``); a background-threshold sweep
    (the seeds', the pseudo masks') as history rows (``threshold``, ``sweep/miou``); a calibrated step's
    (``calibration.json``) best threshold, its mIoU and the thresholds it used (``calibration/...``). What
    W&B, CSV and TensorBoard are given alike."""
    spec = STEPS[step]
    seconds = _done(folder).get("seconds")
    summary: dict[str, Any] = {"seconds": seconds}
    history: list[dict[str, float]] = []
    output = folder / spec.output if spec.output else None
    if output is not None and output.is_dir():
        n = sum(1 for p in output.iterdir() if p.suffix in (".png", ".npy"))
        summary["images"] = n
        if seconds:
            summary["images_per_s"] = n / max(float(seconds), 1e-9)
    calibration = layout.calibration_path(output) if output is not None else None
    if calibration is not None and calibration.is_file():  # a calibrated step: its sweep's best and its thresholds
        record = json.loads(calibration.read_text())
        summary["calibration/best_threshold"] = record.get("best_threshold")
        summary["calibration/best_miou"] = record.get("best_miou")
        summary.update({f"calibration/{k}": v for k, v in (record.get("used") or {}).items()})
    path = folder / layout.METRICS
    metrics = json.loads(path.read_text()) if path.is_file() else None
    if not metrics:
        return summary, history
    parts = [(f"{p}/", metrics[p]) for p in ("without_crf", "with_crf") if p in metrics] or [("", metrics)]
    for prefix, part in parts:
        if "thresholds" in part:  # a background-threshold sweep (eval_cam; eval_pseudo_masks over saved scores)
            history = [{"threshold": float(t), "sweep/miou": m.get("miou")}
                       for t, m in sorted(part["thresholds"].items(), key=lambda kv: float(kv[0]))]
            summary[f"{prefix}best_miou"] = part.get("best_miou")
            summary[f"{prefix}best_threshold"] = part.get("best_threshold")
        if "miou" in part or "thresholds" not in part:  # label maps as written
            summary[f"{prefix}miou"] = part.get("miou")
        summary.update({f"{prefix}iou/{c}": v for c, v in (part.get("per_class_iou") or {}).items() if v is not None})
    return summary, history


def _log_evaluation(run: Any, step: str, folder: Path) -> None:
    import wandb

    summary, history = step_scalars(step, folder)
    for row in history:
        run.log(row)
    if history:
        table = wandb.Table(columns=["threshold", "miou"], data=[[r["threshold"], r["sweep/miou"]] for r in history])
        what = "pseudo-mask" if step == EVAL_PSEUDO_MASKS.name else "seed"
        run.log({"sweep/chart": wandb.plot.line(table, "threshold", "miou", title=f"{what} mIoU over the "
                                                "background threshold")})
    for key, value in summary.items():
        run.summary[key] = value
    path = folder / layout.METRICS
    if path.is_file():
        metrics = json.loads(path.read_text())
        parts = [(f"{p}/", metrics[p]) for p in ("without_crf", "with_crf") if p in metrics] or [("", metrics)]
        for prefix, part in parts:
            _log_tables(run, prefix, part)


def log_scalars(folder: Path, step: str, kind: str) -> None:
    """The same scalars as W&B's to the step's CSV or TensorBoard log (Lightning's own loggers, in
    ``<step>/csv`` / ``<step>/tensorboard`` as the training steps'); a failure is one warning."""
    try:
        summary, history = step_scalars(step, folder)
        if kind == "csv":
            from pytorch_lightning.loggers import CSVLogger as Logger
        elif kind == "tensorboard":
            from pytorch_lightning.loggers import TensorBoardLogger as Logger
        else:
            return
        logger = Logger(save_dir=str(folder), name=kind, version="")
        for i, row in enumerate(history):
            logger.log_metrics(row, step=i)
        logger.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))},
                           step=len(history))
        logger.save()
        logger.finalize("success")
    except Exception as exc:
        log.warning("%s: %s scalars not logged (%s: %s)", step, kind, type(exc).__name__, exc)


def _class_labels(reader: Any) -> dict[int, str]:
    names = dict(enumerate(getattr(reader, "class_names", ())))
    return {**names, 255: "ignore"}


def _samples(run: Any, step: str, folder: Path, argv: Sequence[str]) -> None:
    """A few images with the step's masks (and the ground truth) as W&B masks; CAMs as heat maps."""
    import wandb

    from rpnet_pl.data.datasets import build_reader
    from rpnet_pl.utils.io import read_label_png

    root, dataset, split = (_argv_value(argv, f) for f in ("--root", "--dataset", "--split"))
    if root is None:
        return
    output = STEPS[step].output
    out_dir = folder / output if output else folder
    if step == EVAL_SEG.name:
        out_dir = folder / "pred"
    reader = build_reader(dataset or "voc", root, split or STEPS[step].default_split)
    labels = _class_labels(reader)
    logged = {}
    for image_id in list(reader.ids)[:SAMPLES]:
        image = reader.image(image_id)
        if step == CAM.name:
            path = out_dir / f"{image_id}.npy"
            if not path.is_file():
                continue
            rec = np.load(path, allow_pickle=True).item()
            pair = [wandb.Image(image, caption=image_id)]
            if len(rec["keys"]):
                heat = np.asarray(rec["high_res"], dtype=np.float32).max(axis=0)
                pair.append(wandb.Image((np.clip(heat, 0, 1) * 255).astype(np.uint8),
                                        caption=f"{image_id}: CAM, max over its classes"))
            logged[f"samples/{image_id}"] = pair
            continue
        path = out_dir / f"{image_id}.png"
        if not path.is_file():
            continue
        masks = {"prediction": {"mask_data": read_label_png(path), "class_labels": labels}}
        try:
            masks["ground_truth"] = {"mask_data": reader.mask(image_id), "class_labels": labels}
        except Exception:  # no ground truth for this split (test): the prediction alone
            pass
        logged[f"samples/{image_id}"] = wandb.Image(image, masks=masks, caption=f"{image_id} ({step})")
    if logged:
        run.log(logged)


def progress_row(line: str) -> dict[str, float] | None:
    """``images_done``, ``images_total``, ``images_per_s`` of a per-image step's progress line
    (``pseudo masks: 40/180 images, 11 images/s, ETA 0:00:12``), or None for another line."""
    match = re.search(r"(\d+)/(\d+) images, ([0-9.eE+-]+) images/s", line)
    if match is None:
        return None
    done, total, rate = match.groups()
    return {"images_done": int(done), "images_total": int(total), "images_per_s": float(rate)}


class StepRun:
    """The W&B run of one non-training step: opened when the step starts, so that its progress lines
    reach the dashboard as they come (:meth:`progress`), then given the step's results from its
    outputs once it is done (:meth:`complete`). Closed as failed when the step fails. A W&B failure is
    one warning and never the step's: every method is a no-op once W&B has failed."""

    def __init__(self, run_dir: Path, step: str, *, group: str, name: str, config: dict[str, Any] | None = None,
                 tags: Sequence[str] = (), argv: Sequence[str] = ()) -> None:
        self.run_dir, self.step, self.name = Path(run_dir), step, name
        self.folder = layout.step_dir(self.run_dir, step)
        argv = [str(a) for a in argv]
        self._init = {"name": name, "group": group, "job_type": step, "tags": list(tags),
                      "config": {"step": step, "argv": argv, **(config or {})}}
        self.run: Any = None

    def __enter__(self) -> "StepRun":
        self.run = start_run(self.folder, **self._init)
        return self

    def _failed(self, what: str, exc: Exception) -> None:
        log.warning("W&B: %s: %s stopped (%s: %s); the step's outputs are not affected", self.name, what,
                    type(exc).__name__, exc)
        self.__exit__(None, None, None)

    def progress(self, line: str) -> None:
        """Log a progress line of the running step (:func:`progress_row`) as ``progress/*`` history."""
        row = progress_row(line)
        if self.run is None or row is None:
            return
        try:
            self.run.log({f"progress/{k}": v for k, v in row.items()})
        except Exception as exc:
            self._failed("progress logging", exc)

    def complete(self, samples: bool = True) -> None:
        """Log the done step's results: evaluation numbers, tables and charts, and sample masks."""
        if self.run is None:
            return
        folder = self.folder
        argv = [str(a) for a in _done(folder).get("argv") or self._init["config"]["argv"]]
        try:
            _log_evaluation(self.run, self.step, folder)
        except Exception as exc:
            self._failed("logging the results", exc)
            return
        if samples and self.step in SAMPLED:
            try:
                _samples(self.run, self.step, folder, argv)
            except Exception as exc:  # a sample that cannot be read is no reason to lose the numbers
                log.warning("W&B: %s: samples not logged (%s: %s)", self.name, type(exc).__name__, exc)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        run, self.run = self.run, None
        finish_run(run, self.name, failed=exc_type is not None)  # a failed or stopped step shows as failed
        return False  # the step's own error is never swallowed


def log_step(run_dir: Path, step: str, *, group: str, name: str, config: dict[str, Any] | None = None,
             tags: Sequence[str] = (), samples: bool = True, progress: Sequence[str] = ()) -> bool:
    """Log a complete non-training step of ``run_dir`` as its own W&B run (``rpnet report --wandb``);
    ``progress``: its progress lines, logged as history first. Returns whether the run started."""
    spec = STEPS[step]
    done = _done(layout.step_dir(run_dir, step))
    if spec.trains or not done:
        return False
    with StepRun(run_dir, step, group=group, name=name, config=config, tags=tags,
                 argv=done.get("argv") or []) as tracked:
        if tracked.run is None:
            return False
        for line in progress:
            tracked.progress(line)
        tracked.complete(samples)
    return True


def log_tables(folder: Path, text: str, *, group: str, name: str, job_type: str = "report") -> bool:
    """Every markdown table of ``text`` (a report or an ablation table) as a ``wandb.Table`` of one run."""
    tables = markdown_tables(text)
    if not tables:
        return False
    with wandb_run(folder, name=name, group=group, job_type=job_type) as run:
        if run is None:
            return False
        import wandb

        for title, columns, rows in tables:
            key = re.sub(r"[^0-9A-Za-z]+", "_", title).strip("_")[:60] or "table"
            run.log({key: wandb.Table(columns=columns, data=[r + [""] * (len(columns) - len(r)) for r in rows])})
    return True


def run_config(run_dir: Path) -> dict[str, Any]:
    """A run's resolved training configs (``<step>/config.yaml``) by step, for a re-logged step."""
    out: dict[str, Any] = {}
    for spec in STEPS.values():
        path = layout.step_dir(run_dir, spec.name) / layout.CONFIG
        if spec.trains and path.is_file():
            try:
                out[spec.name] = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                continue
    return out


def logged_while_running(folder: Path) -> bool:
    """Whether a step's folder already holds its W&B run (``--logger wandb`` logs a step as it runs)."""
    wandb_dir = folder / "wandb"
    return wandb_dir.is_dir() and any(p.is_dir() for p in wandb_dir.glob("*run-*"))


def relog_runs(runs_dir: Path, run_dirs: Sequence[Path], text: str) -> tuple[int, int]:
    """``rpnet report RUNS --wandb``: every complete non-training step of every run that has no W&B
    run yet (a step run with ``--logger wandb`` has one: it is not logged twice), then the report's
    tables. Returns (W&B runs started, steps skipped as already logged)."""
    from rpnet_pl.results.summary import seed_folders

    n = skipped = 0
    for run in run_dirs:
        for one in seed_folders(run) or [run]:
            group = run.name
            label = str(one.relative_to(runs_dir))
            config = run_config(one)
            for spec in STEPS.values():
                if spec.trains or not _done(layout.step_dir(one, spec.name)):
                    continue
                if logged_while_running(layout.step_dir(one, spec.name)):
                    skipped += 1
                    continue
                n += log_step(one, spec.name, group=group, name=f"{label}/{spec.name}", config=config)
    n += log_tables(runs_dir / "wandb-report", text, group="report", name=f"{runs_dir.name}/report")
    return n, skipped
