"""The synthetic VOC generator: layout, splits, masks, XMLs, determinism and the hardness properties."""
from __future__ import annotations

import colorsys
import json
import xml.etree.ElementTree as ET
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rpnet_pl.data.check import check_voc
from rpnet_pl.data.classes import IGNORE_INDEX, VOC_CLASSES, voc_palette
from rpnet_pl.data.synthetic import class_styles, generate_synthetic_voc, ignore_band, make_splits, render_image
from rpnet_pl.data.voc import VOCReader, labels_from_mask, labels_from_xml, read_split
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.utils.io import read_label_png

N, SIZE, C, TEST = 12, 48, 6, 3
SPLITS = ("train", "train_aug", "val", "test")


def _make(root: Path, seed: int = 0, **kw) -> dict:
    args = dict(images=N, size=SIZE, classes=C, seed=seed, test_images=TEST)
    args.update(kw)
    return generate_synthetic_voc(root, **args)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth")
    return root / "VOCdevkit" / "VOC2012", _make(root)


@pytest.fixture(scope="module")
def big_summary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A few hundred tiny images, for the statistical properties."""
    return generate_synthetic_voc(tmp_path_factory.mktemp("big"), images=320, size=32, classes=C, seed=3,
                                  test_images=1)


def _splits(voc: Path) -> dict[str, list[str]]:
    return {s: read_split(voc, s) for s in SPLITS}


def test_layout_has_every_file_for_every_split(synth):
    voc, summary = synth
    splits = _splits(voc)
    assert summary["root"] == str(voc)
    assert {s: len(ids) for s, ids in splits.items()} == summary["splits"]
    for split, ids in splits.items():
        for i in ids:
            assert (voc / "JPEGImages" / f"{i}.jpg").is_file(), i
            labelled = split != "test"
            assert (voc / "Annotations" / f"{i}.xml").is_file() == labelled, i
            assert (voc / "SegmentationClassAug" / f"{i}.png").is_file() == labelled, i
    for i in splits["train"] + splits["val"]:
        assert (voc / "SegmentationClass" / f"{i}.png").is_file(), i
    # as in VOC, SegmentationClass holds only train + val; the Aug folder holds train_aug + val
    seg = {p.stem for p in (voc / "SegmentationClass").glob("*.png")}
    aug = {p.stem for p in (voc / "SegmentationClassAug").glob("*.png")}
    assert seg == set(splits["train"]) | set(splits["val"])
    assert aug == set(splits["train_aug"]) | set(splits["val"])
    assert len(list((voc / "JPEGImages").glob("*.jpg"))) == N + TEST
    assert all(i.startswith("2099_") and len(i) == 11 for s in splits.values() for i in s)


def test_split_lists_are_voc_like(synth):
    voc, _ = synth
    s = {k: set(v) for k, v in _splits(voc).items()}
    assert not s["train_aug"] & s["val"]
    assert not s["test"] & (s["train_aug"] | s["val"])
    assert s["train"] < s["train_aug"]
    assert len(s["train_aug"] | s["val"]) == N and len(s["test"]) == TEST
    assert len(s["val"]) == round(0.25 * N)
    assert len(s["train"]) == round(len(s["train_aug"]) / 3)
    for split in SPLITS:  # sorted, like VOC's lists
        ids = read_split(voc, split)
        assert ids == sorted(ids)


@pytest.mark.parametrize("n,seed", [(2, 0), (12, 1), (240, 2), (1000, 3)])
def test_make_splits_nests_train_in_train_aug(n, seed):
    s = make_splits(n, seed, 0.25)
    assert set(s["train"]) <= set(s["train_aug"]) and not set(s["train_aug"]) & set(s["val"])
    assert sorted(s["train_aug"] + s["val"]) == list(range(n))
    assert len(s["val"]) == min(max(round(0.25 * n), 1), n - 1)
    assert len(s["train"]) == max(1, round(len(s["train_aug"]) / 3))


def test_masks_are_voc_palette_pngs_matching_their_images(synth):
    voc, _ = synth
    splits = _splits(voc)
    palette = voc_palette().reshape(-1).tolist()
    allowed = set(range(C + 1)) | {IGNORE_INDEX}
    shapes = set()
    for i in splits["train_aug"] + splits["val"]:
        mpath, ipath = voc / "SegmentationClassAug" / f"{i}.png", voc / "JPEGImages" / f"{i}.jpg"
        with Image.open(mpath) as m, Image.open(ipath) as im:
            assert m.mode == "P"
            assert m.getpalette()[:768] == palette
            assert m.size == im.size
            shapes.add(im.size)
        mask = read_label_png(voc / "SegmentationClassAug" / f"{i}.png")
        vals = set(np.unique(mask).tolist())
        assert vals <= allowed, (i, vals)
        assert IGNORE_INDEX in vals and 0 in vals and vals - {0, IGNORE_INDEX}
        if i in splits["val"]:
            same = read_label_png(voc / "SegmentationClass" / f"{i}.png")
            np.testing.assert_array_equal(mask, same)
    assert any(w != h for w, h in shapes), "image sizes should vary (non-square images)"
    assert all(min(w, h) == SIZE and max(w, h) <= round(1.25 * SIZE) for w, h in shapes)


def test_ignore_band_separates_objects_from_background(synth):
    voc, _ = synth
    near_ignore: list[bool] = []
    for i in read_split(voc, "train_aug"):
        mask = read_label_png(voc / "SegmentationClassAug" / f"{i}.png")
        fg = (mask != 0) & (mask != IGNORE_INDEX)
        bg = mask == 0
        pad = np.pad(fg, 1)
        h, w = mask.shape
        near_fg = np.zeros_like(fg)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near_fg |= pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        assert not (bg & near_fg).any(), f"{i}: object touches background without an ignore border"
        # ignore pixels lie within 2 px of a labelled object pixel (except where that pixel is itself
        # in the band of an object further in front)
        pad2 = np.pad(fg, 2)
        near2 = np.zeros_like(fg)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                near2 |= pad2[2 + dy:2 + dy + h, 2 + dx:2 + dx + w]
        near_ignore.extend(near2[mask == IGNORE_INDEX].tolist())
    assert np.mean(near_ignore) > 0.95


def test_ignore_band_lies_outside_the_front_object():
    inst = np.zeros((7, 7), dtype=np.int32)
    inst[1:6, 0:4] = 1
    inst[3, 3:6] = 2  # in front of 1
    band = ignore_band(inst, 1)
    assert not band[inst == 2].any()
    assert band[2, 3] and band[4, 4] and band[2, 6]  # the occluded object and the background around 2
    assert band[0, 0] and band[6, 2]  # the background around 1
    assert not band[1, 0] and not band[6, 6] and not band[0, 6] and not band[1, 3]
    band2 = ignore_band(inst, 2)
    assert band2[1, 3] and band2[0, 5] and not band2[1, 0] and not band2[6, 6]
    assert (band2 >= band).all()


def test_xml_objects_name_the_classes_in_the_mask(synth):
    voc, summary = synth
    for i in read_split(voc, "train_aug") + read_split(voc, "val"):
        mask = read_label_png(voc / "SegmentationClassAug" / f"{i}.png")
        xml_path = voc / "Annotations" / f"{i}.xml"
        np.testing.assert_array_equal(labels_from_xml(xml_path), labels_from_mask(mask))
        root = ET.parse(xml_path).getroot()
        assert root.findtext("filename") == f"{i}.jpg"
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
        assert (h, w) == mask.shape and root.findtext("size/depth") == "3"
        objs = root.findall("object")
        assert len(objs) == len(summary["images_meta"][i]["objects"])
        for obj in objs:
            assert obj.findtext("difficult") == "0"
            x0, y0, x1, y1 = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= x0 < x1 <= w and 1 <= y0 < y1 <= h
            cls = VOC_CLASSES.index(obj.findtext("name"))
            box = mask[y0 - 1:y1, x0 - 1:x1]
            assert (box == cls).any(), f"{i}: no {obj.findtext('name')} pixel inside its box"


def test_tree_passes_the_project_checks_and_reader(synth):
    voc, _ = synth
    report = check_voc(voc.parent.parent)
    assert report.ok, report.problems
    reader = VOCReader(voc.parent.parent, "train_aug", label_source="xml")
    assert len(reader) == len(read_split(voc, "train_aug")) and reader.skipped_unlabelled == 0
    i = reader.ids[0]
    img = reader.image(i)
    assert img.shape[:2] == reader.mask(i, img.shape[:2]).shape


def test_deterministic_for_a_seed(synth, tmp_path):
    voc, _ = synth
    _make(tmp_path / "again")
    other = tmp_path / "again" / "VOCdevkit" / "VOC2012"
    assert _splits(other) == _splits(voc)
    for p in sorted((voc / "SegmentationClassAug").glob("*.png")):
        assert p.read_bytes() == (other / "SegmentationClassAug" / p.name).read_bytes(), p.name
    for p in sorted((voc / "JPEGImages").glob("*.jpg")):
        assert p.read_bytes() == (other / "JPEGImages" / p.name).read_bytes(), p.name
    for p in sorted((voc / "Annotations").glob("*.xml")):
        assert p.read_bytes() == (other / "Annotations" / p.name).read_bytes(), p.name

    _make(tmp_path / "seed1", seed=1)
    diff = tmp_path / "seed1" / "VOCdevkit" / "VOC2012"
    differing = sum(p.read_bytes() != (diff / "SegmentationClassAug" / p.name).read_bytes()
                    for p in (voc / "SegmentationClassAug").glob("*.png")
                    if (diff / "SegmentationClassAug" / p.name).is_file())
    assert differing >= N // 2
    assert _splits(diff)["val"] != _splits(voc)["val"]


def test_each_image_is_independent_of_generation_order(synth):
    voc, _ = synth
    ids = read_split(voc, "val")
    for i in ids[::-1]:
        sample = render_image(0, int(i.split("_")[1]), SIZE, C)
        np.testing.assert_array_equal(sample.mask, read_label_png(voc / "SegmentationClassAug" / f"{i}.png"))


def test_multi_label_images_and_instances(synth, big_summary):
    voc, summary = synth
    masks = [read_label_png(voc / "SegmentationClassAug" / f"{i}.png")
             for i in read_split(voc, "train_aug") + read_split(voc, "val")]
    n_multi = sum(len(labels_from_mask(m)) > 1 for m in masks)
    assert n_multi >= 1
    assert n_multi == summary["multi_label_images"]["train_aug"] + summary["multi_label_images"]["val"]
    metas = [m for m in big_summary["images_meta"].values() if m["split"] != "test"]
    n_cls = np.array([len(m["classes"]) for m in metas])
    assert set(n_cls.tolist()) == {1, 2, 3}
    assert 0.25 < (n_cls > 1).mean() < 0.75
    # several instances of one class in an image happen
    assert any(len(m["objects"]) > len(m["classes"]) for m in metas)
    # every class appears
    counts = big_summary["images_per_class"]["train_aug"]
    assert all(v > 0 for v in counts.values()) and len(counts) == C


def test_background_texture_cooccurs_with_its_class(big_summary):
    cooc = big_summary["texture_cooccurrence"]
    assert set(cooc) == {VOC_CLASSES[k] for k in range(1, C + 1)}
    metas = {i: m for i, m in big_summary["images_meta"].items() if m["split"] != "test"}
    for k in range(1, C + 1):
        stats = cooc[VOC_CLASSES[k]]
        assert stats["images_with_class"] >= 40
        assert 0.45 < stats["with_class"] < 0.75, stats
        assert 0.03 < stats["without_class"] < 0.18, stats
        # recomputed from the per-image metadata
        with_k = [m for m in metas.values() if k in m["classes"]]
        rate = np.mean([str(k) in m["textures"] for m in with_k])
        assert rate == pytest.approx(stats["with_class"])
    # drawn textures are visible in the background most of the time
    vis = [px > 0 for m in metas.values() for px in m["textures"].values()]
    assert np.mean(vis) > 0.8


def test_distinctive_head_is_smaller_than_body(big_summary, synth):
    for summary in (big_summary, synth[1]):
        assert 0.0 < summary["head_fraction_mean"] < 0.25 < summary["body_fraction_mean"]
    for name, parts in big_summary["part_fraction"].items():
        assert parts["instances"] > 0
        assert 0.0 < parts["head_fraction"] < parts["body_fraction"], name
    # object scales (major axis) span roughly 15-45% of the short side by default
    spans = [max(o["bbox"][2] - o["bbox"][0], o["bbox"][3] - o["bbox"][1]) + 1
             for m in big_summary["images_meta"].values() for o in m["objects"] if not o["truncated"]]
    spans = np.array(spans) / 32
    assert spans.min() < 0.3 and spans.max() > 0.45


def _fg_share(voc: Path, ids: list[str]) -> float:
    masks = [read_label_png(voc / "SegmentationClassAug" / f"{i}.png") for i in ids]
    fg = sum(int(((m > 0) & (m != IGNORE_INDEX)).sum()) for m in masks)
    return fg / sum(int((m != IGNORE_INDEX).sum()) for m in masks)


def test_foreground_share_follows_object_scale(tmp_path):
    kw = dict(images=80, size=32, classes=C, seed=5, test_images=1)
    default = generate_synthetic_voc(tmp_path / "default", **kw)
    voc_like = generate_synthetic_voc(tmp_path / "voc_like", object_scale=(0.35, 0.75), context="family", **kw)
    for summary in (default, voc_like):
        voc = Path(summary["root"])
        ids = read_split(voc, "train_aug") + read_split(voc, "val")
        assert summary["foreground_fraction"] == pytest.approx(_fg_share(voc, ids), abs=1e-4)
    assert (default["object_scale"], default["context"]) == ([0.15, 0.45], "class")
    assert (voc_like["object_scale"], voc_like["context"]) == ([0.35, 0.75], "family")
    assert 0.05 < default["foreground_fraction"] < 0.16
    # VOC's foreground is about a quarter to a third of the labelled pixels
    assert 0.2 < voc_like["foreground_fraction"] < 0.4


def test_cli_passes_the_variant_through(tmp_path, capsys):
    from rpnet_pl.cli import main

    assert main(["data", "synth", "--out", str(tmp_path), "--images", "6", "--size", "32", "--classes", "3",
                 "--object-scale", "0.35", "0.75", "--context", "family", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["object_scale"] == [0.35, 0.75] and printed["context"] == "family"


def test_cli_prints_one_line_and_writes_the_summary(tmp_path, capsys):
    from rpnet_pl.cli import main

    assert main(["data", "synth", "--out", str(tmp_path), "--images", "6", "--size", "32", "--classes", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads((tmp_path / "synth_summary.json").read_text())
    assert out == [f"3 classes, foreground {100 * summary['foreground_fraction']:.1f}% of the labelled pixels; "
                   f"full summary (per-class counts, texture co-occurrence) in {tmp_path / 'synth_summary.json'}"]
    assert summary["classes"] == 3 and "images_meta" not in summary


def test_context_textures_are_shared_by_a_family_or_owned_by_a_class():
    def context(style):
        return (style.bg_texture, style.bg_rgb, style.bg_period, style.bg_angle)

    family, own = class_styles(C, "family"), class_styles(C, "class")
    n_fam = round(C / 3)
    for a, b in combinations(range(1, C + 1), 2):
        same_family = (a - 1) % n_fam == (b - 1) % n_fam
        assert (context(family[a]) == context(family[b])) == same_family, (a, b)
        assert context(own[a]) != context(own[b]), (a, b)
    # only the context differs between the two: heads and bodies are the same
    for k in range(1, C + 1):
        assert (family[k].head_rgb, family[k].body_hsv, family[k].body_period) == \
            (own[k].head_rgb, own[k].body_hsv, own[k].body_period)
    with pytest.raises(ConfigError, match="context"):
        class_styles(C, "scene")


def test_heads_are_distinct_and_bodies_alike():
    styles = class_styles(C)

    def hsv(rgb):
        return colorsys.rgb_to_hsv(*(x / 255 for x in rgb))

    heads = np.array([styles[k].head_rgb for k in styles])
    bodies = np.array([colorsys.hsv_to_rgb(*(np.array(styles[k].body_hsv) % [1, 2, 2])) for k in styles]) * 255
    assert all(hsv(styles[k].head_rgb)[1] > 0.8 for k in styles)
    assert all(styles[k].body_hsv[1] < 0.35 for k in styles)
    head_d = min(np.linalg.norm(a - b) for a, b in combinations(heads, 2))
    body_d = np.mean([np.linalg.norm(a - b) for a, b in combinations(bodies, 2)])
    assert body_d < 0.5 * head_d
    assert len({styles[k].head_shape for k in styles}) >= 5
    assert len({styles[k].body_hsv for k in styles}) == C  # consistent but not identical per class


@pytest.mark.parametrize("kw", [dict(images=1), dict(classes=0), dict(classes=21), dict(size=8),
                                dict(val_fraction=1.0), dict(test_images=0), dict(object_scale=(0.5, 0.2)),
                                dict(object_scale=(0.0, 0.5)), dict(context="scene")])
def test_rejects_bad_arguments(tmp_path, kw):
    with pytest.raises(ConfigError):
        _make(tmp_path, **kw)
    assert not (tmp_path / "VOCdevkit").exists()
