"""Paper-specific architectures: the CIFAKE CNN, a 3D CNN for CT, and an attention CNN for street scenes.

All follow the conventions of :mod:`cambench.models`: pixel images in [0, 1] go in, the first
module ``normalize`` standardises them, and the output is (N, n_classes) logits whose argmax is
the prediction. Heads of global average pooling + linear set ``model.cam_fc_layer`` so that CAM
(Zhou et al.) applies.

* ``cifake_cnn`` -- docs/papers.md §9. The paper's exact best topology is not known; this is the
  project's stand-in: 2 conv layers of 32 filters 3x3 (valid padding, as Keras' default) with
  ReLU and 2x2 max-pool, one dense layer and a sigmoid output unit.
* ``small_cnn3d`` -- docs/papers.md §10. CovidNet3D's searched nets end in 3D GAP + linear, so plain CAM
  gives a D x H x W map; this is a tiny 3D CNN of that kind for the stand-in volumes.
* ``attention_cnn`` -- docs/papers.md §12 (v2): "a new attention module (channel-, point- and
  spatial-wise attention) on top of CNN backbones". The module's exact form is not published;
  ours is our reading: squeeze-excitation channel gate, a 1x1-conv point-wise gate and a
  CBAM-style spatial gate, applied one after the other.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import ARCHITECTURES, Normalize, conv_block


def _widths(name: str, widths: Sequence[int], pools: int) -> list[int]:
    widths = [int(w) for w in widths]
    if not widths or min(widths) < 1:
        raise ValueError(f"{name}: widths must be a non-empty list of positive ints, got {widths}")
    if not 0 <= int(pools) < len(widths):
        raise ValueError(f"{name}: pools must be between 0 and len(widths) - 1 = {len(widths) - 1}, got {pools}")
    return widths


def _n_classes(name: str, n_classes: int) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"{name}: n_classes must be an integer >= 2, got {n_classes!r}")
    return n_classes


def _normalize(in_channels: int, mean: list[float] | None, std: list[float] | None) -> Normalize:
    return Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels)


# --------------------------------------------------------------------------------------------
# cifake_cnn (docs/papers.md §9)
# --------------------------------------------------------------------------------------------

class SigmoidAsTwoLogits(nn.Module):
    """The single sigmoid logit ``z`` (N, 1) as two columns ``[-z/2, z/2]`` (N, 2).

    The engine and the metrics expect (N, n_classes) logits whose argmax is the prediction and
    whose softmax gives class probabilities. With ``[-z/2, z/2]``:

    * ``softmax(...)[1] = e^(z/2) / (e^(-z/2) + e^(z/2)) = 1 / (1 + e^(-z)) = sigmoid(z)``, so the
      second class's probability is exactly the sigmoid output, and the first's is ``1 - sigmoid(z)``;
    * argmax is class 1 iff ``z > 0`` iff ``sigmoid(z) > 0.5`` (the sigmoid classifier's decision);
    * cross-entropy on the two columns equals binary cross-entropy on ``z`` (so training is the
      sigmoid network's training), and the class-1 score's gradient is ``dz/2``: Grad-CAM maps,
      normalised per image, are the same as for the sigmoid logit itself.

    Class 1 is the sigmoid's positive class; with classes in sorted folder order (FAKE, REAL) as in
    Keras' ``flow_from_directory``, that is REAL.
    """

    def forward(self, z: Tensor) -> Tensor:
        half = z / 2
        return torch.cat([-half, half], dim=1)


class _FlattenChecked(nn.Flatten):
    """Flatten, with a clear error when the image size is not the one the dense layer was built for."""

    def __init__(self, shape: tuple[int, ...], image_size: int):
        super().__init__()
        self.shape, self.image_size = tuple(shape), image_size

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"cifake_cnn was built for {self.image_size}x{self.image_size} images (params.image_size) "
                             f"but got features {tuple(x.shape[1:])} instead of {self.shape}")
        return super().forward(x)


@ARCHITECTURES.register("cifake_cnn", dims=2, default_target_layer="features.relu2",
                        summary="CIFAKE stand-in (Bird & Lotfi): 2 x (conv 32 3x3 + ReLU + max-pool), dense, "
                                "sigmoid output emitted as two logits [-z/2, z/2]; no GAP head (no CAM)")
def cifake_cnn(n_classes: int = 2, in_channels: int = 3, mean: list[float] | None = None,
               std: list[float] | None = None, width: int = 64, filters: int = 32,
               image_size: int = 32) -> nn.Module:
    """The CIFAKE binary classifier (REAL vs FAKE). ``n_classes`` must be 2 (one sigmoid unit).

    Default target layer ``features.relu2``: the output of the last conv layer after its ReLU,
    i.e. what Grad-CAM reads at "the final conv layer" of a Keras ``Conv2D(activation='relu')``.
    The dense layer is sized for ``image_size`` x ``image_size`` inputs (CIFAKE: 32).
    """
    if n_classes != 2:
        raise ValueError(f"cifake_cnn is a binary (sigmoid) classifier: n_classes must be 2, got {n_classes!r}")
    if int(width) < 1 or int(filters) < 1:
        raise ValueError(f"cifake_cnn: width and filters must be positive, got width={width}, filters={filters}")
    size = (int(image_size) - 2) // 2   # valid 3x3 conv, then 2x2 max-pool
    size = (size - 2) // 2
    if size < 1:
        raise ValueError(f"cifake_cnn: image_size must be at least 10, got {image_size}")
    model = nn.Sequential(OrderedDict(
        normalize=_normalize(in_channels, mean, std),
        features=nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(in_channels, filters, 3), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(filters, filters, 3), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2))),
        flatten=_FlattenChecked((filters, size, size), int(image_size)),
        dense=nn.Linear(filters * size * size, width),
        relu=nn.ReLU(),
        out=nn.Linear(width, 1),            # the sigmoid unit's logit z
        logits=SigmoidAsTwoLogits(),
    ))
    return model  # no cam_fc_layer: the head is flatten + dense, not GAP + linear


# --------------------------------------------------------------------------------------------
# small_cnn3d (docs/papers.md §10)
# --------------------------------------------------------------------------------------------

def _block3d(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
                                     bn=nn.BatchNorm3d(c_out), relu=nn.ReLU(inplace=True)))


@ARCHITECTURES.register("small_cnn3d", dims=3, default_target_layer="features.-1",
                        summary="3D CNN for CT volumes (N, C, D, H, W): conv3d + BN + ReLU blocks, max-pools, "
                                "3D global average pooling + linear (a CAM-able head)")
def small_cnn3d(n_classes: int, in_channels: int = 1, mean: list[float] | None = None,
                std: list[float] | None = None, widths: list[int] = (8, 16, 32, 32), pools: int = 2) -> nn.Module:
    """Blocks ``features.block1 .. block<L>``, a 2x max-pool after each of the first ``pools`` blocks
    (so depth, height and width must be at least ``2**pools``), then GAP + ``fc``.

    Default target layer ``features.-1``: the last block (its ReLU output), whose channels the
    head's weights refer to, so CAM and Grad-CAM give D' x H' x W' maps up-sampled to the volume.
    """
    n_classes = _n_classes("small_cnn3d", n_classes)
    widths = _widths("small_cnn3d", widths, pools)
    model = nn.Sequential(OrderedDict(
        normalize=_normalize(in_channels, mean, std),
        features=_small_trunk(in_channels, widths, pools, dims=3),
        pool=nn.AdaptiveAvgPool3d(1),
        flatten=nn.Flatten(),
        fc=nn.Linear(widths[-1], n_classes),
    ))
    model.cam_fc_layer = "fc"
    return model


# --------------------------------------------------------------------------------------------
# attention_cnn (docs/papers.md §12)
# --------------------------------------------------------------------------------------------

class ChannelAttention(nn.Module):
    """Squeeze-excitation: GAP -> 1x1 conv (C -> C/r) -> ReLU -> 1x1 conv (C/r -> C) -> sigmoid, per channel."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.excite = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                    nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return self.excite(self.squeeze(x))          # (N, C, 1, 1)


class PointAttention(nn.Module):
    """Point-wise gate: a 1x1 conv (C -> C) and a sigmoid, one weight per channel and position."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(x))           # (N, C, H, W)


class SpatialAttention(nn.Module):
    """CBAM-style spatial gate: channel mean and max maps -> k x k conv -> sigmoid, one weight per position."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"attention_cnn: spatial_kernel must be a positive odd integer, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))      # (N, 1, H, W)


