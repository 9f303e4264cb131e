"""N processes train as one: DDP equivalence of the three training stages.

For each training stage (``ClassifierStage``, ``RefineStage``, ``SegmenterStage``) the same initial
weights take two optimiser steps through Lightning's ``Trainer`` with the stage's own
``training_step`` and ``configure_optimizers``, on the same two batches in the same order:

* **2 processes**: ``Trainer(accelerator="cpu", devices=2, strategy="ddp")`` (gloo), rank 0 given
  the first half of every batch, rank 1 the second half;
* **1 process**: ``Trainer(devices=1)`` with the whole batch (``whole``), or, where the stage's loss
  is not a plain mean over the batch, the *per-process reference* (``halves``): the two halves as two
  micro-batches of ``accumulate_grad_batches=2``. Lightning divides each micro-batch loss by 2, so
  its gradient is the mean of the two half-batch gradients, which is what DDP's gradient averaging
  computes.

The updated parameters are compared to 1e-4 of the largest update (float32), and every comparison
checks that the weights moved. Both DDP replicas must hold identical parameters. What is proven:

* ``SegmenterStage`` (cross-entropy, a mean over labelled pixels; DeepLab's BatchNorm frozen;
  LargeFOV's dropout switched off, its masks being random draws): 2 processes == the whole batch
  when both halves have as many labelled (non-255) pixels; with unequal counts 2 processes == the
  per-process reference and differ from the whole batch (the mean of two means is not the mean).
* ``RefineStage`` (IRN: every loss a sum over pixel pairs / their count; backbone frozen in eval
  mode; GroupNorm in the branches): the same two statements, the halves built with the same label
  maps (equal pair counts) or not. The ``MeanShift`` running mean (a buffer, not trained, used only
  by the displacement output at inference) is rank 0's, from its half batch.
* ``ClassifierStage`` (RPNet: Lc and Ls are batch means, the prototypes stay inside a group, a
  process always gets whole groups): without the non-local blocks and with the backbone's
  BatchNorm frozen (``freeze_early=True``, the recipe), 2 processes == the whole batch. With the
  reference's non-local blocks (``attention_norm="batch"``) each block's BatchNorm normalises with
  the statistics of the current pass over *all* anchors (and, separately, all references) of the
  process's batch, i.e. across groups: 2 processes with B/2 groups each == the per-process
  reference and != 1 process with B groups, as the public code's ``DataParallel`` (per-GPU
  statistics) does. ``freeze_early=False`` (the CPU demo) puts the backbone's BatchNorm on batch
  statistics too: again == the per-process reference, != the whole batch.
* ``sync_batchnorm=True``: a CPU DDP run refuses SyncBatchNorm modules outright; the conversion it
  applies changes nothing in the non-local blocks (they call ``grouped_batch_norm`` on the
  BatchNorm's weights, never the module) and leaves IRN's ``MeanShift`` as it is (it was a
  ``BatchNorm2d`` subclass, turned into a normalising SyncBatchNorm: fixed, tested).
* The group sampler gives each rank whole groups, disjoint between the ranks, each the group its
  anchor gets in one process.

All 2-process fits run in one launch of this file as a script (``python tests/test_ddp_equivalence.py
specs.json``; Lightning's ``ddp`` launcher starts the second rank the same way), so the interpreters
and Lightning's import (seconds on a small machine) start once.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve()

STEPS = 2


# ------------------------------------------------------------------------------------------------
# The fit, run in the test process (1 process) or by the script (2 processes)
# ------------------------------------------------------------------------------------------------
def _stage(name: str, kwargs: dict[str, Any]):
    from rpnet_pl.stages.checkpoints import build_stage

    return build_stage(name, **kwargs)


def _halves(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    n = next(iter(batch.values())).shape[0]
    assert n % 2 == 0
    return [{k: v[:n // 2] for k, v in batch.items()}, {k: v[n // 2:] for k, v in batch.items()}]


def _fit(spec: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """Fit ``spec['stage']`` for ``STEPS`` optimiser steps; ``spec['mode']``: ``ddp`` (this is one of
    2 ranks, it gets its half of every batch), ``whole`` (1 process, whole batches) or ``halves``
    (1 process, the halves as micro-batches of ``accumulate_grad_batches=2``). Returns the state
    dict (rank 0 / the single process) after writing it to ``spec['out']`` when given."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    mode = spec["mode"]
    stage = _stage(spec["stage"], spec["kwargs"])
    stage.load_state_dict(torch.load(spec["state"], weights_only=True))
    for m in stage.modules():  # dropout masks are random draws, different in every process
        if isinstance(m, torch.nn.Dropout) and spec.get("no_dropout"):
            m.p = 0.0
    batches = torch.load(spec["batches"], weights_only=True)

    class Batches(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            if mode == "ddp":
                rank = self.trainer.global_rank
                items = [_halves(b)[rank] for b in batches]
            elif mode == "halves":
                items = [h for b in batches for h in _halves(b)]
            else:
                items = list(batches)
            return DataLoader(items, batch_size=None, shuffle=False)

    trainer = pl.Trainer(
        accelerator="cpu", devices=2 if mode == "ddp" else 1, strategy="ddp" if mode == "ddp" else "auto",
        max_steps=STEPS, accumulate_grad_batches=2 if mode == "halves" else 1,
        logger=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
        limit_val_batches=0, default_root_dir=spec["root"])
    trainer.fit(stage, datamodule=Batches())
    assert trainer.global_step == STEPS
    state = {k: v.detach().clone() for k, v in stage.state_dict().items()}
    if spec.get("out"):
        out = Path(spec["out"])
        torch.save(state, out if trainer.global_rank == 0 else out.with_suffix(f".rank{trainer.global_rank}"))
    return state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(specs: dict[str, dict[str, Any]], tmp: Path) -> dict[str, tuple[dict, dict]]:
    """The 2-process fits of ``specs`` (one after the other in the same two processes, so the
    interpreters start once); returns rank 0's and rank 1's state dicts of each."""
    runs = {}
    for case, spec in specs.items():
        (tmp / case).mkdir(parents=True, exist_ok=True)
        runs[case] = {**spec, "mode": "ddp", "out": str(tmp / case / "ddp.pt"), "root": str(tmp / case / "ddp_root")}
    path = tmp / "specs.json"
    path.write_text(json.dumps(runs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "PYTHONWARNINGS": "ignore"}
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "PL_GLOBAL_SEED"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(HERE), str(path)], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return {case: (torch.load(tmp / case / "ddp.pt", weights_only=True),
                   torch.load(tmp / case / "ddp.rank1", weights_only=True)) for case in runs}


def _run_one_process(spec: dict[str, Any], tmp: Path, mode: str) -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state = _fit({**spec, "mode": mode, "root": str(tmp / f"{mode}_root")})
    finally:
        torch.set_num_threads(threads)
    assert state is not None
    return state


# ------------------------------------------------------------------------------------------------
# Comparison
# ------------------------------------------------------------------------------------------------
def _params(stage_state: dict[str, torch.Tensor], names: set[str]) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in stage_state.items() if k in names}


