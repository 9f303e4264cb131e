"""`rpnet fit STAGE`: one training stage with LightningCLI (the command each training step of a run is)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rpnet_pl.pipeline.networks import NETWORKS
from rpnet_pl.pipeline.registry import STEPS, load


def check_network_configs(stage: str, args: Sequence[str]) -> None:
    """A ``--config`` file whose ``model`` section sets the network's arguments beside the stage's (the
    experiments' flat form) is one line naming the file and the key, before LightningCLI's usage text."""
    import yaml

    from rpnet_pl.pipeline.signatures import net_args
    from rpnet_pl.utils.errors import ConfigError

    network_keys = {k for names in net_args(stage).values() for k in names} | {"method"}
    for flag, path in zip(args, args[1:]):
        if flag != "--config":
            continue
        try:
            model = (yaml.safe_load(Path(path).read_text()) or {}).get("model") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            continue  # LightningCLI names what it cannot read
        flat = sorted(network_keys & set(model)) if isinstance(model, dict) else []
        if flat:
            raise ConfigError(f"{path}: model.{flat[0]}: a training config gives the network its settings under "
                              f"model.net.init_args (with model.net.class_path); `rpnet pipeline` writes this form "
                              f"from an experiment's flat section")


def fit(stage: str, args: Sequence[str]) -> int:
    """Train ``stage`` with LightningCLI: YAML from ``--config`` files, overrides as ``--model.lr 0.01`` and,
    for the network the stage is given, ``--model.net.beta 0.1`` (the stage's default network,
    :data:`~rpnet_pl.pipeline.networks.NETWORKS`, unless a config or ``--model.net CLASS`` names
    another); the ranges the types do not say are checked before anything is built
    (:mod:`rpnet_pl.pipeline.ranges`)."""
    check_network_configs(stage, args)
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
