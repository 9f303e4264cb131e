"""`rpnet fit STAGE`: one training stage with LightningCLI (the command each training step of a run is)."""
from __future__ import annotations

from typing import Sequence

from rpnet_pl.pipeline.registry import STEPS, load


def fit(stage: str, args: Sequence[str]) -> int:
    """Train ``stage`` with LightningCLI: YAML from ``--config`` files, overrides as ``--model.beta 0.1``;
    the ranges the types do not say are checked before anything is built (:mod:`rpnet_pl.pipeline.ranges`)."""
    from pytorch_lightning.cli import LightningCLI

    from rpnet_pl.pipeline.ranges import check_training
    from rpnet_pl.stages.common import check_trained

    class CheckedCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            fit = self.config["fit"]
            check_training({g: fit[g].as_dict() for g in ("model", "data", "trainer") if fit.get(g) is not None},
                           f"{stage}.")

    spec = STEPS[stage]
    cli = CheckedCLI(
        load(spec.stage), load(spec.datamodule), args=["fit", *args], save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False},
    )
    check_trained(stage, cli.trainer)
    return 0
