"""Training-parity cases of the segmenter (group ``train_deeplab``) from kazuto1011/deeplab-pytorch.

    python scripts/training_parity_deeplab.py REF_DIR --out src/rpnet_pl/parity_cases [--steps 12]

``REF_DIR``: a clone of kazuto1011/deeplab-pytorch (``build/ref/deeplab``), the DeepLab recipe that
RPNet's and IRN's users train on the pseudo masks. Its ``main.py train`` command runs as it is
(``configs/voc12.yaml``, ``DeepLabV2_ResNet101_MSC``, ``get_params``' 1x / 10x / 20x SGD groups,
``PolynomialLR``, ``freeze_bn``, ``resize_labels``, the summed cross-entropy) for ``--steps``
iterations on the case's fixed batches, on the CPU, from :func:`rpnet_pl.parity_training.seeded_state`
weights. Nothing of that code is copied here; these run-time patches (its files unchanged) make it
run here and on our recipe where ours differs on purpose or has no switch (docs/parity.md):

* modules ``main.py`` imports that the project does not install: ``omegaconf`` (``OmegaConf.load``:
  a YAML reader with attribute access), ``torchnet.meter`` (``MovingAverageValueMeter``: records
  each iteration's loss and the groups' learning rates), ``joblib`` (unused by ``train``);
* the config: ``configs/voc12.yaml`` with ``ITER_MAX`` = the poly horizon, ``BATCH_SIZE.TRAIN`` =
  the case's batch, ``ITER_SIZE`` 1 (ours takes the whole batch in one step), ``LR_DECAY`` 1 (ours
  decays every step; the reference every 10), ``INIT_MODEL`` the seeded weights (all of them,
  ASPP included: the reference loads with ``strict=False``), output to a temporary folder,
  ``ITER_SAVE`` / ``ITER_TB`` past the run;
* ``get_dataset``: a dataset that returns the case's images in order (whatever the loader's shuffle
  asks for), and stops the run after ``--steps`` iterations;
* ``DeepLabV2_ResNet101_MSC``: ``DeepLabV2`` with ``--blocks`` bottlenecks per stage (1, 1, 1, 1) on
  torchvision's ResNet conventions, which our timm backbone follows: the stride of ``layer3``'s
  first block on its 3x3 convolution instead of its first 1x1, and the first block of each dilated
  stage at the previous stage's dilation (1 and 2 instead of 2 and 4); in ``MSC``'s place a single
  scale whose logits are upsampled bilinearly to the input size (our loss; the reference's
  ``resize_labels`` then keeps the labels as they are);
* ``PolynomialLR``: remembers its optimiser, to read the final learning rates;
* ``torch.LongTensor`` of ``resize_labels``' list of float label arrays, which current PyTorch
  refuses: ``np.stack`` then ``long()`` (the labels are whole numbers: exact).

Image sizes are odd after the stem convolution (``S % 4`` in 1, 2), where the reference's
``ceil_mode`` max-pool and ours give the same map. The script ends by running our checker on each
written case.
"""
from __future__ import annotations

import argparse
import importlib
import io
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from rpnet_pl.parity_training import checksums, seeded_state

#: (seed, image size) of the cases written
CASES = ((11, 66), (23, 65))
#: the images' scale (:func:`make_batches`)
INPUT_SCALE = 0.03


class _Stop(BaseException):
    """Ends the reference's training loop after the wanted iterations (its ``except:`` re-raises it)."""


class _Config(dict):
    """A YAML mapping with attribute access, as ``OmegaConf`` gives."""

    def __getattr__(self, key: str) -> Any:
        try:
            value = self[key]
        except KeyError:
            raise AttributeError(key) from None
        return _Config(value) if isinstance(value, dict) else value


