"""``channels_last`` on every stage: the network's 4-D weights in NHWC after setup, same outputs."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.mark.parametrize("stage_name", ["classifier", "refine", "segmenter"])
def test_channels_last_switch(stage_name: str) -> None:
    from rpnet_pl.stages.checkpoints import build_stage

    kw = dict(backbone="resnet18", pretrained=False, **({"method": "cam"} if stage_name == "classifier" else {}))
    torch.manual_seed(0)
    plain = build_stage(stage_name, **kw)
    torch.manual_seed(0)
    nhwc = build_stage(stage_name, **kw, channels_last=True)
    plain.setup("fit"), nhwc.setup("fit")
    convs = [m.weight for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(m.weight.is_contiguous(memory_format=torch.channels_last)
                   for m in plain.model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    plain.eval(), nhwc.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = plain.model(x), nhwc.model(x)
    a = a if isinstance(a, torch.Tensor) else next(iter(a.values()))
    b = b if isinstance(b, torch.Tensor) else next(iter(b.values()))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
