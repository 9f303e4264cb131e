"""Experiment YAML: extends chains, dotted overrides, dataset propagation, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from rpnet_pl.pipeline.config import apply_override, deep_merge, load_experiment
from rpnet_pl.utils.errors import ConfigError


def test_deep_merge_overrides_leaves_and_replaces_lists() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    out = deep_merge(base, {"a": {"c": [9]}, "e": 4})
    assert out == {"a": {"b": 1, "c": [9]}, "d": 3, "e": 4}
    assert base["a"]["c"] == [1, 2]  # input untouched


def test_extends_chain_and_dataset_propagation(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "dataset: {name: voc, root: /data/voc}\nclassifier:\n  model: {beta: 0.5, alpha: 0.3}\n  data: {batch_size: 8}\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\nclassifier:\n  model: {beta: 0.7}\n")
    (tmp_path / "leaf.yaml").write_text("extends: mid.yaml\nname: my-run\n")
    cfg = load_experiment(tmp_path / "leaf.yaml", ["classifier.model.alpha=0.25", "dataset.root=/elsewhere"])
    assert cfg["name"] == "my-run"
    assert cfg["classifier"]["model"] == {"beta": 0.7, "alpha": 0.25}
    assert cfg["classifier"]["data"] == {"batch_size": 8, "dataset": "voc", "root": "/elsewhere"}


def test_default_name_from_file(tmp_path: Path) -> None:
    (tmp_path / "voc_resnext50.yaml").write_text("cam: {split: train}\n")
    assert load_experiment(tmp_path / "voc_resnext50.yaml")["name"] == "voc-resnext50"


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_experiment(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        load_experiment(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_experiment(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override({}, "no-equals")
