"""What every architecture shares: the registry, the normalising first module, the conv block, and
small_cnn, the default architecture.

Every model takes pixel-space images in [0, 1] and normalises them itself (its first module), so
perturbations and metric substrates are defined in pixel space for every model alike
(docs/models.md §3). The other architecture modules import from here, never from the package.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from ..registry import Registry

ARCHITECTURES = Registry("architecture")


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers, saved with the weights."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """conv 3x3 (no bias) + BN + ReLU, the unit of small_cnn and the zoo's 2D trunks."""
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                                     bn=nn.BatchNorm2d(c_out), relu=nn.ReLU(inplace=True)))


@ARCHITECTURES.register("small_cnn", bounds={"widths": "each int [1, inf)", "in_channels": "int [1, inf)"},
                        dims=2, default_target_layer="features.block4",
                        summary="4 conv blocks, 2 max-pools, global average pooling + linear (a CAM-able head)")
def small_cnn(n_classes: int, in_channels: int = 3, mean: list[float] | None = None,
              std: list[float] | None = None, widths: list[int] = (16, 32, 64, 64)) -> nn.Module:
    w1, w2, w3, w4 = widths
    model = nn.Sequential(OrderedDict(
        normalize=Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels),
        features=nn.Sequential(OrderedDict(
            block1=conv_block(in_channels, w1), pool1=nn.MaxPool2d(2),
            block2=conv_block(w1, w2), pool2=nn.MaxPool2d(2),
            block3=conv_block(w2, w3), block4=conv_block(w3, w4))),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc=nn.Linear(w4, n_classes),
    ))
    model.cam_fc_layer = "fc"  # the GAP + linear head that CAM (Zhou et al.) reads its weights from
    return model
