"""--compile: torch.compile of the backbone in place, same results as eager, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detector import Detector, load_config
from detector.errors import ConfigError, EngineError


class WithBackbone(nn.Module):
    """A detector-shaped module: a conv backbone, one box per image scored from its features."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 1, 3))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            score = torch.sigmoid(self.backbone(image[None]).mean()).reshape(1)
            out.append({"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "scores": score, "labels": torch.tensor([1])})
        return out


def test_compiled_backbone_gives_eager_results_and_keeps_state_dict_keys() -> None:
    torch.manual_seed(0)
    model = WithBackbone()
    eager = Detector(WithBackbone(), device="cpu")
    eager.model.load_state_dict(model.state_dict())
    keys = list(model.state_dict())
    compiled = Detector(model, device="cpu", compile=True)
    frames = [np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8) for i in range(3)]
    for f in frames:
        np.testing.assert_allclose(compiled(f).scores, eager(f).scores, rtol=1e-5)
    assert list(compiled.model.state_dict()) == keys  # weights files still load into it
    assert compiled.engine.warmup_seconds is not None and compiled.engine.warmup_seconds > 0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_compile_refusals() -> None:
    scripted = torch.jit.script(nn.Identity())
    with pytest.raises(EngineError, match="TorchScript file cannot be compiled"):
        Detector(scripted, device="cpu", compile=True)
    with pytest.raises(ConfigError, match="applies to the torch engine"):
        load_config(None, {"model": "retinanet_resnet50_fpn", "engine": "openvino", "compile": True})
