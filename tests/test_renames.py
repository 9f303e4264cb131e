"""Stage 2 has one name, ``refine`` (its steps ``pseudo_masks`` and ``eval_pseudo_masks``); the old
names (``affinity``, ``sem_seg``, ``eval_sem_seg``, `rpnet sem-seg-labels`, `rpnet eval-sem-seg`,
`rpnet fit affinity`, old run folders) still work for one release and each warns, naming the new one."""
from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import pytest

from rpnet_pl import layout
from rpnet_pl.cli import build_parser, main
from rpnet_pl.config import load_experiment
from rpnet_pl.errors import ConfigError
from rpnet_pl.pipeline import plan, run_steps
from rpnet_pl.validate import check_overrides

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _deprecations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "deprecated" in r.getMessage()]


def _old_experiment(tmp_path: Path) -> Path:
    """An experiment written before the rename: it extends the (renamed) base and sets the old sections."""
    shutil.copy(EXPERIMENTS / "base.yaml", tmp_path / "base.yaml")
    path = tmp_path / "old.yaml"
    path.write_text("extends: base.yaml\naffinity:\n  model:\n    lr: 0.05\nsem_seg:\n  exp_times: 3\n"
                    "eval_sem_seg:\n  split: val\n")
    return path


def test_the_new_names_everywhere() -> None:
    assert "refine" in layout.STEP_ORDER and "affinity" not in layout.STEP_ORDER
    assert layout.STEP_COMMANDS["pseudo_masks"] == "pseudo-masks"
    assert layout.STEP_COMMANDS["eval_pseudo_masks"] == "eval-pseudo-masks"
    base = load_experiment(EXPERIMENTS / "base.yaml")
    assert {"refine", "pseudo_masks", "eval_pseudo_masks"} <= set(base) and not {"affinity", "sem_seg"} & set(base)
    for path in EXPERIMENTS.glob("*.yaml"):
        text = path.read_text()
        assert "\naffinity:" not in text and "\nsem_seg:" not in text and "\neval_sem_seg:" not in text, path
    help_text = build_parser().format_help()
    assert "pseudo-masks" in help_text and "eval-pseudo-masks" in help_text
    assert "sem-seg-labels" not in help_text and "eval-sem-seg" not in help_text  # old commands: no help line


