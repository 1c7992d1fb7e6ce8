"""Score-CAM on models as the pipeline builds them (Normalize inside, in-place ReLUs, residual adds).

Every reference code multiplies the network's *normalised* input by the masks; cambench models take
pixel images and normalise inside, so the default baseline ('mean') must give the same maps as the
references applied to the network behind the Normalize, on the normalised input.
"""
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cambench
from cambench.engine import CamError, capture, resolve_layer
from cambench.models import Normalize
from cambench.models.external import IMAGENET_MEAN, IMAGENET_STD

LAYER = "net.layer2"


def _randomise_bn(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def residual_model() -> nn.Sequential:
    """Normalize -> conv/BN/ReLU(inplace) stem -> two torchvision BasicBlocks (residual adds, in-place
    ReLUs) -> GAP + linear; 16 channels at 16x16 at the target layer for 64 px images. The head is
    scaled so that the logits (and so the masked-input scores) are far apart: the baseline matters."""
    from torchvision.models.resnet import BasicBlock
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1, bias=False), bn1=nn.BatchNorm2d(8), relu=nn.ReLU(inplace=True),
        pool=nn.MaxPool2d(2), layer1=BasicBlock(8, 8), layer2=BasicBlock(8, 16, stride=2, downsample=down),
        avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, 10)))
    with torch.no_grad():
        _randomise_bn(net)
        net.fc.weight.mul_(20.0)
    return nn.Sequential(OrderedDict(normalize=Normalize(IMAGENET_MEAN, IMAGENET_STD), net=net)).eval()


@pytest.fixture(scope="module")
def setup():
    model = residual_model()
    torch.manual_seed(1)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        z = model.normalize(x)                                   # the network's (normalised) input
        targets = torch.tensor([2, 5, 7])                        # index targets, not the predictions
    return model, x, z, targets


def _activations(net: nn.Module, layer: str, z: torch.Tensor) -> torch.Tensor:
    return capture(net, z, layer, need_gradients=False).activations


