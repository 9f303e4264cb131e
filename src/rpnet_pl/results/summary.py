"""What a run folder holds, read back: the headline numbers of each run (or the mean ± std over its
``seed<k>/`` runs) from the metrics files its steps wrote (:mod:`rpnet_pl.pipeline.layout`). Read by
``rpnet report`` and by the ablation sweeps' tables."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rpnet_pl.pipeline.networks import flat_model
from rpnet_pl.pipeline import layout
from rpnet_pl.pipeline.seeds import Stat, as_float, mean_std, seed_folders
from rpnet_pl.pipeline.registry import CLASSIFIER, EVAL_CAM, EVAL_PSEUDO_MASKS, EVAL_SEG, PREDICT_SEG


@dataclass
class RunSummary:
    """The headline numbers of one run (mIoU in [0, 1]; None where the step has not run); over
    several seeds each number is a :class:`~rpnet_pl.pipeline.seeds.Stat` and the per-class IoUs are means."""

    name: str
    method: str | None = None
    backbone: str | None = None
    dataset: str | None = None
    seeds: float | Stat | None = None
    seed_threshold: float | Stat | None = None
    pseudo_masks: float | Stat | None = None
    val: float | Stat | None = None
    val_crf: float | Stat | None = None
    val_per_class: dict[str, float | None] | None = None
    val_crf_per_class: dict[str, float | None] | None = None
    test_export: Path | None = None
    n_seeds: int = 0  # 0: a single run; k: the mean over k seed folders


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarise_run(run: Path) -> RunSummary:
    """Read one run folder's metrics files."""
    out = RunSummary(run.name)
    cfg = layout.config_path(run, CLASSIFIER.name)
    if cfg.is_file():
        import yaml

        try:
            config = yaml.safe_load(cfg.read_text()) or {}
        except yaml.YAMLError:
            config = {}
        data = config.get("data") or {}
        try:
            model = flat_model(CLASSIFIER.name, config.get("model") or {})
        except ValueError:  # a network of no method
            model = {}
        out.method, out.backbone, out.dataset = model.get("method"), model.get("backbone"), data.get("dataset")
    if (m := read_json(layout.metrics_path(run, EVAL_CAM.name))) is not None:
        out.seeds, out.seed_threshold = m.get("best_miou"), m.get("best_threshold")
    if (m := read_json(layout.metrics_path(run, EVAL_PSEUDO_MASKS.name))) is not None:
        out.pseudo_masks = m.get("miou")
    if (m := read_json(layout.metrics_path(run, EVAL_SEG.name))) is not None:
        out.val = (m.get("without_crf") or {}).get("miou")
        out.val_crf = (m.get("with_crf") or {}).get("miou")
        out.val_per_class = (m.get("without_crf") or {}).get("per_class_iou")
        out.val_crf_per_class = (m.get("with_crf") or {}).get("per_class_iou")
    if layout.done_marker(run, PREDICT_SEG.name).is_file():
        out.test_export = layout.step_dir(run, PREDICT_SEG.name)
    return out


_NUMBERS = ("seeds", "seed_threshold", "pseudo_masks", "val", "val_crf")


def _mean_per_class(dicts: Sequence[dict[str, float | None] | None]) -> dict[str, float | None] | None:
    """Class -> mean IoU over the runs that have the class (None where none has it)."""
    dicts = [d for d in dicts if d]
    if not dicts:
        return None
    names = list(dict.fromkeys(c for d in dicts for c in d))
    return {c: as_float(mean_std([d.get(c) for d in dicts])) for c in names}


def aggregate_runs(name: str, runs: Sequence[RunSummary]) -> RunSummary:
    """One row for the seed runs of an experiment: mean ± std (n) of every number over the seeds
    that have it; method, backbone and dataset of the first seed."""
    first = runs[0]
    out = RunSummary(name, first.method, first.backbone, first.dataset, n_seeds=len(runs))
    for key in _NUMBERS:
        setattr(out, key, mean_std([as_float(getattr(r, key)) for r in runs]))
    out.val_per_class = _mean_per_class([r.val_per_class for r in runs])
    out.val_crf_per_class = _mean_per_class([r.val_crf_per_class for r in runs])
    out.test_export = next((r.test_export for r in runs if r.test_export), None)
    return out


def summarise(folder: Path) -> RunSummary:
    """A run folder's numbers, or the mean ± std over its ``seed<k>/`` runs when it has some."""
    seeds = [p for p in seed_folders(folder) if is_run(p)]
    if seeds:
        return aggregate_runs(folder.name, [summarise_run(p) for p in seeds])
    return summarise_run(folder)


def is_run(folder: Path) -> bool:
    """True if ``folder`` holds at least one step folder that ``rpnet report`` reads."""
    return any(layout.step_dir(folder, s.name).is_dir() for s in (CLASSIFIER, EVAL_CAM, EVAL_PSEUDO_MASKS, EVAL_SEG))


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Run folders: sub-folders of ``runs_dir`` holding at least one step folder, or ``seed<k>/`` runs."""
    root = Path(runs_dir)
    return sorted(p for p in root.iterdir() if p.is_dir() and (
        is_run(p) or any(is_run(s) for s in seed_folders(p)))) if root.is_dir() else []


def figure_run(folder: Path) -> Path:
    """The run whose figures stand for ``folder``: itself, or its first seed run."""
    return next((p for p in seed_folders(folder) if is_run(p)), folder)
