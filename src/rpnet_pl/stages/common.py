"""What every stage shares: the poly-decay SGD of IRN, loggers, and run-directory helpers."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

LoggerName = Literal["wandb", "csv", "tensorboard", "none"]


def poly_lambda(max_steps: int, power: float = 0.9):
    """lr factor at step t: (1 - t / max_steps) ** power (IRN's PolyOptimizer, per step)."""
    max_steps = max(1, int(max_steps))

    def factor(step: int) -> float:
        return max(0.0, 1.0 - min(step, max_steps) / max_steps) ** power

    return factor


def poly_sgd(
    groups: Iterable[tuple[Iterable[nn.Parameter], float]],
    max_steps: int,
    weight_decay: float = 1e-4,
    momentum: float = 0.0,
    power: float = 0.9,
    nesterov: bool = False,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD over ``(params, lr)`` groups with per-step polynomial decay.

    The default ``momentum=0`` reproduces the public RPNet/IRN code, whose PolyOptimizer passes the
    weight decay positionally into SGD's momentum slot (effective momentum 1e-4, i.e. none); set
    ``momentum: 0.9`` for the textbook reading.
    """
    param_groups = []
    for params, lr in groups:
        params = [p for p in params if p.requires_grad]
        if params:
            param_groups.append({"params": params, "lr": lr, "weight_decay": weight_decay})
    if not param_groups:
        raise ValueError("no trainable parameters")
    opt = torch.optim.SGD(param_groups, lr=param_groups[0]["lr"], momentum=momentum,
                          weight_decay=weight_decay, nesterov=nesterov and momentum > 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(max_steps, power))
    return opt, sched


def make_logger(kind: LoggerName, save_dir: str | Path, name: str, group: str | None = None,
                tags: list[str] | None = None):
    """A Lightning logger. W&B runs offline unless WANDB_API_KEY is set (sync later with `wandb sync`)."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if kind == "none":
        return False
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=str(save_dir), name="csv", version="")
    if kind == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(save_dir), name="tensorboard", version="")
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        offline = not os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "offline"
        return WandbLogger(project=os.environ.get("WANDB_PROJECT", "rpnet-pl"), name=name, group=group,
                           tags=tags, save_dir=str(save_dir), offline=offline)
    raise ValueError(f"logger must be wandb, csv, tensorboard or none, got {kind!r}")


def last_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """``last.ckpt`` in ``ckpt_dir`` if it exists (resume point), else None."""
    p = Path(ckpt_dir) / "last.ckpt"
    return p if p.is_file() else None


def inference_trainer(devices: int | str = "auto", num_nodes: int = 1, accelerator: str = "auto",
                      precision: str | None = None, progress: bool | None = None):
    """A Trainer for prediction steps: DDP when several devices, our own sharding, no logger."""
    import pytorch_lightning as pl

    import sys

    multi = (isinstance(devices, int) and devices > 1) or num_nodes > 1
    progress = sys.stderr.isatty() if progress is None else progress
    return pl.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                      strategy="ddp" if multi else "auto", logger=False, use_distributed_sampler=False,
                      enable_progress_bar=progress, enable_model_summary=False, precision=precision,
                      enable_checkpointing=False)


def write_json(path: str | Path, obj: object) -> Path:
    """Write JSON atomically."""
    import json

    from rpnet_pl.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=False))
    return path


def checkpoint_callback(trainer, every_n_steps: int | None):
    """``checkpoints/last.ckpt`` under the trainer's root, written after every epoch, or every
    ``every_n_steps`` optimiser steps when given (for long epochs): the resume point of a step."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    root = Path(trainer.default_root_dir) if trainer is not None else Path(".")
    if every_n_steps:
        return ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0,
                               every_n_train_steps=every_n_steps)
    return ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0, every_n_epochs=1)


def set_memory_format(module: nn.Module, channels_last: bool) -> nn.Module:
    """Put ``module``'s 4-D parameters and buffers in channels-last (NHWC) layout, or leave them."""
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module
