"""Check a whole experiment before its first step: keys, types, data, weights.

A typo'd key or a wrong type would otherwise surface minutes later, under the usage text of a
training step's log; a missing dataset after a weights download times out. The schema is the
steps' own: a training section is checked by jsonargparse against the signatures of its stage,
datamodule and Lightning's ``Trainer`` (what LightningCLI checks when the step starts), a per-image
section against its step's options dataclass (:mod:`rpnet_pl.pipeline.registry`). Each problem is raised as one
line naming the key and what is wrong.

Nothing here imports torch or Lightning: the training signatures are read from their snapshot
(:mod:`rpnet_pl.pipeline.signatures`), so the whole experiment, every section, is checked in about a second,
in a dry run too.
"""
from __future__ import annotations

import difflib
import functools
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from rpnet_pl.pipeline import ranges
from rpnet_pl.pipeline.config import CALIBRATED_STEPS, DEFAULT_DATASET, DEFAULT_ROOT, THRESHOLD_MODES
from rpnet_pl.utils.errors import ConfigError, DatasetError
from rpnet_pl.pipeline.signatures import GROUPS, default, default_of, parse_type, snapshot
from rpnet_pl.pipeline.registry import IR_LABELS_STEP, REFINE, STEPS, option_fields, yaml_types
from rpnet_pl.pipeline.weights_check import check_pretrained, network_reachable

#: Keys of a training section besides model / data / trainer (LightningCLI's ``fit`` options).
FIT_KEYS = ("model", "data", "trainer", "seed_everything", "ckpt_path", "weights_only", "optimizer", "lr_scheduler")
#: The class-signature groups of a training section.
CLASS_GROUPS = GROUPS
TOP_KEYS = ("name", "dataset", "thresholds", "calibration", *STEPS)
DATASET_KEYS = ("name", "root")
CALIBRATION_KEYS = ("split",)


def _parser() -> Any:
    from jsonargparse import ArgumentParser

    return ArgumentParser(exit_on_error=False)


@functools.lru_cache(maxsize=None)
def training_parser(step: str) -> Any:
    """A jsonargparse parser of a training section's ``model`` / ``data`` / ``trainer`` groups: the
    arguments and types of the stage's, the datamodule's and Lightning's ``Trainer``'s signatures,
    read from their torch-free snapshot (:mod:`rpnet_pl.pipeline.signatures`). Nothing is required: the
    pipeline sets some (``data.label_dir``) and a section is checked alone."""
    parser = _parser()
    for group, params in snapshot()[step].items():
        for name, entry in params.items():
            parser.add_argument(f"--{group}.{name}", type=parse_type(entry["type"]), default=entry.get("default"))
    return parser


@functools.lru_cache(maxsize=None)
def options_parser(step: str) -> Any:
    """A jsonargparse parser of the options a per-image step's YAML section may set."""
    parser = _parser()
    for name, (hint, default) in yaml_types(STEPS[step].options).items():
        parser.add_argument(f"--{name}", type=hint, default=default)
    return parser


def _keys(parser: Any, group: str | None = None) -> list[str]:
    """The option names of a parser (those of ``group``, without its prefix)."""
    dests = [a.dest for a in parser._actions if a.dest not in ("help", "config")]
    if group is None:
        return dests
    prefix = group + "."
    return list(dict.fromkeys(d[len(prefix):].split(".")[0] for d in dests if d.startswith(prefix)))


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(text: str) -> str:
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text).replace("NoneType", "None")
    return re.sub(r"typing\.", "", text)


def one_line(exc: Exception, prefix: str) -> str:
    """jsonargparse's several-line message of a bad value as one line naming the key."""
    text = str(exc)
    match = re.match(r'Parser key "([^"]+)":\s*(.*)', text, re.S)
    if match is None:
        return prefix + " ".join(text.split())
    key, body = match.groups()
    given = re.search(r"(?:Given|Got) value: (.*)", body)
    subtypes = re.search(r"Subtypes: \[(.*)\]", body)
    expected = re.search(r"Expected an? (.*?)(?:\. Got| *$)", body.splitlines()[0])
    what = (f"expected one of {_type_name(subtypes.group(1))}" if subtypes else
            f"expected {_type_name(expected.group(1))}" if expected else " ".join(body.split()))
    got = f", got {given.group(1).strip()!r}" if given else ""
    return f"{prefix}{key}: {what}{got}"


#: keys that were renamed: the old dotted key -> its successor (named instead of a look-alike)
RETIRED = {"refine.model.radius": "refine.model.boundary_radius"}