def _stub_modules(record: dict[str, Any]) -> dict[str, Any]:
    """Put the stand-ins of the modules ``main.py`` imports into ``sys.modules``; returns what they
    replaced (the caller puts it back once ``main`` is imported)."""
    omegaconf = types.ModuleType("omegaconf")
    omegaconf.OmegaConf = types.SimpleNamespace(load=lambda f: _Config(yaml.safe_load(f.read())))

    class Meter:  # torchnet's MovingAverageValueMeter: each added value is one iteration's loss
        def __init__(self, *args: Any) -> None:
            pass

        def add(self, value: float) -> None:
            record["loss"].append(float(value))
            record["lr"].append([g["lr"] for g in record["scheduler"].optimizer.param_groups])

        def value(self) -> tuple[float, float]:
            return record["loss"][-1], 0.0

    meter = types.ModuleType("torchnet.meter")
    meter.MovingAverageValueMeter = Meter
    torchnet = types.ModuleType("torchnet")
    torchnet.meter = meter
    stubs = {"omegaconf": omegaconf, "torchnet": torchnet, "torchnet.meter": meter,
             "joblib": types.ModuleType("joblib")}
    before = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)  # over installed ones too: the meter must record
    return before


def _torchvision_conventions(base: torch.nn.Module) -> None:
    """The reference's Caffe ResNet -> torchvision's layout (module docstring)."""
    first = base.layer3.block1
    first.reduce.conv.stride, first.conv3x3.conv.stride = (1, 1), (2, 2)
    for layer, dilation in (("layer4", 1), ("layer5", 2)):
        conv = getattr(base, layer).block1.conv3x3.conv
        conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)


class _OneScale(torch.nn.Module):
    """In ``MSC``'s place: the base network's logits upsampled to the input, as a list of one."""

    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.interpolate(self.base(x), size=x.shape[-2:], mode="bilinear", align_corners=False)]