def grad_cam_scorecam(net, layer, z, targets):
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    with ScoreCAM(model=net, target_layers=[resolve_layer(net, layer)]) as cam:
        cam.batch_size = 64
        return cam(input_tensor=z, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def torchcam_weights(net, layer, z, targets):
    """A transcription of torchcam's ScoreCAM weights: each activation map min-max normalised at
    feature resolution (min subtracted, then divided by the max + 1e-8), bilinear up-sampling with
    align_corners=False, score = target logit of input * mask minus that of the unmasked input,
    softmax over the channels."""
    acts = _activations(net, layer, z)
    n, k = acts.shape[:2]
    a = acts - acts.amin(dim=(2, 3), keepdim=True)
    a = a / (a.amax(dim=(2, 3), keepdim=True) + 1e-8)
    up = F.interpolate(a, z.shape[2:], mode="bilinear", align_corners=False)
    scored = (up.unsqueeze(2) * z.unsqueeze(1)).reshape(n * k, *z.shape[1:])
    rows = torch.arange(n).repeat_interleave(k)
    with torch.no_grad():
        cic = net(scored) - net(z)[rows]
    return cic.gather(1, targets[rows, None]).squeeze(1).view(n, k).softmax(dim=1)


def official_maps(net, layer, z, targets):
    """A transcription of haofanwang/Score-CAM (cam/scorecam.py), one image at a time: for each
    channel, up-sample the activation (bilinear, align_corners=False), skip it if max == min,
    norm = (s - min) / (max - min), score = softmax(net(input * norm))[target], saliency += score * s;
    then ReLU and min-max."""
    acts = _activations(net, layer, z)
    h, w = z.shape[2:]
    maps = []
    with torch.no_grad():
        for i in range(z.shape[0]):
            saliency = torch.zeros(1, 1, h, w)
            for c in range(acts.shape[1]):
                s = F.interpolate(acts[i:i + 1, c:c + 1], size=(h, w), mode="bilinear", align_corners=False)
                if s.max() == s.min():
                    continue
                norm = (s - s.min()) / (s.max() - s.min())
                score = F.softmax(net(z[i:i + 1] * norm), dim=1)[0, targets[i]]
                saliency += score * s
            saliency = F.relu(saliency)
            maps.append(((saliency - saliency.min()) / (saliency.max() - saliency.min()))[0, 0])
    return torch.stack(maps)


def test_scorecam_matches_grad_cam_on_the_normalised_input(setup):
    """Default baseline 'mean': our maps on the pixel images equal pytorch-grad-cam's ScoreCAM on
    the normalised input applied to the network behind the Normalize, and ours on that network
    (no Normalize: baseline 0). 'black' masks the pixels (masked-out pixels black): other maps."""
    model, x, z, targets = setup
    ref = grad_cam_scorecam(model.net, "layer2", z, targets)
    ours = cambench.explain(model, x, "scorecam", LAYER, targets=targets)
    assert np.abs(ours.numpy() - ref).max() <= 1e-5
    inner = cambench.explain(model.net, z, "scorecam", "layer2", targets=targets)
    assert (ours - inner).abs().max() <= 1e-5
    chunked = cambench.explain(model, x, "scorecam", LAYER, targets=targets, chunk_size=7, batch_size=2)
    assert (ours - chunked).abs().max() <= 1e-6
    black = cambench.explain(model, x, "scorecam", LAYER, targets=targets, baseline="black")
    assert np.abs(black.numpy() - ref).max() > 0.05


def test_sycam_score_terminal_masks_like_scorecam(setup):
    """SyCAM's 'score' terminal runs the registered scorecam (default baseline): its channel
    weights equal pytorch-grad-cam's ScoreCAM weights on the normalised input."""
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cambench.sycam import TerminalSet
    model, x, z, targets = setup
    inputs = capture(model, x, LAYER, targets, need_gradients=False)
    ours = TerminalSet(inputs)["score"]
    layer = model.net.layer2
    with ScoreCAM(model=model.net, target_layers=[layer]) as cam:
        cam.batch_size = 64
        ref = cam.get_cam_weights(z, layer, [ClassifierOutputTarget(int(t)) for t in targets],
                                  inputs.activations.numpy(), None)
    assert np.abs(ours.numpy() - ref).max() <= 1e-5


def test_torchcam_variant_normalises_at_feature_resolution(setup):
    """variant 'torchcam' against a transcription of torchcam's ScoreCAM on the normalised input:
    the channel weights and the signed maps (sum_k w_k A^k) agree."""
    model, x, z, targets = setup
    expected = torchcam_weights(model.net, "layer2", z, targets)
    result = cambench.explain_many(model, x, {"scorecam": {"variant": "torchcam"}}, LAYER, targets=targets)
    torch.testing.assert_close(result.weights["scorecam"], expected, rtol=1e-5, atol=1e-6)
    acts = _activations(model.net, "layer2", z)
    torch.testing.assert_close(result.raw["scorecam"], (expected[:, :, None, None] * acts).sum(1),
                               rtol=1e-5, atol=1e-5)
    # The mask order alone: baseline 'black' = torchcam given the pixel images and the whole model.
    black = cambench.explain_many(model, x, {"scorecam": {"variant": "torchcam", "baseline": "black"}},
                                  LAYER, targets=targets)
    torch.testing.assert_close(black.weights["scorecam"], torchcam_weights(model, LAYER, x, targets),
                               rtol=1e-5, atol=1e-6)


def test_official_variant_matches_the_authors_code(setup):
    """variant 'official' against a transcription of the authors' code on the normalised input."""
    model, x, z, targets = setup
    expected = official_maps(model.net, "layer2", z, targets)
    ours = cambench.explain(model, x, "scorecam", LAYER, targets=targets, variant="official")
    assert (ours - expected).abs().max() <= 1e-5


def dead_channel_model() -> nn.Sequential:
    """Normalize -> conv/BN/ReLU -> pool -> conv/BN/ReLU(inplace) -> GAP + linear, with channel 0 of
    the second block dead: zero conv weights, BN bias 0.3, so it is exactly 0.3 everywhere."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1), bn1=nn.BatchNorm2d(8), relu1=nn.ReLU(),
        pool=nn.MaxPool2d(2), conv2=nn.Conv2d(8, 8, 3, padding=1, bias=False), bn2=nn.BatchNorm2d(8),
        relu2=nn.ReLU(inplace=True), avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(8, 5)))
    with torch.no_grad():
        net.fc.weight.mul_(5.0)
        net.conv2.weight[0].zero_()
        net.bn2.bias[0] = 0.3
    return nn.Sequential(OrderedDict(normalize=Normalize(IMAGENET_MEAN, IMAGENET_STD), net=net)).eval()


def test_constant_channel_is_scored_with_the_baseline_image():
    """A dead (exactly constant) channel has an all-zero mask: its score is that of the baseline
    image (every pixel the normalisation mean), no NaN, and the map is not zeroed. pytorch-grad-cam
    instead min-max normalises the up-sampling round-off of the constant map into a full-range mask
    (docs/methods.md §4)."""
    model = dead_channel_model()
    torch.manual_seed(2)
    x = torch.rand(4, 3, 32, 32)
    result = cambench.explain_many(model, x, ["scorecam"], "net.relu2")
    acts = _activations(model, "net.relu2", x)
    assert (acts[:, 0] == 0.3).all()
    up = torch.nn.UpsamplingBilinear2d(size=(32, 32))(acts[:, :1])           # grad-cam's mask of it
    gc_mask = (up - up.amin(dim=(2, 3), keepdim=True)) / (
        up.amax(dim=(2, 3), keepdim=True) - up.amin(dim=(2, 3), keepdim=True) + 1e-8)
    assert gc_mask.amax() > 0.5
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        scores = []
        for c in range(acts.shape[1]):
            a = F.interpolate(acts[:, c:c + 1], size=(32, 32), mode="bilinear", align_corners=True)
            lo, hi = a.amin(dim=(2, 3), keepdim=True), a.amax(dim=(2, 3), keepdim=True)
            m = torch.zeros_like(a) if c == 0 else (a - lo) / (hi - lo + 1e-8)
            scores.append(model(mean + m * (x - mean)).gather(1, result.targets[:, None]).squeeze(1))
        baseline_score = model(mean.expand(4, 3, 32, 32)).gather(1, result.targets[:, None]).squeeze(1)
    torch.testing.assert_close(scores[0], baseline_score, rtol=1e-5, atol=1e-5)
    expected = torch.stack(scores, dim=1).softmax(dim=1)
    weights = result.weights["scorecam"]
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(weights).all() and torch.isfinite(result.maps["scorecam"]).all()
    assert (result.flags["scorecam"] == 0).all()
    assert (result.maps["scorecam"].flatten(1).amax(1) > 0.99).all()          # not zeroed


def test_baseline_must_be_a_known_value(setup):
    model, x, _, _ = setup
    with pytest.raises(CamError, match="parameter 'baseline' of method 'scorecam' must be .*'mean'.*'black'"):
        cambench.explain(model, x[:1], "scorecam", LAYER, baseline="grey")
