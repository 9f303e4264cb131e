"""Data-path parity: the shipped cases (computed by the public RPNet / IRN loaders) pass, and each
perturbation of our side that the reference would not do fails its specific check."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rpnet_pl import parity
from rpnet_pl.data import datamodules, sampler
from rpnet_pl.data.resize_crop import RandomCropFill, rescale
from rpnet_pl.parity_training import data_path

CASES = Path(parity.default_cases_dir())
TRANSFORM_CASES = sorted(CASES.glob("data_transforms_*.npz"))
PAIR_CASES = sorted(CASES.glob("pair_candidates_*.npz"))


def _case(path: Path) -> dict[str, np.ndarray]:
    return parity.load_case(path)[1]


def _failed(checks: list) -> set[str]:
    return {c.name for c in checks if not c.passed}


def test_cases_are_shipped_small_and_from_two_seeds() -> None:
    assert len(TRANSFORM_CASES) >= 2 and len(PAIR_CASES) >= 2
    for group in (TRANSFORM_CASES, PAIR_CASES):
        assert len({int(_case(p)["seed"]) for p in group}) == len(group)
    assert all(p.stat().st_size < 300_000 for p in TRANSFORM_CASES + PAIR_CASES)


@pytest.mark.parametrize("path", TRANSFORM_CASES + PAIR_CASES, ids=lambda p: p.name)
def test_shipped_case_passes(path: Path) -> None:
    result = parity.run_case(path)
    assert result.checks and result.passed, [c for c in result.checks if not c.passed]


def test_cases_cover_padding_cutting_and_both_flips() -> None:
    c = _case(TRANSFORM_CASES[0])
    for prefix in ("cls", "seg"):
        box = c[f"{prefix}_box"]
        assert (box[:, 0] > 0).any() or (box[:, 2] > 0).any()  # an image placed off the top-left corner
        assert (box[:, 4] > 0).any() or (box[:, 6] > 0).any()  # a crop cut off the top-left corner
        assert set(c[f"{prefix}_flip"].tolist()) == {0, 1}
    assert (c["seg_label"] == 255).any() and (c["seg_label"] == 0).any()


def _with_defaults(monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> None:
    """Our datamodules' defaults changed, as if our code had another default."""
    real = data_path._defaults

    def patched(cls: type) -> dict[str, Any]:
        return {**real(cls), **overrides}

    monkeypatch.setattr(data_path, "_defaults", patched)


