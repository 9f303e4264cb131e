"""The one driver of the per-image inference steps (`rpnet cam`, `rpnet pseudo-masks`, `rpnet eval-seg`
and `rpnet predict-seg`): check the checkpoint, load the stage with the step's overrides, list the
images of the split, leave out those whose output is already complete, run ``trainer.predict`` (each
DDP rank a disjoint share; the stage's ``predict_step`` writes each file atomically) and wait for
every rank."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytorch_lightning as pl

from rpnet_pl.utils.errors import CheckpointError, IncompleteStepError

S = TypeVar("S", bound=pl.LightningModule)

#: ``done(reader, image_id)``: whether an image's output is already complete (the step skips it).
Done = Callable[[Any, str], bool]


def is_global_zero() -> bool:
    """Rank 0 of a launched job (torchrun, SLURM, Lightning's launcher), or a lone process."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))


def image_shape(reader: Any, image_id: str) -> tuple[int, int]:
    """(H, W) of an image of ``reader``, read from its file header."""
    from PIL import Image

    with Image.open(reader.image_path(image_id)) as im:
        return im.size[1], im.size[0]


def load_for_inference(stage_cls: type[S], ckpt: str | Path, name: str, overrides: dict[str, Any]) -> S:
    """``stage_cls`` from the checkpoint of training step ``name``, without pretrained weights (the
    checkpoint holds them) and with the step's ``overrides`` (output folders, scales, ...)."""
    from rpnet_pl.stages.checkpoints import load_stage_checkpoint

    return load_stage_checkpoint(stage_cls, ckpt, name, pretrained=False, weights=None, **overrides)


def run_per_image(stage_cls: type[S], ckpt: str | Path, name: str, overrides: dict[str, Any], *, root: str,
                  done: Done, dataset: str = "voc", split: str = "train_aug", devices: int | str = "auto",
                  num_nodes: int = 1, accelerator: str = "auto",
                  build: Callable[[], S] | None = None) -> tuple[int, bool]:
    """Run ``stage_cls``'s ``predict_step`` over every image of ``split`` whose output is not done.

    ``ckpt``: a checkpoint of training step ``name`` (a one-line :class:`CheckpointError` when it is
    missing, unreadable or of another stage); ``overrides``: hyper-parameters set for this run;
    ``build``: makes the stage instead (a checkpoint of the public code), after the same check that
    ``ckpt`` exists. ``done(reader, image_id)`` says an image's output is complete.

    Returns (images processed, whether this process is global rank 0). Under DDP every rank waits
    for the others before returning, so rank 0 may then read all the outputs.
    """
    from rpnet_pl.data.datamodules import InferenceDataModule
    from rpnet_pl.stages.common import inference_trainer

    if not Path(ckpt).is_file():
        raise CheckpointError(f"{ckpt}: {name} checkpoint not found (train it with `rpnet fit {name}`)")
    stage = build() if build is not None else load_for_inference(stage_cls, ckpt, name, overrides)
    dm = InferenceDataModule(root=root, dataset=dataset, split=split)  # type: ignore[arg-type]
    reader = dm.reader
    dm.skip_ids = {i for i in reader.ids if done(reader, i)}
    todo = len(reader.ids) - len(dm.skip_ids)
    if not todo:
        return 0, is_global_zero()
    trainer = inference_trainer(devices=devices, num_nodes=num_nodes, accelerator=accelerator)
    trainer.predict(stage, datamodule=dm, return_predictions=False)
    trainer.strategy.barrier("per-image outputs written")
    missing = [i for i in reader.ids if not done(reader, i)]
    if missing:  # an image the loader skipped, or a rank that wrote nothing: never a silent success
        raise IncompleteStepError(f"{stage.predict_what} of {len(missing)} of the {len(reader.ids)} images of "
                                  f"{split} were not written (first: {missing[0]}); re-run the step: complete "
                                  "outputs are skipped")
    return todo, trainer.is_global_zero


__all__ = ["Done", "image_shape", "is_global_zero", "load_for_inference", "run_per_image"]
