"""Where a pipeline's time goes, per step: the seconds each step's ``.done`` marker recorded (its
process from start to exit: start-up and imports included), for every run under RUNS, and each
step's share of the total.

    python scripts/step_seconds.py runs/demo            # after `make demo`: both chains
"""
from __future__ import annotations

import sys
from pathlib import Path

from rpnet_pl.pipeline.provenance import read_marker
from rpnet_pl.pipeline.registry import STEP_ORDER


def step_seconds(run: Path) -> dict[str, float]:
    """step -> the seconds its marker recorded, for the complete steps of ``run``."""
    out = {}
    for step in STEP_ORDER:
        seconds = read_marker(run / step / ".done").get("seconds")
        if seconds is not None:
            out[step] = float(seconds)
    return out


def table(runs: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per step, one column per run, then the step's share of all runs' time."""
    names = list(runs)
    total = sum(sum(r.values()) for r in runs.values()) or 1.0
    lines = ["| step | " + " | ".join(f"{n} (s)" for n in names) + " | share |",
             "|---|" + "---:|" * (len(names) + 1)]
    for step in STEP_ORDER:
        values = [runs[n].get(step) for n in names]
        if all(v is None for v in values):
            continue
        cells = " | ".join("-" if v is None else f"{v:.1f}" for v in values)
        lines.append(f"| {step} | {cells} | {sum(v or 0 for v in values) / total:.0%} |")
    sums = " | ".join(f"{sum(runs[n].values()):.1f}" for n in names)
    lines.append(f"| all steps | {sums} | 100% |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python scripts/step_seconds.py RUNS   (a runs folder, e.g. runs/demo)", file=sys.stderr)
        return 2
    root = Path(argv[0])
    runs = {p.name: step_seconds(p) for p in sorted(root.iterdir()) if p.is_dir() and step_seconds(p)}
    if not runs:
        print(f"error: {root}: no complete step under it", file=sys.stderr)
        return 2
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
