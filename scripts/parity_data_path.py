"""Parity cases of the data path, computed by the public RPNet / IRN data loaders.

    python scripts/parity_data_path.py REF_DIR --out src/rpnet_pl/parity_cases [--seeds 0 1]

``REF_DIR`` holds the pristine public code: ``REF_DIR/rpnet`` (liuweide01/RPNet-Weakly-Supervised-
Segmentation) and ``REF_DIR/irn`` (jiwoon-ahn/irn), e.g. ``build/ref``. Nothing of it is copied: its
``voc12/dataloader.py`` and ``misc/imutils.py`` are imported from there and run as they are.

``data_transforms_<i>.npz``: a small image (37x53) and label map go through RPNet's
``VOC12ImageDataset.__getitem__`` (the classifier's augmentation, as ``step/train_cam.py`` builds it:
long side resized to a random length, normalised, flipped, randomly cropped, HWC -> CHW) and IRN's
``VOC12AffinityDataset.__getitem__`` (``step/train_irn.py``: random rescale of image (bicubic) and
label (nearest), normalised, flipped, crop with fills 0 / 255, label reduced to stride 4). The same
runs through the other repository's copy give identical outputs (checked here).

``pair_candidates_<i>.npz``: RPNet's ``VOC12ClassificationDataset.__getitem__`` pairing on a small
table of real train_aug images (their labels from ``voc12/cls_labels.npy``, the per-class lists
``voc12/list/full/<c>.txt`` cut to the table): for every anchor, the classes it picks from and,
per class, the images its partner is picked from.

Run-time patches (the reference's files are not changed):

* a stand-in ``imageio`` module whose ``imread`` returns the case's image / label (no files);
* ``misc.imutils.random`` replaced by an object whose ``randint`` / ``random`` / ``getrandbits`` /
  ``randrange`` return the case's drawn values (``randrange(n)`` returns ``int(f n)`` for a drawn
  fraction ``f``), and ``get_random_crop_box`` wrapped to record the box it returns;
* for the pairing: the dataset's image loading (``VOC12ImageDataset.__getitem__``) returns only the
  name, ``voc12.dataloader.random.choice`` records the list it is given, and the working directory is
  a temporary copy of ``voc12/`` holding the table's train list and cut per-class lists.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np

CROP = 32  # the crop of both pipelines (512 in the recipes; small to keep the case files small)
LONG_SIDE = (24, 64)  # around the crop, so that some runs pad and some cut (320-640 in the recipe)
SCALE_RANGE = (0.5, 1.5)  # IRN's
RUNS = 6
H, W = 37, 53
PACKAGES = ("misc", "voc12", "net", "step")


def synthetic_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image: smooth colour fields with edges and some noise; (H, W) uint8 label map
    with classes 0..20 and an ignore (255) patch."""
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.zeros((H, W, 3))
    for ch in range(3):
        fx, fy, ph = rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4), rng.uniform(0, 6.3)
        image[..., ch] = 128 + 90 * np.sin(fx * xx + fy * yy + ph)
    label = np.zeros((H, W), np.uint8)
    for _ in range(4):
        y0, x0 = rng.integers(0, H - 8), rng.integers(0, W - 8)
        h, w = rng.integers(6, 20), rng.integers(6, 25)
        c = rng.integers(1, 21)
        label[y0:y0 + h, x0:x0 + w] = c
        image[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
    y0, x0 = rng.integers(0, H - 6), rng.integers(0, W - 6)
    label[y0:y0 + 5, x0:x0 + 5] = 255
    image += rng.normal(0, 12, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


@contextlib.contextmanager
def reference(repo: Path, cwd: Path | None = None) -> Iterator[tuple[Any, Any]]:
    """``(misc.imutils, voc12.dataloader)`` of the repository ``repo``, imported with ``cwd`` (default
    ``repo``) as the working directory (the loader reads ``voc12/cls_labels.npy`` at import)."""
    if not (repo / "voc12" / "dataloader.py").is_file():
        raise SystemExit(f"error: {repo}: no voc12/dataloader.py (REF_DIR must hold rpnet/ and irn/)")
    for name in list(sys.modules):
        if name.split(".")[0] in PACKAGES:
            del sys.modules[name]
    stand_in = types.ModuleType("imageio")
    stand_in.imread = lambda path: None  # replaced per run
    saved = sys.modules.get("imageio")
    sys.modules["imageio"] = stand_in
    old_cwd = os.getcwd()
    sys.path.insert(0, str(repo))
    try:
        os.chdir(cwd or repo)
        imutils = importlib.import_module("misc.imutils")
        loader = importlib.import_module("voc12.dataloader")
        yield imutils, loader
    finally:
        os.chdir(old_cwd)
        sys.path.remove(str(repo))
        if saved is None:
            sys.modules.pop("imageio", None)
        else:
            sys.modules["imageio"] = saved


class Draws:
    """Stands in for ``random`` inside ``misc.imutils``: returns the given values, in call order."""

    def __init__(self, target_long: int | None, u: float | None, flip: int, fractions: tuple[float, float]):
        self.target_long, self.u, self.flip = target_long, u, flip
        self.fractions = list(fractions)

    def randint(self, lo: int, hi: int) -> int:
        assert self.target_long is not None and lo <= self.target_long <= hi
        return self.target_long

    def random(self) -> float:
        assert self.u is not None
        return self.u

    def getrandbits(self, k: int) -> int:
        return self.flip

    def randrange(self, n: int) -> int:
        return int(self.fractions.pop(0) * n)


def run_pipeline(imutils: Any, loader: Any, kind: str, image: np.ndarray, label: np.ndarray,
                 draws: Draws) -> dict[str, np.ndarray]:
    """One ``__getitem__`` of the classifier (``kind='cls'``) or affinity (``'seg'``) dataset."""
    boxes: list[tuple[int, ...]] = []
    original_box = imutils.get_random_crop_box

    def recording_box(imgsize: Any, cropsize: int) -> tuple[int, ...]:
        box = original_box(imgsize, cropsize)
        boxes.append(tuple(int(b) for b in box))
        return box

    sys.modules["imageio"].imread = lambda path: (label if "labels" in str(path) else image).copy()
    imutils.random, imutils.get_random_crop_box = draws, recording_box
    with tempfile.TemporaryDirectory() as tmp:
        names = Path(tmp) / "list.txt"
        # two lines (one gives a 0-d array); no "_": numpy 2's loadtxt does not read "2007_000032"
        names.write_text("2007000032\n2007000039\n")
        if kind == "cls":
            ds = loader.VOC12ImageDataset(str(names), tmp, resize_long=LONG_SIDE, hor_flip=True, crop_size=CROP,
                                          crop_method="random")
            out = ds[0]
            result = {"img": np.asarray(out["img"], np.float32)}
        else:
            ds = loader.VOC12AffinityDataset(str(names), str(Path(tmp) / "labels"), CROP, tmp,
                                             np.zeros(1, np.int64), np.zeros((1, 1), np.int64),
                                             rescale=SCALE_RANGE, hor_flip=True, crop_method="random")
            out = ds[0]
            label4 = imutils.pil_rescale(out["label"], 0.25, 0)  # what VOC12AffinityDataset reduces
            result = {"img": np.asarray(out["img"], np.float32), "label": np.asarray(out["label"], np.uint8),
                      "label4": np.asarray(label4, np.uint8)}
    imutils.get_random_crop_box = original_box
    assert len(boxes) == 1 and not draws.fractions, "the reference drew other than expected"
    result["box"] = np.array(boxes[0], np.int64)
    return result


def transforms_case(ref_dir: Path, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    image, label = synthetic_image(rng)
    case: dict[str, Any] = {"image": image, "label": label, "crop_size": np.array(CROP),
                            "long_side": np.array(LONG_SIDE), "scale_range": np.array(SCALE_RANGE),
                            "mean": np.array((0.485, 0.456, 0.406)), "std": np.array((0.229, 0.224, 0.225))}
    # target lengths spread over the range (some below the crop, some above), flips alternating
    longs = np.sort(rng.choice(np.arange(LONG_SIDE[0], LONG_SIDE[1] + 1), RUNS, replace=False))
    us = np.sort(rng.uniform(0, 1, RUNS))
    flips = (np.arange(RUNS) + seed) % 2
    fracs = rng.uniform(0, 1, (2, RUNS, 2))
    outputs: dict[str, dict[str, list]] = {}
    for repo_name in ("rpnet", "irn"):
        with reference(ref_dir / repo_name) as (imutils, loader):
            for kind in ("cls", "seg"):
                runs = []
                for r in range(RUNS):
                    k = 0 if kind == "cls" else 1
                    draws = Draws(int(longs[r]) if kind == "cls" else None, float(us[r]) if kind == "seg" else None,
                                  int(flips[r]), tuple(fracs[k, r]))
                    runs.append(run_pipeline(imutils, loader, kind, image, label, draws))
                outputs.setdefault(kind, {})[repo_name] = runs
    for kind, by_repo in outputs.items():
        for a, b in zip(by_repo["rpnet"], by_repo["irn"]):
            for key in a:
                assert np.array_equal(a[key], b[key]), f"RPNet's and IRN's {kind} {key} differ"
        runs = by_repo["rpnet"]
        for key in runs[0]:
            case[f"{kind}_{key}"] = np.stack([r[key] for r in runs])
    case["cls_target_long"] = longs.astype(np.int64)
    case["cls_flip"] = flips.astype(np.int64)
    case["seg_u"] = us
    case["seg_scale"] = np.array([SCALE_RANGE[0] + float(u) * (SCALE_RANGE[1] - SCALE_RANGE[0]) for u in us])
    case["seg_flip"] = flips.astype(np.int64)
    return case


def _decode(key: Any) -> str:
    s = str(int(key))
    return s[:4] + "_" + s[4:]


def pair_case(ref_dir: Path, seed: int, n: int = 24) -> dict[str, np.ndarray]:
    """A table of ``n`` train_aug images: a third of them have a class that ``list/full`` leaves them
    out of, the rest are drawn at random; every class of the table has a non-empty cut list."""
    repo = ref_dir / "rpnet"
    voc = repo / "voc12"
    cls = {_decode(k): np.asarray(v) for k, v in np.load(voc / "cls_labels.npy", allow_pickle=True).item().items()}
    train = voc.joinpath("train_aug.txt").read_text().split()
    lists = {c: voc.joinpath("list", "full", f"{c}.txt").read_text().split() for c in range(1, 21)}
    sets = {c: set(v) for c, v in lists.items()}
    left_out = sorted({name for name in train for c in range(1, 21) if cls[name][c - 1] == 1 and name not in sets[c]})
    rng = np.random.default_rng(seed)
    table = list(rng.choice(left_out, n // 3, replace=False))
    rest = [name for name in train if name not in table]
    table += list(rng.choice(rest, n - len(table), replace=False))
    for c in range(1, 21):  # a class of the table whose cut list is empty: add one listed image
        if any(cls[name][c - 1] == 1 for name in table) and not any(name in sets[c] for name in table):
            table.append(str(rng.choice(lists[c])))
    table = sorted(table)
    index = {name: i for i, name in enumerate(table)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "voc12" / "list" / "full").mkdir(parents=True)
        np.save(work / "voc12" / "cls_labels.npy",
                {int(name.replace("_", "")): cls[name] for name in table}, allow_pickle=True)
        for c in range(1, 21):
            cut = [name for name in lists[c] if name in index]
            (work / "voc12" / "list" / "full" / f"{c}.txt").write_text("".join(f"{x}\n" for x in cut))
        (work / "train.txt").write_text("".join(name.replace("_", "") + "\n" for name in table))
        with reference(repo, cwd=work) as (_, loader):
            loader.VOC12ImageDataset.__getitem__ = lambda self, idx: {"name": _decode(self.img_name_list[idx]),
                                                                       "img": None}
            calls: list[list] = []

            def picking(cls_index: int | None) -> types.SimpleNamespace:
                """``random`` of the loader: ``choice`` records its list; the first call (the class)
                returns ``cls_index``, any other the list's first item."""
                def choice(seq: list) -> Any:
                    calls.append(list(seq))
                    return cls_index if len(calls) == 1 and cls_index is not None else seq[0]
                return types.SimpleNamespace(choice=choice)

            ds = loader.VOC12ClassificationDataset(str(work / "train.txt"), str(work))
            N = len(table)
            classes = np.zeros((N, 20), bool)
            candidates = np.zeros((N, 20, N), np.int64)  # multiplicity of image j in class c's list
            for a in range(N):
                calls.clear()
                loader.random = picking(None)
                ds[a]
                class_pool = calls[0]
                classes[a, class_pool] = True
                for c in class_pool:  # the partner's list for each class the anchor may pick
                    calls.clear()
                    loader.random = picking(c)
                    ds[a]
                    for name in calls[1]:
                        candidates[a, c, index[name]] += 1
    labels = np.stack([cls[name] for name in table]).astype(np.int64)
    listed = np.stack([[name in sets[c] for name in table] for c in range(1, 21)])
    counts = candidates.sum(-1, keepdims=True)
    pair_prob = (np.where(counts > 0, candidates / np.maximum(counts, 1), 0.0).sum(1)
                 / np.maximum(classes.sum(1, keepdims=True), 1))
    return {"names": np.array(table), "labels": labels, "class_lists": listed, "ref_classes": classes,
            "ref_candidates": candidates, "pair_prob": pair_prob}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref_dir", type=Path, help="folder with rpnet/ and irn/ (the public code)")
    parser.add_argument("--out", type=Path, required=True, help="where the case files go")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    ref_dir = args.ref_dir.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(args.seeds):
        for group, make in (("data_transforms", transforms_case), ("pair_candidates", pair_case)):
            case = make(ref_dir, seed)
            case["seed"] = np.array(seed)
            path = args.out / f"{group}_{i}.npz"
            np.savez_compressed(path, **case)
            print(f"{path}: {path.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
