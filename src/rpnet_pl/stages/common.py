"""What every stage shares: :class:`StageModule` (the base of the three LightningModules), the
poly-decay SGD of IRN, the training callbacks (resume checkpoint, progress lines), the inference
trainer."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from rpnet_pl.utils.errors import IncompleteStepError, TrainingDivergedError
from rpnet_pl.pipeline.layout import CHECKPOINTS, LAST_CKPT
from rpnet_pl.utils.progress import CountProgress, format_eta, progress_log
from rpnet_pl.stages.visuals import image_logging_due

log = logging.getLogger(__name__)

def poly_lambda(max_steps: int, power: float = 0.9):
    """lr factor at step t: (1 - t / max_steps) ** power (IRN's PolyOptimizer, per step)."""
    max_steps = max(1, int(max_steps))

    def factor(step: int) -> float:
        return max(0.0, 1.0 - min(step, max_steps) / max_steps) ** power

    return factor


def poly_sgd(
    groups: Iterable[tuple[Iterable[nn.Parameter], float] | tuple[Iterable[nn.Parameter], float, float]],
    max_steps: int,
    weight_decay: float = 1e-4,
    momentum: float = 1e-4,
    power: float = 0.9,
    nesterov: bool = False,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD over ``(params, lr)`` groups with per-step polynomial decay.

    The default ``momentum=1e-4`` reproduces the public RPNet/IRN code, whose PolyOptimizer passes
    the weight decay positionally into SGD's momentum slot (momentum 1e-4; the training parity cases
    tell it from 0); set ``momentum: 0.9`` for the textbook reading. A group
    ``(params, lr, group_weight_decay)`` has its own weight decay (DeepLab's head biases: none).
    """
    param_groups = []
    for params, lr, *decay in groups:
        params = [p for p in params if p.requires_grad]
        if params:
            param_groups.append({"params": params, "lr": lr, "weight_decay": decay[0] if decay else weight_decay})
    if not param_groups:
        raise ValueError("no trainable parameters")
    opt = torch.optim.SGD(param_groups, lr=param_groups[0]["lr"], momentum=momentum,
                          weight_decay=weight_decay, nesterov=nesterov and momentum > 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(max_steps, power))
    return opt, sched


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
                      enable_checkpointing=False, callbacks=[PredictProgress()])


def images_in_batch(batch: Any) -> int:
    """How many images a training batch holds: ``images`` (B, G, 3, H, W) groups or ``image`` (B, 3, H, W)."""
    if isinstance(batch, dict):
        for key in ("images", "image"):
            x = batch.get(key)
            if isinstance(x, torch.Tensor) and x.ndim >= 4:
                return int(np.prod(x.shape[:-3]))
    return 0


class LastCheckpoint(ModelCheckpoint):
    """Writes ``checkpoints/last.ckpt`` at the end of every training epoch and, with ``every_n_steps``,
    every N optimiser steps: a temporary file beside it, then a rename, so a killed job leaves either the
    previous resume point or the new one, never a torn file.

    Lightning 2.6's ``ModelCheckpoint(save_last=True, save_top_k=0)`` never writes ``last.ckpt`` before
    ``fit`` returns: its epoch-end hook copies "last" only when a top-k file was saved at the same step,
    and ``save_top_k=0`` saves none. Subclassing ModelCheckpoint makes this callback replace the
    Trainer's default one (no ``epoch=N-step=M.ckpt`` files beside ours).
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None) -> None:
        super().__init__(dirpath=str(dirpath), save_top_k=0, save_last=False, enable_version_counter=False)
        self.every_n_steps = int(every_n_steps or 0)
        self._saved_step = -1

    @property
    def path(self) -> Path:
        return Path(str(self.dirpath)) / LAST_CKPT

    def write(self, trainer: pl.Trainer) -> None:
        """Save the full training state atomically (every rank calls this; rank 0 writes)."""
        if trainer.sanity_checking or trainer.global_step == self._saved_step:
            return
        if trainer.is_global_zero:
            from rpnet_pl.utils.io import atomic_path

            try:
                with atomic_path(self.path) as tmp:
                    trainer.save_checkpoint(tmp)
            except OSError as exc:  # a full disk names fsspec's temporary file: name the checkpoint instead
                raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        else:  # the strategy writes on rank 0 only; the other ranks join its barrier
            trainer.save_checkpoint(self.path)
        # save_checkpoint's own barrier comes before rank 0's rename: without this one, another rank
        # could look for last.ckpt (check_trained) before it is in place
        trainer.strategy.barrier("last.ckpt in place")
        self._saved_step = trainer.global_step
        self.last_model_path = str(self.path)
        log.debug("wrote %s at step %d", self.path, trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.write(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        pass

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)  # max_steps reached mid-epoch


class ProgressLog(pl.Callback):
    """Plain progress lines (logger ``rpnet_pl.progress``) after every training epoch and every
    ``every_n_steps`` optimiser steps: epoch, step / total, the logged ``train/*`` terms, lr, images/s
    and ETA. They go to ``log.txt`` in a pipeline and the pipeline echoes them to the terminal.

    ``every_n_steps=None`` picks about ten lines per epoch for epochs of 50 steps or more, else one.
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        self.every_n_steps = every_n_steps
        self._start_time = 0.0
        self._start_step = 0
        self._images = 0

    def _interval(self, trainer: pl.Trainer) -> int:
        if self.every_n_steps is not None:
            return max(0, int(self.every_n_steps))
        per_epoch = trainer.num_training_batches
        if not isinstance(per_epoch, int) or per_epoch < 50:
            return 0
        return max(1, per_epoch // 10)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_time, self._start_step, self._images = time.monotonic(), trainer.global_step, 0
        total = trainer.estimated_stepping_batches
        if trainer.is_global_zero:
            if trainer.global_step:
                progress_log.info("resumed at epoch %d, step %d/%s", trainer.current_epoch + 1,
                                  trainer.global_step, total)
            elif trainer.max_epochs in (None, -1):
                progress_log.info("training from step 0/%s (%s batches per epoch)", total,
                                  trainer.num_training_batches)
            else:
                progress_log.info("training from step 0/%s (%s epoch(s) of %s batches)", total,
                                  trainer.max_epochs, trainer.num_training_batches)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._images += images_in_batch(batch) * trainer.world_size
        every = self._interval(trainer)
        if every and trainer.global_step % every == 0 and batch_idx + 1 < trainer.num_training_batches:
            self._report(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module)

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        progress_log.info(progress_line(trainer, time.monotonic() - self._start_time,
                                        trainer.global_step - self._start_step, self._images))


def progress_line(trainer: pl.Trainer, elapsed: float, steps_done: int, images: int) -> str:
    """``epoch 2/5 step 60/150 loss 0.52 loss_cls 0.41 lr 0.0191 images/s 12.3 ETA 0:01:10``."""
    total = trainer.estimated_stepping_batches
    total = int(total) if math.isfinite(total) else None
    epochs = "?" if trainer.max_epochs in (None, -1) else trainer.max_epochs
    parts = [f"epoch {trainer.current_epoch + 1}/{epochs}",
             f"step {trainer.global_step}/{total if total is not None else '?'}"]
    for key, value in sorted(trainer.callback_metrics.items()):
        if key.startswith("train/") and not key.endswith("_epoch"):
            parts.append(f"{key[len('train/'):].removesuffix('_step')} {float(value):.4g}")
    if trainer.optimizers:
        parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.4g}")
    rate = images / elapsed if elapsed > 0 else float("nan")
    parts.append(f"images/s {rate:.3g}")
    per_step = elapsed / steps_done if steps_done > 0 else float("nan")
    remaining = (total - trainer.global_step) * per_step if total is not None else float("nan")
    parts.append(f"ETA {format_eta(remaining)}")
    return " ".join(parts)


def training_callbacks(trainer: pl.Trainer | None, checkpoint_every_n_steps: int | None,
                       progress_every_n_steps: int | None = None) -> list[pl.Callback]:
    """The callbacks every training stage returns from ``configure_callbacks``: the resume point
    ``checkpoints/last.ckpt`` under the trainer's root and the plain progress lines."""
    root = Path(trainer.default_root_dir) if trainer is not None else Path(".")
    return [LastCheckpoint(root / CHECKPOINTS, checkpoint_every_n_steps), ProgressLog(progress_every_n_steps)]


class PredictProgress(pl.Callback):
    """``done / total`` lines with images/s and ETA over a prediction run (rank 0's share under DDP)."""

    def __init__(self) -> None:
        self.counter: CountProgress | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = trainer.num_predict_batches
        total = sum(batches) if isinstance(batches, list) else int(batches)
        if trainer.is_global_zero and math.isfinite(total):
            self.counter = CountProgress(getattr(pl_module, "predict_what", "predictions"), int(total))

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.counter is not None:
            self.counter.update(1)


def set_memory_format(module: nn.Module, channels_last: bool) -> nn.Module:
    """Put ``module``'s 4-D parameters and buffers in channels-last (NHWC) layout, or leave them."""
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def grad_norms(module: nn.Module, depth: int = 2) -> dict[str, float]:
    """The 2-norm of the gradients of each part of ``module``, its parameters grouped by the first
    ``depth`` parts of their names (``head.attn_plain``, ``backbone.body``), and ``total`` over all.
    Parameters without a gradient are skipped; a group without any is left out. Lightning's
    :func:`~pytorch_lightning.utilities.grad_norm` gives the per-parameter norms; a part's norm is
    the root of the sum of its parameters' squared norms.
    """
    from pytorch_lightning.utilities import grad_norm

    prefix = "grad_2.0_norm/"
    squares: dict[str, float] = {}
    for key, value in grad_norm(module, 2, group_separator="/").items():
        if not key.startswith(prefix):
            continue  # the total, recomputed below from the parts
        parts = key[len(prefix):].split(".")
        part = ".".join(parts[:min(depth, len(parts) - 1)]) or key[len(prefix):]  # the module path, cut at depth
        squares[part] = squares.get(part, 0.0) + float(value) ** 2
    norms = {k: v ** 0.5 for k, v in squares.items()}
    if squares:
        norms["total"] = sum(squares.values()) ** 0.5
    return norms


def network_config(net: nn.Module) -> dict[str, Any]:
    """How ``net`` was built, as a config names it: ``{"class_path", "init_args"}`` (the network
    records its arguments, ``net.init_args``)."""
    cls = type(net)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(getattr(net, "init_args", {}))}


class StageModule(pl.LightningModule):
    """The base of the three training stages (classifier, refine, segmenter): what they share.

    A subclass is given its network (``net``, kept as ``self.model``), calls
    :meth:`save_network_and_hyperparameters` with its own hyper-parameters (at least ``lr``, ``weight_decay``,
    ``momentum``, ``poly_power``, ``checkpoint_every_n_steps``, ``progress_every_n_steps`` and
    ``channels_last``), and defines :meth:`optimizer_groups`, :meth:`training_losses` and (for image
    logging) :meth:`log_samples`. The base gives:

    * ``training_step``: minimises the ``loss`` of :meth:`training_losses`, logs its terms and the
      learning rates, and every ``image_log_every_n_steps`` steps :meth:`log_samples`;

    * ``setup``: ``channels_last`` puts the network's weights in NHWC, which speeds up convolutions
      on GPUs with tensor cores (pair it with ``trainer.precision: bf16-mixed``) and on CPUs
      (``scripts/backbone_timing.py``; docs/benchmarks.md); inputs follow the weights' layout;
    * ``configure_optimizers``: :func:`poly_sgd` over :meth:`optimizer_groups`, decayed per step;
    * ``configure_callbacks``: :func:`training_callbacks` (resume point and progress lines);
    * ``on_before_backward``: a NaN or infinite loss stops training with :class:`TrainingDivergedError`;
    * ``log_grad_norms`` (a hyper-parameter, when the stage has it): the gradient norm of each part
      of the network (:func:`grad_norms`) logged as ``grad_norm/<part>`` at every logged step, to find
      which part a loss spike comes from.

    ``tools/bench.py`` times :meth:`training_losses` and :meth:`make_optimizer`, so what it measures is
    what trains.
    """

    model: nn.Module

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, **net_overrides: Any) -> Any:
        """The stage of a checkpoint on the CPU, its network rebuilt from the checkpoint's ``net``
        (``net_overrides``: the network's arguments to change, e.g. ``pretrained=False``): the one
        loader, :func:`rpnet_pl.stages.checkpoints.load_stage_checkpoint`."""
        from rpnet_pl.pipeline.registry import STEPS
        from rpnet_pl.stages.checkpoints import load_stage_checkpoint

        step = next(name for name, spec in STEPS.items() if spec.stage == f"{cls.__module__}:{cls.__name__}")
        return load_stage_checkpoint(cls, checkpoint_path, step, **net_overrides)

    def save_network_and_hyperparameters(self, net: nn.Module) -> None:
        """``save_hyperparameters`` for a stage given its network: the stage's own arguments, and under
        ``net`` the network's class and arguments (:func:`network_config`), so that a checkpoint names
        what to rebuild (:func:`rpnet_pl.stages.checkpoints.load_stage_checkpoint`)."""
        import inspect

        frame = inspect.currentframe()
        caller = frame.f_back.f_locals if frame is not None and frame.f_back is not None else {}
        names = set(inspect.signature(type(self).__init__).parameters) - {"self", "net"}
        self.save_hyperparameters({**{k: v for k, v in caller.items() if k in names}, "net": network_config(net)})

    def setup(self, stage: str) -> None:
        """Put the network's weights in channels-last layout when ``channels_last`` is set."""
        set_memory_format(self.model, self.hparams.get("channels_last", False))

    def optimizer_groups(self) -> list[tuple[Iterable[nn.Parameter], float]]:
        """``(parameters, learning rate)`` groups of the optimiser (frozen parameters are dropped)."""
        raise NotImplementedError

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The training objective on one batch: ``loss`` (what is minimised) and its named terms."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Minimise :meth:`training_losses`' ``loss``. Logged: ``train/loss`` (in the progress bar) and
        every other scalar term as ``train/<term>``, each optimiser group's learning rate as
        ``lr/group<i>``, and every ``image_log_every_n_steps`` steps the stage's :meth:`log_samples`."""
        out = self.training_losses(batch)
        size = len(batch["images"] if "images" in batch else batch["image"])  # groups, or images
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=size)
        for key, value in out.items():
            if key != "loss" and torch.is_tensor(value) and value.ndim == 0:
                self.log(f"train/{key}", value, batch_size=size)
        if self._trainer is not None:
            for i, group in enumerate(self.optimizers().param_groups):
                self.log(f"lr/group{i}", group["lr"], batch_size=size)
        if image_logging_due(self, self.hparams.get("image_log_every_n_steps")):
            with torch.no_grad():
                self.log_samples(batch, out)
        return out["loss"]

    def log_samples(self, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> None:
        """Log a few images of ``batch`` with what the network made of them (``out``: the terms of
        :meth:`training_losses`) to the image-capable loggers; nothing by default."""

    def make_optimizer(self, max_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """SGD over :meth:`optimizer_groups` with poly decay to ``max_steps`` (the stage's own
        ``weight_decay``, ``momentum`` and ``poly_power``)."""
        hp = self.hparams
        return poly_sgd(self.optimizer_groups(), max_steps=max_steps, weight_decay=hp.weight_decay,
                        momentum=hp.momentum, power=hp.poly_power)

    def configure_optimizers(self) -> dict[str, Any]:
        opt, sched = self.make_optimizer(int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Stop at the first NaN or infinite loss with a one-line :class:`TrainingDivergedError`,
        instead of training on (every later step would be NaN and the outputs garbage)."""
        if not bool(torch.isfinite(loss.detach()).all()):
            step = self._trainer.global_step if self._trainer is not None else "?"
            raise TrainingDivergedError(
                f"{type(self).__name__}: the training loss is {float(loss.detach().float().sum())} at step {step}: "
                "training diverged. Resume from the last checkpoint (the run is not bit-reproducible, so it may "
                "pass) or lower the learning rate (lr, momentum)"
                + ("; `model.log_grad_norms: true` logs which part's gradient grows"
                   if "log_grad_norms" in self.hparams else ""))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.hparams.get("log_grad_norms", False):
            return
        trainer = self._trainer
        if trainer is not None and trainer.global_step % max(1, trainer.log_every_n_steps) != 0:
            return
        for key, value in grad_norms(self.model).items():
            self.log(f"grad_norm/{key}", value, on_step=True, on_epoch=False)

    def configure_callbacks(self) -> list[pl.Callback]:
        return training_callbacks(self._trainer, self.hparams.get("checkpoint_every_n_steps"),
                                  self.hparams.get("progress_every_n_steps"))


def _no_batch_reason(trainer: pl.Trainer) -> str:
    if trainer.max_epochs == 0 or trainer.max_steps == 0:
        return f"trainer.max_epochs is {trainer.max_epochs}, trainer.max_steps {trainer.max_steps}"
    if not trainer.num_training_batches:
        hp = getattr(trainer.datamodule, "hparams", {})
        loader = trainer.train_dataloader
        images = len(loader.dataset) if loader is not None and hasattr(loader.dataset, "__len__") else "?"
        return (f"the training split {hp.get('split', '')!r} gives no batch ({images} images, data.batch_size "
                f"{hp.get('batch_size', '?')} per process; an incomplete batch is dropped)")
    return "the fit ended before its first optimiser step"


def check_trained(step: str, trainer: pl.Trainer) -> None:
    """Raise :class:`IncompleteStepError` when a fit ran no optimiser step or left no
    ``checkpoints/last.ckpt``: the step then exits non-zero and is not marked done (Lightning itself
    ends such a fit with a warning only)."""
    if trainer.global_step == 0:
        raise IncompleteStepError(f"{step}: trained no optimiser step: {_no_batch_reason(trainer)}; "
                                  "no checkpoint written, the step is not done")
    saver = next((cb for cb in trainer.callbacks if isinstance(cb, LastCheckpoint)), None)
    if saver is not None and not saver.path.is_file():
        raise IncompleteStepError(f"{step}: the fit ended without its checkpoint {saver.path}; the step is not done")