def test_old_config_sections_are_read_as_the_new_ones_with_a_warning(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_experiment(_old_experiment(tmp_path))
    assert cfg["refine"]["model"]["lr"] == 0.05 and cfg["refine"]["model"]["radius"] == 10  # merged with the base
    assert cfg["pseudo_masks"]["exp_times"] == 3 and cfg["pseudo_masks"]["radius"] == 5
    assert cfg["eval_pseudo_masks"]["split"] == "val"
    assert not {"affinity", "sem_seg", "eval_sem_seg"} & set(cfg)
    messages = _deprecations(caplog)
    for old, new in (("affinity", "refine"), ("sem_seg", "pseudo_masks"), ("eval_sem_seg", "eval_pseudo_masks")):
        assert any(f"'{old}' is deprecated, use '{new}'" in m for m in messages), (old, messages)
    steps = {s.name: s for s in plan(cfg, runs_dir=tmp_path / "runs", logger="none")}
    assert steps["refine"].argv[3:5] == ["fit", "refine"]
    argv = steps["pseudo_masks"].argv
    assert argv[3] == "pseudo-masks" and argv[argv.index("--exp-times") + 1] == "3"


def test_both_names_of_one_section_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    path.write_text("affinity:\n  model:\n    lr: 0.1\nrefine:\n  model:\n    lr: 0.2\n")
    with pytest.raises(ConfigError, match="both 'affinity' and 'refine'"):
        load_experiment(path)


def test_old_section_in_set_overrides(caplog: pytest.LogCaptureFixture) -> None:
    check_overrides(["affinity.model.lr=0.5", "sem_seg.radius=3"])  # known keys under their new names
    with pytest.raises(ConfigError, match="unknown key 'refine.model.lrr'"):
        check_overrides(["affinity.model.lrr=0.5"])
    cfg = load_experiment(EXPERIMENTS / "base.yaml", ["affinity.model.lr=0.5", "sem_seg.radius=3"])
    assert cfg["refine"]["model"]["lr"] == 0.5 and cfg["pseudo_masks"]["radius"] == 3
    assert "affinity" not in cfg and "sem_seg" not in cfg
    assert any("'affinity' is deprecated, use 'refine'" in m for m in _deprecations(caplog))


def test_old_step_names_in_steps_and_force(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                           capsys: pytest.CaptureFixture) -> None:
    cfg = load_experiment(EXPERIMENTS / "base.yaml")
    steps = plan(cfg, runs_dir=tmp_path, logger="none", steps=["affinity", "sem_seg", "eval_sem_seg"])
    assert [s.name for s in steps] == ["refine", "pseudo_masks", "eval_pseudo_masks"]
    assert any("'sem_seg' is deprecated, use 'pseudo_masks'" in m for m in _deprecations(caplog))
    for step in steps:
        step.folder.mkdir(parents=True)
        step.done_marker.write_text("done")
    assert run_steps(steps, dry_run=True) == []
    assert run_steps(steps, dry_run=True, force=["sem_seg"]) == ["pseudo_masks"]


def test_a_run_folder_from_before_the_rename_is_resumed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "base"
    (run / "affinity" / "checkpoints").mkdir(parents=True)
    (run / "affinity" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / "affinity" / ".done").write_text("done")
    (run / "sem_seg" / "masks").mkdir(parents=True)
    (run / "eval_sem_seg").mkdir()
    (run / "eval_sem_seg" / "metrics.json").write_text(json.dumps({"miou": 0.5}))
    assert layout.checkpoint(run, "refine") == run / "affinity" / "checkpoints" / "last.ckpt"
    assert layout.pseudo_masks_dir(run) == run / "sem_seg" / "masks"
    assert layout.metrics_path(run, "eval_pseudo_masks") == run / "eval_sem_seg" / "metrics.json"
    steps = {s.name: s for s in plan(load_experiment(EXPERIMENTS / "base.yaml"), runs_dir=tmp_path, logger="none")}
    assert steps["refine"].folder == run / "affinity" and steps["refine"].is_done()
    assert steps["refine"].config["trainer"]["default_root_dir"] == str(run / "affinity")  # resumes there
    argv = steps["pseudo_masks"].argv
    assert argv[argv.index("--ckpt") + 1] == str(run / "affinity" / "checkpoints" / "last.ckpt")
    assert argv[argv.index("--out") + 1] == str(run / "sem_seg" / "masks")
    assert steps["segmenter"].config["data"]["label_dir"] == str(run / "sem_seg" / "masks")
    assert any("run folder 'affinity' is deprecated, use 'refine'" in m for m in _deprecations(caplog))
    (run / "refine").mkdir()  # once the new folder exists, it wins
    assert layout.step_dir(run, "refine") == run / "refine"


def test_old_commands_warn_and_run(tiny_voc: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                   capsys: pytest.CaptureFixture) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    for png in (tiny_voc / "VOCdevkit/VOC2012/SegmentationClassAug").glob("*.png"):
        shutil.copy(png, masks / png.name)  # the ground truth itself: mIoU 1
    out_old, out_new = tmp_path / "old.json", tmp_path / "new.json"
    for command, out in (("eval-sem-seg", out_old), ("eval-pseudo-masks", out_new)):
        assert main([command, "--masks", str(masks), "--root", str(tiny_voc), "--split", "train",
                     "--out", str(out)]) == 0
    assert json.loads(out_old.read_text()) == json.loads(out_new.read_text())
    assert json.loads(out_new.read_text())["miou"] == 1.0
    assert main(["sem-seg-labels", "--ckpt", str(tmp_path / "none.ckpt"), "--cams", str(tmp_path), "--out",
                 str(tmp_path / "pm"), "--root", str(tiny_voc)]) == 2
    assert "none.ckpt: refine checkpoint not found (train it with `rpnet fit refine`)" in capsys.readouterr().err
    messages = _deprecations(caplog)
    assert sum("'eval-sem-seg' is deprecated, use 'eval-pseudo-masks'" in m for m in messages) == 1
    assert sum("'sem-seg-labels' is deprecated, use 'pseudo-masks'" in m for m in messages) == 1


def test_fit_affinity_trains_the_refine_stage(caplog: pytest.LogCaptureFixture,
                                              capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "affinity", "--print_config", "--model.backbone", "resnet18"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "displacement_lr_mult" in printed and "rw_exp_times" in printed  # RefineStage's arguments
    assert any("'affinity' is deprecated, use 'refine'" in m for m in _deprecations(caplog))


def test_old_module_names_import_with_a_warning() -> None:
    from rpnet_pl.stages.eval_refinement import refinement_breakdown
    from rpnet_pl.stages.refine import RefineStage, make_pseudo_masks

    with pytest.warns(DeprecationWarning, match="use rpnet_pl.stages.refine.RefineStage"):
        from rpnet_pl.stages.affinity import AffinityStage
    assert AffinityStage is RefineStage
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from rpnet_pl.stages.affinity import make_sem_seg_labels, refinement_breakdown as old_breakdown
    assert make_sem_seg_labels is make_pseudo_masks and old_breakdown is refinement_breakdown
    assert len([w for w in caught if issubclass(w.category, DeprecationWarning)]) == 2
    with pytest.raises(ImportError):
        from rpnet_pl.stages.affinity import no_such_name  # noqa: F401
