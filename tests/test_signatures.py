"""The torch-free snapshot of the training signatures that validation reads (rpnet_pl.pipeline.signatures)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Literal, Optional, Union

import pytest
from jsonargparse.typing import PositiveInt

from rpnet_pl.pipeline.signatures import PATH, class_signature, live, parse_type, snapshot, type_text


def test_the_stored_snapshot_is_the_classes_signatures() -> None:
    """Fails after a stage, datamodule or Lightning signature changed: run `python -m rpnet_pl.pipeline.signatures`."""
    assert json.loads(PATH.read_text()) == live(), "signatures.json is stale: run `python -m rpnet_pl.pipeline.signatures`"
    assert set(snapshot()) == {"classifier", "refine", "segmenter"}


@pytest.mark.parametrize("hint, text", [
    (int, "int"), (float, "float"), (type(None), "None"),
    (Optional[int], "Union[int, None]"), (int | str | None, "Union[int, str, None]"),
    (Literal["a", 3], "Literal['a', 3]"), (tuple[float, ...], "tuple[float, ...]"),
    (list[int], "list[int]"), (PositiveInt, "PositiveInt"),
    (Union[int, object], "Any"), (object, "Any"),  # what the snapshot cannot spell accepts anything
])
def test_type_text_reads_back_as_the_same_type(hint, text: str) -> None:
    assert type_text(hint) == text
    back = parse_type(text)
    assert type_text(back) == text


def test_class_signature_records_types_and_plain_defaults() -> None:
    class Stage:
        def __init__(self, lr: float = 0.1, scales: tuple[float, ...] = (1.0, 0.5), name: Optional[str] = None,
                     fn: object = print, *args, **kwargs) -> None: ...

    assert class_signature(Stage) == {
        "lr": {"type": "float", "default": 0.1},
        "scales": {"type": "tuple[float, ...]", "default": [1.0, 0.5]},
        "name": {"type": "Union[str, None]", "default": None},
        "fn": {"type": "Any"},  # a function is no plain default
    }


def test_validating_an_experiment_imports_no_torch() -> None:
    exp = Path(__file__).resolve().parents[1] / "experiments" / "voc_resnext50.yaml"
    code = ("import sys; from rpnet_pl.pipeline.config import load_experiment; from rpnet_pl.pipeline.validate import check_tree; "
            f"check_tree(load_experiment({str(exp)!r})); "
            "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
