"""The one driver of the per-image inference steps (`rpnet cam`, `rpnet pseudo-masks`, `rpnet eval-seg`
and `rpnet predict-seg`): check the checkpoint, load the trained stage, list the images of the split,
leave out those whose output is already complete, run the step's per-image work through
``trainer.predict`` (each DDP rank a disjoint share; the work writes each file atomically) and wait
for every rank.

The step owns its settings (scales, thresholds, output folders): they are its options, passed to its
work, never hyper-parameters of the stage or its checkpoint."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytorch_lightning as pl

from rpnet_pl.utils.errors import CheckpointError, IncompleteStepError

S = TypeVar("S", bound=pl.LightningModule)
log = logging.getLogger(__name__)

#: ``done(reader, image_id)``: whether an image's output is already complete (the step skips it).
Done = Callable[[Any, str], bool]
#: ``work(stage, batch)``: write one image's outputs (a batch of one image) and return its id, or
#: None when they were already complete.
Work = Callable[[Any, dict[str, Any]], "str | None"]


class PerImage(pl.LightningModule):
    """A step's per-image ``work`` on a trained ``stage``, as the module ``trainer.predict`` runs: the
    stage (and its network) moves to the device and to eval mode with it; ``what`` names the outputs
    in the progress lines."""

    def __init__(self, stage: pl.LightningModule, work: Work, what: str) -> None:
        super().__init__()
        self.stage = stage
        self.work = work
        self.predict_what = what

    def setup(self, stage: str) -> None:
        self.stage.setup(stage)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> str | None:
        image_id = self.work(self.stage, batch)
        if image_id is not None:
            log.debug("rank %d wrote the %s of %s", self.global_rank, self.predict_what, image_id)
        return image_id


def is_global_zero() -> bool:
    """Rank 0 of a launched job (torchrun, SLURM, Lightning's launcher), or a lone process."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))


def image_shape(reader: Any, image_id: str) -> tuple[int, int]:
    """(H, W) of an image of ``reader``, read from its file header."""
    from PIL import Image

    with Image.open(reader.image_path(image_id)) as im:
        return im.size[1], im.size[0]


def load_for_inference(stage_cls: type[S], ckpt: str | Path, name: str) -> S:
    """``stage_cls`` from the checkpoint of training step ``name``, without pretrained weights (the
    checkpoint holds them)."""
    from rpnet_pl.stages.checkpoints import load_stage_checkpoint

    return load_stage_checkpoint(stage_cls, ckpt, name, pretrained=False, weights=None)


def run_per_image(stage_cls: type[S], ckpt: str | Path, name: str, work: Work, what: str, *, root: str,
                  done: Done, dataset: str = "voc", split: str = "train_aug", devices: int | str = "auto",
                  num_nodes: int = 1, accelerator: str = "auto",
                  build: Callable[[], S] | None = None) -> tuple[int, bool]:
    """Run ``work(stage, batch)`` over every image of ``split`` whose output is not done.

    ``ckpt``: a checkpoint of training step ``name`` (a one-line :class:`CheckpointError` when it is
    missing, unreadable or of another stage), loaded as ``stage_cls``; ``build``: makes the stage
    instead (a checkpoint of the public code), after the same check that ``ckpt`` exists.
    ``done(reader, image_id)`` says an image's output is complete; ``what`` names the outputs.

    Returns (images processed, whether this process is global rank 0). Under DDP every rank waits
    for the others before returning, so rank 0 may then read all the outputs.
    """
    from rpnet_pl.data.datamodules import InferenceDataModule
    from rpnet_pl.stages.common import inference_trainer

    if not Path(ckpt).is_file():
        raise CheckpointError(f"{ckpt}: {name} checkpoint not found (train it with `rpnet fit {name}`)")
    stage = build() if build is not None else load_for_inference(stage_cls, ckpt, name)
    dm = InferenceDataModule(root=root, dataset=dataset, split=split)  # type: ignore[arg-type]
    reader = dm.reader
    dm.skip_ids = {i for i in reader.ids if done(reader, i)}
    todo = len(reader.ids) - len(dm.skip_ids)
    if not todo:
        return 0, is_global_zero()
    trainer = inference_trainer(devices=devices, num_nodes=num_nodes, accelerator=accelerator)
    trainer.predict(PerImage(stage, work, what), datamodule=dm, return_predictions=False)
    trainer.strategy.barrier("per-image outputs written")
    missing = [i for i in reader.ids if not done(reader, i)]
    if missing:  # an image the loader skipped, or a rank that wrote nothing: never a silent success
        raise IncompleteStepError(f"{what} of {len(missing)} of the {len(reader.ids)} images of "
                                  f"{split} were not written (first: {missing[0]}); re-run the step: complete "
                                  "outputs are skipped")
    return todo, trainer.is_global_zero


__all__ = ["Done", "PerImage", "Work", "image_shape", "is_global_zero", "load_for_inference", "run_per_image"]
