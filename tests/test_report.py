"""`rpnet report` on a small fake runs folder."""
from __future__ import annotations

import json
from pathlib import Path

from rpnet_pl.cli import main
from rpnet_pl.results.report import write_report
from rpnet_pl.results.summary import find_runs, summarise_run


def _fake_run(root: Path, name: str, method: str, seeds: float, pseudo: float | None) -> None:
    run = root / name
    (run / "classifier").mkdir(parents=True)
    (run / "classifier" / "config.yaml").write_text(f"model:\n  method: {method}\n")
    (run / "eval_cam").mkdir()
    (run / "eval_cam" / "metrics.json").write_text(json.dumps({"best_miou": seeds, "best_threshold": 0.15}))
    if pseudo is not None:
        (run / "eval_pseudo_masks").mkdir()
        (run / "eval_pseudo_masks" / "metrics.json").write_text(json.dumps({"miou": pseudo}))
        (run / "eval_seg").mkdir()
        (run / "eval_seg" / "metrics.json").write_text(
            json.dumps({"without_crf": {"miou": 0.651}, "with_crf": {"miou": 0.664}}))


def test_report_tables(tmp_path: Path, capsys) -> None:
    _fake_run(tmp_path, "voc-cam", "cam", 0.483, None)
    _fake_run(tmp_path, "voc-rpnet", "rpnet", 0.508, 0.69)
    (tmp_path / "not-a-run").mkdir()
    assert [p.name for p in find_runs(tmp_path)] == ["voc-cam", "voc-rpnet"]
    s = summarise_run(tmp_path / "voc-rpnet")
    assert (s.method, s.seeds, s.pseudo_masks, s.val, s.val_crf) == ("rpnet", 0.508, 0.69, 0.651, 0.664)
    path, text = write_report(tmp_path)
    assert path == tmp_path / "report.md" and path.read_text() == text
    assert "| voc-cam | cam | 48.3 | - | - | - |" in text
    assert "| voc-rpnet | rpnet | 50.8 | 69.0 | 65.1 | 66.4 |" in text
    assert main(["report", str(tmp_path)]) == 0
    assert "voc-rpnet" in capsys.readouterr().out


