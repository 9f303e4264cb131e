"""Diagnoses of an RPNet classifier checkpoint on a split (not pipeline steps): `rpnet confidence` (the
share of each image the confidence mask covers) and `rpnet branch-seeds` (the seeds of the plain and
the enhanced branch on the same image groups)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rpnet_pl.pipeline.networks import method_of
from rpnet_pl.utils.errors import ConfigError, DatasetError


def classifier_from_checkpoint(ckpt: str, method: str | None = None) -> Any:
    """A classifier stage from its checkpoint on the CPU (no pretrained download), with the one-line
    errors of :func:`load_for_inference`; with ``method``, another method's checkpoint is one too."""
    from rpnet_pl.stages.classifier import ClassifierStage
    from rpnet_pl.steps.inference import load_for_inference

    stage = load_for_inference(ClassifierStage, ckpt, "classifier")
    made = method_of("classifier", stage.hparams.net["class_path"])
    if method and made != method:
        raise ConfigError(f"{ckpt}: a {made} classifier, this command needs {method}")
    return stage


def confidence(ckpt: str, dataset: str, root: str, split: str, images: int) -> dict[str, float]:
    """`rpnet confidence`: :func:`~rpnet_pl.stages.seed_monitor.confidence_coverage` over the first
    ``images`` images of ``split``."""
    from rpnet_pl.data.datasets import InferenceDataset, build_reader
    from rpnet_pl.data.transforms import eval_transform
    from rpnet_pl.stages.seed_monitor import confidence_coverage

    stage = classifier_from_checkpoint(ckpt, "rpnet")
    reader = build_reader(dataset, root, split)
    data = InferenceDataset(reader, eval_transform(), ids=reader.ids[:images])
    model = stage.model.eval()
    return confidence_coverage(model, (data[i]["image"][None] for i in range(len(data))))


def branch_seeds(ckpt: str, dataset: str, root: str, split: str, images: int, size: int,
                 out: str | None = None) -> dict[str, Any]:
    """`rpnet branch-seeds`: :func:`~rpnet_pl.stages.seed_monitor.branch_seed_scores` over the first
    ``images`` images of ``split``, in groups resized to ``size``; also written to ``out`` as JSON."""
    import torch

    from rpnet_pl.data.datasets import InferenceDataset, build_reader
    from rpnet_pl.data.transforms import eval_transform
    from rpnet_pl.stages.seed_monitor import branch_seed_scores
    from rpnet_pl.utils.io import atomic_path

    if size < 16:
        raise ConfigError(f"--size {size}: groups need at least 16 x 16 pixels")
    stage = classifier_from_checkpoint(ckpt, "rpnet")
    reader = build_reader(dataset, root, split, weak=False)
    if images < 1 or not reader.ids:
        raise DatasetError(f"{root}: no images to score (split {split!r} has {len(reader.ids)}, "
                           f"--images {images})")
    data = InferenceDataset(reader, eval_transform(), with_mask=True, ids=reader.ids[:images])
    result = branch_seed_scores(stage.model, data, size, generator=torch.Generator().manual_seed(0))
    if out:
        with atomic_path(Path(out)) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n")
    return result