def make_batches(seed: int, n: int, size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (3, size, size) and blocky labels (n, size, size) uint8 with 255 bands and specks.

    The images are class colours plus noise, times ``INPUT_SCALE``, rounded to float16 (exact in the
    float32 file): the seeded network's frozen BatchNorm statistics do not match its activations,
    and at unit-scale inputs its logits are large enough (loss about 19) that the recipe's learning
    rates make it diverge; at this scale the loss starts near ln(21) and stays there."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, num_classes, (n, 1, 6, 6), generator=g).float()
    labels = F.interpolate(blocks, size=(size, size), mode="nearest")[:, 0].to(torch.uint8)
    for i in range(n):  # an ignored band and a few ignored pixels
        r = int(torch.randint(0, size - 8, (1,), generator=g))
        labels[i, r:r + 6] = 255
        labels[i].view(-1)[torch.randint(0, size * size, (40,), generator=g)] = 255
    colours = torch.randn(n, 3, num_classes, generator=g)
    lab = labels.long().clamp(max=num_classes - 1)
    images = torch.gather(colours, 2, lab.view(n, 1, -1).expand(n, 3, -1)).view(n, 3, size, size)
    images = images + 0.5 * torch.randn(n, 3, size, size, generator=g)
    return (INPUT_SCALE * images).half().float().numpy(), labels.numpy()


def run_reference(ref_dir: Path, seed: int, size: int, steps: int, max_steps: int, batch: int, n_images: int,
                  blocks: tuple[int, ...], num_classes: int) -> dict[str, np.ndarray]:
    """One case: the reference trained ``steps`` iterations (module docstring), with its own
    ``get_params`` groups (stem at 1x, ASPP weights at 10x, ASPP biases at 20x without weight decay)."""
    record: dict[str, Any] = {"loss": [], "lr": []}
    stubs = _stub_modules(record)
    sys.path.insert(0, str(ref_dir))
    try:
        for name in [m for m in sys.modules if m.split(".")[0] in ("main", "libs")]:
            del sys.modules[name]
        main = importlib.import_module("main")
        models = importlib.import_module("libs.models")
    finally:
        sys.path.remove(str(ref_dir))
        for name, module in stubs.items():  # Lightning reads find_spec("omegaconf") later: no stand-in stays
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module
    images, labels = make_batches(seed, n_images, size, num_classes)

    class Fixed(torch.utils.data.Dataset):
        served = 0

        def __init__(self, **kwargs: Any) -> None:
            pass

        def __len__(self) -> int:
            return n_images

        def __getitem__(self, index: int) -> tuple[str, torch.Tensor, torch.Tensor]:
            i = Fixed.served
            if i >= steps * batch:
                raise _Stop
            Fixed.served += 1
            return str(i), torch.from_numpy(images[i % n_images]), torch.from_numpy(labels[i % n_images]).long()

    built: dict[str, Any] = {}

    def small_model(n_classes: int) -> torch.nn.Module:
        base = models.DeepLabV2(n_classes=n_classes, n_blocks=list(blocks), atrous_rates=[6, 12, 18, 24])
        _torchvision_conventions(base)
        built["model"] = _OneScale(base)
        return built["model"]

    class Recorded(main.PolynomialLR):
        def __init__(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
            record["scheduler"] = self
            super().__init__(optimizer, *args, **kwargs)

    with tempfile.TemporaryDirectory() as tmp:
        probe = models.DeepLabV2(n_classes=num_classes, n_blocks=list(blocks), atrous_rates=[6, 12, 18, 24])
        init = seeded_state({k: v.shape for k, v in probe.state_dict().items()}, seed)
        torch.save(init, Path(tmp) / "init.pth")
        cfg = yaml.safe_load((ref_dir / "configs" / "voc12.yaml").read_text())
        cfg["EXP"]["OUTPUT_DIR"] = tmp
        cfg["DATASET"]["N_CLASSES"] = num_classes
        cfg["MODEL"]["INIT_MODEL"] = str(Path(tmp) / "init.pth")
        cfg["SOLVER"].update({"ITER_MAX": max_steps, "ITER_SIZE": 1, "LR_DECAY": 1, "ITER_SAVE": max_steps + 1,
                              "ITER_TB": max_steps + 1})
        cfg["SOLVER"]["BATCH_SIZE"]["TRAIN"] = batch
        main.get_dataset = lambda name: Fixed
        main.DeepLabV2_ResNet101_MSC = small_model
        main.PolynomialLR = Recorded
        long_tensor = torch.LongTensor
        torch.LongTensor = lambda arrays: torch.as_tensor(np.stack(arrays)).long()
        try:
            main.train.callback(config_path=io.StringIO(yaml.safe_dump(cfg)), cuda=False)
            raise SystemExit("error: the reference's loop ended before its data did")
        except _Stop:
            pass
        finally:
            torch.LongTensor = long_tensor
    state = {k: v.detach() for k, v in built["model"].base.state_dict().items()}
    names = list(state)
    groups = [g for g in record["scheduler"].optimizer.param_groups if g["params"]]
    keep = [i for i, g in enumerate(record["scheduler"].optimizer.param_groups) if g["params"]]
    final, delta = checksums(state), checksums({k: state[k].double() - init[k].double() for k in names})
    return {
        "seed": np.array(seed), "images": images, "labels": labels, "batch_size": np.array(batch),
        "steps": np.array(steps), "max_steps": np.array(max_steps), "num_classes": np.array(num_classes),
        "blocks": np.array(blocks), "loss": np.array(record["loss"]),
        "lr": np.array(record["lr"])[:, keep], "lr_final": np.array([g["lr"] for g in groups]),
        "group_sizes": np.array([len(g["params"]) for g in groups]), "names": np.array(names),
        "final": np.stack([final[k] for k in names]), "delta": np.stack([delta[k] for k in names]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ref_dir", type=Path, help="clone of kazuto1011/deeplab-pytorch")
    p.add_argument("--out", type=Path, default=Path("src/rpnet_pl/parity_cases"))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--max-steps", type=int, default=16, help="poly horizon (ITER_MAX, our max_steps)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--classes", type=int, default=21)
    args = p.parse_args(argv)
    if not (args.ref_dir / "main.py").is_file():
        raise SystemExit(f"error: {args.ref_dir}: no main.py (a clone of kazuto1011/deeplab-pytorch)")
    torch.set_num_threads(1)
    from rpnet_pl.parity_training.deeplab import check_train_deeplab

    args.out.mkdir(parents=True, exist_ok=True)
    for i, (seed, size) in enumerate(CASES):
        case = run_reference(args.ref_dir.resolve(), seed, size, args.steps, args.max_steps, args.batch, args.images,
                             (1, 1, 1, 1), args.classes)
        path = args.out / f"train_deeplab_{i}.npz"
        np.savez_compressed(path, **case)
        checks = check_train_deeplab(case)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB): loss {case['loss'][0]:.5f} -> {case['loss'][-1]:.5f}; "
              + ", ".join(f"{c.name} {'ok' if c.passed else 'FAIL'} ({c.rel_err:.1e})" for c in checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