class AttentionModule(nn.Module):
    """Channel-wise, then point-wise, then spatial attention, each a multiplicative gate on the features.

    The output (the attended features, same shape as the input) is what the head pools, so the
    module itself is the natural CAM target layer.
    """

    def __init__(self, channels: int, reduction: int = 4, spatial_kernel: int = 7):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.point = PointAttention(channels)
        self.spatial = SpatialAttention(spatial_kernel)

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.channel(x)
        x = x * self.point(x)
        return x * self.spatial(x)


def _small_trunk(in_channels: int, widths: list[int], pools: int, dims: int = 2) -> nn.Sequential:
    """small_cnn's trunk (2D or 3D): conv 3x3 + BN + ReLU blocks, a 2x max-pool after each of the
    first ``pools`` blocks."""
    block, pool = (conv_block, nn.MaxPool2d) if dims == 2 else (_block3d, nn.MaxPool3d)
    layers, c_in = OrderedDict(), in_channels
    for i, width in enumerate(widths, start=1):
        layers[f"block{i}"] = block(c_in, width)
        if i <= pools:
            layers[f"pool{i}"] = pool(2)
        c_in = width
    return nn.Sequential(layers)


def _resnet18_trunk(in_channels: int) -> nn.Sequential:
    import torchvision
    if in_channels != 3:
        raise ValueError(f"attention_cnn: backbone 'resnet18' takes 3-channel images, got in_channels={in_channels}")
    net = torchvision.models.resnet18(weights=None)  # random initialisation: nothing is downloaded
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in
                                     ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")))


