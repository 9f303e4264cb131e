"""Data-path parity: our training augmentation and group sampler against the public RPNet / IRN loaders.

``data_transforms``: the case holds an image, a label map and, per run, the values that the
reference drew from ``random`` (long side, scale factor ``u``, flip bit, the two ``randrange``
results of ``get_random_crop_box``) with its outputs. Ours is :func:`train_transform` built with the
defaults of :class:`GroupDataModule` (the classifier) and :class:`LabelledDataModule` (IRN); each of
its ops draws the reference's values through its own seam (its ``py_random`` answers with them) and
is applied with ``apply`` / ``apply_to_mask``, in the pipeline's order. Compared: the crop box our
op draws (equal), the CHW image (``|ours - ref| <= 1e-6 + 1e-6 |ref|``: both normalise the same
uint8 pixels, the reference in float64 then cast, albumentations in float32, so a value near 2.6
differs by at most a few float32 ulps, about 1e-6), the cropped label and its stride-4 reduction
(:func:`rpnet_pl.stages.refine.stride4_labels` with the refine stage's default; equal).

``pair_candidates``: a table of real train_aug images with the reference's per-class lists cut to
the table. Ours is :class:`GroupSampler` over the lists read by :func:`read_class_lists` (what
``GroupDataModule(class_lists_dir=...)`` does). Compared: the classes an anchor picks from, per class
the images (with multiplicity) its partner is picked from, the resulting pair probabilities, the
anchors, and that drawn groups stay inside the candidates. These are sets, not random draws.
"""
from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rpnet_pl.parity_training import GROUPS

IMAGE_RTOL = IMAGE_ATOL = 1e-6


class _Given:
    """Stands in for an op's ``py_random``: answers with the given values, in order; ``bad`` is set
    when a value falls outside what was asked or the op asks for more or fewer values."""

    def __init__(self, values: list[Any]) -> None:
        self.values = list(values)
        self.bad = False

    def _next(self) -> Any:
        if not self.values:
            self.bad = True
            return 0
        return self.values.pop(0)

    def randint(self, lo: int, hi: int) -> int:
        v = self._next()
        self.bad |= not lo <= v <= hi
        return min(max(v, lo), hi)  # flagged, and kept in range so that the outputs still compare

    def random(self) -> float:
        return self._next()

    def randrange(self, n: int) -> int:
        v = self._next()
        self.bad |= not 0 <= v < n
        return min(max(v, 0), n - 1)


def _defaults(cls: type) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def crop_draws(box: np.ndarray, crop: int) -> list[int]:
    """The two ``randrange`` results behind a reference crop box (width first): per axis, the
    input offset when the side was at least the crop, else the container offset."""
    ct, cb, cl, cr, it, _, il, _ = (int(b) for b in box)
    return [il if cr - cl == crop else cl, it if cb - ct == crop else ct]


