"""`rpnet report RUNS_DIR`: paper-style tables from whatever runs exist, readable without W&B.

Each run folder (``RUNS_DIR/<name>/``) contributes the metrics its steps wrote:
``eval_cam/metrics.json`` (seeds), ``eval_pseudo_masks/metrics.json`` (pseudo masks, "+ BR") and
``eval_seg/metrics.json`` (segmenter, with and without denseCRF); a run whose thresholds were calibrated
(``calibration.json`` of ``ir_labels`` / ``pseudo_masks``) adds a row to the calibrated-thresholds table.

Figures (:mod:`rpnet_pl.results.figures`) are written next to ``report.md`` and linked from it: the
mIoU curve of every ``ablation-*`` sweep with numbers, the per-class seed IoU of every run with an
``eval_cam``, and image | ground truth | seed | pseudo mask overlays (with a legend of the class
colours) of up to four images of every run whose CAMs, pseudo masks and VOC images can be found.
Every figure is labelled with its run, split and threshold.

A folder of ``seed<k>/`` runs (``rpnet pipeline --seeds``) is one row: each number is the mean ± std
over the seeds that have it, with n (:mod:`rpnet_pl.pipeline.seeds`); its figures are those of its first seed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rpnet_pl.pipeline import layout
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.utils.io import atomic_path
from rpnet_pl.pipeline.seeds import Stat, format_pct
from rpnet_pl.results.figures import ablation_figure, run_figures
from rpnet_pl.results.summary import RunSummary, figure_run, find_runs, read_json, summarise
from rpnet_pl.pipeline.registry import EVAL_CAM, EVAL_PSEUDO_MASKS, IR_LABELS_STEP, PSEUDO_MASKS, output_path


def _pct(v: float | Stat | None) -> str:
    return format_pct(v)


def summary_table(runs: list[RunSummary]) -> str:
    """Markdown: seeds / pseudo masks (train) and segmentation (val, without and with CRF) per run."""
    lines = ["| run | method | seeds (train) | pseudo masks (train) | val | val + CRF |",
             "|---|---|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r.name} | {r.method or '-'} | {_pct(r.seeds)} | {_pct(r.pseudo_masks)} | "
                     f"{_pct(r.val)} | {_pct(r.val_crf)} |")
    return "\n".join(lines)


def _label(r: RunSummary) -> str:
    """The paper's row label: "RPNet (resnext50)" / "Base (resnet50)"; the run name in brackets."""
    method = {"rpnet": "RPNet", "cam": "Base"}.get(r.method or "", r.method or "?")
    return f"{method} ({r.backbone or '?'}) [{r.name}]"


def segmentation_table(runs: list[RunSummary], dataset: str) -> str | None:
    """Tables VIII (VOC) / X (COCO): our rows, val mIoU with and without denseCRF; the test column
    names the exported predictions (scored by the benchmark's server, not here). None without rows."""
    rows = [r for r in runs if (r.dataset or "voc") == dataset and (r.val is not None or r.val_crf is not None)]
    if not rows:
        return None
    lines = ["| method | val | test |", "|---|---:|---|"]
    for r in rows:
        test = f"submit `{r.test_export}`" if r.test_export else "-"
        lines.append(f"| {_label(r)} w/o CRF | {_pct(r.val)} | {test} |")
        lines.append(f"| {_label(r)} | {_pct(r.val_crf)} | {test} |")
    return "\n".join(lines)


def per_class_table(runs: list[RunSummary]) -> str | None:
    """Table XI: per-class val IoU of every VOC run (with and without CRF), one row each. A class with
    no IoU in any row (no ground-truth pixel and no prediction in any run) is left out, and a line
    under the table says how many were."""
    from rpnet_pl.data.classes import VOC_CLASSES
    from rpnet_pl.ops.metrics import format_iou_table

    found: list[tuple[str, dict[str, float | None]]] = []
    for r in runs:
        if (r.dataset or "voc") != "voc":
            continue
        for suffix, per_class in ((" w/o CRF", r.val_per_class), ("", r.val_crf_per_class)):
            if per_class:
                found.append((_label(r) + suffix + (f" (mean of n={r.n_seeds} seeds)" if r.n_seeds else ""),
                              per_class))
    if not found:
        return None
    names = [c for c in VOC_CLASSES if any(per_class.get(c) is not None for _, per_class in found)]
    rows: list[str] = []
    for label, per_class in found:
        values = [np.nan if per_class.get(c) is None else per_class[c] for c in names]
        table = format_iou_table(values, names, row_name=label).splitlines()
        rows += table[:2] if not rows else []
        rows.append(table[2])
    absent = len(VOC_CLASSES) - len(names)
    if absent:
        rows += ["", f"{absent} of the {len(VOC_CLASSES)} VOC classes left out: no ground-truth pixel and no "
                     "prediction in any run."]
    return "\n".join(rows)


