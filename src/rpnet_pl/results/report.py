"""`rpnet report RUNS_DIR`: paper-style tables from whatever runs exist, readable without W&B.

Each run folder (``RUNS_DIR/<name>/``) contributes the metrics its steps wrote:
``eval_cam/metrics.json`` (seeds), ``eval_pseudo_masks/metrics.json`` (pseudo masks, "+ BR") and
``eval_seg/metrics.json`` (segmenter, with and without denseCRF); a run whose thresholds were calibrated
(``calibration.json`` of ``ir_labels`` / ``pseudo_masks``) adds a row to the calibrated-thresholds table.

Figures (PNG, matplotlib's Agg renderer) are written next to ``report.md`` and linked from it: the
mIoU curve of every ``ablation-*`` sweep with numbers, the per-class seed IoU of every run with an
``eval_cam``, and image | ground truth | seed | pseudo mask overlays (with a legend of the class
colours) of up to four images of every run whose CAMs, pseudo masks and VOC images can be found.
Every figure is labelled with its run, split and threshold.

A folder of ``seed<k>/`` runs (``rpnet pipeline --seeds``) is one row: each number is the mean ± std
over the seeds that have it, with n (:mod:`rpnet_pl.pipeline.seeds`); its figures are those of its first seed.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rpnet_pl.pipeline import layout
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.utils.io import atomic_path
from rpnet_pl.pipeline.seeds import Stat, as_float, format_pct
from rpnet_pl.results.summary import RunSummary, figure_run, find_runs, read_json, summarise
from rpnet_pl.pipeline.registry import CAM, CLASSIFIER, EVAL_CAM, EVAL_PSEUDO_MASKS, IR_LABELS_STEP, PSEUDO_MASKS, output_path

log = logging.getLogger(__name__)


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
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"


def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    """Save a figure as PNG atomically."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_ablation(title: str, labels: Sequence[str], series: dict[str, Sequence[float | Stat | None]],
                  path: Path) -> Path:
    """mIoU (%) per variant label, one line per column (None: a gap); over seeds, the mean with
    ± std error bars."""
    fig = _figure(max(5.0, 0.9 * len(labels)), 3.5)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    for name, values in series.items():
        y = np.array([np.nan if v is None else 100 * as_float(v) for v in values], dtype=float)
        err = np.array([100 * v.std if isinstance(v, Stat) else 0.0 for v in values], dtype=float)
        if err.any():
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
        else:
            ax.plot(x, y, marker="o", label=name)
    tilt = max(map(len, labels), default=0) > 6  # long labels (backbones, "block2 + block4") lean
    ax.set_xticks(x, labels, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylabel("seed mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    return _save(fig, path)


def present_classes(per_class: dict[str, float | None]) -> tuple[list[str], np.ndarray, int]:
    """The classes worth a bar: (names, IoU in %, how many were left out). A None IoU means the class
    is in neither the ground truth nor the prediction (e.g. 14 of VOC's 20 names on a 6-class set)."""
    names = [name for name, v in per_class.items() if v is not None]
    values = np.array([100 * per_class[name] for name in names], dtype=float)
    return names, values, len(per_class) - len(names)


def per_class_figure(per_class: dict[str, float | None], title: str) -> Any:
    """The figure of :func:`plot_per_class_iou` (laid out, not saved): the title is wrapped to the
    figure's width."""
    import textwrap

    names, values, absent = present_classes(per_class)
    if absent:
        title += f"; {absent} class(es) absent from the data, not drawn"
    width, fontsize = min(30.0, max(6.0, 0.35 * len(names))), 10.0
    # about 0.6 em per character: the characters that fit the width, less a margin
    lines = textwrap.wrap(title, width=int(0.9 * width * 72 / (0.6 * fontsize)))
    fig = _figure(width, 3.4 + 0.2 * len(lines))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, values, color="tab:blue")
    ax.set_xticks(x, names, rotation=90, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.set_title("\n".join(lines), fontsize=fontsize)
    fig.tight_layout()
    return fig


def plot_per_class_iou(per_class: dict[str, float | None], title: str, path: Path) -> Path:
    """Bars of IoU (%) per class present in the data; the title says how many classes were absent."""
    return _save(per_class_figure(per_class, title), path)


def plot_overlays(rows: Sequence[tuple[str, Sequence[np.ndarray | None]]], columns: Sequence[str], path: Path,
                  title: str | None = None, legend: Sequence[tuple[str, Sequence[int]]] = ()) -> Path:
    """A grid of uint8 images: one row per (image id, tiles), column titles on the first row (a None
    tile reads "n/a"), ``title`` above and a legend of (class name, RGB colour) below."""
    from matplotlib.patches import Patch

    extra = 0.5 + 0.25 * ((len(legend) + 4) // 5) if legend else 0.0
    fig = _figure(2.4 * len(columns), 2.2 * len(rows) + extra + (0.4 if title else 0.0))
    grid_spec = fig.add_gridspec(len(rows) + (1 if legend else 0), len(columns),
                                 height_ratios=[2.2] * len(rows) + ([extra] if legend else []))
    for r, (image_id, tiles) in enumerate(rows):
        for c, tile in enumerate(tiles):
            ax = fig.add_subplot(grid_spec[r, c])
            if tile is None:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=9, transform=ax.transAxes)
            else:
                ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(image_id, fontsize=8)
    if legend:
        ax = fig.add_subplot(grid_spec[len(rows), :])
        ax.axis("off")
        handles = [Patch(facecolor=np.asarray(rgb, float) / 255.0, edgecolor="black", label=name)
                   for name, rgb in legend]
        ax.legend(handles=handles, loc="center", ncol=min(5, len(handles)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def legend_entries(labels: Sequence[np.ndarray], names: Sequence[str], palette: np.ndarray) -> list[tuple[str, list[int]]]:
    """(class name, RGB) of every label value in ``labels``, in label order; 255 is "ignore"."""
    present = sorted({int(v) for lab in labels for v in np.unique(lab)})
    out = []
    for v in present:
        name = "ignore" if v == 255 else (names[v] if v < len(names) else f"class {v}")
        out.append((name, [int(x) for x in palette[v]]))
    return out


def _step_split(run: Path, step: str, default: str) -> str:
    """The ``--split`` a completed step ran with (from its ``.done`` argv), else ``default``."""
    import yaml

    try:
        argv = (yaml.safe_load(layout.done_marker(run, step).read_text()) or {}).get("argv") or []
    except (OSError, yaml.YAMLError):
        return default
    return str(argv[argv.index("--split") + 1]) if "--split" in argv[:-1] else default


def _ground_truth(voc: Path, image_id: str) -> Path | None:
    """The ground-truth mask of an image (SegmentationClassAug preferred), or None."""
    for sub in ("SegmentationClassAug", "SegmentationClass"):
        if (p := voc / sub / f"{image_id}.png").is_file():
            return p
    return None


def seed_labels(record: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """Seed label map (H, W) of a CAM record: argmax of [threshold, high-res CAMs] mapped to class ids."""
    cams = np.asarray(record["high_res"], dtype=np.float32)
    keys = np.concatenate([[0], np.asarray(record["keys"], dtype=np.int64)])
    scores = np.concatenate([np.full((1, *cams.shape[1:]), threshold, np.float32), cams])
    return keys[scores.argmax(0)].astype(np.uint8)


def _dataset_root(run: Path) -> Path | None:
    """The VOC2012 folder named by the run's classifier config (``data.root``), if it exists."""
    import yaml

    from rpnet_pl.data.voc import resolve_voc_root
    from rpnet_pl.utils.errors import DatasetError

    cfg = layout.config_path(run, CLASSIFIER.name)
    try:
        data = (yaml.safe_load(cfg.read_text()) or {}).get("data") or {}
    except (OSError, yaml.YAMLError):
        return None
    if not data.get("root") or data.get("dataset", "voc") != "voc":
        return None
    try:
        return resolve_voc_root(data["root"])
    except DatasetError:
        return None


def overlay_rows(run: Path, threshold: float, n: int = 4) -> list[tuple[str, list[np.ndarray | None]]]:
    """(id, [image, ground-truth overlay, seed overlay, pseudo-mask overlay]) for up to ``n`` images of a
    run (sorted ids with both a CAM file and a pseudo mask; the ground truth is None where the image has
    no mask); empty when the images cannot be found."""
    from rpnet_pl.data.classes import voc_palette
    from rpnet_pl.utils.errors import DatasetError
    from rpnet_pl.utils.io import read_image, read_label_png
    from rpnet_pl.steps.cam_inference import read_cam
    from rpnet_pl.stages.visuals import overlay_labels

    cams, masks = output_path(run, CAM.name), output_path(run, PSEUDO_MASKS.name)
    ids = sorted({p.stem for p in cams.glob("*.npy")} & {p.stem for p in masks.glob("*.png")})
    voc = _dataset_root(run) if ids else None
    if voc is None:
        return []
    palette, rows = voc_palette(), []
    for image_id in ids:
        try:
            image = read_image(voc / "JPEGImages" / f"{image_id}.jpg")
            seed = seed_labels(read_cam(cams, image_id), threshold)
            mask = read_label_png(masks / f"{image_id}.png")
            gt_path = _ground_truth(voc, image_id)
            gt = read_label_png(gt_path) if gt_path is not None else None
        except DatasetError as exc:
            log.debug("overlay of %s skipped: %s", image_id, exc)
            continue
        if seed.shape != image.shape[:2] or mask.shape != image.shape[:2]:
            continue
        gt_tile = overlay_labels(image, gt, palette) if gt is not None and gt.shape == image.shape[:2] else None
        rows.append((image_id, [image, gt_tile, overlay_labels(image, seed, palette),
                                overlay_labels(image, mask, palette)]))
        if len(rows) == n:
            break
    return rows


def _row_labels(run: Path, ids: Sequence[str], threshold: float) -> list[np.ndarray]:
    """The label maps shown in the overlay rows (ground truth, seeds, pseudo masks), for the legend."""
    from rpnet_pl.utils.errors import DatasetError
    from rpnet_pl.utils.io import read_label_png
    from rpnet_pl.steps.cam_inference import read_cam

    voc, out = _dataset_root(run), []
    for image_id in ids:
        try:
            out.append(seed_labels(read_cam(output_path(run, CAM.name), image_id), threshold))
            out.append(read_label_png(output_path(run, PSEUDO_MASKS.name) / f"{image_id}.png"))
            gt = _ground_truth(voc, image_id) if voc is not None else None
            if gt is not None:
                out.append(read_label_png(gt))
        except DatasetError:
            continue
    return out


def run_figures(run: Path, folder: Path, label: str | None = None) -> list[tuple[str, Path]]:
    """Per-class seed IoU bars and overlays of one run, written into ``folder``; (caption, path) pairs.
    Each figure is labelled with ``label`` (default: the run's name), its split and its threshold."""
    from rpnet_pl.data.classes import VOC_CLASSES, voc_palette

    label = label or run.name
    out: list[tuple[str, Path]] = []
    metrics = read_json(layout.metrics_path(run, EVAL_CAM.name)) or {}
    per_class = metrics.get("per_class_iou")
    threshold = metrics.get("best_threshold")
    if isinstance(per_class, dict) and per_class:
        title = f"run {label}: seed IoU per class, split {_step_split(run, EVAL_CAM.name, EVAL_CAM.default_split)}"
        if metrics.get("best_miou") is not None:
            title += f", mIoU {100 * metrics['best_miou']:.1f}"
        title += f", threshold {threshold:g}" if threshold is not None else ""
        out.append((f"{label} per-class seed IoU",
                    plot_per_class_iou(per_class, title, folder / f"iou-{_slug(label)}.png")))
    thr = 0.15 if threshold is None else float(threshold)
    rows = overlay_rows(run, thr)
    if rows:
        split = _step_split(run, CAM.name, CAM.default_split)
        source = "best eval_cam threshold" if threshold is not None else "default"
        title = f"run {label}, split {split}, seed threshold {thr:g} ({source})"
        legend = legend_entries(_row_labels(run, [r[0] for r in rows], thr), VOC_CLASSES, voc_palette())
        out.append((f"{label} image, ground truth, seed and pseudo mask", plot_overlays(
            rows, ("image", "ground truth", "seed", "pseudo mask"), folder / f"overlays-{_slug(label)}.png",
            title=title, legend=legend)))
    return out


def _run_label(run: Path, runs_dir: Path) -> str:
    """``demo`` for a single run, ``demo/seed0`` for the seed run whose figures stand for it."""
    shown = figure_run(run)
    try:
        return shown.relative_to(runs_dir).as_posix()
    except ValueError:
        return shown.name


def ablation_figure(sweep_dir: Path, folder: Path) -> Path | None:
    """The mIoU curve of one ``ablation-NAME`` sweep folder, or None when it has no numbers."""
    from rpnet_pl.results.ablations import collect, sweeps

    name = sweep_dir.name[len("ablation-"):]
    sweep = sweeps().get(name)
    if sweep is None:
        return None
    results = collect(name, sweep, sweep_dir.parent)
    if all(v is None for v in results.values()):
        return None
    labels = list(dict.fromkeys(v.label for v in sweep.variants))
    series = {col: [results.get((lab, col)) for lab in labels] for col in sweep.columns}
    n = max((v.n for v in results.values() if isinstance(v, Stat)), default=0)
    title = (f"Table {sweep.table}: {sweep.title}\nrun {sweep_dir.name}, split train, best threshold per variant"
             + (f", mean ± std over n={n} seeds" if n else ""))
    return plot_ablation(title, labels, series, folder / f"{sweep_dir.name}.png")


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
