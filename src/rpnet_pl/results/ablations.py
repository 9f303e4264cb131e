"""The paper's ablation tables as sweeps: each variant is one pipeline run with a few overrides.

``rpnet ablation NAME EXPERIMENT`` runs every variant of a sweep (stage 1 + CAM seeds + their
evaluation on the train split: Tables II-VII report seed mIoU) and writes the paper-layout table to
``RUNS/ablation-NAME/table.md``. Runs are ordinary run folders, so a re-run skips what is done.
With ``--seeds`` each variant runs once per seed (``.../seed<k>/``) and each cell is mean ± std (n).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rpnet_pl.pipeline.experiment import RunFlags
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.pipeline.seeds import Stat, format_pct
from rpnet_pl.pipeline.registry import EVAL_CAM, STEP_ORDER

SEED_STEPS = STEP_ORDER[:STEP_ORDER.index(EVAL_CAM.name) + 1]
#: Rows of Table III, in the paper's order (each a name of :data:`rpnet_pl.models.backbones.BACKBONES`).
TABLE_III_BACKBONES = ("resnet50", "resnet101", "xception", "wide_resnet50", "wide_resnet101", "resnext50", "resnext101")


@dataclass(frozen=True)
class Variant:
    """One row (or cell) of a table: its label and the config overrides that make it."""

    label: str
    overrides: tuple[str, ...]
    column: str = "mIoU"


@dataclass(frozen=True)
class Sweep:
    table: str
    title: str
    variants: tuple[Variant, ...]
    row_header: str
    columns: tuple[str, ...] = ("mIoU",)
    steps: tuple[str, ...] = SEED_STEPS
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _levels_label(levels: tuple[int, ...]) -> str:
    return " + ".join(f"block{lv}" for lv in levels)


def sweeps(backbone: str | None = None) -> dict[str, Sweep]:
    """All sweeps; ``backbone`` (our name, e.g. resnext50) is added to every variant when given."""
    bb = (f"classifier.model.backbone={backbone}",) if backbone else ()
    cam = ("classifier.model.method=cam",)
    volume = []
    for frac, lab in ((1.0, "1"), (0.5, "1/2"), (0.25, "1/4"), (0.125, "1/8"), (0.0625, "1/16")):
        ov = (f"classifier.data.data_volume={frac}",)
        volume += [Variant(lab, bb + cam + ov, "Baseline"), Variant(lab, bb + ov, "Ours")]
    return {
        "beta": Sweep("V", "Probability to discard object regions (beta)", tuple(
            Variant(str(b), bb + (f"classifier.model.beta={b}",)) for b in (0.1, 0.3, 0.5, 0.7, 0.9)), "Probability"),
        "blocks": Sweep("IV", "Feature levels compared", tuple(
            Variant(_levels_label(lv), bb + (f"classifier.model.levels={list(lv)}",))
            for lv in ((2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))), "blocks"),
        "gaussian": Sweep("VI", "Gaussian filter on the foreground map", (
            Variant("Ours w GF", bb + ("classifier.model.gaussian=true",)),
            Variant("Ours w/o GF", bb + ("classifier.model.gaussian=false",))), "method"),
        "group-size": Sweep("VII", "Images per group", (
            Variant("baseline", bb + cam),
            # one image per group has no reference image, so no reference heads (they would get no gradient)
            *(Variant(f"prototype with {k} image{'s' if k > 1 else ''}", bb + (f"classifier.data.group_size={k}",)
                      + (("classifier.model.separate_reference_heads=false",) if k == 1 else ()))
              for k in (1, 2, 3, 4))), "method"),
        "data-volume": Sweep("II", "Training data volume", tuple(volume), "Data Volume",
                             columns=("Baseline", "Ours"),
                             notes="Each class keeps ceil(fraction x n_c) of its images; an image with several "
                                   "classes is kept when any of its classes keeps it (see data/sampler.py)."),
        "backbone": Sweep("III", "Backbones", tuple(
            v for b in TABLE_III_BACKBONES for v in (Variant(b, (f"classifier.model.backbone={b}",), "Enhanced"),
                                           Variant(b, (f"classifier.model.backbone={b}",) + cam, "Base"))),
            "Backbone", columns=("Enhanced", "Base")),
    }


def run_name(sweep: str, variant: Variant) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in f"{variant.label}-{variant.column}".lower())
    return f"ablation-{sweep}/{'-'.join(p for p in slug.split('-') if p)}"


def table(sweep: Sweep, results: dict[tuple[str, str], float | Stat | None]) -> str:
    """The paper-layout markdown table; ``results[(label, column)]`` is mIoU in [0, 1] (a Stat over
    seeds: ``mean ± std (n=K)``) or None."""
    labels = list(dict.fromkeys(v.label for v in sweep.variants))
    lines = [f"TABLE {sweep.table}: {sweep.title} (seed mIoU %, train split)", "",
             f"| {sweep.row_header} | " + " | ".join(sweep.columns) + " |",
             "|---|" + "---:|" * len(sweep.columns)]
    for lab in labels:
        cells = []
        for col in sweep.columns:
            cells.append(format_pct(results.get((lab, col))))
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    if sweep.notes:
        lines += ["", sweep.notes]
    return "\n".join(lines) + "\n"


def get_sweep(name: str, backbone: str | None = None) -> Sweep:
    all_sweeps = sweeps(backbone)
    if name not in all_sweeps:
        raise ConfigError(f"unknown ablation {name!r}; choose from {sorted(all_sweeps)}")
    return all_sweeps[name]


def collect(sweep_name: str, sweep: Sweep, runs_dir: str | Path) -> dict[tuple[str, str], float | Stat | None]:
    """Read each variant's seed mIoU from its run folder (None where it has not run; mean ± std over
    its ``seed<k>/`` runs when it has some)."""
    from rpnet_pl.results.summary import summarise

    out: dict[tuple[str, str], float | Stat | None] = {}
    for v in sweep.variants:
        out[(v.label, v.column)] = summarise(Path(runs_dir) / run_name(sweep_name, v)).seeds
    return out


def varied(overrides: Sequence[str]) -> dict[str, Any]:
    """``["classifier.model.beta=0.3"]`` -> ``{"classifier.model.beta": 0.3}`` (YAML values)."""
    import yaml

    out: dict[str, Any] = {}
    for ov in overrides:
        key, _, value = ov.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_ablation(name: str, experiment: str | Path, flags: RunFlags, backbone: str | None = None) -> int:
    """`rpnet ablation`: every variant of the sweep ``name`` from ``experiment`` (once per seed), then its
    table, printed and written to ``RUNS/ablation-NAME/table.md``. Returns the exit status (1 when a step
    failed, named on stderr)."""
    from rpnet_pl.pipeline.config import load_experiment
    from rpnet_pl.pipeline.experiment import validated_plan
    from rpnet_pl.pipeline.runner import StepFailed, run_steps
    from rpnet_pl.pipeline.validate import check_overrides
    from rpnet_pl.utils.io import atomic_path

    check_overrides(flags.overrides)
    sweep = get_sweep(name, backbone)
    for variant in sweep.variants:
        cfg = load_experiment(experiment, flags.with_data([*variant.overrides, *flags.overrides]))
        cfg["name"] = run_name(name, variant)
        for seed in flags.seed_list():
            steps = validated_plan(cfg, experiment, flags, steps=list(sweep.steps),
                                   tags=[f"ablation-{name}", f"table-{sweep.table}"], seed=seed,
                                   varied=varied(variant.overrides))
            try:
                run_steps(steps, dry_run=flags.dry_run)
            except StepFailed as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
    text = table(sweep, collect(name, sweep, flags.runs))
    print(text)
    if not flags.dry_run:
        out = Path(flags.runs) / f"ablation-{name}" / "table.md"
        with atomic_path(out) as tmp:
            tmp.write_text(text)
        print(f"wrote {out}")
        if flags.logger == "wandb":
            from rpnet_pl.pipeline.tracking import log_tables

            log_tables(out.parent, text, group=f"ablation-{name}", name=f"ablation-{name}/table",
                       job_type="ablation")
    return 0