def test_bilinear_resampling_fails_the_image_check(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_defaults(monkeypatch, resample="cv2")
    failed = _failed(data_path.check_data_transforms(_case(TRANSFORM_CASES[0])))
    assert {"cls: image (C, S, S)", "seg: image (C, S, S)"} <= failed
    assert "cls: crop box" not in failed  # the sizes are the reference's; only the pixels differ


def test_top_left_padding_fails_the_box_check(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_defaults(monkeypatch, pad_position="top_left")
    failed = _failed(data_path.check_data_transforms(_case(TRANSFORM_CASES[0])))
    assert {"cls: crop box", "seg: crop box", "seg: label (S, S)"} <= failed


def test_label_fill_zero_fails_the_label_check(monkeypatch: pytest.MonkeyPatch) -> None:
    real_init = RandomCropFill.__init__

    def fill_zero(self: RandomCropFill, size: int, fill: float = 0.0, fill_mask: int = 255, **kw: Any) -> None:
        real_init(self, size, fill=fill, fill_mask=0, **kw)

    monkeypatch.setattr(RandomCropFill, "__init__", fill_zero)
    failed = _failed(data_path.check_data_transforms(_case(TRANSFORM_CASES[0])))
    assert {"seg: label (S, S)", "seg: stride-4 label"} <= failed
    assert "seg: image (C, S, S)" not in failed


def test_image_fill_other_than_the_mean_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    real_init = RandomCropFill.__init__

    def fill_black(self: RandomCropFill, size: int, fill: float = 0.0, fill_mask: int = 255, **kw: Any) -> None:
        real_init(self, size, fill=-2.0, fill_mask=fill_mask, **kw)  # about a black pixel once normalised

    monkeypatch.setattr(RandomCropFill, "__init__", fill_black)
    failed = _failed(data_path.check_data_transforms(_case(TRANSFORM_CASES[0])))
    assert {"cls: image (C, S, S)", "seg: image (C, S, S)"} <= failed


def test_no_flip_and_wrong_scale_range_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_defaults(monkeypatch, hflip=0.0)
    failed = _failed(data_path.check_data_transforms(_case(TRANSFORM_CASES[0])))
    assert {"cls: flip probability", "cls: image (C, S, S)"} <= failed
    c = dict(_case(TRANSFORM_CASES[0]))
    monkeypatch.undo()
    c["scale_range"] = np.array([0.5, 2.0])  # ours built with another range draws other scales from u
    assert {"seg: draws in range, ops known", "seg: image (C, S, S)"} <= _failed(data_path.check_data_transforms(c))


def test_nearest_resize_of_a_label_keeps_its_values() -> None:
    label = np.array([[0, 255, 3], [7, 7, 3]], np.uint8)
    out = rescale(label, 2.0, order=0)
    assert out.shape == (4, 6) and set(np.unique(out)) == {0, 3, 7, 255}
    assert rescale(label, 1.0, order=3) is label  # an unchanged size is the same array


def test_pair_candidates_fail_when_partners_come_from_every_image_with_the_class() -> None:
    """Our default lists (every image with the class) are larger than the reference's ``list/full``:
    the shipped tables hold images that list leaves out, so the candidate check tells them apart."""
    c = _case(PAIR_CASES[0])
    labels = [np.flatnonzero(row) + 1 for row in c["labels"]]
    ours = sampler.GroupSampler(labels, group_size=2)
    n = len(labels)
    candidates = np.zeros((n, 20, n), np.int64)
    for a in range(n):
        for cls, pool in ours.candidates(a).items():
            np.add.at(candidates[a, cls - 1], np.asarray(pool), 1)
    assert not np.array_equal(candidates, c["ref_candidates"])
    assert (candidates >= c["ref_candidates"]).all()  # a superset: the same classes, more partners


def test_pair_candidates_fail_when_the_class_is_not_drawn_from_the_anchor(monkeypatch: pytest.MonkeyPatch) -> None:
    def every_class(self: sampler.GroupSampler, anchor: int) -> dict[int, list[int]]:
        return dict(self.lists)

    monkeypatch.setattr(sampler.GroupSampler, "candidates", every_class)
    failed = _failed(data_path.check_pair_candidates(_case(PAIR_CASES[0])))
    assert {"classes an anchor picks from", "partner candidates per class", "pair probabilities"} <= failed


def test_pair_candidates_fail_when_the_anchor_cannot_be_its_own_partner(monkeypatch: pytest.MonkeyPatch) -> None:
    real = sampler.GroupSampler.candidates

    def without_anchor(self: sampler.GroupSampler, anchor: int) -> dict[int, list[int]]:
        return {c: [i for i in pool if i != anchor] or pool for c, pool in real(self, anchor).items()}

    monkeypatch.setattr(sampler.GroupSampler, "candidates", without_anchor)
    failed = _failed(data_path.check_pair_candidates(_case(PAIR_CASES[0])))
    assert "partner candidates per class" in failed


def test_class_lists_dir_reaches_the_sampler(tmp_path: Path, tiny_voc: Path) -> None:
    dm = datamodules.GroupDataModule(root=str(tiny_voc), batch_size=1, crop_size=16, num_workers=0)
    dm.setup()
    ids = dm.reader.ids
    first = int(dm.reader.labels(ids[0])[0])
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / f"{first}.txt").write_text(f"{ids[0]}\nnot_an_id\n")
    dm2 = datamodules.GroupDataModule(root=str(tiny_voc), batch_size=1, crop_size=16, num_workers=0,
                                      class_lists_dir=str(lists))
    dm2.setup()
    assert dm2.sampler.lists == {first: [0]}
    from rpnet_pl.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"class_lists_dir .* and data\.data_volume 0\.5: give one"):
        datamodules.GroupDataModule(root=str(tiny_voc), data_volume=0.5, class_lists_dir=str(lists),
                                    num_workers=0).setup()
