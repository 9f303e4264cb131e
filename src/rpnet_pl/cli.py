"""The `rpnet` command: thin; parses arguments and dispatches to data, stages and ops.

Errors a user can act on (:class:`DatasetError`, :class:`ConfigError`) are printed as one line naming
the file and the problem, with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from rpnet_pl.errors import ConfigError, DatasetError

log = logging.getLogger("rpnet")

Command = Callable[[argparse.Namespace], int]


def _data_synth(args: argparse.Namespace) -> int:
    from rpnet_pl.data.synthetic import generate_synthetic_voc

    summary = generate_synthetic_voc(args.out, images=args.images, size=args.size, classes=args.classes,
                                     seed=args.seed)
    print(json.dumps({k: v for k, v in summary.items() if k != "images_meta"}, indent=1, default=str))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from rpnet_pl.data.check import check_dataset

    report, names = check_dataset(args.root, args.dataset)
    print(report.format(names))
    return 0 if report.ok else 1


def _data_coco_masks(args: argparse.Namespace) -> int:
    from rpnet_pl.data.coco import write_coco_masks

    for split in args.split:
        n = write_coco_masks(args.root, split, limit=args.limit)
        print(f"{split}: wrote {n} label PNG(s)")
    return 0


STAGES = {
    "classifier": ("rpnet_pl.stages.classifier:ClassifierStage", "rpnet_pl.data.datamodules:GroupDataModule"),
    "affinity": ("rpnet_pl.stages.affinity:AffinityStage", "rpnet_pl.data.datamodules:LabelledDataModule"),
    "segmenter": ("rpnet_pl.stages.segmenter:SegmenterStage", "rpnet_pl.data.datamodules:LabelledDataModule"),
}


def _load(ref: str):
    import importlib

    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _fit(args: argparse.Namespace) -> int:
    """Train a stage with LightningCLI: YAML from ``--config`` files, overrides as ``--model.beta 0.1``."""
    from pytorch_lightning.cli import LightningCLI

    stage_ref, dm_ref = STAGES[args.stage]
    LightningCLI(
        _load(stage_ref), _load(dm_ref), args=["fit", *args.extra], save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False}, env_parse=False,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpnet", description="RPNet weakly supervised segmentation suite.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = sub.add_parser("data", help="dataset tools: synth, check, coco-masks")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p = dsub.add_parser("synth", help="write a synthetic dataset in the exact VOC layout")
    p.add_argument("--out", required=True, help="output root (VOCdevkit/VOC2012 is created inside)")
    p.add_argument("--images", type=int, default=240, help="train_aug + val images")
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--classes", type=int, default=6, help="number of foreground classes (<= 20)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_data_synth)
    p = dsub.add_parser("check", help="validate a dataset tree and print a summary")
    p.add_argument("root")
    p.add_argument("--dataset", choices=("voc", "coco"), default="voc")
    p.set_defaults(func=_data_check)
    p = dsub.add_parser("coco-masks", help="write COCO label PNGs from instances_*2014.json")
    p.add_argument("root")
    p.add_argument("--split", nargs="+", default=["train", "val"], choices=("train", "val"))
    p.add_argument("--limit", type=int, default=None, help="only the first N images (for a quick look)")
    p.set_defaults(func=_data_coco_masks)
    p = sub.add_parser("fit", help="train a stage (classifier, affinity, segmenter) with LightningCLI; "
                       "pass --config FILE and LightningCLI overrides (see `rpnet fit classifier --help`)",
                       add_help=False)
    p.add_argument("stage", choices=sorted(STAGES))
    p.set_defaults(func=_fit, accepts_extra=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    func: Command | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0 if not argv else 2
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return func(args)
    except (DatasetError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