def _png_ok(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _figure_run(root: Path, data: Path, ids: list[str]) -> Path:
    """A run with per-class seed IoU, CAM files, pseudo masks and a recorded dataset root."""
    import numpy as np

    from rpnet_pl.data.classes import VOC_CLASSES, voc_palette
    from rpnet_pl.utils.io import write_label_png
    from rpnet_pl.steps.cam_inference import write_cam

    run = root / "voc-rpnet"
    (run / "classifier").mkdir(parents=True)
    (run / "classifier" / "config.yaml").write_text(
        f"model:\n  method: rpnet\ndata:\n  dataset: voc\n  root: {data}\n")
    per_class = {n: (0.5 if i < 3 else None) for i, n in enumerate(VOC_CLASSES)}
    (run / "eval_cam").mkdir()
    (run / "eval_cam" / "metrics.json").write_text(json.dumps(
        {"best_miou": 0.5, "best_threshold": 0.15, "per_class_iou": per_class}))
    for image_id in ids:
        cam = np.zeros((1, 16, 20), np.float16)
        cam[0, 1:5, 1:5] = 1.0
        write_cam(run / "cam" / "cams", image_id, {"keys": np.array([1]), "cam": cam[:, ::4, ::4].astype(np.float32),
                                                   "high_res": cam})
        mask = np.zeros((16, 20), np.uint8)
        mask[1:5, 1:5] = 1
        write_label_png(run / "pseudo_masks" / "masks" / f"{image_id}.png", mask, voc_palette())
    return run


def test_report_figures(tmp_path: Path) -> None:
    from rpnet_pl.results.ablations import get_sweep, run_name
    from tests.conftest import make_voc_tree

    ids = [f"2007_00000{i}" for i in range(1, 7)]
    make_voc_tree(tmp_path / "data", {i: [1] for i in ids})
    runs = tmp_path / "runs"
    _figure_run(runs, tmp_path / "data", ids)
    _fake_run(runs, "voc-cam", "cam", 0.48, None)  # no per-class numbers, no images: no figures
    for sweep_name, values in (("beta", {"0.1": 0.41, "0.5": 0.45}), ("data-volume", {"1": 0.5, "1/2": 0.4})):
        for v in get_sweep(sweep_name).variants:
            if v.label in values:
                _fake_run(runs, run_name(sweep_name, v), "rpnet", values[v.label], None)
    (runs / "ablation-gaussian").mkdir()  # a sweep without numbers: no figure, no section
    path, text = write_report(runs)
    figures = {"iou-voc-rpnet.png", "overlays-voc-rpnet.png", "ablation-beta.png", "ablation-data-volume.png"}
    assert {p.name for p in runs.glob("*.png")} == figures
    for name in figures:
        w, h = _png_ok(runs / name)
        assert w > 100 and h > 100
        assert f"]({name})" in text
    assert "voc-cam.png" not in text and "ablation-gaussian" not in text
    assert path.read_text() == text and "| voc-rpnet | rpnet | 50.0 |" in text
    # the overlay grid holds four images (rows) of three columns: taller than wide
    w, h = _png_ok(runs / "overlays-voc-rpnet.png")
    assert h > w
    # a second report overwrites the figures in place
    _, again = write_report(runs)
    assert again == text and {p.name for p in runs.glob("*.png")} == figures


def test_report_overlays_need_the_dataset(tmp_path: Path) -> None:
    from rpnet_pl.results.figures import overlay_rows, seed_labels

    run = _figure_run(tmp_path / "runs", tmp_path / "missing-data", ["2007_000001"])
    assert overlay_rows(run, 0.15) == []
    _, text = write_report(tmp_path / "runs")
    assert "iou-voc-rpnet.png" in text and "overlays-" not in text
    import numpy as np

    rec = {"keys": np.array([3, 7]), "high_res": np.array([[[0.9, 0.1]], [[0.2, 0.05]]], np.float16)}
    assert seed_labels(rec, 0.15).tolist() == [[3, 0]]


def test_report_segmentation_and_per_class_tables(tmp_path: Path) -> None:
    from rpnet_pl.data.classes import VOC_CLASSES

    def seg_run(name: str, method: str, backbone: str, dataset: str, val: float, crf: float, export: bool) -> None:
        run = tmp_path / name
        (run / "classifier").mkdir(parents=True)
        (run / "classifier" / "config.yaml").write_text(
            f"model:\n  method: {method}\n  backbone: {backbone}\ndata:\n  dataset: {dataset}\n")
        per_class = {c: (0.9 if c == "background" else 0.5 if c == "aeroplane" else None) for c in VOC_CLASSES}
        (run / "eval_seg").mkdir()
        (run / "eval_seg" / "metrics.json").write_text(json.dumps({
            "without_crf": {"miou": val, "per_class_iou": per_class},
            "with_crf": {"miou": crf, "per_class_iou": {**per_class, "aeroplane": 0.6}}}))
        if export:
            (run / "predict_seg").mkdir()
            (run / "predict_seg" / ".done").write_text("")

    seg_run("voc-rx50", "rpnet", "resnext50", "voc", 0.657, 0.670, export=True)
    seg_run("coco-r50", "rpnet", "resnet50", "coco", 0.371, 0.386, export=False)
    _, text = write_report(tmp_path)
    voc = text.split("## Table VIII")[1].split("##")[0]
    assert f"| RPNet (resnext50) [voc-rx50] w/o CRF | 65.7 | submit `{tmp_path / 'voc-rx50' / 'predict_seg'}` |" in voc
    assert "| RPNet (resnext50) [voc-rx50] | 67.0 |" in voc and "coco-r50" not in voc
    coco = text.split("## Table X:")[1].split("##")[0]
    assert "| RPNet (resnet50) [coco-r50] | 38.6 | - |" in coco
    xi = text.split("## Table XI")[1]
    header = xi.strip().splitlines()[2]
    # only the two classes of the data are columns; the 19 absent ones are counted under the table
    assert header == "| method | background | aeroplane | mIoU |"
    # per-class rows: bg 90, aeroplane 50 (60 with CRF); mIoU over the present classes
    assert "| RPNet (resnext50) [voc-rx50] w/o CRF | 90.0 | 50.0 | 70.0 |" in xi
    assert "| RPNet (resnext50) [voc-rx50] | 90.0 | 60.0 | 75.0 |" in xi
    assert "19 of the 21 VOC classes left out: no ground-truth pixel and no prediction in any run." in xi
    assert "coco-r50" not in xi


def test_per_class_table_keeps_a_class_any_run_has() -> None:
    """Run b predicts bicycle where there is none (IoU 0): bicycle stays a column, "-" for run a;
    bird is in no run and is left out, with the other 17 absent classes."""
    from rpnet_pl.results.report import per_class_table
    from rpnet_pl.results.summary import RunSummary

    a = RunSummary("a", method="rpnet", backbone="resnet50", val_per_class={"background": 0.8, "aeroplane": 0.4})
    b = RunSummary("b", method="cam", backbone="resnet50",
                   val_per_class={"background": 0.7, "aeroplane": 0.2, "bicycle": 0.0, "bird": None})
    lines = per_class_table([a, b]).splitlines()
    assert lines[0] == "| method | background | aeroplane | bicycle | mIoU |"
    assert lines[2] == "| RPNet (resnet50) [a] w/o CRF | 80.0 | 40.0 | - | 60.0 |"
    assert lines[3] == "| Base (resnet50) [b] w/o CRF | 70.0 | 20.0 | 0.0 | 30.0 |"
    assert lines[5] == "18 of the 21 VOC classes left out: no ground-truth pixel and no prediction in any run."
    # every class present: no line under the table
    from rpnet_pl.data.classes import VOC_CLASSES

    full = RunSummary("c", val_per_class={c: 0.5 for c in VOC_CLASSES})
    assert per_class_table([full]).splitlines()[-1].endswith("| 50.0 | 50.0 |")
    assert "left out" not in per_class_table([full])


def test_per_class_figure_title_fits_the_figure() -> None:
    """Drawn, the (wrapped) title lies inside the figure, for 6 classes (a narrow figure, 15 absent
    classes named in the title) and for all 21."""
    from rpnet_pl.data.classes import VOC_CLASSES
    from rpnet_pl.results.figures import per_class_figure

    title = "run a-longer-experiment-name/seed0: seed IoU per class, split train_aug, mIoU 49.8, threshold 0.16"
    for n in (6, 21):
        fig = per_class_figure({c: (0.5 if i < n else None) for i, c in enumerate(VOC_CLASSES)}, title)
        renderer = fig.canvas.get_renderer()
        fig.draw(renderer)
        ax = fig.axes[0]
        box, width = ax.title.get_window_extent(renderer), fig.bbox.width
        assert 0 <= box.x0 and box.x1 <= width, (n, box, width)
        assert box.y1 <= fig.bbox.height
        text = ax.title.get_text()
        assert text.replace("\n", " ") == title + ("; 15 class(es) absent from the data, not drawn" if n == 6 else "")
        assert text.count("\n") == (2 if n == 6 else 1)  # wrapped to the figure's width


def test_seed_iou_figure_draws_only_the_classes_of_the_data() -> None:
    from rpnet_pl.results.figures import present_classes

    per_class = {"background": 0.9, "aeroplane": 0.25, "bicycle": None, "bird": 0.0, "boat": None}
    names, values, absent = present_classes(per_class)
    assert names == ["background", "aeroplane", "bird"]
    assert values.tolist() == [90.0, 25.0, 0.0]
    assert absent == 2


def _seed_run(root: Path, seed: int, seeds: float, pseudo: float | None, val: tuple[float, float] | None) -> None:
    run = root / f"seed{seed}"
    (run / "classifier").mkdir(parents=True)
    (run / "classifier" / "config.yaml").write_text("model:\n  method: rpnet\n  backbone: resnet18\n")
    (run / "eval_cam").mkdir()
    (run / "eval_cam" / "metrics.json").write_text(json.dumps({"best_miou": seeds, "best_threshold": 0.15}))
    if pseudo is not None:
        (run / "eval_pseudo_masks").mkdir()
        (run / "eval_pseudo_masks" / "metrics.json").write_text(json.dumps({"miou": pseudo}))
    if val is not None:
        (run / "eval_seg").mkdir()
        (run / "eval_seg" / "metrics.json").write_text(
            json.dumps({"without_crf": {"miou": val[0]}, "with_crf": {"miou": val[1]}}))


def test_report_seed_runs_as_mean_and_std(tmp_path: Path) -> None:
    """Three seeds of `demo` (the third stopped after eval_cam) beside a single run: by hand,
    seeds (60, 64, 56) -> 60.0 ± 4.0, n=3; pseudo masks (70, 74) -> 72.0 ± 2.8, n=2 (sample std);
    val (50, 54) -> 52.0 ± 2.8; val + CRF (52, 56) -> 54.0 ± 2.8."""
    _fake_run(tmp_path, "demo-cam", "cam", 0.483, None)
    _seed_run(tmp_path / "demo", 0, 0.60, 0.70, (0.50, 0.52))
    _seed_run(tmp_path / "demo", 1, 0.64, 0.74, (0.54, 0.56))
    _seed_run(tmp_path / "demo", 2, 0.56, None, None)
    (tmp_path / "demo" / "seed3").mkdir()  # a seed that has not started: not counted
    assert [p.name for p in find_runs(tmp_path)] == ["demo", "demo-cam"]
    _, text = write_report(tmp_path)
    assert "| demo-cam | cam | 48.3 | - | - | - |" in text  # a single run reports as before
    assert ("| demo | rpnet | 60.0 ± 4.0 (n=3) | 72.0 ± 2.8 (n=2) | 52.0 ± 2.8 (n=2) | 54.0 ± 2.8 (n=2) |"
            in text)
    assert "| RPNet (resnet18) [demo] | 54.0 ± 2.8 (n=2) | - |" in text  # Table VIII


def test_ablation_table_over_seeds(tmp_path: Path) -> None:
    """A sweep variant run with two seeds is one cell: (41 + 45) / 2 = 43.0, sample std 2.8 (n=2)."""
    from rpnet_pl.results.ablations import collect, get_sweep, run_name, table

    sweep = get_sweep("beta")
    v01, v05 = sweep.variants[0], sweep.variants[2]
    _seed_run(tmp_path / run_name("beta", v01), 0, 0.41, None, None)
    _seed_run(tmp_path / run_name("beta", v01), 1, 0.45, None, None)
    _fake_run(tmp_path, run_name("beta", v05), "rpnet", 0.47, None)
    text = table(sweep, collect("beta", sweep, tmp_path))
    assert "| 0.1 | 43.0 ± 2.8 (n=2) |" in text and "| 0.5 | 47.0 |" in text and "| 0.9 | - |" in text
    _, report = write_report(tmp_path)
    assert "](ablation-beta.png)" in report


def test_overlays_have_a_ground_truth_column_and_a_legend(tmp_path: Path) -> None:
    import numpy as np

    from rpnet_pl.data.classes import VOC_CLASSES, voc_palette
    from rpnet_pl.utils.io import read_image, read_label_png
    from rpnet_pl.results.figures import _step_split, legend_entries, overlay_rows
    from rpnet_pl.stages.visuals import overlay_labels
    from tests.conftest import make_voc_tree

    ids = ["2007_000001", "2007_000002"]
    voc = make_voc_tree(tmp_path / "data", {ids[0]: [1], ids[1]: [1, 2]})
    (voc / "SegmentationClassAug" / f"{ids[1]}.png").unlink()  # no ground truth: an "n/a" tile
    run = _figure_run(tmp_path / "runs", tmp_path / "data", ids)
    rows = overlay_rows(run, 0.15)
    assert [r[0] for r in rows] == ids and all(len(tiles) == 4 for _, tiles in rows)
    image = read_image(voc / "JPEGImages" / f"{ids[0]}.jpg")
    gt = read_label_png(voc / "SegmentationClassAug" / f"{ids[0]}.png")
    np.testing.assert_array_equal(rows[0][1][1], overlay_labels(image, gt, voc_palette()))
    assert rows[1][1][1] is None
    # the legend: every label value shown, in order, with its VOC colour; 255 is "ignore"
    assert legend_entries([np.array([[0, 15], [255, 1]])], VOC_CLASSES, voc_palette()) == [
        ("background", [0, 0, 0]), ("aeroplane", [128, 0, 0]), ("person", [192, 128, 128]),
        ("ignore", [224, 224, 192])]
    # the split in a figure's title is the one the step ran on
    assert _step_split(run, "cam", "train_aug") == "train_aug"  # no .done: the default
    (run / "cam" / ".done").write_text("argv: [python, -m, rpnet_pl.cli, cam, --split, train, --out, x]\n")
    assert _step_split(run, "cam", "train_aug") == "train"


def test_calibrated_thresholds_get_a_table_per_run_and_seed(tmp_path: Path) -> None:
    from rpnet_pl.pipeline import layout
    from rpnet_pl.results.report import calibration_table
    from rpnet_pl.steps.calibration import write_calibration

    _fake_run(tmp_path, "fixed", "rpnet", 0.5, 0.6)
    assert "Calibrated thresholds" not in write_report(tmp_path)[1]  # no calibration.json: no table

    def record(step: str, best: float, edge: str | None, used: dict[str, float]) -> dict:
        return {"step": step, "split": "held_out", "n_images": 3, "sweep": {}, "best_threshold": best,
                "best_miou": 0.5, "best_at_edge": edge, "used": used}

    for seed, (t_star, edge) in enumerate(((0.15, None), (0.6, "high"))):
        run = tmp_path / "own" / f"seed{seed}"
        _fake_run(tmp_path / "own", f"seed{seed}", "rpnet", 0.5, 0.6)
        write_calibration(run / "ir_labels" / layout.LABELS, record(
            "ir_labels", t_star, edge, {"fg_threshold": round(2 * t_star, 6), "bg_threshold": round(t_star / 3, 6)}))
    write_calibration(tmp_path / "own" / "seed0" / "pseudo_masks" / layout.MASKS,  # seed 1: its IR labels only
                      record("pseudo_masks", 0.4, None, {"bg_threshold": 0.4}))
    table = calibration_table([tmp_path / "fixed", tmp_path / "own"], tmp_path)
    assert table.splitlines()[2:] == ["| own/seed0 | held_out | 0.15 | 0.3 / 0.05 | no | 0.4 | no |",
                                      "| own/seed1 | held_out | 0.6 | 1.2 / 0.2 | high | - | - |"]
    text = write_report(tmp_path)[1]
    assert "## Calibrated thresholds" in text and table in text
