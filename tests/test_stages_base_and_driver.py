"""The three training stages share one base (:class:`StageModule`) and the per-image steps one
driver (:func:`run_per_image`); `tools/bench.py` runs the stages' own code."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

import bench
from rpnet_pl.utils.errors import CheckpointError, DatasetError
from rpnet_pl.stages.checkpoints import build_stage
from rpnet_pl.stages.classifier import ClassifierStage
from rpnet_pl.stages.common import StageModule
from rpnet_pl.steps.inference import PerImage, run_per_image
from rpnet_pl.stages.refine import RefineStage
from rpnet_pl.stages import segmenter
from rpnet_pl.stages.segmenter import SegmenterStage
from rpnet_pl.steps import cam_inference, pseudo_masks
from rpnet_pl.steps.segmentation import WritePrediction

TINY = dict(backbone="resnet18", pretrained=False)


@pytest.mark.parametrize("step, kw, mult_key, momentum, weight_decay", [
    ("classifier", dict(method="cam"), "new_layer_lr_mult", 1e-4, 1e-4),  # PolyOptimizer: momentum = weight decay
    ("refine", {}, "displacement_lr_mult", 1e-4, 1e-4),
    ("segmenter", {}, "head_lr_mult", 0.9, 5e-4),
])
def test_each_stage_gets_poly_sgd_from_its_own_groups(step: str, kw: dict, mult_key: str, momentum: float,
                                                       weight_decay: float) -> None:
    stage = build_stage(step, **TINY, **kw, lr=0.01)
    assert isinstance(stage, StageModule)
    opt, sched = stage.make_optimizer(max_steps=10)
    assert [g["lr"] for g in opt.param_groups[:2]] == pytest.approx([0.01, 0.01 * stage.hparams[mult_key]])
    assert all(g["momentum"] == momentum and g["weight_decay"] == weight_decay for g in opt.param_groups[:2])
    if step == "segmenter":  # kazuto1011's third group: the head's biases at 20x, no weight decay
        (biases,) = opt.param_groups[2:]
        assert (biases["lr"], biases["weight_decay"]) == (pytest.approx(0.2), 0.0)
        assert all(p.ndim == 1 for p in biases["params"]) and len(biases["params"]) == 3  # LargeFOV fc6 / fc7 / fc8
    else:
        assert len(opt.param_groups) == 2
    trainable = {id(p) for p in stage.model.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable  # frozen parameters left out
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 5 / 10) ** 0.9)  # poly decay per step


def test_configure_optimizers_steps_the_schedule_per_step(tmp_path: Path) -> None:
    stage = build_stage("segmenter", **TINY, lr=0.02)
    stage.trainer = pl.Trainer(default_root_dir=str(tmp_path), logger=False, max_steps=40)
    config = stage.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    assert config["optimizer"].param_groups[1]["lr"] == pytest.approx(0.02 * stage.hparams.head_lr_mult)


def test_the_per_image_module_runs_the_steps_work_on_the_stage() -> None:
    """What ``trainer.predict`` runs: the step's work on the stage (a submodule, so it moves and is
    put in eval mode with it); ``what`` names the outputs in the progress lines."""
    stage = build_stage("segmenter", **TINY)
    seen: list[tuple[Any, str]] = []

    def work(s: Any, batch: dict[str, Any]) -> str:
        seen.append((s, batch["id"][0]))
        return batch["id"][0]

    module = PerImage(stage, work, "predictions")
    assert module.predict_what == "predictions" and module.stage is stage
    assert module.predict_step({"id": ["a"]}, 0) == "a" and seen == [(stage, "a")]
    module.eval()
    assert not stage.training and not stage.model.training
    assert any(name.startswith("stage.model.") for name, _ in module.named_modules())


def test_the_driver_checks_the_checkpoint_and_skips_done_images(tiny_voc: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"none.ckpt: refine checkpoint not found \(train it with `rpnet fit "
                                           r"refine`\)"):
        run_per_image(RefineStage, tmp_path / "none.ckpt", "refine", lambda s, b: None, "pseudo masks",
                      root=str(tiny_voc), done=lambda r, i: True)
    ckpt = tmp_path / "seg.ckpt"
    trainer = pl.Trainer(logger=False, enable_checkpointing=False)
    trainer.strategy.connect(build_stage("segmenter", **TINY))
    trainer.save_checkpoint(ckpt)
    asked: list[str] = []

    def done(reader: Any, image_id: str) -> bool:
        asked.append(image_id)
        return True

    assert run_per_image(SegmenterStage, ckpt, "segmenter", WritePrediction(str(tmp_path / "p")), "predictions",
                         root=str(tiny_voc), split="train", done=done) == (0, True)
    assert len(asked) == 4 and not (tmp_path / "p").exists()  # every image asked once, nothing predicted


def test_bench_runs_the_stages_own_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each training case calls the stage method the Trainer calls, each inference case the function
    the per-image step calls (so the benchmark cannot drift from them)."""
    calls: dict[str, int] = {}

    def counting(owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[key] = calls.get(key, 0) + 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for cls in (ClassifierStage, RefineStage, SegmenterStage):
        counting(cls, "training_losses", f"{cls.__name__}.training_losses")
    counting(cam_inference, "multiscale_cam", "multiscale_cam")
    counting(pseudo_masks, "pseudo_mask", "pseudo_mask")
    counting(segmenter, "multiscale_probs", "multiscale_probs")
    tiny = dict(iters=1, warmup=1, device="cpu")
    bench.classifier_train("cam", "resnet18", crop=48, batch=1, group_size=2, **tiny)
    bench.cam_inference("cam", "resnet18", image_size=(32, 40), scales=(1.0,), **tiny)
    bench.irn_train("resnet18", crop=48, batch=1, radius=2, **tiny)
    bench.pseudo_mask_inference("resnet18", image_size=(32, 40), exp_times=1, **tiny)
    bench.deeplab_train("resnet18", crop=40, batch=1, **tiny)
    bench.deeplab_inference("resnet18", image_size=(32, 40), scales=(1.0,), **tiny)
    assert calls == {k: 2 for k in ("ClassifierStage.training_losses", "multiscale_cam",
                                    "RefineStage.training_losses", "pseudo_mask",
                                    "SegmenterStage.training_losses", "multiscale_probs")}
    assert torch.is_grad_enabled()


def test_the_base_training_step_logs_every_scalar_term_and_the_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """One training_step for every stage: the loss in the progress bar, each other scalar term, no
    tensor-valued term; the samples only when image logging is due."""

    class Toy(StageModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"image_log_every_n_steps": 1})
            self.samples: list[dict[str, Any]] = []

        def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            return {"loss": torch.tensor(2.0), "part": torch.tensor(0.5), "map": torch.ones(2, 2)}

        def log_samples(self, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> None:
            self.samples.append(out)

    toy, logged = Toy(), {}
    monkeypatch.setattr(toy, "log", lambda key, value, **kw: logged.update({key: (float(value), kw)}))
    batch = {"images": torch.zeros(3, 2, 3, 4, 4)}  # three groups of two
    assert float(toy.training_step(batch, 0)) == 2.0
    assert logged == {"train/loss": (2.0, {"prog_bar": True, "batch_size": 3}), "train/part": (0.5, {"batch_size": 3})}
    assert toy.samples == []  # no trainer, no logger: no images
    monkeypatch.setattr("rpnet_pl.stages.common.image_logging_due", lambda module, every: every == 1)
    toy.training_step({"image": torch.zeros(5, 3, 4, 4)}, 0)
    assert logged["train/loss"][1]["batch_size"] == 5 and len(toy.samples) == 1 and set(toy.samples[0]) == {
        "loss", "part", "map"}