def replay(transform: Any, image: np.ndarray, mask: np.ndarray | None, draws: Mapping[str, Any]
           ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Run ``transform`` (an ``A.Compose``) op by op with the reference's drawn values.

    draws: ``target_long`` or ``u`` (the rescale), ``flip`` (0/1), ``crop`` (the two randrange
    results). Returns the image, the mask and what the ops drew: ``box`` (4 offsets), ``bad`` (a
    draw outside an op's range, or an unknown op)."""
    import albumentations as A

    from rpnet_pl.data.resize_crop import RandomCropFill, RandomRescale, RandomResizeLong

    drawn: dict[str, Any] = {"bad": False, "box": None, "flip_p": None}
    for op in transform.transforms:
        if isinstance(op, A.HorizontalFlip):
            drawn["flip_p"] = op.p
            if not draws["flip"]:
                continue
            params: dict[str, Any] = {}
        elif isinstance(op, A.Normalize):
            params = {}
        elif isinstance(op, (RandomResizeLong, RandomRescale, RandomCropFill)):
            values = ([draws["target_long"]] if isinstance(op, RandomResizeLong)
                      else [draws["u"]] if isinstance(op, RandomRescale) else list(draws["crop"]))
            saved, op.py_random = op.py_random, _Given(values)
            try:
                params = (op.get_params_dependent_on_data({"shape": image.shape}, {})
                          if isinstance(op, RandomCropFill) else op.get_params())
                drawn["bad"] |= op.py_random.bad or bool(op.py_random.values)
            finally:
                op.py_random = saved
            if isinstance(op, RandomCropFill):
                drawn["box"] = [params[k] for k in ("cont_top", "cont_left", "img_top", "img_left")]
        else:
            drawn["bad"] = True  # an op the reference does not have
            continue
        image = op.apply(image, **params)
        if mask is not None and not isinstance(op, A.ImageOnlyTransform):
            mask = op.apply_to_mask(mask, **params)
    return image, mask, drawn


def _pipeline_checks(prefix: str, c: Mapping[str, np.ndarray], transform: Any, with_mask: bool) -> list:
    import torch

    from rpnet_pl.parity import close, equal
    from rpnet_pl.stages.refine import RefineStage, stride4_labels
    from rpnet_pl.data.transforms import to_chw

    crop = int(c["crop_size"])
    reduction = _defaults(RefineStage)["label_reduction"]
    runs = len(c[f"{prefix}_box"])
    images, boxes, masks, label4s, bad, flip_p = [], [], [], [], False, []
    for r in range(runs):
        draws = {"flip": int(c[f"{prefix}_flip"][r]), "crop": crop_draws(c[f"{prefix}_box"][r], crop)}
        if prefix == "cls":
            draws["target_long"] = int(c["cls_target_long"][r])
        else:
            draws["u"] = float(c["seg_u"][r])
        img, mask, drawn = replay(transform, c["image"], c["label"] if with_mask else None, draws)
        bad |= drawn["bad"]
        flip_p.append(drawn["flip_p"] if drawn["flip_p"] is not None else 0.0)
        images.append(to_chw(img))
        boxes.append(drawn["box"] if drawn["box"] is not None else [-1] * 4)
        if with_mask:
            masks.append(mask)
            label4s.append(stride4_labels(torch.from_numpy(np.asarray(mask, np.int64))[None],
                                          (crop // 4, crop // 4), reduction)[0].numpy())
    ref_boxes = c[f"{prefix}_box"][:, [0, 2, 4, 6]]
    checks = [
        equal(f"{prefix}: draws in range, ops known", np.array(bad), np.array(False)),
        close(f"{prefix}: flip probability", np.array(flip_p), np.full(runs, 0.5), 0.0, 0.0),
        equal(f"{prefix}: crop box", np.array(boxes), ref_boxes),
        close(f"{prefix}: image (C, S, S)", np.stack(images), c[f"{prefix}_img"], IMAGE_RTOL, IMAGE_ATOL),
    ]
    if with_mask:
        checks += [equal(f"{prefix}: label (S, S)", np.stack(masks), c[f"{prefix}_label"]),
                   equal(f"{prefix}: stride-4 label", np.stack(label4s), c[f"{prefix}_label4"])]
    return checks


def our_transform(module: type, c: Mapping[str, np.ndarray]) -> Any:
    """:func:`train_transform` as ``module`` (a datamodule class) builds it by default, at the case's
    crop size and ranges."""
    from rpnet_pl.data.transforms import train_transform

    d = _defaults(module)
    return train_transform(int(c["crop_size"]), d["scale_mode"], tuple(int(v) for v in c["long_side"]),
                           tuple(float(v) for v in c["scale_range"]), d["hflip"], d["color_jitter"],
                           resample=d["resample"], pad_position=d["pad_position"])


def check_data_transforms(c: Mapping[str, np.ndarray], mode: Any = None) -> list:
    """RPNet's classifier augmentation (``cls_*``) and IRN's affinity augmentation (``seg_*``)."""
    from rpnet_pl.data.datamodules import GroupDataModule, LabelledDataModule

    return (_pipeline_checks("cls", c, our_transform(GroupDataModule, c), with_mask=False)
            + _pipeline_checks("seg", c, our_transform(LabelledDataModule, c), with_mask=True))


def our_candidates(c: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[int], Any]:
    """Our sampler on the case's table: (classes (N, 20) bool, candidates (N, 20, N) multiplicities,
    anchors, the sampler). The lists go through files, as ``class_lists_dir`` reads them."""
    from rpnet_pl.data.sampler import GroupSampler, read_class_lists

    names = [str(n) for n in c["names"]]
    n, k = c["labels"].shape
    with tempfile.TemporaryDirectory() as tmp:
        for cls in range(k):
            listed = [names[j] for j in np.flatnonzero(c["class_lists"][cls])]
            Path(tmp, f"{cls + 1}.txt").write_text("".join(f"{x}\n" for x in listed))
        lists = read_class_lists(tmp, names)
    labels = [np.flatnonzero(row) + 1 for row in c["labels"]]
    sampler = GroupSampler(labels, group_size=2, seed=int(c["seed"]), class_lists_override=lists)
    classes = np.zeros((n, k), bool)
    candidates = np.zeros((n, k, n), np.int64)
    for a in range(n):
        for cls, pool in sampler.candidates(a).items():
            classes[a, cls - 1] = True
            np.add.at(candidates[a, cls - 1], np.asarray(pool, np.int64), 1)
    return classes, candidates, list(sampler.anchors), sampler


def pair_probabilities(classes: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """P(partner j | anchor i): a class uniformly among the anchor's, then an image uniformly from
    its list. (N, 20) bool, (N, 20, N) -> (N, N)."""
    counts = candidates.sum(-1, keepdims=True)
    per_class = np.where(counts > 0, candidates / np.maximum(counts, 1), 0.0)
    return per_class.sum(1) / np.maximum(classes.sum(1, keepdims=True), 1)


def check_pair_candidates(c: Mapping[str, np.ndarray], mode: Any = None) -> list:
    from rpnet_pl.parity import close, equal

    classes, candidates, anchors, sampler = our_candidates(c)
    outside = 0
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for g in sampler.groups():
            pool = sampler.candidates(g.members[0]).get(g.shared_class, [])
            outside += int(c["ref_classes"][g.members[0], g.shared_class - 1] == 0)
            outside += sum(int(c["ref_candidates"][g.members[0], g.shared_class - 1, m] == 0) or m not in pool
                           for m in g.members[1:])
    return [
        equal("anchors (every image of the list)", np.array(anchors), np.arange(len(c["names"]))),
        equal("classes an anchor picks from", classes, c["ref_classes"]),
        equal("partner candidates per class", candidates, c["ref_candidates"]),
        close("pair probabilities", pair_probabilities(classes, candidates), c["pair_prob"], 1e-12, 1e-12),
        equal("drawn groups inside the candidates", np.array(outside), np.array(0)),
    ]


GROUPS["data_transforms"] = (("image", "label", "crop_size", "long_side", "scale_range", "cls_img", "cls_box",
                              "cls_target_long", "cls_flip", "seg_img", "seg_label", "seg_label4", "seg_box",
                              "seg_u", "seg_flip"), check_data_transforms)
GROUPS["pair_candidates"] = (("names", "labels", "class_lists", "ref_classes", "ref_candidates", "pair_prob",
                              "seed"), check_pair_candidates)