def _param_names(stage) -> set[str]:
    return {n for n, _ in stage.named_parameters()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _max_update(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    return max(float((after[k] - before[k]).abs().max()) for k in before)


def _assert_same(before, got, want, what: str, rtol: float = 1e-4) -> tuple[float, float]:
    """``got`` == ``want`` (parameters) to ``rtol`` of the largest update, which must be non-zero."""
    update = _max_update(before, want)
    assert update > 1e-4, f"{what}: the weights did not change (max update {update:.3g})"
    assert _max_update(before, got) > 1e-4
    diff = _max_diff(got, want)
    print(f"{what}: max |diff| {diff:.3g}, max update {update:.3g}")
    assert diff <= rtol * update, f"{what}: max |diff| {diff:.3g} > {rtol} x max update {update:.3g}"
    return diff, update


def _assert_differ(before, got, want, what: str, factor: float = 1e-2) -> float:
    update = _max_update(before, want)
    diff = _max_diff(got, want)
    print(f"{what}: max |diff| {diff:.3g} (expected a difference), max update {update:.3g}")
    assert diff > factor * update, f"{what}: expected a difference, got {diff:.3g} (update {update:.3g})"
    return diff


class Case:
    """One comparison: a stage, its arguments, the batches and the initial weights (saved once)."""

    def __init__(self, tmp: Path, name: str, stage: str, kwargs: dict[str, Any],
                 batches: list[dict[str, torch.Tensor]], init=None, **extra: Any) -> None:
        tmp = tmp / name
        tmp.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        module = _stage(stage, kwargs)
        if init is not None:
            init(module)
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        torch.save(state, tmp / "init.pt")
        torch.save(batches, tmp / "batches.pt")
        self.tmp, self.names = tmp, _param_names(module)
        self.before = _params(state, self.names)
        self.spec = {"stage": stage, "kwargs": kwargs, "state": str(tmp / "init.pt"),
                     "batches": str(tmp / "batches.pt"), **extra}
        self.ddp: dict[str, torch.Tensor] = {}
        self.ddp_state: dict[str, torch.Tensor] = {}

    def backbone_bn_moved(self) -> bool:
        """Whether any backbone BatchNorm running statistic changed in the 2-process fit."""
        init = torch.load(self.spec["state"], weights_only=True)
        keys = [k for k in init if ".backbone." in f".{k}" and k.endswith(("running_mean", "running_var"))]
        assert keys
        return any(not torch.equal(init[k], self.ddp_state[k]) for k in keys)

    def one_process(self, mode: str) -> dict[str, torch.Tensor]:
        self.state = _run_one_process(self.spec, self.tmp, mode)
        return _params(self.state, self.names)


def _images(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


# ------------------------------------------------------------------------------------------------
# Segmenter
# ------------------------------------------------------------------------------------------------
#: LargeFOV (the default head); its dropout is switched off in the runs (``no_dropout``): the masks
#: are random draws, different in every process
SEG_KWARGS = {"head": "largefov", "backbone": "resnet18", "pretrained": False, "num_classes": 3,
              "output_stride": 16, "lr": 0.01, "image_log_every_n_steps": 0}


def _seg_batches(equal: bool, size: int = 32, b: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        label = torch.randint(0, 3, (b, size, size), generator=g)
        if not equal:  # the first half mostly unlabelled: 1/4 of its pixels count, all of the second's
            label[: b // 2, : 3 * size // 4] = 255
        out.append({"image": _images(g, b, 3, size, size), "label": label})
    return out


# ------------------------------------------------------------------------------------------------
# Refine (IRN)
# ------------------------------------------------------------------------------------------------
REFINE_KWARGS = {"backbone": "resnet18", "pretrained": False, "boundary_radius": 3, "lr": 0.1,
                 "image_log_every_n_steps": 0}


def _blocky_labels(g: torch.Generator, b: int, size: int, classes: int = 2) -> torch.Tensor:
    """IR labels (b, size, size): 8x8 blocks of background, foreground classes and 255."""
    cells = torch.randint(0, classes + 2, (b, size // 8, size // 8), generator=g)
    cells[cells == classes + 1] = 255
    return cells.repeat_interleave(8, 1).repeat_interleave(8, 2)


def _refine_batches(equal: bool, size: int = 48, b: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(STEPS):
        first = _blocky_labels(g, b // 2, size)
        # equal: the second half has the same label maps (the same pair counts), other images
        second = first.clone() if equal else _blocky_labels(g, b // 2, size)
        if not equal:
            second[:, : size // 2] = 255  # far fewer pairs in the second half
        out.append({"image": _images(g, b, 3, size, size), "label": torch.cat([first, second])})
    return out


# ------------------------------------------------------------------------------------------------
# Classifier (RPNet)
# ------------------------------------------------------------------------------------------------
CLS_KWARGS = {"method": "rpnet", "backbone": "resnet18", "pretrained": False, "num_classes": 3, "mid": 16,
              "beta": 0.0,  # no part-mask dropout: its random draws would differ between the runs
              "enhanced_scales": (1.0, 0.5), "lr": 0.02, "image_log_every_n_steps": 0}


def _cls_batches(size: int = 48, b: int = 4, k: int = 2, classes: int = 3) -> list[dict[str, torch.Tensor]]:
    """``b`` groups of ``k`` images; a process gets whole groups (rows of the batch)."""
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(STEPS):
        labels = (torch.rand(b, k, classes, generator=g) < 0.5).float()
        labels[..., 0] = 1.0  # every member shares class 1
        out.append({"images": _images(g, b, k, 3, size, size), "labels": labels})
    return out


def _live_nonlocal_bn(stage) -> None:
    """Non-zero weights for the non-local blocks' output BatchNorm (zero at init, which would hide
    its statistics from the forward pass of the first step)."""
    for name, module in stage.named_modules():
        if name.endswith(".out.1"):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.1, 0.1)


# ------------------------------------------------------------------------------------------------
# All 2-process fits in one launch (the interpreters start once: importing Lightning takes seconds)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    tmp = tmp_path_factory.mktemp("ddp_equivalence")
    t0 = time.monotonic()
    cls = _cls_batches()
    made = [
        Case(tmp, "seg_equal", "segmenter", SEG_KWARGS, _seg_batches(True), no_dropout=True),
        Case(tmp, "seg_unequal", "segmenter", SEG_KWARGS, _seg_batches(False), no_dropout=True),
        Case(tmp, "refine_equal", "refine", REFINE_KWARGS, _refine_batches(True)),
        Case(tmp, "refine_unequal", "refine", REFINE_KWARGS, _refine_batches(False)),
        Case(tmp, "cls_plain", "classifier", {**CLS_KWARGS, "self_attention": False}, cls),
        Case(tmp, "cls_nonlocal", "classifier", CLS_KWARGS, cls, init=_live_nonlocal_bn),
        # freeze_early=False (the CPU demo trains from scratch): live backbone BatchNorm, batch statistics
        Case(tmp, "cls_live_bn", "classifier", {**CLS_KWARGS, "self_attention": False, "freeze_early": False}, cls),
    ]
    out = {c.tmp.name: c for c in made}
    runs = _run_two_processes({name: c.spec for name, c in out.items()}, tmp / "ddp")
    for name, (rank0, rank1) in runs.items():
        c = out[name]
        c.ddp_state, c.ddp = rank0, _params(rank0, c.names)
        assert _max_diff(c.ddp, _params(rank1, c.names)) == 0.0, f"{name}: the two replicas differ"
    print(f"2-process fits of {len(out)} cases: {time.monotonic() - t0:.1f}s")
    return out


@pytest.mark.slow
def test_segmenter_two_processes_train_as_one(cases: dict[str, Case]) -> None:
    """CE is a mean over labelled pixels: equal counts per half -> 2 processes == the whole batch;
    unequal counts -> == the mean of the half-batch means (accumulated halves), != the whole batch."""
    equal, unequal = cases["seg_equal"], cases["seg_unequal"]
    assert not equal.backbone_bn_moved()  # frozen: running statistics, never batch statistics
    _assert_same(equal.before, equal.ddp, equal.one_process("whole"), "segmenter, equal counts, 2 proc vs whole")
    _assert_same(unequal.before, unequal.ddp, unequal.one_process("halves"),
                 "segmenter, unequal counts, 2 proc vs halves")
    _assert_differ(unequal.before, unequal.ddp, unequal.one_process("whole"),
                   "segmenter, unequal counts, 2 proc vs whole")


@pytest.mark.slow
def test_refine_two_processes_train_as_one(cases: dict[str, Case]) -> None:
    """IRN's losses are sums over pixel pairs / their counts: halves with the same label maps (equal
    counts) -> 2 processes == the whole batch; unequal counts -> == the accumulated halves."""
    equal, unequal = cases["refine_equal"], cases["refine_unequal"]
    assert not equal.backbone_bn_moved()
    _assert_same(equal.before, equal.ddp, equal.one_process("whole"), "refine, equal counts, 2 proc vs whole")
    # the mean shift's running mean (a buffer, not trained) is rank 0's: from its half batch only
    key = "model.mean_shift.running_mean"
    print(f"refine: mean_shift.running_mean 2 proc vs whole: max |diff| "
          f"{float((equal.ddp_state[key] - equal.state[key]).abs().max()):.3g}")
    _assert_same(unequal.before, unequal.ddp, unequal.one_process("halves"), "refine, unequal counts, 2 proc vs halves")
    _assert_differ(unequal.before, unequal.ddp, unequal.one_process("whole"), "refine, unequal counts, 2 proc vs whole")


@pytest.mark.slow
def test_classifier_two_processes_train_as_one(cases: dict[str, Case]) -> None:
    """Without the non-local blocks 2 processes == the whole batch. With them (the reference's
    per-pass BatchNorm over the anchors / the references of a process's groups) 2 processes == the
    per-process reference (accumulated halves) and != the whole batch; ``sync_batchnorm=True``
    cannot change that (see test_sync_batchnorm_does_not_reach_the_nonlocal_statistics)."""
    plain, nonlocal_ = cases["cls_plain"], cases["cls_nonlocal"]
    assert not plain.backbone_bn_moved() and not nonlocal_.backbone_bn_moved()
    _assert_same(plain.before, plain.ddp, plain.one_process("whole"), "classifier without non-local, 2 proc vs whole")
    _assert_same(nonlocal_.before, nonlocal_.ddp, nonlocal_.one_process("halves"),
                 "classifier (non-local), 2 proc vs halves")
    _assert_differ(nonlocal_.before, nonlocal_.ddp, nonlocal_.one_process("whole"),
                   "classifier (non-local), 2 proc vs whole")
    live = cases["cls_live_bn"]  # freeze_early=False: the backbone's BatchNorm on batch statistics too
    assert live.backbone_bn_moved()
    _assert_same(live.before, live.ddp, live.one_process("halves"), "classifier (freeze_early=False), 2 proc vs halves")
    _assert_differ(live.before, live.ddp, live.one_process("whole"), "classifier (freeze_early=False), 2 proc vs whole")



# ------------------------------------------------------------------------------------------------
# sync_batchnorm: what Trainer(sync_batchnorm=True) does to each stage (its module conversion)
# ------------------------------------------------------------------------------------------------
# On CPU, DDP refuses SyncBatchNorm modules ("SyncBatchNorm layers only work with GPU modules"), so a
# 2-process CPU run with sync_batchnorm=True cannot start; these tests check, in one process, what
# the conversion Lightning applies (torch.nn.SyncBatchNorm.convert_sync_batchnorm) changes.
def test_sync_batchnorm_does_not_reach_the_nonlocal_statistics() -> None:
    """RPNet's non-local blocks normalise with grouped_batch_norm on the BatchNorm's weights, never
    through the module: converting it to SyncBatchNorm changes no number of the training losses
    (the backbone's BatchNorms are frozen, eval mode, running statistics), so sync_batchnorm cannot
    make the per-process statistics global."""
    import copy

    torch.manual_seed(0)
    stage = _stage("classifier", CLS_KWARGS)
    _live_nonlocal_bn(stage)
    converted = copy.deepcopy(stage)
    converted.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(converted.model)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.model.head.modules())
    stage.train(), converted.train()
    batch = _cls_batches()[0]
    a, b = stage.training_losses(batch), converted.training_losses(batch)
    assert torch.equal(a["loss"], b["loss"])
    assert torch.equal(a["cams"], b["cams"])


def test_sync_batchnorm_keeps_irn_mean_shift() -> None:
    torch.manual_seed(0)
    stage = _stage("refine", REFINE_KWARGS)
    x = _refine_batches(True)[0]["image"]
    stage.train()
    with torch.no_grad():
        before = stage.model(x)["displacement"]
        stage.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(stage.model)
        stage.train()
        after = stage.model(x)["displacement"]
    assert type(stage.model.mean_shift).__name__ == "MeanShift"  # not converted
    assert torch.equal(before, after)


# ------------------------------------------------------------------------------------------------
# Group sampler: whole groups per rank
# ------------------------------------------------------------------------------------------------
class _GroupEcho(torch.utils.data.Dataset):
    """Indexed by a Group, as GroupDataset: returns the group itself."""

    def __getitem__(self, group):
        return group


def test_group_sampler_gives_each_rank_whole_disjoint_groups() -> None:
    from torch.utils.data import DataLoader

    from rpnet_pl.data.sampler import GroupSampler

    rng = np.random.default_rng(0)
    labels = [np.sort(rng.choice(np.arange(1, 5), size=rng.integers(1, 3), replace=False)) for _ in range(23)]
    single = {g.members[0]: g for g in GroupSampler(labels, group_size=2, seed=4)}
    per_rank = []
    for rank in range(2):
        sampler = GroupSampler(labels, group_size=2, seed=4, num_replicas=2, rank=rank)
        # the data module's loader: batch_size groups per process, an incomplete batch dropped
        loader = DataLoader(_GroupEcho(), batch_size=3, sampler=sampler, drop_last=True, collate_fn=list)
        batches = list(loader)
        assert len(batches) == 11 // 3
        for batch in batches:
            for group in batch:  # a whole group, the one the anchor gets in one process
                assert len(group.members) == 2 and group == single[group.members[0]]
        per_rank.append({g.members[0] for batch in batches for g in batch})
    assert not per_rank[0] & per_rank[1]  # different groups on the two ranks


if __name__ == "__main__":  # one rank of a 2-process fit (Lightning's launcher starts the other)
    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore")
    for one in json.loads(Path(sys.argv[1]).read_text()).values():
        _fit(one)
