"""What a network was built with, so that a stage given the network can record it."""
from __future__ import annotations

from typing import Any


def init_args(frame_locals: dict[str, Any]) -> dict[str, Any]:
    """A constructor's arguments from its ``locals()`` taken first thing in ``__init__`` (after
    ``super().__init__()``): ``self`` and the ``__class__`` cell left out; tuples as lists, as YAML
    and the checkpoints' hyper-parameters hold them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in frame_locals.items()
            if k not in ("self", "__class__")}
