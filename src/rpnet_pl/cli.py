"""The `rpnet` command: parses the command line and hands each subcommand to one function of the layer
that does the work (the per-image commands are made from :data:`rpnet_pl.pipeline.registry.COMMANDS`).

Errors a user can act on (:class:`DatasetError`, :class:`CheckpointError`, :class:`ConfigError`) are printed as one line naming
the file and the problem, with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from typing import Callable, Sequence

from rpnet_pl.pipeline.experiment import add_run_flags, run_flags
from rpnet_pl.pipeline.registry import COMMANDS, STEPS, TRAIN_STEPS, DataOptions, StepSpec, add_options, from_namespace, load
from rpnet_pl.utils.errors import (CheckpointError, ConfigError, DatasetError, IncompleteStepError, Stopped,
                                   TrainingDivergedError)
from rpnet_pl.utils.cpus import limit_threads
from rpnet_pl.utils.host_memory import keep_freed_memory
from rpnet_pl.utils.terminal import ENVIRONMENT_ERRNOS, one_line, quiet_library_noise, stop_on_signals, stopped_line

Command = Callable[[argparse.Namespace], int]


def _print(text: str, status: int = 0) -> int:
    print(text)
    return status


def _data_synth(a: argparse.Namespace) -> int:
    from rpnet_pl.data.synthetic import synthesise

    return _print(synthesise(a.out, as_json=a.json, images=a.images, size=a.size, classes=a.classes, seed=a.seed,
                             object_scale=tuple(a.object_scale), context=a.context))


def _data_check(a: argparse.Namespace) -> int:
    from rpnet_pl.data.check import check_for

    text, ok = check_for(a.root, a.dataset, a.experiment)
    return _print(text, 0 if ok else 1)


def _data_coco_masks(a: argparse.Namespace) -> int:
    from rpnet_pl.data.coco import write_coco_masks

    for split in a.split:
        print(f"{split}: wrote {write_coco_masks(a.root, split, limit=a.limit)} label PNG(s)")
    return 0


def _fit(a: argparse.Namespace) -> int:
    from rpnet_pl.pipeline.fit import fit

    return fit(a.stage, a.extra)


def _image_step(spec: StepSpec) -> Command:
    """The handler of a per-image command: its options dataclass from the parsed line, then the step's
    function (imported only now: building the parser stays torch-free)."""

    def run(a: argparse.Namespace) -> int:
        from rpnet_pl.pipeline.run_lock import output_lock

        options = from_namespace(spec.options, a)
        out = getattr(options, "out", None)
        with output_lock(out, f"rpnet {spec.command}") if out else contextlib.nullcontext():
            return load(spec.run)(options)

    return run


def _steps(a: argparse.Namespace) -> int:
    from rpnet_pl.pipeline.registry import step_lines

    return _print("\n".join(step_lines(a.until, a.distributed, a.long)))


def _report(a: argparse.Namespace) -> int:
    from rpnet_pl.results.report import report_runs

    report_runs(a.runs_dir, a.out, wandb=a.wandb)
    return 0


def _pipeline(a: argparse.Namespace) -> int:
    from rpnet_pl.pipeline.experiment import run_experiment

    return run_experiment(a.experiment, run_flags(a), name=a.name, steps=a.steps, force=a.force, tags=a.tag)


def _ablation(a: argparse.Namespace) -> int:
    from rpnet_pl.results.ablations import run_ablation

    return run_ablation(a.name, a.experiment, run_flags(a), backbone=a.backbone)


def _backbones(a: argparse.Namespace) -> int:
    from rpnet_pl.models.backbones import describe

    return _print("\n".join(describe(a.names)))


def _confidence(a: argparse.Namespace) -> int:
    from rpnet_pl.steps.diagnostics import confidence

    return _print(json.dumps(confidence(a.ckpt, a.dataset, a.root, a.split, a.images), indent=1))


def _branch_seeds(a: argparse.Namespace) -> int:
    from rpnet_pl.steps.diagnostics import branch_seeds

    return _print(json.dumps(branch_seeds(a.ckpt, a.dataset, a.root, a.split, a.images, a.size, a.out), indent=1))


def _parity(a: argparse.Namespace) -> int:
    from rpnet_pl.parity import parity_report

    text, passed = parity_report(a.cases_dir, a.device, a.bf16, a.channels_last)
    return _print(text, 0 if passed else 1)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """argparse's defaults formatter on ``parser`` and every subcommand."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