@ARCHITECTURES.register("attention_cnn", dims=2, default_target_layer="attention",
                        summary="street-scene classifier: conv backbone (small trunk or resnet18) + attention "
                                "module (channel SE, point-wise 1x1 gate, CBAM spatial gate), GAP + linear")
def attention_cnn(n_classes: int, in_channels: int = 3, mean: list[float] | None = None,
                  std: list[float] | None = None, backbone: str = "small", widths: list[int] = (16, 32, 64, 64),
                  pools: int = 2, reduction: int = 4, spatial_kernel: int = 7) -> nn.Module:
    """``backbone``: ``"small"`` (small_cnn's trunk: blocks of ``widths``, a 2x max-pool after the
    first ``pools``) or ``"resnet18"`` (torchvision's ResNet-18 up to ``layer4``, random weights;
    3 channels; ``widths``/``pools`` unused). Then ``attention``, GAP and ``fc``.

    Default target layer ``attention``: the attended features, the ones the head pools.
    """
    n_classes = _n_classes("attention_cnn", n_classes)
    if backbone == "small":
        widths = _widths("attention_cnn", widths, pools)
        trunk, channels = _small_trunk(in_channels, widths, pools), widths[-1]
    elif backbone == "resnet18":
        trunk, channels = _resnet18_trunk(in_channels), 512
    else:
        raise ValueError(f"attention_cnn: backbone must be 'small' or 'resnet18', got {backbone!r}")
    if int(reduction) < 1:
        raise ValueError(f"attention_cnn: reduction must be >= 1, got {reduction}")
    model = nn.Sequential(OrderedDict(
        normalize=_normalize(in_channels, mean, std),
        backbone=trunk,
        attention=AttentionModule(channels, int(reduction), int(spatial_kernel)),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc=nn.Linear(channels, n_classes),
    ))
    model.cam_fc_layer = "fc"
    return model
