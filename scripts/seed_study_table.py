"""Tables of the multi-seed study (scripts/seed_study.sh): per set and run, mean +- std over seeds of
the seeds' best mIoU, the pseudo masks, the segmenter's val mIoU with and without CRF, the per-class
foreground recall / precision of seeds, pseudo masks and segmenter predictions, and the seed-monitor
curves (train-split seed mIoU, Lc and lambda*Ls per epoch); with scripts/wide_sweep.sh run first,
also the seeds' best mIoU over a sweep that starts at threshold 0.01.

    python scripts/seed_study_table.py STUDY_RUNS_DIR      # e.g. /tmp/seed-study/runs
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from statistics import mean
from typing import Any

from rpnet_pl.pipeline import layout
from rpnet_pl.pipeline.seeds import format_pct, mean_std


def ms(values: list[float]) -> str:
    """'mean ± std (n=k)' in percent over seeds (rpnet's own aggregation); '-' when empty."""
    return format_pct(mean_std(values))


def load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def fg_stats(metrics: dict[str, Any] | None) -> tuple[list[float], list[float], list[float]]:
    """Per foreground class present in the split: recall, precision, IoU."""
    if not metrics:
        return [], [], []
    rec, prec, iou = metrics.get("recall", {}), metrics.get("precision", {}), metrics.get("per_class_iou", {})
    names = [c for c in iou if c != "background" and iou[c] is not None and rec.get(c) is not None]
    return [rec[c] for c in names], [prec[c] or 0.0 for c in names], [iou[c] for c in names]


def curves(path: Path) -> dict[int, dict[str, float]]:
    """epoch -> seed/miou, mean train/loss_cls and train/loss_ss of the epoch's logged steps."""
    if not path.is_file():
        return {}
    out: dict[int, dict[str, list[float]]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            e = int(row["epoch"])
            d = out.setdefault(e, {})
            for k in ("seed/miou", "seed/fg_recall", "seed/fg_precision", "train/loss_cls", "train/loss_ss"):
                if row.get(k):
                    d.setdefault(k, []).append(float(row[k]))
    return {e: {k: mean(v) for k, v in d.items()} for e, d in out.items()}


def loss_spike(path: Path, limit: float = 2.0) -> tuple[float | None, bool]:
    """(largest finite logged Lc if it exceeds ``limit``, else None; whether any logged Lc is NaN or
    infinite) of one classifier CSV log. Lc starts near 2 ln 2 = 1.39 for k = 2, so above 2 is a spike."""
    if not path.is_file():
        return None, False
    with path.open() as f:
        lc = [float(r["train/loss_cls"]) for r in csv.DictReader(f) if r.get("train/loss_cls")]
    finite = [v for v in lc if math.isfinite(v)]
    worst = max(finite, default=0.0)
    return (worst if worst > limit else None), len(finite) < len(lc)


def run_rows(run: Path) -> dict[str, Any]:
    seeds = sorted(p for p in run.iterdir() if p.name.startswith("seed"))
    r: dict[str, Any] = {"n": len(seeds), "seeds": [], "thr": [], "edge": 0, "masks": [], "val": [], "val_crf": [],
                         "seed_rec": [], "seed_prec": [], "mask_rec": [], "mask_prec": [], "mask_min_rec": [],
                         "seg_rec": [], "seg_zero": [], "curves": [], "collapse": [0, 0, 0, 0], "spikes": [],
                         "wide": [], "wide_thr": []}
    for s in seeds:
        cam, masks, seg = (load(layout.metrics_path(s, step))  # finds runs from before the rename (eval_sem_seg/)
                           for step in ("eval_cam", "eval_pseudo_masks", "eval_seg"))
        if cam:
            r["seeds"].append(cam["best_miou"])
            r["thr"].append(float(cam["best_threshold"]))
            r["edge"] += bool(cam.get("best_at_edge"))
            rec, prec, _ = fg_stats(cam)
            r["seed_rec"].append(mean(rec)); r["seed_prec"].append(mean(prec))
        wide = load(s / "eval_cam_wide" / "metrics.json")  # scripts/wide_sweep.sh: thresholds from 0.01
        if wide:
            r["wide"].append(wide["best_miou"])
            r["wide_thr"].append(float(wide["best_threshold"]))
        high = load(s / "eval_cam_high" / "metrics.json")  # wide_sweep.sh OUT_NAME=eval_cam_high: up to 0.95
        if high:
            r.setdefault("high", []).append(high["best_miou"])
            r.setdefault("high_thr", []).append(float(high["best_threshold"]))
        if masks:
            r["masks"].append(masks["miou"])
            rec, prec, _ = fg_stats(masks)
            r["mask_rec"].append(mean(rec)); r["mask_prec"].append(mean(prec)); r["mask_min_rec"].append(min(rec))
        if seg:
            r["val"].append(seg["without_crf"]["miou"])
            r["val_crf"].append(seg["with_crf"]["miou"])
            rec, _, iou = fg_stats(seg["without_crf"])
            r["seg_rec"].append(mean(rec)); r["seg_zero"].append(sum(x < 0.01 for x in iou) / max(len(iou), 1))
            if masks:  # per class: the pseudo masks' recall (train) against a collapsed val IoU
                for c, v in seg["without_crf"]["per_class_iou"].items():
                    recall = masks.get("recall", {}).get(c)
                    if c == "background" or v is None or recall is None:
                        continue
                    k = 0 if recall >= 0.2 else 2
                    r["collapse"][k] += 1
                    r["collapse"][k + 1] += int(v < 0.01)
        for source in ("learned", "ground-truth"):  # seed_study.sh REFINEMENT=1: eval-refinement per step
            refinement = load(s / f"eval_refinement_{source}.json")
            for step, row in (refinement or {}).get("steps", {}).items():
                if row.get("miou") is not None:
                    r.setdefault("refinement", {}).setdefault((source, step), []).append(row["miou"])
        coverage = s / "confidence.txt"  # seed_study.sh REFINEMENT=1: `rpnet confidence` (RPNet)
        if coverage.is_file() and coverage.read_text().strip():
            cov = json.loads(coverage.read_text())
            r.setdefault("coverage", []).append(cov["covered_reference"])
            r.setdefault("whole", []).append(cov["whole_image_reference"])
        r["curves"].append(curves(s / "classifier" / "csv" / "metrics.csv"))
        if (s / "classifier" / "csv" / "metrics.csv").is_file():
            r["spikes"].append((s.name, *loss_spike(s / "classifier" / "csv" / "metrics.csv")))
    return r


def titled_table(title: str, header: list[str], align: str, lines: list[str]) -> None:
    """Print a title, a markdown table (``align``: the separator row's cells, e.g. ``---|---:``) and a
    blank line; nothing when there are no ``lines``."""
    if not lines:
        return
    print(title)
    print()
    print("| " + " | ".join(header) + " |")
    print(f"|{align}|")
    print("\n".join(lines))
    print()


def main(root: Path) -> None:
    rows = {(st.name, run.name): run_rows(run) for st in sorted(root.iterdir()) if st.is_dir()
            for run in sorted(st.iterdir()) if run.is_dir()}
    print("| set | run | seeds (train, best thr.) | best thr. | seeds, sweep from 0.01 | its best thr. "
          "| pseudo masks | val | val + CRF |")
    print("|---|---|---:|---|---:|---|---:|---:|---:|")
    for (st, name), r in rows.items():
        thr = ", ".join(f"{t:.2f}" for t in r["thr"])
        wide_thr = ", ".join(f"{t:.2f}" for t in r["wide_thr"]) or "-"
        print(f"| {st} | {name} | {ms(r['seeds'])} | {thr} | {ms(r['wide'])} | {wide_thr} | {ms(r['masks'])} "
              f"| {ms(r['val'])} | {ms(r['val_crf'])} |")
    print()
    print("| set | run | seeds fg recall / precision | masks fg recall / precision | masks: lowest class recall "
          "| segmenter fg recall | segmenter: classes with IoU < 1 % |")
    print("|---|---|---|---|---:|---:|---:|")
    for (st, name), r in rows.items():
        if not r["masks"] and not r["seed_rec"]:
            continue
        print(f"| {st} | {name} | {ms(r['seed_rec'])} / {ms(r['seed_prec'])} | {ms(r['mask_rec'])} / {ms(r['mask_prec'])}"
              f" | {ms(r['mask_min_rec'])} | {ms(r['seg_rec'])} | {ms(r['seg_zero'])} |")
    print()
    print("| set | run | classes with mask recall >= 20 %: collapsed (val IoU < 1 %) | mask recall < 20 %: collapsed |")
    print("|---|---|---|---|")
    for (st, name), r in rows.items():
        if r["collapse"][0] + r["collapse"][2]:
            hi, hi_c, lo, lo_c = r["collapse"]
            print(f"| {st} | {name} | {hi_c} of {hi} | {lo_c} of {lo} |")
    print()
    high = [f"| {st} | {name} | {ms(r['seeds'])} | {', '.join(f'{t:.2f}' for t in r['thr'])} | {ms(r['high'])} "
            f"| {', '.join(f'{t:.2f}' for t in r['high_thr'])} |" for (st, name), r in rows.items() if r.get("high")]
    titled_table("Seeds over a sweep above the default's 0.60 edge (scripts/wide_sweep.sh, OUT_NAME=eval_cam_high)",
                 ["set", "run", "seeds, default sweep", "best thr.", "seeds, sweep to 0.95", "its best thr."],
                 "---|---|---:|---|---:|---", high)
    refined = {k: r for k, r in rows.items() if r.get("refinement")}
    steps = list(dict.fromkeys(step for r in refined.values() for _, step in r["refinement"]))
    titled_table("Pseudo masks after each refinement step (train split) with IRN's learned boundary and with the "
                 "ideal boundary drawn from the ground truth (`rpnet eval-refinement`)",
                 ["set", "run", "boundary", *steps], "---|---|---" + "|---:" * len(steps),
                 [f"| {st} | {name} | {source} | " + " | ".join(ms(r["refinement"].get((source, step), []))
                                                              for step in steps) + " |"
                  for (st, name), r in refined.items() for source in ("learned", "ground-truth")])
    titled_table("RPNet's confidence mask (reference rule, alpha 0.3), train split, first 60 images (`rpnet confidence`)",
                 ["set", "run", "mean share of the image covered", "images covered entirely"], "---|---|---:|---:",
                 [f"| {st} | {name} | {ms(r['coverage'])} | {ms(r['whole'])} |"
                  for (st, name), r in rows.items() if r.get("coverage")])
    print("Loss spikes: classifier runs whose logged Lc went above 2 or turned NaN (Lc starts near 1.39)")
    print()
    print("| set | run | runs with a CSV log | spiked (worst logged Lc) | NaN |")
    print("|---|---|---:|---|---|")
    totals: dict[str, list[int]] = {}
    for (st, name), r in rows.items():
        if not r["spikes"]:
            continue
        spiked = [f"{seed} ({worst:.3g})" for seed, worst, _ in r["spikes"] if worst is not None]
        nan = [seed for seed, _, bad in r["spikes"] if bad]
        print(f"| {st} | {name} | {len(r['spikes'])} | {', '.join(spiked) or '-'} | {', '.join(nan) or '-'} |")
        t = totals.setdefault("CAM baseline" if "cam" in name else "RPNet", [0, 0])
        t[0] += len(r["spikes"])
        t[1] += sum(1 for _, worst, bad in r["spikes"] if worst is not None or bad)
    print()
    print("; ".join(f"{m}: {n_bad} of {n} runs spiked" for m, (n, n_bad) in totals.items()))
    print()
    print("Seed-monitor curves (train split, first 40 images, bg threshold 0.25; mean over seeds): "
          "seed mIoU / Lc / lambda*Ls at the end of epochs")
    for (st, name), r in rows.items():
        if not any(r["curves"]):
            continue
        epochs = sorted(set().union(*[c.keys() for c in r["curves"]]))
        picks = sorted({e for e in epochs if (e + 1) in (1, 2, 4, 8, 12, 16, 20, 30, 45)} | {epochs[-1]})
        cells = []
        for e in picks:
            vals = [c[e] for c in r["curves"] if e in c]
            def m(k: str) -> float | None:
                v = [x[k] for x in vals if k in x]
                return mean(v) if v else None
            miou, lc, ls = m("seed/miou"), m("train/loss_cls"), m("train/loss_ss")
            cells.append(f"e{e + 1}: {100 * miou:.1f}" if miou is not None else f"e{e + 1}: -")
            cells[-1] += f" / {lc:.3f}" if lc is not None else ""
            cells[-1] += f" / {ls:.4f}" if ls is not None else ""
        print(f"- {st} {name}: " + "; ".join(cells))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/seed-study/runs"))