def sweep_table(run: Path, label: str | None = None) -> str | None:
    """Markdown: the pseudo masks' background-threshold sweep (``eval_pseudo_masks`` over the walk's
    saved scores) beside the seeds' (``eval_cam``), mIoU % per threshold, each column's best in bold;
    None when the run's pseudo masks were not swept."""
    masks = read_json(layout.metrics_path(run, EVAL_PSEUDO_MASKS.name)) or {}
    if not isinstance(masks.get("thresholds"), dict):
        return None
    seeds = read_json(layout.metrics_path(run, EVAL_CAM.name)) or {}
    columns = [(name, m.get("thresholds") or {}, m.get("best_threshold")) for name, m in
               (("seeds", seeds), ("pseudo masks", masks))]
    ts = sorted({float(t) for _, sweep, _ in columns for t in sweep})

    def cell(sweep: dict[str, Any], best: float | None, t: float) -> str:
        value = next((v.get("miou") for k, v in sweep.items() if float(k) == t), None)
        text = _pct(value)
        return f"**{text}**" if value is not None and best is not None and float(best) == t else text

    lines = [f"Background-threshold sweeps of run {label or run.name} (mIoU %, best in bold):", "",
             "| threshold | " + " | ".join(name for name, _, _ in columns) + " |", "|---:|---:|---:|"]
    lines += [f"| {t:g} | " + " | ".join(cell(sweep, best, t) for _, sweep, best in columns) + " |" for t in ts]
    written, edge = masks.get("masks_threshold"), masks.get("best_at_edge")
    note = f"pseudo masks as written{'' if written is None else f' (threshold {written:g})'}: {_pct(masks.get('miou'))}"
    if edge:
        note += (f"; their best threshold is the sweep's {'largest' if edge == 'high' else 'smallest'}, the optimum "
                 "may lie beyond it")
    return "\n".join(lines + ["", note])


def calibration_table(run_dirs: Sequence[Path], runs_dir: Path) -> str | None:
    """Markdown: the thresholds each run (each seed of a multi-seed run) calibrated, from the
    ``calibration.json`` of its ``ir_labels`` and ``pseudo_masks`` outputs: the seeds' best threshold t*,
    the IR labels' fg / bg, the walk's b*, and where a best lies at its sweep's edge. None when no run
    calibrated."""
    from rpnet_pl.pipeline.seeds import seed_folders

    def edge(record: dict[str, Any] | None) -> str:
        return "-" if record is None else record.get("best_at_edge") or "no"

    lines: list[str] = []
    for run in run_dirs:
        for one in seed_folders(run) or [run]:
            ir = read_json(layout.calibration_path(output_path(one, IR_LABELS_STEP.name)))
            walk = read_json(layout.calibration_path(output_path(one, PSEUDO_MASKS.name)))
            if ir is None and walk is None:
                continue
            split = (ir or walk or {}).get("split", "?")
            t_star = "-" if ir is None else f"{ir['best_threshold']:g}"
            fg_bg = "-" if ir is None else f"{ir['used']['fg_threshold']:g} / {ir['used']['bg_threshold']:g}"
            b_star = "-" if walk is None else f"{walk['used']['bg_threshold']:g}"
            lines.append(f"| {one.relative_to(runs_dir).as_posix()} | {split} | {t_star} | {fg_bg} | {edge(ir)} | "
                         f"{b_star} | {edge(walk)} |")
    if not lines:
        return None
    return "\n".join(["| run | split | seeds t* | IR labels fg / bg | t* at edge | walk b* | b* at edge |",
                      "|---|---|---:|---:|---|---:|---|", *lines])


# -- figures -------------------------------------------------------------------------------------
def _run_label(run: Path, runs_dir: Path) -> str:
    """``demo`` for a single run, ``demo/seed0`` for the seed run whose figures stand for it."""
    shown = figure_run(run)
    try:
        return shown.relative_to(runs_dir).as_posix()
    except ValueError:
        return shown.name


def _link(caption: str, path: Path, folder: Path) -> str:
    return f"![{caption}]({path.relative_to(folder).as_posix()})\n"


def mixed_code_lines(run_dirs: Sequence[Path], runs_dir: Path) -> list[str]:
    """One markdown line per run (or seed folder) whose complete steps recorded more than one code
    version (:func:`rpnet_pl.pipeline.provenance.code_versions`)."""
    from rpnet_pl.pipeline.provenance import code_versions
    from rpnet_pl.pipeline.registry import STEP_ORDER
    from rpnet_pl.results.summary import seed_folders

    lines = []
    for run in run_dirs:
        for one in seed_folders(run) or [run]:
            codes = code_versions(one, STEP_ORDER)
            if len(set(codes.values())) > 1:
                steps = ", ".join(f"{step} {code}" for step, code in codes.items())
                lines.append(f"- {one.relative_to(runs_dir)}: {steps}")
    return lines


