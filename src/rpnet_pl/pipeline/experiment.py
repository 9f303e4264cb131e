"""`rpnet pipeline`: an experiment file's steps, checked, planned and run, once per seed.

:class:`RunFlags` are the settings `rpnet pipeline` and `rpnet ablation` share (where the runs go, on
what, tracked how), their flags added to both parsers by :func:`add_run_flags`; :func:`validated_plan`
is the one way both plan a run. Importing this module is torch-free (the CLI's parser reads it).
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from rpnet_pl.pipeline.registry import STEPS, at_least, unknown_steps
from rpnet_pl.utils.errors import ConfigError, DatasetError

log = logging.getLogger("rpnet")


@dataclass(frozen=True)
class RunFlags:
    """The run settings of `rpnet pipeline` and `rpnet ablation` (their shared command-line flags)."""

    runs: str = "runs"
    data: str | None = None
    gpus: int = 0
    nodes: int = 1
    accelerator: str = "gpu"
    logger: str = "wandb"
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    dry_run: bool = False

    def seed_list(self) -> list[int | None]:
        """Each seed once, in order; ``[None]`` (one unseeded run) without seeds."""
        return list(dict.fromkeys(self.seeds or [None]))

    def with_data(self, overrides: Sequence[str]) -> list[str]:
        """``overrides``, then ``--data`` as ``dataset.root``."""
        return [*overrides, *([f"dataset.root={self.data}"] if self.data else [])]


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The command-line flags of :class:`RunFlags` (``--set`` is ``overrides``), with its defaults."""
    p, d = parser, RunFlags
    p.add_argument("--data", help="dataset root (overrides dataset.root)")
    p.add_argument("--runs", default=d.runs, help="runs folder; outputs go to RUNS/<name>/<step>/")
    p.add_argument("--gpus", type=at_least(0), default=d.gpus, help="GPUs per node (0: CPU)")
    p.add_argument("--nodes", type=at_least(1), default=d.nodes, help="nodes (DDP)")
    p.add_argument("--accelerator", choices=("gpu", "cpu"), default=d.accelerator,
                   help="cpu: --gpus N runs N CPU processes per node instead (DDP over gloo)")
    p.add_argument("--logger", default=d.logger, choices=("wandb", "csv", "tensorboard", "none"),
                   help="tracker of the training steps (W&B runs offline without WANDB_API_KEY)")
    p.add_argument("--set", dest="overrides", nargs="+", metavar="KEY=VALUE",
                   help="config overrides (an ablation's: for every variant), e.g. classifier.model.beta=0.1")
    p.add_argument("--seeds", type=at_least(0), nargs="+", metavar="K", help="run once per seed into "
                   "RUNS/<name>/seed<K>/ (each resumable on its own); `rpnet report` shows mean ± std over them")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")


def run_flags(args: argparse.Namespace) -> RunFlags:
    """The :class:`RunFlags` of a command line parsed with :func:`add_run_flags`."""
    values = {f.name: getattr(args, f.name) for f in fields(RunFlags)}
    return RunFlags(**{k: tuple(v or ()) if k in ("overrides", "seeds") else v for k, v in values.items()})


def validated_plan(cfg: dict, experiment: str | Path, flags: RunFlags, force: Sequence[str] = (),
                   **plan_kwargs: Any) -> list:
    """Plan an experiment's steps after checking it: config problems always stop here; the dataset,
    weights files and network stop a real run and are warnings in a dry run (printing the commands
    needs no data). Each problem is one line, in seconds, before any step starts. A step whose optional
    split is absent (the test export without a test split) is left out: `run_steps` skips it."""
    from rpnet_pl.pipeline.runner import absent_split, forced_steps, plan
    from rpnet_pl.pipeline.seeds import seed_dir_name
    from rpnet_pl.pipeline.validate import check_environment, check_tree

    steps = plan(cfg, runs_dir=flags.runs, gpus=flags.gpus, nodes=flags.nodes, logger=flags.logger,
                 accelerator=flags.accelerator, **plan_kwargs)
    check_tree(cfg, where=str(experiment))  # every section, the steps not run included, dry run or not
    forced = forced_steps(force)
    todo = [s for s in steps if (not s.is_done() or s.name in forced) and absent_split(s) is None]
    run_dir = Path(flags.runs) / cfg.get("name", "experiment")
    if plan_kwargs.get("seed") is not None:
        run_dir = run_dir / seed_dir_name(plan_kwargs["seed"])
    try:
        check_environment(cfg, todo, run_dir, **({"network": lambda: True, "make_run_dir": False} if flags.dry_run
                                                 else {}))
    except (DatasetError, ConfigError) as exc:
        if not flags.dry_run:
            raise
        log.warning("a real run would stop here: %s", exc)
    return steps


def run_experiment(experiment: str | Path, flags: RunFlags, name: str | None = None,
                   steps: Sequence[str] | None = None, force: Sequence[str] | None = None,
                   tags: Sequence[str] | None = None) -> int:
    """`rpnet pipeline`: the experiment's steps (``steps``: only these; ``force``: re-run these and every
    step after them), once per seed. Returns the exit status (1 when a step failed, named on stderr)."""
    from rpnet_pl.pipeline.config import load_experiment
    from rpnet_pl.pipeline.runner import StepFailed, run_steps
    from rpnet_pl.pipeline.validate import check_overrides

    check_overrides(flags.overrides)
    cfg = load_experiment(experiment, flags.with_data(flags.overrides))
    for flag, names in (("--steps", steps), ("--force", force)):
        if unknown_steps(names or []):
            raise ConfigError(f"{flag}: unknown step(s) {', '.join(unknown_steps(names))}; the steps are "
                              f"{', '.join(STEPS)}")
    if name:
        cfg["name"] = name
    wanted = [s for s in STEPS if s in steps or s in force] if steps and force else steps
    for seed in flags.seed_list():
        planned = validated_plan(cfg, experiment, flags, force or [], steps=wanted, tags=tags or [], seed=seed)
        if seed is not None:
            log.info("seed %d: %s", seed, planned[0].folder.parent if planned else flags.runs)
        try:
            run_steps(planned, dry_run=flags.dry_run, force=force or [])
        except StepFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0