def check_key_path(parts: Sequence[str], where: str = "") -> None:
    """Raise ConfigError if a dotted key names no known section or option (with a 'did you mean'),
    down to a training section's ``model`` / ``data`` / ``trainer`` arguments."""
    prefix = f"{where}: " if where else ""
    if not parts:
        return
    if ".".join(parts[:3]) in RETIRED:
        raise ConfigError(f"{prefix}'{'.'.join(parts[:3])}' was renamed '{RETIRED['.'.join(parts[:3])]}'")
    top = parts[0]
    if top not in TOP_KEYS:
        raise ConfigError(f"{prefix}unknown section '{top}'{_suggest(top, TOP_KEYS)}")
    if len(parts) < 2 or top in ("name", "thresholds"):
        return
    key = parts[1]
    spec = STEPS.get(top)
    known: Iterable[str] = (CALIBRATION_KEYS if top == "calibration" else DATASET_KEYS if spec is None
                            else FIT_KEYS if spec.trains else _keys(options_parser(top)))
    if key not in known:
        raise ConfigError(f"{prefix}unknown key '{top}.{key}'{_suggest(key, known)}")
    if spec is not None and spec.trains and key in CLASS_GROUPS and len(parts) >= 3:
        params = _keys(training_parser(top), key)
        if parts[2] not in params:
            raise ConfigError(f"{prefix}unknown key '{'.'.join(parts[:3])}'{_suggest(parts[2], params)}")


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _parse(parser: Any, values: dict, prefix: str) -> None:
    from jsonargparse import ArgumentError

    try:
        parser.parse_object(values, defaults=False)
    except (ArgumentError, ValueError, TypeError) as exc:
        raise ConfigError(one_line(exc, prefix)) from None


def _check_backbone(step: str, model: dict) -> None:
    """``model.backbone`` names a backbone (the stage would fail on it at its start)."""
    if "backbone" not in model:
        return
    from rpnet_pl.backbone_names import BACKBONES

    name = str(model["backbone"]).replace("-", "_")
    if name not in BACKBONES:
        raise ConfigError(f"{step}.model.backbone: unknown backbone {model['backbone']!r}"
                          f"{_suggest(name, BACKBONES)}; `rpnet backbones` lists them")


def check_tree(cfg: dict, where: str = "") -> None:
    """Every key of a merged experiment is known and every value has the right type, in every section
    (the steps that will not run included); ``where`` (the experiment file) prefixes the message."""
    try:
        _check_tree(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None


def _check_tree(cfg: dict) -> None:
    for top, section in cfg.items():
        check_key_path([top])
        if top == "name":
            if not isinstance(section, str):
                raise ConfigError(f"name: expected a string, got {_describe(section)}")
            continue
        if top == "thresholds":
            if section not in THRESHOLD_MODES:
                raise ConfigError(f"thresholds: expected {' or '.join(THRESHOLD_MODES)}, got {_describe(section)} "
                                  "(calibrated: ir_labels and pseudo_masks choose theirs on calibration.split)")
            continue
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"{top}: expected a mapping of options, got {_describe(section)}")
        for key in section:
            check_key_path([top, key])
        spec = STEPS.get(top)
        if top == "calibration":
            _check_calibration(cfg, section)
        elif spec is None:  # dataset
            if section.get("name", DEFAULT_DATASET) not in ("voc", "coco"):
                raise ConfigError(f"dataset.name: expected voc or coco, got {section['name']!r}")
        elif not spec.trains:
            _parse(options_parser(top), section, f"{top}.")
            fields = option_fields(spec.options, pipeline=False)
            valid = {f.name: f.metadata.get("valid") for f in fields}
            for name, value in section.items():
                if isinstance(value, (list, tuple)) and not value:
                    raise ConfigError(f"{top}.{name}: expected at least one value, got []")
                ranges.check(f"{top}.{name}", value, valid.get(name))
            _check_options_together(top, {**{f.name: f.default for f in fields}, **section})
        else:
            groups = {}
            for key in CLASS_GROUPS:
                value = section.get(key)
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise ConfigError(f"{top}.{key}: expected a mapping, got {_describe(value)}")
                for name in value:
                    check_key_path([top, key, name])
                groups[key] = value
            _parse(training_parser(top), groups, f"{top}.")
            ranges.check_training(groups, f"{top}.")
            _check_backbone(top, groups.get("model") or {})
            _check_crop_and_radius(top, groups)
            _check_class_lists(top, groups.get("data") or {})


def _check_calibration(cfg: dict, calibration: dict) -> None:
    """``calibration.split`` is a split name, and says something only with ``thresholds: calibrated``."""
    split = calibration.get("split")
    if split is not None and not isinstance(split, str):
        raise ConfigError(f"calibration.split: expected a split name, got {_describe(split)}")
    if cfg.get("thresholds") != "calibrated":
        raise ConfigError(f"calibration: set, but thresholds is {cfg.get('thresholds', 'fixed')!r}; set thresholds: "
                          f"calibrated to calibrate {' and '.join(CALIBRATED_STEPS)} on it, or drop calibration")


