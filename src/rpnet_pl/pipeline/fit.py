"""`rpnet fit STAGE`: one training stage with LightningCLI (the command each training step of a run is)."""
from __future__ import annotations

from typing import Sequence

from rpnet_pl.pipeline.networks import NETWORKS
from rpnet_pl.pipeline.registry import STEPS, load


def fit(stage: str, args: Sequence[str]) -> int:
    """Train ``stage`` with LightningCLI: YAML from ``--config`` files, overrides as ``--model.lr 0.01`` and,
    for the network the stage is given, ``--model.net.beta 0.1`` (the stage's default network,
    :data:`~rpnet_pl.pipeline.networks.NETWORKS`, unless a config or ``--model.net CLASS`` names
    another); the ranges the types do not say are checked before anything is built
    (:mod:`rpnet_pl.pipeline.ranges`)."""
    from pytorch_lightning.cli import LightningCLI

    from rpnet_pl.pipeline.networks import flat_model
    from rpnet_pl.pipeline.ranges import check_training
    from rpnet_pl.stages.common import check_trained

    class CheckedCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            fit = self.config["fit"]
            groups = {g: fit[g].as_dict() for g in ("model", "data", "trainer") if fit.get(g) is not None}
            if "model" in groups:  # the ranges are the flat section's: the network's arguments beside the stage's
                groups["model"] = flat_model(stage, groups["model"])
            check_training(groups, f"{stage}.")

    spec = STEPS[stage]
    cli = CheckedCLI(
        load(spec.stage), load(spec.datamodule), args=["fit", "--model.net", next(iter(NETWORKS[stage].values())), *args],
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False},
    )
    check_trained(stage, cli.trainer)
    return 0
