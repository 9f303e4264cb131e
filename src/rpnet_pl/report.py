"""`rpnet report RUNS_DIR`: paper-style tables from whatever runs exist, readable without W&B.

Each run folder (``RUNS_DIR/<name>/``) contributes the metrics its steps wrote:
``eval_cam/metrics.json`` (seeds), ``eval_sem_seg/metrics.json`` (pseudo masks, "+ BR") and
``eval_seg/metrics.json`` (segmenter, with and without denseCRF).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rpnet_pl.io import atomic_path


@dataclass
class RunSummary:
    """The headline numbers of one run (mIoU in [0, 1]; None where the step has not run)."""

    name: str
    method: str | None = None
    seeds: float | None = None
    seed_threshold: float | None = None
    pseudo_masks: float | None = None
    val: float | None = None
    val_crf: float | None = None


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

        out.method = ((yaml.safe_load(cfg.read_text()) or {}).get("model") or {}).get("method")
    if (m := _read(run / "eval_cam" / "metrics.json")) is not None:
        out.seeds, out.seed_threshold = m.get("best_miou"), m.get("best_threshold")
    if (m := _read(run / "eval_sem_seg" / "metrics.json")) is not None:
        out.pseudo_masks = m.get("miou")
    if (m := _read(run / "eval_seg" / "metrics.json")) is not None:
        out.val = (m.get("without_crf") or {}).get("miou")
        out.val_crf = (m.get("with_crf") or {}).get("miou")
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


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Run folders: sub-folders of ``runs_dir`` holding at least one step folder."""
    root = Path(runs_dir)
    steps = ("classifier", "eval_cam", "eval_sem_seg", "eval_seg")
    return sorted(p for p in root.iterdir() if p.is_dir() and any((p / s).is_dir() for s in steps)) \
        if root.is_dir() else []


def write_report(runs_dir: str | Path, out: str | Path | None = None) -> tuple[Path, str]:
    """Write ``report.md`` into ``runs_dir`` (or ``out``); returns its path and text."""
    runs = [summarise_run(p) for p in find_runs(runs_dir)]
    text = "# rpnet-pl report\n\n## Seeds, pseudo masks and segmentation (mIoU %)\n\n" + summary_table(runs) + "\n"
    for table_md in sorted(Path(runs_dir).glob("ablation-*/table.md")):
        text += "\n## " + table_md.parent.name + "\n\n" + table_md.read_text()
    path = Path(out) if out else Path(runs_dir) / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path, text