def write_report(runs_dir: str | Path, out: str | Path | None = None) -> tuple[Path, str]:
    """Write ``report.md`` into ``runs_dir`` (or ``out``) and its figures beside it; returns its path and text."""
    if not Path(runs_dir).is_dir():
        raise ConfigError(f"{runs_dir}: no such runs folder (the --runs / RUNS= of the pipeline)")
    path = Path(out) if out else Path(runs_dir) / "report.md"
    folder = path.parent
    run_dirs = find_runs(runs_dir)
    if not run_dirs and not any(p.is_dir() for p in Path(runs_dir).glob("ablation-*")):
        raise ConfigError(f"{runs_dir}: no run found in it (a run is a folder with step folders, e.g. "
                          "RUNS/<experiment>/classifier; an ablation's runs are RUNS/ablation-<name>/...)")
    runs = [summarise(p) for p in run_dirs]
    text = ("# rpnet-pl report\n\n## Table I: seeds, pseudo masks (+ BR) and segmentation (mIoU %)\n\n"
            + summary_table(runs) + "\n")
    if any(r.n_seeds for r in runs):
        text += ("\nA run over seeds (`seed<k>/` folders) shows mean ± std (sample std) over the seeds that have "
                 "the number, n = how many.\n")
    mixed = mixed_code_lines(run_dirs, Path(runs_dir))
    if mixed:
        text += ("\n**Runs whose steps were made by different code versions** (their numbers may not belong "
                 "together; `--force STEP` re-runs a step and those after it):\n\n" + "\n".join(mixed) + "\n")
    calibrated = calibration_table(run_dirs, Path(runs_dir))
    if calibrated:
        text += ("\n## Calibrated thresholds\n\nThresholds chosen on a labelled split (`thresholds: calibrated`): "
                 "IR labels fg = 2 t*, bg = t* / 3 from the seeds' best threshold t*; the walk's background b*. An "
                 "edge (low / high) says the best lies at the sweep's end, the optimum may lie beyond it.\n\n"
                 + calibrated + "\n")
    for dataset, table in (("voc", "VIII"), ("coco", "X")):
        seg = segmentation_table(runs, dataset)
        if seg:
            text += f"\n## Table {table}: segmentation on {dataset.upper()} val (mIoU %)\n\n" + seg + "\n"
    per_class = per_class_table(runs)
    if per_class:
        text += "\n## Table XI: per-class IoU on VOC val (%)\n\n" + per_class + "\n"
        if any(r.n_seeds for r in runs):
            text += ("\nOver seeds, each class is the mean over the seeds that scored it, and the mIoU column the "
                     "mean of those class means (Table I and VIII give the mean of each seed's mIoU).\n")
    for run in run_dirs:
        label = _run_label(run, Path(runs_dir))
        sweeps = sweep_table(figure_run(run), label)
        figures = run_figures(figure_run(run), folder, label=label)
        if figures or sweeps:
            text += (f"\n## {run.name}\n\n" + (sweeps + "\n\n" if sweeps else "")
                     + "\n".join(_link(c, p, folder) for c, p in figures))
    root = Path(runs_dir)
    for sweep_dir in sorted(p for p in root.glob("ablation-*") if p.is_dir()) if root.is_dir() else []:
        table_md, figure = sweep_dir / "table.md", ablation_figure(sweep_dir, folder)
        if not table_md.is_file() and figure is None:
            continue
        parts = [table_md.read_text()] if table_md.is_file() else []
        if figure is not None:
            parts.append(_link(f"{sweep_dir.name} mIoU", figure, folder))
        text += "\n## " + sweep_dir.name + "\n\n" + "\n".join(parts)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path, text


def report_runs(runs_dir: str | Path, out: str | Path | None = None, wandb: bool = False) -> None:
    """`rpnet report`: write and print the report (:func:`write_report`); with ``wandb``, also log every
    complete step that has no W&B run yet, and the report's tables."""
    path, text = write_report(runs_dir, out)
    print(text)
    print(f"wrote {path}")
    if not wandb:
        return
    from rpnet_pl.pipeline.tracking import mode, relog_runs

    if mode() == "disabled":
        print("W&B: WANDB_MODE=disabled, nothing logged")
        return
    n, skipped = relog_runs(Path(runs_dir), find_runs(runs_dir), text)
    where = f"; upload with `wandb sync {Path(runs_dir)}/*/*/wandb/offline-run-*`" if mode() == "offline" else ""
    again = f"; {skipped} step(s) already had their W&B run (logged as they ran), not logged again" if skipped else ""
    print(f"W&B: {n} run(s) logged ({mode()}{where}){again}")
