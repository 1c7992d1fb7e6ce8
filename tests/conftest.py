import os
from collections import OrderedDict

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download in tests
torch.set_num_threads(2)


class GapNet(nn.Module):
    """conv trunk -> ReLU -> GAP -> linear: the CAM setting, with known head weights."""

    def __init__(self, n_classes=5, width=8, in_channels=3, dims=2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.features = nn.Sequential(OrderedDict(
            conv1=conv(in_channels, width, 3, padding=1), relu1=nn.ReLU(),
            conv2=conv(width, width, 3, padding=1), relu2=nn.ReLU(inplace=True)))
        self.pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(width, n_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class ConstantModel(nn.Module):
    """Logits that ignore the input."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([1.0, 2.0, 0.5]))

    def forward(self, x):
        return self.logits.expand(x.shape[0], 3)


class RegionModel(nn.Module):
    """Class 1's logit is 20 × the mean brightness of the top-left 4×4 region; class 0's is 0."""

    def forward(self, x):
        s = x[:, :, :4, :4].mean(dim=(1, 2, 3)) * 20
        return torch.stack([torch.zeros_like(s), s], dim=1)


def zoo_model(arch: str, inplace: bool = False) -> nn.Module:
    """A torchvision classifier with random weights (seed 0), ReLUs non-in-place unless asked."""
    import torchvision
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    if not inplace:
        for m in model.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
    return model


@pytest.fixture
def gapnet():
    torch.manual_seed(0)
    return GapNet().eval()


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.rand(6, 3, 16, 16)
