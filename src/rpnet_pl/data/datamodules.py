"""LightningDataModules: same-class groups for the classifier, images+labels for IRN and DeepLab,
and full-size inference over a split. Every knob is an ``__init__`` argument (LightningCLI reads them).

Trainers that use these modules must set ``use_distributed_sampler=False``: the samplers here shard
across DDP ranks themselves (see :class:`GroupSampler` and :class:`ShardSampler`).
"""
from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, RandomSampler

from rpnet_pl.pipeline.config import DEFAULT_ROOT
from rpnet_pl.utils.cpus import usable_cpus
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.data.datasets import (GroupDataset, InferenceDataset, LabelledDataset, Reader, build_reader,
                                    collate_groups, collate_single)
from rpnet_pl.data.sampler import GroupSampler, ShardSampler, data_volume_lists, kept_images, read_class_lists
from rpnet_pl.data.transforms import PadPosition, Resample, ScaleMode, eval_transform, train_transform


def default_workers() -> int:
    """Loader workers: one per CPU core, at most 8, leaving the main process one core."""
    return max(0, min(8, usable_cpus() - 1))


def _loader_kwargs(num_workers: int) -> dict:
    return {
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": num_workers > 0,
    }


class GroupDataModule(pl.LightningDataModule):
    """Groups of ``group_size`` same-class images (Table VII) for the RPNet / CAM classifier.

    ``data_volume`` < 1 trains on the per-class cut lists of Table II (see :func:`data_volume_lists`).
    ``class_lists_dir``: partners come from the per-class lists of that folder (``<c>.txt``, e.g. the
    public code's ``voc12/list/full``) instead of every image with the class.
    ``resample`` / ``pad_position``: see :func:`train_transform` (defaults: the public code's).
    """

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        dataset: Literal["voc", "coco"] = "voc",
        split: str = "train_aug",
        label_source: str = "auto",
        cls_labels: str | None = None,
        group_size: int = 2,
        batch_size: int = 8,
        crop_size: int = 512,
        scale_mode: ScaleMode = "long_side",
        long_side: tuple[int, int] = (320, 640),
        scale: tuple[float, float] = (0.5, 1.5),
        hflip: float = 0.5,
        color_jitter: float = 0.0,
        resample: Resample = "pil",
        pad_position: PadPosition = "random",
        data_volume: float = 1.0,
        class_lists_dir: str | None = None,
        seed: int = 0,
        num_workers: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.reader: Reader | None = None
        self.sampler: GroupSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.reader is not None:
            return
        self.reader = build_reader(hp.dataset, hp.root, hp.split, hp.label_source, hp.cls_labels)
        labels = [self.reader.labels(i) for i in self.reader.ids]
        lists = data_volume_lists(labels, hp.data_volume, hp.seed) if hp.data_volume < 1.0 else None
        if hp.class_lists_dir is not None:
            if lists is not None:
                raise ConfigError(f"data.class_lists_dir ({hp.class_lists_dir}) and data.data_volume {hp.data_volume}: "
                                  "give one (both choose the per-class lists)")
            lists = read_class_lists(hp.class_lists_dir, self.reader.ids)
        self.sampler = GroupSampler(labels, group_size=hp.group_size, seed=hp.seed, class_lists_override=lists)

    @property
    def num_train_images(self) -> int:
        """Anchors per epoch (all ranks), after the data-volume cut."""
        self.setup()
        assert self.sampler is not None
        return len(self.sampler.anchors)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        hp = self.hparams
        transform = train_transform(hp.crop_size, hp.scale_mode, hp.long_side, hp.scale, hp.hflip, hp.color_jitter,
                                    resample=hp.resample, pad_position=hp.pad_position)
        return DataLoader(GroupDataset(self.reader, transform), batch_size=hp.batch_size, sampler=self.sampler,
                          collate_fn=collate_groups, drop_last=True, **_loader_kwargs(self.num_workers))