def _check_options_together(step: str, options: dict) -> None:
    """Options whose values are each in range but not together."""
    if step == IR_LABELS_STEP.name and options.get("fg_threshold") is not None and options.get("bg_threshold") is not None:
        if not options["fg_threshold"] > options["bg_threshold"]:
            raise ConfigError(f"ir_labels.fg_threshold ({options['fg_threshold']}) must be above ir_labels.bg_threshold "
                              f"({options['bg_threshold']}): confident foreground needs a higher background score "
                              "cut than confident background (IRN: 0.30 / 0.05)")


def _check_class_lists(step: str, data: dict) -> None:
    """``data.class_lists_dir`` and ``data.data_volume`` < 1 both choose the classifier's per-class lists."""
    volume = data.get("data_volume")
    if data.get("class_lists_dir") is not None and isinstance(volume, (int, float)) and volume < 1:
        raise ConfigError(f"{step}.data.class_lists_dir and {step}.data.data_volume {volume}: give one (both "
                          "choose the per-class lists the partners come from)")


def _check_crop_and_radius(step: str, groups: dict) -> None:
    """The refine stage's pairs: IRN's source window of a stride-4 map of side ``ceil(crop / 4)`` is
    ``side - 2 (boundary_radius - 1)`` wide (:func:`rpnet_pl.ops.path_index.source_window`), so the crop
    must leave it at least one pixel."""
    crop = (groups.get("data") or {}).get("crop_size")
    radius = (groups.get("model") or {}).get("boundary_radius")
    if step != REFINE.name or not isinstance(crop, int) or not isinstance(radius, int):
        return
    if -(-crop // 4) - 2 * (radius - 1) < 1:
        raise ConfigError(f"refine.data.crop_size {crop} is too small for refine.model.boundary_radius {radius}: "
                          f"the stride-4 map needs a side above {2 * (radius - 1)} (crop >= {4 * (2 * radius - 1) - 3}); "
                          "raise the crop or lower the radius")


def check_overrides(overrides: Iterable[str]) -> None:
    """``--set`` keys name known sections and options (a typo'd section is not silently added)."""
    for ov in overrides:
        check_key_path(ov.split("=", 1)[0].strip().split("."), where=f"--set {ov}")


# -- the environment: data, weights, network -----------------------------------------------------
def check_dataset(cfg: dict, splits: Iterable[str]) -> None:
    """The dataset root exists and has the expected layout and split lists."""
    ds = cfg.get("dataset") or {}
    name, root = ds.get("name", DEFAULT_DATASET), Path(str(ds.get("root", DEFAULT_ROOT))).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: dataset root not found (dataset.root, or --data / DATA=)")
    if name == "voc":
        from rpnet_pl.data.voc import read_split_with_images, resolve_voc_root

        voc = resolve_voc_root(root)
        if not (voc / "JPEGImages").is_dir():
            raise DatasetError(f"{voc / 'JPEGImages'}: image folder not found (not a VOC tree; see README 'Real data')")
        for split in sorted(set(splits)):
            read_split_with_images(voc, split)
    elif name == "coco":
        from rpnet_pl.data.coco import coco_split_dir

        for split in sorted(set(splits)):
            folder = root / coco_split_dir(split)
            if not folder.is_dir():
                raise DatasetError(f"{folder}: image folder of split {split!r} not found (not a COCO tree? "
                                   "see README 'Real data')")


def check_calibration_splits(cfg: dict, steps: Sequence[Any]) -> None:
    """Each planned step's ``calibration_split`` exists in the dataset (its list, VOC; its image folder,
    COCO): one line naming the key, before any work."""
    from rpnet_pl.data.splits import split_path

    ds = cfg.get("dataset") or {}
    dataset, root = str(ds.get("name", DEFAULT_DATASET)), str(ds.get("root", DEFAULT_ROOT))
    for step in steps:
        split = (step.config or {}).get("calibration_split") if not step.trains else None
        if split is None:
            continue
        path = split_path(dataset, root, str(split))
        if not path.exists():
            key = "calibration.split" if cfg.get("thresholds") == "calibrated" else f"{step.name}.calibration_split"
            raise DatasetError(f"{key}: no split {split!r} in {root} ({path} not found); calibrate on a labelled "
                               "split of the dataset")


def check_batches(cfg: dict, steps: Sequence[Any]) -> None:
    """A training split with fewer images than one batch per process (an incomplete batch is
    dropped) would train nothing: say so before any work. VOC only (a COCO list needs its annotations)."""
    ds = cfg.get("dataset") or {}
    if ds.get("name", DEFAULT_DATASET) != "voc":
        return
    from rpnet_pl.data.voc import read_split, resolve_voc_root

    voc = resolve_voc_root(Path(str(ds.get("root", DEFAULT_ROOT))).expanduser())
    for step in steps:
        if not step.trains:
            continue
        data, trainer = (step.config or {}).get("data") or {}, (step.config or {}).get("trainer") or {}
        batch = data.get("batch_size", default_of(step.name, "data", "batch_size"))
        devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1) or 1
        per_node = len(devices) if isinstance(devices, list) else int(devices) if str(devices).isdigit() else 1
        processes = max(1, per_node) * int(nodes)
        split = str(data.get("split", "train_aug"))
        images = len(read_split(voc, split))
        if batch and images < int(batch) * processes:
            raise ConfigError(f"{step.name}.data.batch_size: {batch} per process x {processes} process(es) is more "
                              f"than the {images} images of {split}: no batch would be made (an incomplete batch is "
                              "dropped); lower it or add images")


