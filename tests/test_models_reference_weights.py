"""Checkpoints of the public RPNet / IRN code load into our models by name (reference layout built by
hand here: same names and shapes, random values)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.models.cam_net import CAMNet
from rpnet_pl.models.irn import IRNet
from rpnet_pl.models.reference_weights import (detect_kind, infer_backbone, is_reference_checkpoint,
                                               load_reference_checkpoint, map_reference_state_dict)
from rpnet_pl.models.rpnet import RPNet

torch.set_num_threads(1)
MID = 16


def _backbone_keys(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """torchvision ResNet-18 tensors under ``resnet50.`` (the reference's attribute name), its fc too."""
    tv = torchvision.models.resnet18()
    out = {}
    for k, v in tv.state_dict().items():
        if k.endswith("num_batches_tracked"):
            out["resnet50." + k] = v
        elif "running_var" in k:
            out["resnet50." + k] = torch.rand(v.shape, generator=gen) + 0.5
        else:
            out["resnet50." + k] = torch.randn(v.shape, generator=gen) * 0.1
    return out


def _nonlocal(prefix: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    inter = MID // 2
    shapes = {"g.weight": (inter, MID, 1, 1), "g.bias": (inter,), "theta.weight": (inter, MID, 1, 1),
              "theta.bias": (inter,), "phi.weight": (inter, MID, 1, 1), "phi.bias": (inter,),
              "W.0.weight": (MID, inter, 1, 1), "W.0.bias": (MID,), "W.1.weight": (MID,), "W.1.bias": (MID,),
              "W.1.running_mean": (MID,)}
    out = {f"{prefix}.{k}": torch.randn(s, generator=gen) * 0.3 for k, s in shapes.items()}
    out[f"{prefix}.W.1.running_var"] = torch.ones(MID)
    out[f"{prefix}.W.1.num_batches_tracked"] = torch.tensor(3)
    return out


def reference_rpnet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """What ``torch.save(Net_CAM().state_dict())`` holds, for a ResNet-18-sized backbone and mid 16."""
    gen = torch.Generator().manual_seed(seed)
    state = _backbone_keys(gen)
    state["stage1.0.weight"] = state["resnet50.conv1.weight"]  # an alias of the same tensor
    state["backbone.3.0.0.conv1.weight"] = state["resnet50.layer4.0.conv1.weight"]
    state["downsample.weight"] = torch.randn(MID, 512, 1, 1, generator=gen) * 0.05
    state["newly_added.11.weight"] = state["downsample.weight"]
    for name in ("self_atten_x", "self_atten_y", "cross_atten_x", "cross_atten_y"):
        state.update(_nonlocal(name, gen))
    state["classifierx.weight"] = torch.randn(20, MID, 1, 1, generator=gen)
    state["classifiery.weight"] = torch.randn(20, MID, 1, 1, generator=gen)
    state["mask_t.weight"] = torch.randn(128, MID, 1, 1, generator=gen)  # built, never used in forward
    state["pre_x.0.weight"] = torch.randn(MID, 2 * MID, 3, 3, generator=gen)
    return state


def test_rpnet_checkpoint_loads_and_its_cams_match_a_hand_computation(tmp_path: Path) -> None:
    state = reference_rpnet_state()
    path = tmp_path / "res50_cam.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # as saved from DataParallel
    assert is_reference_checkpoint(path) and detect_kind(list(state)) == "rpnet"
    assert infer_backbone(state) == "resnet18"
    model = RPNet(backbone="resnet18", mid=MID, weights=str(path)).eval()
    torch.testing.assert_close(model.head.classifier_ref.weight, state["classifiery.weight"])
    torch.testing.assert_close(model.backbone.body.layer3[1].bn2.running_var, state["resnet50.layer3.1.bn2.running_var"])

    # by hand: torchvision's ResNet-18 with layer 4 at stride 1 (IRN's strides (2, 2, 2, 1)), then
    # downsample, the dot-product non-local block with batch statistics over the batch, classifierx, ReLU
    tv = torchvision.models.resnet18()
    tv.load_state_dict({k[len("resnet50."):]: v for k, v in state.items() if k.startswith("resnet50.")})
    tv.layer4[0].conv1.stride = (1, 1)
    tv.layer4[0].downsample[0].stride = (1, 1)
    tv.eval()
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        b4 = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        f4 = F.conv2d(b4, state["downsample.weight"])
        s = "self_atten_x."
        theta = F.conv2d(f4, state[s + "theta.weight"], state[s + "theta.bias"]).flatten(2).transpose(1, 2)
        phi = F.conv2d(f4, state[s + "phi.weight"], state[s + "phi.bias"]).flatten(2)
        g = F.conv2d(f4, state[s + "g.weight"], state[s + "g.bias"]).flatten(2).transpose(1, 2)
        y = ((theta @ phi) / phi.shape[-1]) @ g  # (N, hw, I)
        y = y.transpose(1, 2).reshape(2, -1, *f4.shape[-2:])
        wy = F.conv2d(y, state[s + "W.0.weight"], state[s + "W.0.bias"])
        wy = F.batch_norm(wy, None, None, state[s + "W.1.weight"], state[s + "W.1.bias"], training=True)
        expected = F.relu(F.conv2d(f4 + wy, state["classifierx.weight"]))
        ours = model.cam(x)
    assert ours.shape == (2, 20, 4, 3)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_shared_heads_skip_the_reference_heads(tmp_path: Path) -> None:
    path = tmp_path / "cam.pth"
    torch.save(reference_rpnet_state(), path)
    model = RPNet(backbone="resnet18", mid=MID, weights=str(path), separate_reference_heads=False)
    assert not hasattr(model.head, "classifier_ref")


def test_unmatched_keys_are_listed(tmp_path: Path) -> None:
    state = reference_rpnet_state()
    state["mystery_layer.weight"] = torch.zeros(3)
    del state["cross_atten_x.theta.bias"]
    path = tmp_path / "cam.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError) as err:
        RPNet(backbone="resnet18", mid=MID, weights=str(path))
    msg = str(err.value)
    assert str(path) in msg and "mystery_layer.weight" in msg and "head.attn_enhanced.theta.bias" in msg
    torch.save(reference_rpnet_state(), path)
    with pytest.raises(ConfigError, match="shapes differ"):
        RPNet(backbone="resnet18", mid=MID * 2, weights=str(path))


def test_irn_cam_baseline_checkpoint(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    state = _backbone_keys(gen)
    state["classifier.weight"] = torch.randn(20, 512, 1, 1, generator=gen)
    state["newly_added.0.weight"] = state["classifier.weight"]
    path = tmp_path / "res50_cam.pth"
    torch.save(state, path)
    model = CAMNet(backbone="resnet18", weights=str(path)).eval()
    torch.testing.assert_close(model.classifier.weight, state["classifier.weight"])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        b4 = model.backbone(x)[4]
        torch.testing.assert_close(model.cam(x), F.relu(F.conv2d(b4, state["classifier.weight"])))


def reference_irn_state(model: IRNet, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """What ``torch.save(AffinityDisplacementLoss().state_dict())`` holds for ``model``'s layout: IRN's
    fc_edge1..6 / fc_dp7 (with its MeanShift) and, for a ``self_attention`` model, RPNet's copy's
    ``self_atten1..5`` (1 and 2 built but unused) with their ``new_layers`` aliases."""
    rename = {f"fc_edge{i + 1}.": f"edge_levels.{i}." for i in range(5)}
    rename.update({"fc_edge6.": "edge_out.", **{f"fc_dp{i + 1}.": f"dp_levels.{i}." for i in range(5)},
                   "fc_dp6.": "dp_fuse_deep.", "fc_dp7.4.": "mean_shift.", "fc_dp7.": "dp_out."})
    rename.update({f"self_atten{level}.": f"attention.{level}." for level in (3, 4, 5)})
    inverse = {v: k for k, v in rename.items()}
    state = _backbone_keys(gen)
    for key, value in model.state_dict().items():
        if key.startswith("backbone.") or key == "mean_shift.running_var":
            continue
        prefix = next(p for p in inverse if key.startswith(p))
        ref_key = (inverse[prefix] + key[len(prefix):]).replace(".out.", ".W.")
        state[ref_key] = torch.randn(value.shape, generator=gen) if value.is_floating_point() else value
    if model.attention:
        channels = list(model.backbone.channels)
        for level in (1, 2):  # NONLocalBlock2D(C) for the first two levels, never called
            c, inter = channels[level - 1], channels[level - 1] // 2
            for name, shape in {"g.weight": (inter, c, 1, 1), "theta.weight": (inter, c, 1, 1),
                                "phi.weight": (inter, c, 1, 1), "W.0.weight": (c, inter, 1, 1),
                                "W.1.weight": (c,), "W.1.running_var": (c,)}.items():
                state[f"self_atten{level}.{name}"] = torch.rand(shape, generator=gen)
        for i, level in enumerate((1, 2, 3, 4, 5)):  # new_layers: the same modules a second time
            state.update({f"new_layers.{i}." + k[len(f"self_atten{level}."):]: v for k, v in list(state.items())
                          if k.startswith(f"self_atten{level}.")})
    state["path_indices0"] = torch.zeros(2, 2, 5, dtype=torch.long)
    state["ind_from"] = torch.zeros(1, 5, dtype=torch.long)
    return state


def test_irn_boundary_checkpoint_mapping(tmp_path: Path) -> None:
    """IRN's AffinityDisplacementLoss state dict: fc_edge1..6 / fc_dp1..7 (+ its MeanShift) by name;
    its path-index parameters are rebuilt here, not loaded."""
    gen = torch.Generator().manual_seed(2)
    state = reference_irn_state(IRNet(backbone="resnet18"), gen)
    assert not any(k.startswith("self_atten") for k in state)
    path = tmp_path / "res50_irn.pth"
    torch.save(state, path)
    mapping = map_reference_state_dict(state)
    assert "path_indices0" in mapping.ignored and not mapping.unmatched
    loaded = IRNet(backbone="resnet18", weights=str(path))
    torch.testing.assert_close(loaded.dp_out[3].weight, state["fc_dp7.3.weight"])
    torch.testing.assert_close(loaded.mean_shift.running_mean, state["fc_dp7.4.running_mean"])
    torch.testing.assert_close(loaded.edge_levels[2][1].weight, state["fc_edge3.1.weight"])
    with pytest.raises(ConfigError, match="not a classifier"):
        from rpnet_pl.stages.classifier import reference_classifier_args

        reference_classifier_args(path)


def test_rpnet_irn_checkpoint_loads_its_non_local_blocks(tmp_path: Path) -> None:
    """RPNet's copy of IRN: ``self_atten3..5`` (W.0 / W.1 = projection conv / BatchNorm) load into the
    blocks of levels 3-5; ``self_atten1/2`` (never called) and the ``new_layers`` aliases are dropped."""
    gen = torch.Generator().manual_seed(3)
    state = reference_irn_state(IRNet(backbone="resnet18", self_attention=True), gen)
    path = tmp_path / "res50_irn.pth"
    torch.save(state, path)
    mapping = map_reference_state_dict(state)
    assert not mapping.unmatched
    assert {"self_atten1.W.1.weight", "self_atten2.g.weight", "new_layers.4.W.1.running_var"} <= set(mapping.ignored)
    assert mapping.state["attention.4.out.1.running_mean"] is state["self_atten4.W.1.running_mean"]
    loaded = IRNet(backbone="resnet18", weights=str(path), self_attention=True)
    torch.testing.assert_close(loaded.attention["3"].theta.weight, state["self_atten3.theta.weight"])
    torch.testing.assert_close(loaded.attention["5"].out[0].bias, state["self_atten5.W.0.bias"])
    torch.testing.assert_close(loaded.attention["4"].out[1].running_var, state["self_atten4.W.1.running_var"])
    torch.testing.assert_close(loaded.edge_out.weight, state["fc_edge6.weight"])


def test_irn_checkpoint_into_the_other_network_fails_clearly(tmp_path: Path) -> None:
    """A checkpoint with non-local blocks into IRN's own network, and one without into RPNet's copy:
    one error that names the switch to set."""
    gen = torch.Generator().manual_seed(4)
    rpnet_irn = reference_irn_state(IRNet(backbone="resnet18", self_attention=True), gen)
    with pytest.raises(ConfigError, match=r"no place in this model.*set refine\.model\.self_attention: true"):
        load_reference_checkpoint(IRNet(backbone="resnet18"), rpnet_irn)
    irn = reference_irn_state(IRNet(backbone="resnet18"), gen)
    with pytest.raises(ConfigError, match=r"not in the file.*set refine\.model\.self_attention: false"):
        load_reference_checkpoint(IRNet(backbone="resnet18", self_attention=True), irn)


def test_reference_classifier_args_and_backbone_signatures(tmp_path: Path) -> None:
    from rpnet_pl.stages.classifier import reference_classifier_args

    path = tmp_path / "cam.pth"
    torch.save(reference_rpnet_state(), path)
    args = reference_classifier_args(path)
    assert args == {"method": "rpnet", "pretrained": False, "weights": str(path), "backbone": "resnet18",
                    "mid": MID, "num_classes": 20, "separate_reference_heads": True}
    fake = {"resnet50.layer1.0.conv3.weight": torch.zeros(1), "resnet50.layer1.0.conv2.weight": torch.zeros(128, 4, 3, 3),
            **{f"resnet50.layer3.{i}.conv1.weight": torch.zeros(1) for i in range(6)}}
    assert infer_backbone(fake) == "resnext50"
    fake.update({f"resnet50.layer3.{i}.conv1.weight": torch.zeros(1) for i in range(23)})
    fake["resnet50.layer1.0.conv2.weight"] = torch.zeros(256, 8, 3, 3)
    assert infer_backbone(fake) == "resnext101"
    assert not is_reference_checkpoint(tmp_path / "missing.pth")