class LabelledDataModule(pl.LightningDataModule):
    """Images with label PNGs from ``label_dir`` (IR labels for IRN, pseudo masks for DeepLab).

    ``resample`` / ``pad_position``: see :func:`train_transform` (defaults: the public IRN code's;
    DeepLab's own recipe is ``cv2`` / ``top_left``).

    ``val_split`` (optional) is evaluated against the dataset's ground-truth masks.
    """

    def __init__(
        self,
        label_dir: str,
        root: str = DEFAULT_ROOT,
        dataset: Literal["voc", "coco"] = "voc",
        split: str = "train_aug",
        val_split: str | None = None,
        batch_size: int = 8,
        crop_size: int = 512,
        scale_mode: ScaleMode = "factor",
        long_side: tuple[int, int] = (320, 640),
        scale: tuple[float, float] = (0.5, 1.5),
        hflip: float = 0.5,
        color_jitter: float = 0.0,
        resample: Resample = "pil",
        pad_position: PadPosition = "random",
        seed: int = 0,
        num_workers: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.train_set: LabelledDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train_set is None:
            reader = build_reader(hp.dataset, hp.root, hp.split)
            transform = train_transform(hp.crop_size, hp.scale_mode, hp.long_side, hp.scale, hp.hflip,
                                        hp.color_jitter, resample=hp.resample, pad_position=hp.pad_position)
            self.train_set = LabelledDataset(reader, hp.label_dir, transform)

    @property
    def num_train_images(self) -> int:
        self.setup()
        return len(self.train_set)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        g = torch.Generator().manual_seed(self.hparams.seed)
        sampler = RandomSampler(self.train_set, generator=g)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = torch.utils.data.DistributedSampler(self.train_set, seed=self.hparams.seed, drop_last=True)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=True,
                          **_loader_kwargs(self.num_workers))

    def val_dataloader(self) -> DataLoader | list:
        hp = self.hparams
        if not hp.val_split:
            return []
        reader = build_reader(hp.dataset, hp.root, hp.val_split, weak=False)
        ds = InferenceDataset(reader, eval_transform(), with_mask=True)
        return DataLoader(ds, batch_size=1, sampler=ShardSampler(len(ds)), collate_fn=collate_single,
                          **_loader_kwargs(min(self.num_workers, 2)))


class InferenceDataModule(pl.LightningDataModule):
    """Full-size images of one split (or of a folder: ``dataset='folder'``, ``root`` = the folder), one
    at a time, sharded across ranks with no repeats.

    ``skip_ids`` (ids whose outputs are already complete) are left out, so an interrupted step resumes.
    """

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        dataset: Literal["voc", "coco", "folder"] = "voc",
        split: str = "train",
        with_mask: bool = False,
        num_workers: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.dataset_: InferenceDataset | None = None
        self.skip_ids: set[str] = set()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        reader = build_reader(hp.dataset, hp.root, hp.split, weak=hp.split != "test")
        ids = [i for i in reader.ids if i not in self.skip_ids]
        self.dataset_ = InferenceDataset(reader, eval_transform(), with_mask=hp.with_mask, ids=ids)

    @property
    def reader(self) -> Reader:
        self.setup()
        return self.dataset_.reader

    def predict_dataloader(self) -> DataLoader:
        self.setup()
        # One pass: no persistent workers. Under DDP, forkserver: forking a process that already runs
        # the process group's threads can deadlock a worker (seen at shutdown under SLURM).
        kwargs = {**_loader_kwargs(self.num_workers), "persistent_workers": False}
        trainer = getattr(self, "trainer", None)
        if self.num_workers > 0 and trainer is not None and trainer.world_size > 1:
            kwargs["multiprocessing_context"] = "forkserver"
        return DataLoader(self.dataset_, batch_size=1, sampler=ShardSampler(len(self.dataset_)),
                          collate_fn=collate_single, **kwargs)