def check_sync_batchnorm(steps: Sequence[Any]) -> None:
    """``trainer.sync_batchnorm`` on CPUs: torch's SyncBatchNorm runs on CUDA only (DDP would stop
    with a traceback when the fit starts)."""
    for step in steps:
        trainer = (step.config or {}).get("trainer") or {} if step.trains else {}
        if trainer.get("sync_batchnorm") and trainer.get("accelerator") == "cpu":
            raise ConfigError(f"{step.name}.trainer.sync_batchnorm: needs GPUs (torch's SyncBatchNorm is CUDA-only); "
                              "set it false on CPUs, or run with GPUS=")


def used_splits(cfg: dict, steps: Sequence[Any]) -> list[str]:
    """The dataset splits the planned steps read."""
    out: list[str] = []
    for step in steps:
        if step.trains:
            data = (step.config or {}).get("data") or {}
            out.append(str(data.get("split", "train_aug")))  # both datamodules' default
            if data.get("val_split"):
                out.append(str(data["val_split"]))
        elif "--images" not in step.argv and "--split" in step.argv:
            out.append(step.argv[step.argv.index("--split") + 1])
        elif step.name in STEPS and "--images" not in step.argv:
            out.append(STEPS[step.name].default_split)
    return out


def _producer(path: Path, run_dir: Path, planned: set[str]) -> str | None:
    """The planned step whose folder holds ``path`` (it will be written before it is read)."""
    try:
        rel = path.resolve().relative_to(run_dir.resolve())
    except ValueError:
        return None
    step = rel.parts[0] if rel.parts else None
    return step if step in planned else None


def check_files(steps: Sequence[Any], run_dir: Path, planned: set[str]) -> None:
    """Each ``weights:`` file and each checkpoint a step reads exists or comes from an earlier step."""
    for step in steps:
        paths: list[tuple[str, Path]] = []
        if step.trains:
            weights = ((step.config or {}).get("model") or {}).get("weights")
            if weights:
                paths.append((f"{step.name}.model.weights", Path(str(weights))))
        elif "--ckpt" in step.argv:
            paths.append((f"{step.name} (--ckpt)", Path(step.argv[step.argv.index("--ckpt") + 1])))
        for key, path in paths:
            if path.is_file() or _producer(path, run_dir, planned):
                continue
            inside = path.resolve().is_relative_to(run_dir.resolve())
            hint = f" (run the '{path.resolve().relative_to(run_dir.resolve()).parts[0]}' step first)" if inside \
                else ""
            raise ConfigError(f"{key}: {path} not found{hint}")


def check_run_dir(run_dir: Path) -> None:
    """The run folder can be made and written: made now (the last check, so a run that fails an
    earlier one leaves nothing), and its nearest existing parent must be a folder."""
    path = run_dir.expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{existing}: is a file, not a folder: the runs go under it (--runs, RUNS=)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{exc.filename or path}: cannot write the run folder here ({exc.strerror}; "
                          "--runs, RUNS=)") from None


def check_environment(cfg: dict, steps: Sequence[Any], run_dir: str | Path,
                      network: Callable[[], bool] = network_reachable, make_run_dir: bool = True) -> None:
    """What the planned steps (those still to run) need from this machine: the dataset, the files they
    read, the weights download, a writable run folder (made, unless ``make_run_dir`` is false: a dry
    run). Checked after :func:`check_tree`."""
    if not steps:
        return
    check_dataset(cfg, used_splits(cfg, steps))
    check_calibration_splits(cfg, steps)
    check_batches(cfg, steps)
    check_sync_batchnorm(steps)
    check_files(steps, Path(run_dir), {s.name for s in steps})
    check_pretrained(steps, network)
    if make_run_dir:
        check_run_dir(Path(run_dir))
