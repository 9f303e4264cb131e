"""`rpnet report RUNS_DIR`: paper-style tables from whatever runs exist, readable without W&B.

Each run folder (``RUNS_DIR/<name>/``) contributes the metrics its steps wrote:
``eval_cam/metrics.json`` (seeds), ``eval_sem_seg/metrics.json`` (pseudo masks, "+ BR") and
``eval_seg/metrics.json`` (segmenter, with and without denseCRF).

Figures (PNG, matplotlib's Agg renderer) are written next to ``report.md`` and linked from it: the
mIoU curve of every ``ablation-*`` sweep with numbers, the per-class seed IoU of every run with an
``eval_cam``, and image | seed | pseudo mask overlays of up to four images of every run whose CAMs,
pseudo masks and VOC images can be found.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rpnet_pl.io import atomic_path

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """The headline numbers of one run (mIoU in [0, 1]; None where the step has not run)."""

    name: str
    method: str | None = None
    backbone: str | None = None
    dataset: str | None = None
    seeds: float | None = None
    seed_threshold: float | None = None
    pseudo_masks: float | None = None
    val: float | None = None
    val_crf: float | None = None
    val_per_class: dict[str, float | None] | None = None
    val_crf_per_class: dict[str, float | None] | None = None
    test_export: Path | None = None


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarise_run(run: Path) -> RunSummary:
    """Read one run folder's metrics files."""
    out = RunSummary(run.name)
    cfg = run / "classifier" / "config.yaml"
    if cfg.is_file():
        import yaml

        try:
            config = yaml.safe_load(cfg.read_text()) or {}
        except yaml.YAMLError:
            config = {}
        model, data = config.get("model") or {}, config.get("data") or {}
        out.method, out.backbone, out.dataset = model.get("method"), model.get("backbone"), data.get("dataset")
    if (m := _read(run / "eval_cam" / "metrics.json")) is not None:
        out.seeds, out.seed_threshold = m.get("best_miou"), m.get("best_threshold")
    if (m := _read(run / "eval_sem_seg" / "metrics.json")) is not None:
        out.pseudo_masks = m.get("miou")
    if (m := _read(run / "eval_seg" / "metrics.json")) is not None:
        out.val = (m.get("without_crf") or {}).get("miou")
        out.val_crf = (m.get("with_crf") or {}).get("miou")
        out.val_per_class = (m.get("without_crf") or {}).get("per_class_iou")
        out.val_crf_per_class = (m.get("with_crf") or {}).get("per_class_iou")
    if (run / "predict_seg" / ".done").is_file():
        out.test_export = run / "predict_seg"
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


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
    """Table XI: per-class val IoU of every VOC run (with and without CRF), one row each."""
    from rpnet_pl.data.classes import VOC_CLASSES
    from rpnet_pl.ops.metrics import format_iou_table

    rows: list[str] = []
    for r in runs:
        if (r.dataset or "voc") != "voc":
            continue
        for suffix, per_class in ((" w/o CRF", r.val_per_class), ("", r.val_crf_per_class)):
            if not per_class:
                continue
            values = [np.nan if per_class.get(c) is None else per_class[c] for c in VOC_CLASSES]
            table = format_iou_table(values, VOC_CLASSES, row_name=_label(r) + suffix).splitlines()
            rows += table[:2] if not rows else []
            rows.append(table[2])
    return "\n".join(rows) if rows else None


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Run folders: sub-folders of ``runs_dir`` holding at least one step folder."""
    root = Path(runs_dir)
    steps = ("classifier", "eval_cam", "eval_sem_seg", "eval_seg")
    return sorted(p for p in root.iterdir() if p.is_dir() and any((p / s).is_dir() for s in steps)) \
        if root.is_dir() else []


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


def plot_ablation(title: str, labels: Sequence[str], series: dict[str, Sequence[float | None]], path: Path) -> Path:
    """mIoU (%) per variant label, one line per column (None: a gap)."""
    fig = _figure(max(5.0, 0.9 * len(labels)), 3.5)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    for name, values in series.items():
        y = np.array([np.nan if v is None else 100 * v for v in values], dtype=float)
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


def plot_per_class_iou(per_class: dict[str, float | None], title: str, path: Path) -> Path:
    """Bars of IoU (%) per class present in the data; the title says how many classes were absent."""
    names, values, absent = present_classes(per_class)
    if absent:
        title += f"; {absent} class(es) absent from the data, not drawn"
    fig = _figure(min(30.0, max(6.0, 0.35 * len(names))), 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, values, color="tab:blue")
    ax.set_xticks(x, names, rotation=90, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title)
    return _save(fig, path)


def plot_overlays(rows: Sequence[tuple[str, Sequence[np.ndarray]]], columns: Sequence[str], path: Path) -> Path:
    """A grid of uint8 images: one row per (image id, tiles), column titles on the first row."""
    fig = _figure(2.4 * len(columns), 2.2 * len(rows))
    for r, (image_id, tiles) in enumerate(rows):
        for c, tile in enumerate(tiles):
            ax = fig.add_subplot(len(rows), len(columns), r * len(columns) + c + 1)
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(image_id, fontsize=8)
    return _save(fig, path)


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
    from rpnet_pl.errors import DatasetError

    cfg = run / "classifier" / "config.yaml"
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


def overlay_rows(run: Path, threshold: float, n: int = 4) -> list[tuple[str, list[np.ndarray]]]:
    """(id, [image, seed overlay, pseudo-mask overlay]) for up to ``n`` images of a run (sorted ids with
    both a CAM file and a pseudo mask); empty when the images cannot be found."""
    from rpnet_pl.data.classes import voc_palette
    from rpnet_pl.errors import DatasetError
    from rpnet_pl.io import read_image, read_label_png
    from rpnet_pl.stages.cam_inference import read_cam
    from rpnet_pl.stages.visuals import overlay_labels

    cams, masks = run / "cam" / "cams", run / "sem_seg" / "masks"
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
        except DatasetError as exc:
            log.debug("overlay of %s skipped: %s", image_id, exc)
            continue
        if seed.shape != image.shape[:2] or mask.shape != image.shape[:2]:
            continue
        rows.append((image_id, [image, overlay_labels(image, seed, palette), overlay_labels(image, mask, palette)]))
        if len(rows) == n:
            break
    return rows


def run_figures(run: Path, folder: Path) -> list[tuple[str, Path]]:
    """Per-class seed IoU bars and overlays of one run, written into ``folder``; (caption, path) pairs."""
    out: list[tuple[str, Path]] = []
    metrics = _read(run / "eval_cam" / "metrics.json") or {}
    per_class = metrics.get("per_class_iou")
    if isinstance(per_class, dict) and per_class:
        title = f"{run.name}: seed IoU per class"
        if metrics.get("best_miou") is not None:
            title += f", mIoU {100 * metrics['best_miou']:.1f}"
        if metrics.get("best_threshold") is not None:
            title += f" (threshold {metrics['best_threshold']:g})"
        out.append((f"{run.name} per-class seed IoU",
                    plot_per_class_iou(per_class, title, folder / f"iou-{_slug(run.name)}.png")))
    threshold = metrics.get("best_threshold")
    rows = overlay_rows(run, 0.15 if threshold is None else float(threshold))
    if rows:
        out.append((f"{run.name} image, seed and pseudo mask", plot_overlays(
            rows, ("image", "seed", "pseudo mask"), folder / f"overlays-{_slug(run.name)}.png")))
    return out


def ablation_figure(sweep_dir: Path, folder: Path) -> Path | None:
    """The mIoU curve of one ``ablation-NAME`` sweep folder, or None when it has no numbers."""
    from rpnet_pl.ablations import collect, sweeps

    name = sweep_dir.name[len("ablation-"):]
    sweep = sweeps().get(name)
    if sweep is None:
        return None
    results = collect(name, sweep, sweep_dir.parent)
    if all(v is None for v in results.values()):
        return None
    labels = list(dict.fromkeys(v.label for v in sweep.variants))
    series = {col: [results.get((lab, col)) for lab in labels] for col in sweep.columns}
    return plot_ablation(f"Table {sweep.table}: {sweep.title}", labels, series, folder / f"{sweep_dir.name}.png")


def _link(caption: str, path: Path, folder: Path) -> str:
    return f"![{caption}]({path.relative_to(folder).as_posix()})\n"


def write_report(runs_dir: str | Path, out: str | Path | None = None) -> tuple[Path, str]:
    """Write ``report.md`` into ``runs_dir`` (or ``out``) and its figures beside it; returns its path and text."""
    path = Path(out) if out else Path(runs_dir) / "report.md"
    folder = path.parent
    run_dirs = find_runs(runs_dir)
    runs = [summarise_run(p) for p in run_dirs]
    text = ("# rpnet-pl report\n\n## Table I: seeds, pseudo masks (+ BR) and segmentation (mIoU %)\n\n"
            + summary_table(runs) + "\n")
    for dataset, table in (("voc", "VIII"), ("coco", "X")):
        seg = segmentation_table(runs, dataset)
        if seg:
            text += f"\n## Table {table}: segmentation on {dataset.upper()} val (mIoU %)\n\n" + seg + "\n"
    per_class = per_class_table(runs)
    if per_class:
        text += "\n## Table XI: per-class IoU on VOC val (%)\n\n" + per_class + "\n"
    for run in run_dirs:
        figures = run_figures(run, folder)
        if figures:
            text += f"\n## {run.name}\n\n" + "\n".join(_link(c, p, folder) for c, p in figures)
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
