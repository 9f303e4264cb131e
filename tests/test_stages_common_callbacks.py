"""The resume point and the progress lines every training stage gets from ``training_callbacks``."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from rpnet_pl.utils.progress import CountProgress, format_eta
from rpnet_pl.stages.common import LastCheckpoint, images_in_batch, training_callbacks

BATCHES, EPOCHS = 3, 2


class _Images(Dataset):
    def __len__(self) -> int:
        return BATCHES * 2

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.full((3, 4, 4), float(i)), "target": torch.tensor(float(i))}


class _Tiny(pl.LightningModule):
    def __init__(self, every: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.every = every

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pred = self.layer(batch["image"].mean(dim=(2, 3))).squeeze(1)
        loss = torch.nn.functional.mse_loss(pred, batch["target"])
        self.log("train/loss", loss, batch_size=len(pred))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def configure_callbacks(self) -> list[pl.Callback]:
        return training_callbacks(self._trainer, self.every)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Images(), batch_size=2)


class _Probe(pl.Callback):
    """Records, before each batch, the global step stored in last.ckpt (None: no file yet)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = torch.load(self.path, weights_only=False)["global_step"] if self.path.is_file() else None
        self.seen.append((trainer.global_step, step))


def _fit(tmp_path: Path, every: int | None) -> tuple[pl.Trainer, _Probe]:
    probe = _Probe(tmp_path / "checkpoints" / "last.ckpt")
    trainer = pl.Trainer(default_root_dir=str(tmp_path), max_epochs=EPOCHS, logger=False, callbacks=[probe],
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(_Tiny(every))
    return trainer, probe


def test_last_ckpt_exists_after_the_first_epoch_and_is_the_only_checkpoint(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        trainer, probe = _fit(tmp_path, None)
    finally:
        os.umask(old)
    # before the batches of epoch 2 the file holds the end of epoch 1; none before that
    assert probe.seen == [(0, None), (1, None), (2, None), (3, 3), (4, 3), (5, 3)]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == EPOCHS * BATCHES
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no epoch=N files, no temp files
    assert isinstance(trainer.checkpoint_callback, LastCheckpoint)
    assert last.stat().st_mode & 0o777 == 0o644


def test_a_full_disk_while_writing_last_ckpt_names_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """Lightning writes through fsspec, whose temporary file lies in the system's temporary folder:
    the error names the checkpoint, and nothing of it is left."""
    import errno

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/tmpq1w2e3r4")

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", full)
    with pytest.raises(OSError) as raised:
        _fit(tmp_path, None)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(last))
    assert not last.parent.exists() or not any(last.parent.iterdir())


def test_last_ckpt_every_n_steps(tmp_path: Path) -> None:
    _, probe = _fit(tmp_path, 2)
    assert probe.seen == [(0, None), (1, None), (2, 2), (3, 3), (4, 4), (5, 4)]


def test_progress_lines_per_epoch(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="rpnet_pl.progress"):
        _fit(tmp_path, None)
    lines = [r.getMessage() for r in caplog.records if r.name == "rpnet_pl.progress"]
    assert lines[0] == f"training from step 0/{EPOCHS * BATCHES} ({EPOCHS} epoch(s) of {BATCHES} batches)"
    assert len(lines) == 1 + EPOCHS
    for epoch, line in enumerate(lines[1:], 1):
        assert re.fullmatch(rf"epoch {epoch}/{EPOCHS} step {epoch * BATCHES}/{EPOCHS * BATCHES} loss [\d.e+-]+ "
                            r"lr 0\.01 images/s [\d.e+-]+ ETA \d+:\d\d:\d\d", line), line
    assert lines[-1].endswith("ETA 0:00:00")


def test_images_in_batch_counts_groups_and_plain_batches() -> None:
    assert images_in_batch({"images": torch.zeros(4, 2, 3, 8, 8)}) == 8  # 4 groups of 2
    assert images_in_batch({"image": torch.zeros(5, 3, 8, 8)}) == 5
    assert images_in_batch([torch.zeros(2)]) == 0


class _FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _count(caplog, counter: CountProgress, clock: _FakeClock, seconds_per_item: float) -> list[str]:
    with caplog.at_level(logging.INFO, logger="rpnet_pl.progress"):
        for _ in range(counter.total):
            clock.now += seconds_per_item
            counter.update()
    return [r.getMessage() for r in caplog.records if r.name == "rpnet_pl.progress"]


def test_format_eta_and_count_progress(caplog) -> None:
    """10 items, a line every 4, 1 s per item, quiet for the first 5 s: at 4 s (item 4) still quiet;
    item 8 at 8 s -> 1 item/s, 2 left -> ETA 0:00:02; item 10 at 10 s is the final line."""
    assert format_eta(7384.2) == "2:03:04"
    assert format_eta(float("nan")) == "?"
    clock = _FakeClock()
    counter = CountProgress("CAMs", 10, every=4, quiet_s=5.0, clock=clock)
    lines = _count(caplog, counter, clock, 1.0)
    assert lines == ["CAMs: 8/10 images, 1 images/s, ETA 0:00:02", "CAMs: 10/10 images, 1 images/s, ETA 0:00:00"]
    assert counter.lines == 2


def test_count_progress_is_silent_for_a_quick_step(caplog) -> None:
    """20 items in 0.02 s (the default of about 20 lines would have printed 20): no line at all."""
    clock = _FakeClock()
    lines = _count(caplog, CountProgress("eval CAMs", 20, clock=clock), clock, 0.001)
    assert lines == []


def test_count_progress_final_line_of_a_slow_step_without_earlier_lines(caplog) -> None:
    """3 items of 2 s, a line every 5 items: no multiple is passed, but the run took 6 s >= 5 s, so the
    final line comes (0.5 images/s); at 1 s per item (3 s in all) nothing."""
    clock = _FakeClock()
    assert _count(caplog, CountProgress("IR labels", 3, every=5, clock=clock), clock, 2.0) == [
        "IR labels: 3/3 images, 0.5 images/s, ETA 0:00:00"]
    caplog.clear()
    clock = _FakeClock()
    assert _count(caplog, CountProgress("IR labels", 3, every=5, clock=clock), clock, 1.0) == []


@pytest.mark.parametrize("every", [None, 7])
def test_training_callbacks_write_under_the_trainer_root(tmp_path: Path, every: int | None) -> None:
    trainer = pl.Trainer(default_root_dir=str(tmp_path), logger=False)
    ckpt, progress = training_callbacks(trainer, every)
    assert isinstance(ckpt, LastCheckpoint) and ckpt.path == tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.every_n_steps == (every or 0)


class _Predict(_Tiny):
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        return None


@pytest.mark.parametrize("quiet_s", [0.0, 3600.0])
def test_prediction_runs_log_done_over_total(caplog, monkeypatch, quiet_s: float) -> None:
    """Not quiet: a line per image; quiet for an hour (a quick run): none, not even the final one."""
    from rpnet_pl.utils import progress
    from rpnet_pl.stages.common import inference_trainer

    monkeypatch.setattr(progress, "QUIET_SECONDS", quiet_s)
    trainer = inference_trainer(devices=1, accelerator="cpu", progress=False)
    with caplog.at_level(logging.INFO, logger="rpnet_pl.progress"):
        trainer.predict(_Predict(), DataLoader(_Images(), batch_size=1), return_predictions=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "rpnet_pl.progress"]
    expected = [f"predictions: {k}/6 images" for k in range(1, 7)] if quiet_s == 0 else []
    assert [line.split(",")[0] for line in lines] == expected


@pytest.mark.parametrize("stage", ["classifier", "refine", "segmenter"])
def test_every_training_stage_writes_the_resume_point_and_progress(tmp_path: Path, stage: str) -> None:
    from rpnet_pl.stages.checkpoints import build_stage
    from rpnet_pl.stages.common import ProgressLog

    module = build_stage(stage, backbone="resnet18", pretrained=False, checkpoint_every_n_steps=50,
                         progress_every_n_steps=5)
    module.trainer = pl.Trainer(default_root_dir=str(tmp_path), logger=False)
    ckpt, progress = module.configure_callbacks()
    assert isinstance(ckpt, LastCheckpoint) and ckpt.path == tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.every_n_steps == 50
    assert isinstance(progress, ProgressLog) and progress.every_n_steps == 5


def test_grad_norms_by_part_hand_computed() -> None:
    """Gradients set by hand: part "0" has grads (3, 4) -> norm 5; part "1.0" has 12 -> 12; total 13."""
    from torch import nn

    from rpnet_pl.stages.common import grad_norms

    m = nn.Sequential(nn.Linear(2, 1, bias=False), nn.Sequential(nn.Linear(1, 1, bias=False)), nn.Linear(1, 1))
    m[0].weight.grad = torch.tensor([[3.0, 4.0]])
    m[1][0].weight.grad = torch.tensor([[12.0]])
    norms = grad_norms(m)  # m[2] has no gradient: left out
    assert norms == pytest.approx({"0": 5.0, "1.0": 12.0, "total": 13.0})
    assert grad_norms(m, depth=1) == pytest.approx({"0": 5.0, "1": 12.0, "total": 13.0})
    assert grad_norms(nn.Linear(1, 1)) == {}


def test_nan_loss_stops_training_with_a_one_line_error(tmp_path: Path) -> None:
    """A stage whose loss turns NaN at its third step: fit stops there with TrainingDivergedError
    naming the stage and the step, and the NaN never reaches the weights."""
    from torch import nn

    from rpnet_pl.utils.errors import TrainingDivergedError
    from rpnet_pl.stages.common import StageModule

    class Diverging(StageModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"lr": 0.1, "weight_decay": 0.0, "momentum": 0.0, "poly_power": 0.9})
            self.model = nn.Linear(1, 1)

        def optimizer_groups(self):  # type: ignore[no-untyped-def]
            return [(self.model.parameters(), 0.1)]

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            loss = self.model(batch[0]).pow(2).mean()
            return loss * float("nan") if self.trainer.global_step == 2 else loss

    stage = Diverging()
    data = DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 1)), batch_size=1)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, default_root_dir=str(tmp_path))
    with pytest.raises(TrainingDivergedError, match=r"Diverging: the training loss is nan at step 2: training diverged"):
        trainer.fit(stage, train_dataloaders=data)
    assert trainer.global_step == 2 and all(bool(torch.isfinite(p).all()) for p in stage.parameters())
