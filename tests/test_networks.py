"""Each stage is given its network: an experiment's flat section <-> LightningCLI's ``net`` entry
(rpnet_pl.pipeline.networks), the plan's config.yaml, checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rpnet_pl.pipeline.networks import NETWORKS, flat_model, method_of, nest_model, network_class

RPNET, CAMNET = NETWORKS["classifier"]["rpnet"], NETWORKS["classifier"]["cam"]
ARGS = {RPNET: {"backbone", "beta", "mid"}, CAMNET: {"backbone"}}


def test_method_chooses_the_classifier_network_and_rpnet_is_the_default() -> None:
    assert network_class("classifier", {}) == RPNET == "rpnet_pl.models.rpnet.RPNet"
    assert network_class("classifier", {"method": "cam"}) == CAMNET == "rpnet_pl.models.cam_net.CAMNet"
    assert network_class("segmenter", {"head": "aspp"}) == "rpnet_pl.models.deeplab.DeepLabNet"
    assert method_of("classifier", CAMNET) == "cam"
    with pytest.raises(ValueError, match="classifier.model.method: 'crf' is not one of"):
        network_class("classifier", {"method": "crf"})


def test_nest_sorts_each_key_to_the_network_or_the_stage() -> None:
    flat = {"method": "rpnet", "backbone": "resnet18", "beta": 0.3, "lr": 0.1}
    assert nest_model("classifier", flat, ARGS, {"lr"}) == {
        "net": {"class_path": RPNET, "init_args": {"backbone": "resnet18", "beta": 0.3}}, "lr": 0.1}
    # the CAM baseline has no beta: RPNet's keys are left out, as the network has no such setting
    assert nest_model("classifier", {**flat, "method": "cam"}, ARGS, {"lr"}) == {
        "net": {"class_path": CAMNET, "init_args": {"backbone": "resnet18"}}, "lr": 0.1}
    with pytest.raises(ValueError, match="classifier.model.betta: neither"):
        nest_model("classifier", {"betta": 0.3}, ARGS, {"lr"})


def test_flat_reads_back_what_nest_wrote() -> None:
    flat = {"method": "cam", "backbone": "resnet18", "lr": 0.1}
    assert flat_model("classifier", nest_model("classifier", flat, ARGS, {"lr"})) == flat
    assert flat_model("classifier", flat) == flat  # an older, flat section as it is
    refine = {"net": {"class_path": NETWORKS["refine"]["irn"], "init_args": {"backbone": "resnet18"}}, "lr": 0.1}
    assert flat_model("refine", refine) == {"backbone": "resnet18", "lr": 0.1}  # no method where there is no choice


def test_the_plan_writes_the_network_as_lightningcli_builds_it(tmp_path: Path) -> None:
    """The plan keeps the experiment's flat section (the recorded plans); the step's config.yaml names
    the network by class path."""
    from rpnet_pl.pipeline.config import load_experiment
    from rpnet_pl.pipeline.runner import plan
    from rpnet_pl.pipeline.signatures import fit_config

    root = Path(__file__).resolve().parents[1]
    steps = {s.name: s for s in plan(load_experiment(root / "experiments" / "demo_cam.yaml"), tmp_path)}
    flat = steps["classifier"].config["model"]
    assert flat["method"] == "cam" and flat["backbone"] == "resnet18" and "alpha" in flat  # base.yaml's, kept
    nested = fit_config("classifier", steps["classifier"].config)["model"]
    assert nested["net"]["class_path"] == CAMNET
    assert nested["net"]["init_args"]["backbone"] == "resnet18" and "alpha" not in nested["net"]["init_args"]
    assert nested["lr"] == flat["lr"] and "method" not in nested
    refine = fit_config("refine", steps["refine"].config)["model"]["net"]
    assert refine["class_path"] == "rpnet_pl.models.irn.IRNet" and refine["init_args"]["self_attention"] is False
    yaml.safe_dump(nested)  # plain data


def test_a_stage_records_its_network_and_a_checkpoint_rebuilds_it(tmp_path: Path) -> None:
    import torch

    from rpnet_pl.stages.checkpoints import build_stage, load_stage_checkpoint
    from rpnet_pl.stages.classifier import ClassifierStage
    from tests.conftest import save_stage_checkpoint

    torch.manual_seed(0)
    stage = build_stage("classifier", method="cam", backbone="resnet18", pretrained=False, num_classes=4, lr=0.05)
    assert type(stage.model).__name__ == "CAMNet" and stage.hparams.lr == 0.05
    assert stage.hparams.net == {"class_path": CAMNET, "init_args": {
        "backbone": "resnet18", "pretrained": False, "weights": None, "num_classes": 4, "output_stride": 16,
        "dilated": False, "freeze_bn_affine": False, "freeze_early": True}}
    loaded = load_stage_checkpoint(ClassifierStage, save_stage_checkpoint(stage, tmp_path / "c.ckpt"), "classifier")
    assert loaded.hparams.net == stage.hparams.net and loaded.hparams.lr == 0.05
    for k, v in stage.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert ClassifierStage.load_from_checkpoint(tmp_path / "c.ckpt").hparams.net == stage.hparams.net


def test_a_checkpoint_naming_a_foreign_class_is_refused(tmp_path: Path) -> None:
    """The class path of a checkpoint is imported only when it is one of the step's networks."""
    import pytorch_lightning as pl
    import torch

    from rpnet_pl.stages.checkpoints import load_stage_checkpoint
    from rpnet_pl.stages.classifier import ClassifierStage
    from rpnet_pl.utils.errors import CheckpointError

    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"net": {"class_path": "os.system", "init_args": {}}, "lr": 0.1},
                "pytorch-lightning_version": pl.__version__}, path)
    with pytest.raises(CheckpointError, match=r"x.ckpt: not a checkpoint of any rpnet stage, not a classifier one "
                                              r"\(its network 'os.system' is none of the classifier's\)"):
        load_stage_checkpoint(ClassifierStage, path, "classifier")


def test_rpnet_fit_names_a_flat_model_section_in_one_line(tmp_path: Path, capsys) -> None:
    """A hand-written config in the experiments' flat form: one line naming the file and the key."""
    from rpnet_pl.cli import main

    cfg = tmp_path / "old.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"backbone": "resnet18", "lr": 0.1}}))
    assert main(["fit", "classifier", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {cfg}: model.backbone: a training config gives the network its settings under "
                   "model.net.init_args (with model.net.class_path); `rpnet pipeline` writes this form from an "
                   "experiment's flat section"]