def _add_diagnosis(sub, name: str, help: str, func: Command) -> argparse.ArgumentParser:
    """A diagnosis of an RPNet classifier checkpoint on the first images of a split."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--ckpt", required=True, help="RPNet classifier checkpoint")
    add_options(p, DataOptions)
    p.set_defaults(split="train", func=func)
    p.add_argument("--images", type=int, default=60, help="first N images of the split (default: 60)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpnet", description="RPNet weakly supervised segmentation suite.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's default treatment of freed memory; by default freed host memory is "
                             "kept for reuse, which saves the page faults of large CPU tensors, for more peak "
                             "resident memory (rpnet_pl.utils.host_memory; the numbers: docs/benchmarks.md)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = sub.add_parser("data", help="dataset tools: synth, check, coco-masks")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p = dsub.add_parser("synth", help="write a synthetic dataset in the exact VOC layout")
    p.add_argument("--out", required=True, help="output root (VOCdevkit/VOC2012 is created inside)")
    p.add_argument("--images", type=int, default=240, help="train_aug + val images")
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--classes", type=int, default=6, help="number of foreground classes (<= 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same files)")
    p.add_argument("--json", action="store_true", help="print the full summary as JSON instead of writing it to "
                   "OUT/synth_summary.json")
    p.add_argument("--object-scale", type=float, nargs=2, default=[0.15, 0.45], metavar=("LOW", "HIGH"),
                   help="objects' major axis as a fraction of the short side (default 0.15 0.45: about 10%% "
                        "foreground; 0.35 0.75 gives VOC's share, about 30%%)")
    p.add_argument("--context", choices=["class", "family"], default="class",
                   help="background context textures: one per class (default; context as class-specific as "
                        "the object, harder than VOC) or one per family of classes, as in VOC")
    p.set_defaults(func=_data_synth)
    p = dsub.add_parser("check", help="validate a dataset tree and print a summary")
    p.add_argument("root", help="dataset root")
    p.add_argument("--dataset", choices=("voc", "coco"), default="voc", help="dataset layout")
    p.add_argument("--experiment", help="fail only on the splits this experiment YAML needs (default: the base "
                   "recipe's: VOC train_aug, train, val; COCO train, val); the test split is always optional")
    p.set_defaults(func=_data_check)
    p = dsub.add_parser("coco-masks", help="write COCO label PNGs from instances_*2014.json")
    p.add_argument("root", help="COCO root (with annotations/instances_*2014.json)")
    p.add_argument("--split", nargs="+", default=["train", "val"], choices=("train", "val"), help="splits to write")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (for a quick look)")
    p.set_defaults(func=_data_coco_masks)
    for command, spec in COMMANDS.items():
        p = sub.add_parser(command, help=spec.help)
        add_options(p, spec.options)
        p.set_defaults(func=_image_step(spec))

    p = sub.add_parser("pipeline", help="run an experiment's steps in order (skips complete ones, resumes)")
    p.add_argument("experiment", help="experiment YAML under experiments/")
    p.add_argument("--name", help="run name (default: the experiment's name)")
    p.add_argument("--steps", nargs="+", help="only these steps")
    p.add_argument("--force", nargs="+", help="re-run these steps from scratch, and every step after them, even if "
                   "complete (added to --steps)")
    p.add_argument("--tag", nargs="+", help="tags for the tracker (ablation sweeps)")
    add_run_flags(p)
    p.set_defaults(func=_pipeline)

    p = sub.add_parser("ablation", help="run one of the paper's ablation sweeps (Tables II-VII) and write its table")
    p.add_argument("name", choices=("beta", "blocks", "gaussian", "group-size", "data-volume", "backbone"),
                   help="the sweep (paper table)")
    p.add_argument("experiment", help="experiment YAML the variants start from (e.g. experiments/voc_resnext50.yaml)")
    p.add_argument("--backbone", help="classifier backbone for every variant (not for the backbone sweep)")
    add_run_flags(p)
    p.set_defaults(func=_ablation)

    p = sub.add_parser("backbones", help="the backbones, where their ImageNet weights come from and where each "
                       "departs from the ResNet assumptions")
    p.add_argument("names", nargs="*", help="backbone names (default: all)")
    p.set_defaults(func=_backbones)

    _add_diagnosis(sub, "confidence", "share of each image RPNet's confidence mask covers (reference rule and the "
                   "paper's clamped reading), from a classifier checkpoint", _confidence)
    p = _add_diagnosis(sub, "branch-seeds", "seeds of RPNet's plain and enhanced branches on the same image groups "
                       "(does the enhanced branch, Ls's target, give better seeds?), from a classifier checkpoint",
                       _branch_seeds)
    p.add_argument("--size", type=int, default=96, help="groups are resized to SIZE x SIZE (default: 96, the "
                   "demo's crop)")
    p.add_argument("--out", help="also write the result to this JSON file")

    p = sub.add_parser("parity", help="run the reference-code parity cases through our functions (exit 1 on a "
                       "failure)")
    p.add_argument("cases_dir", nargs="?", default=None, help="folder of <group>_<i>.npz cases (default: the cases "
                   "shipped with the package)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the checks run")
    p.add_argument("--bf16", action="store_true", help="each check under bf16 autocast (the GPU path's precision)")
    p.add_argument("--channels-last", action="store_true", help="the RPNet head's weights and inputs channels-last")
    p.set_defaults(func=_parity)

    p = sub.add_parser("steps", help="the pipeline's steps in order, one per line (for scripts and the Makefile)")
    p.add_argument("--until", choices=list(STEPS), help="only the steps up to and including this one")
    p.add_argument("--distributed", action="store_true", help="only the steps that run on every process of a "
                   "multi-GPU / multi-node job (training and the network-inference steps)")
    p.add_argument("--long", action="store_true", help="also each step's kind, command and what it does")
    p.set_defaults(func=_steps)

    p = sub.add_parser("report", help="paper-style tables from the runs in a folder -> report.md")
    p.add_argument("runs_dir", nargs="?", default="runs", help="folder of run folders")
    p.add_argument("--out", help="report path (default RUNS_DIR/report.md)")
    p.add_argument("--wandb", action="store_true", help="also log every complete step of every run that "
                   "has no W&B run yet, and the report's tables, to W&B (offline without a key; see README 'W&B')")
    p.set_defaults(func=_report)

    p = sub.add_parser("fit", help=f"train a stage ({', '.join(TRAIN_STEPS)}) with LightningCLI; pass --config "
                       f"FILE and LightningCLI overrides (see `rpnet fit {TRAIN_STEPS[0]} --help`)", add_help=False)
    p.add_argument("stage", choices=TRAIN_STEPS, help="the stage to train")
    p.set_defaults(func=_fit, accepts_extra=True)
    _show_defaults(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        quiet_library_noise()
    if not args.system_malloc:
        keep_freed_memory()
    limit_threads()  # before torch is imported: a container's CPU quota, not the host's cores
    func: Command | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0 if not argv else 2
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    args.extra = extra
    previous = stop_on_signals()
    try:
        return func(args)
    except (DatasetError, CheckpointError, ConfigError, TrainingDivergedError, IncompleteStepError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"stopped: {stopped_line(stop, args.command)}", file=sys.stderr)
        return 128 + stop.signum
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror} (nothing half-written is kept; fix it and re-run: complete outputs "
              "are skipped)", file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
