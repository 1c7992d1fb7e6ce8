"""Perturbation, activation and multi-layer CAMs: oracles, identities (docs/reliability.md §2), 3D, known answers."""
import numpy as np
import pytest
import torch
from conftest import GapNet, zoo_model
from torch import nn

import cambench
from cambench.engine import CamError, capture, postprocess, resolve_layer
from cambench.methods.activation import principal_projection
from cambench.metrics import evaluate

REFERENCE = {"scorecam": "ScoreCAM", "ablationcam": "AblationCAM", "eigencam": "EigenCAM",
             "eigengradcam": "EigenGradCAM"}
ZOO = [("resnet18", "layer4", 64, 2), ("resnet50", "layer4", 48, 1), ("vgg16", "features.28", 48, 1)]


def reference(model, layers, x, cls, targets):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    with getattr(pytorch_grad_cam, cls)(model=model, target_layers=layers) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])


@pytest.mark.parametrize("arch,layer,size,n", ZOO)
@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_perturbation_methods_match_grad_cam_package(arch, layer, size, n, method):
    model = zoo_model(arch)
    torch.manual_seed(1)
    x = torch.randn(n, 3, size, size)
    targets = model(x).argmax(1)
    ours = cambench.explain(model, x, method, layer).numpy()
    ref = reference(model, [resolve_layer(model, layer)], x, REFERENCE[method], targets)
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_eigen_methods_match_grad_cam_package_up_to_the_svd_sign(method):
    """pytorch-grad-cam does not correct the SVD's arbitrary sign; compare with ours uncorrected.

    NumPy's and torch's SVD may pick opposite signs, so the signed maps agree up to a sign per image:
    every image's map is aligned to grad-cam's sign and post-processed again, and all are compared.
    """
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
    model = zoo_model("resnet18")
    x = torch.randn(3, 3, 64, 64)
    result = cambench.explain_many(model, x, {method: {"sign_correction": False}}, "layer4")
    inputs = capture(model, x, model.layer4)
    signal = inputs.activations if method == "eigencam" else inputs.activations * inputs.gradients
    ref_raw = torch.from_numpy(get_2d_projection(signal.numpy()))
    ours_raw = result.raw[method]
    sign = torch.where((ours_raw * ref_raw).flatten(1).sum(1) < 0, -1.0, 1.0)
    aligned = ours_raw * sign[:, None, None]
    assert (aligned - ref_raw).abs().max() < 1e-4
    ref = reference(model, [model.layer4], x, REFERENCE[method], inputs.targets)
    maps = result.maps[method].where(sign[:, None, None] > 0, postprocess(aligned, x.shape[2:])[0])
    assert np.abs(maps.numpy() - ref).max() <= 1e-5


def test_layercam_mean_fusion_matches_grad_cam_package_on_several_layers():
    model = zoo_model("resnet18")
    x = torch.randn(2, 3, 64, 64)
    targets = model(x).argmax(1)
    ours = cambench.explain(model, x, "layercam_ms", "layer4", layers=["layer2", "layer3"], fusion="mean")
    ref = reference(model, [model.layer2, model.layer3, model.layer4], x, "LayerCAM", targets)
    assert np.abs(ours.numpy() - ref).max() <= 1e-5


def test_layercam_max_fusion_is_at_the_finest_resolution_and_one_backward(gapnet, images, monkeypatch):
    """fusion='max' (the default) against a hand computation on ResNet-18 stages of 8x8, 4x4 and 2x2:
    ReLU(sum_k ReLU(G^k) A^k) per layer, divided by its max, tanh(2 M) on the shallower ones,
    bilinear up-sampling to the finest map, element-wise max; one autograd.grad call for all."""
    model = zoo_model("resnet18")
    torch.manual_seed(4)
    x = torch.randn(3, 3, 64, 64)
    targets = model(x).argmax(1)
    names = ["layer2", "layer3", "layer4"]
    acts = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o)) for n in names]
    scores = model(x).gather(1, targets[:, None]).sum()
    for h in hooks:
        h.remove()
    grads = dict(zip(names, torch.autograd.grad(scores, [acts[n] for n in names])))
    maps = [(grads[n].clamp_min(0) * acts[n]).sum(1).clamp_min(0).detach() for n in names]
    maps = [m / (m.flatten(1).max(1).values.view(-1, 1, 1) + 1e-7) for m in maps]
    maps = [torch.tanh(2.0 * m) for m in maps[:-1]] + maps[-1:]
    up = [torch.nn.functional.interpolate(m[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
          for m in maps]
    expected = torch.maximum(torch.maximum(up[0], up[1]), up[2])
    calls = []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real_grad(*a, **k))
    result = cambench.explain_many(model, x, {"layercam_ms": {"layers": ["layer2", "layer3"]}}, "layer4",
                                   targets=targets)
    assert len(calls) == 1
    assert result.raw["layercam_ms"].shape == (3, 8, 8)
    torch.testing.assert_close(result.raw["layercam_ms"], expected, rtol=1e-4, atol=1e-5)
    assert (expected > 0).any() and not torch.equal(up[0], expected)  # every term takes part somewhere
    with pytest.raises(CamError, match="needs 'layers'"):
        cambench.explain(gapnet, images, "layercam_ms", "features")
    with pytest.raises(CamError, match="no submodule 'nope'"):
        cambench.explain(gapnet, images, "layercam_ms", "features", layers=["nope"])


# ------------------------------------------------------------------------------------------------
# Identities (docs/reliability.md §2)
# ------------------------------------------------------------------------------------------------

def test_cam_equals_gradient_methods_times_z_on_gap_linear_heads(gapnet, images):
    """Identity 1: pre-ReLU Grad-CAM = HiResCAM = CAM / Z; after post-processing all are equal."""
    result = cambench.explain_many(gapnet, images, {"cam": {"fc_layer": "fc"}, "gradcam": {}, "hirescam": {}},
                                   "features")
    z = 16 * 16
    torch.testing.assert_close(result.raw["gradcam"], result.raw["cam"] / z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.raw["hirescam"], result.raw["cam"] / z, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.maps["cam"], result.maps["gradcam"], rtol=0, atol=1e-5)


def test_cam_needs_a_linear_head_matching_the_layer(gapnet, images):
    with pytest.raises(CamError, match="needs 'fc_layer'"):
        cambench.explain(gapnet, images, "cam", "features")
    with pytest.raises(CamError, match="expected nn.Linear"):
        cambench.explain(gapnet, images, "cam", "features", fc_layer="pool")
    with pytest.raises(CamError, match="takes 256 features but the target layer has 4 channels"):
        cambench.explain(FlatHead().eval(), torch.rand(2, 3, 8, 8), "cam", "features", fc_layer="fc")


class FlatHead(nn.Module):
    """conv -> ReLU -> flatten -> linear: the HiResCAM sum rule's setting (identity 2)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def test_hirescam_sum_rule():
    """Identity 2: sum of the signed HiResCAM map = y^c - b^c."""
    torch.manual_seed(0)
    model = FlatHead().eval()
    x = torch.rand(4, 3, 8, 8)
    result = cambench.explain_many(model, x, ["hirescam"], "features")
    expected = result.scores - model.fc.bias.detach()[result.targets]
    torch.testing.assert_close(result.raw["hirescam"].sum(dim=(1, 2)), expected, rtol=1e-5, atol=1e-5)


def test_layercam_is_relu_hirescam_when_gradients_are_non_negative(images):
    """Identity 6 on a GAP + linear net with non-negative head weights."""
    torch.manual_seed(0)
    model = GapNet().eval()
    with torch.no_grad():
        model.fc.weight.abs_()
    methods = {"layercam": {}, "hirescam": {}, "cam": {"fc_layer": "fc"}}
    result = cambench.explain_many(model, images, methods, "features", targets=[1] * 6)
    torch.testing.assert_close(result.raw["layercam"], result.raw["hirescam"].clamp_min(0))
    torch.testing.assert_close(result.raw["layercam"], result.raw["cam"].clamp_min(0) / 256, rtol=1e-4, atol=1e-7)


def test_ablationcam_weights_on_gap_linear_heads(gapnet, images):
    """Identity 7: with ablation value 0, weight_k = w_k S_k / (Z y^c)."""
    inputs = capture(gapnet, images, gapnet.features, need_gradients=False)
    from cambench.methods.perturbation import ablationcam
    weights = ablationcam(inputs, ablation_value=0.0)
    w = gapnet.fc.weight.detach()[inputs.targets]
    s = inputs.activations.sum(dim=(2, 3))
    expected = w * s / (256 * inputs.scores[:, None])
    torch.testing.assert_close(weights, expected, rtol=1e-4, atol=1e-6)


def test_ablationcam_agrees_with_captum_layer_feature_ablation_in_3d():
    """Captum's LayerFeatureAblation gives y^c - y^c(-k): the Ablation-CAM numerator."""
    from captum.attr import LayerFeatureAblation
    torch.manual_seed(0)
    model = GapNet(dims=3, in_channels=1).eval()
    x = torch.randn(2, 1, 6, 8, 8)
    inputs = capture(model, x, model.features, need_gradients=False)
    from cambench.methods.perturbation import ablationcam
    weights = ablationcam(inputs, ablation_value=0.0)
    k = inputs.activations.shape[1]
    mask = torch.arange(k).view(1, k, 1, 1, 1)
    drop = LayerFeatureAblation(model, model.features).attribute(
        x, target=inputs.targets, layer_baselines=0.0, layer_mask=mask)[:, :, 0, 0, 0]
    torch.testing.assert_close(weights, drop / inputs.scores[:, None], rtol=1e-4, atol=1e-6)


class SkipHead(nn.Module):
    """The part after the target layer also reads the input: the head cannot be replayed alone."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 + 3, 3)

    def forward(self, x):
        return self.fc(torch.cat([self.features(x).mean(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1))


@pytest.mark.parametrize("model_cls", [GapNet, SkipHead])
def test_ablationcam_equals_brute_force_ablation_with_and_without_head_replay(model_cls, images):
    """Replaying only the head must give what a full forward with the channel zeroed gives."""
    torch.manual_seed(0)
    model = model_cls().eval()
    layer = model.features
    inputs = capture(model, images, layer, need_gradients=False)
    from cambench.methods.perturbation import ablationcam
    weights = ablationcam(inputs, ablation_value=0.0, chunk_size=5)
    assert inputs.session._replay_direct is (model_cls is GapNet)
    k = inputs.activations.shape[1]
    expected = torch.empty_like(weights)
    for channel in range(k):
        def zero(_m, _i, out, c=channel):
            out = out.clone()
            out[:, c] = 0
            return out
        handle = layer.register_forward_hook(zero)
        with torch.no_grad():
            ablated = model(images).gather(1, inputs.targets[:, None]).squeeze(1)
        handle.remove()
        expected[:, channel] = (inputs.scores - ablated) / inputs.scores
    torch.testing.assert_close(weights, expected, rtol=1e-4, atol=1e-6)


def test_eigencam_rank_one_identity():
    """Identity 8: rank-one activations u_k P give Norm(ReLU(P - mean P)) after sign correction."""
    torch.manual_seed(0)
    pattern = torch.full((9, 9), 0.1)
    pattern[3:6, 4:7] = 2.0                        # one bright blob: the largest |value| is positive
    u = torch.rand(2, 6) + 0.1
    acts = u[:, :, None, None] * pattern
    proj = principal_projection(-acts, sign_correction=True)   # -acts: the sign must not matter
    centred = pattern - pattern.mean()
    for i in range(2):
        torch.testing.assert_close(proj[i], centred * u[i].norm(), rtol=1e-4, atol=1e-5)


def test_scorecam_variants_agree_when_masks_need_no_upsampling(gapnet, images):
    """Identity 9: softmax is shift-invariant, so 'torchcam' = 'pgc' when both use the same masks
    (the target layer is at input resolution here, so align_corners does not matter)."""
    result = cambench.explain_many(gapnet, images, {"scorecam": {"variant": "pgc"}}, "features")
    other = cambench.explain_many(gapnet, images, {"scorecam": {"variant": "torchcam"}}, "features")
    torch.testing.assert_close(result.raw["scorecam"], other.raw["scorecam"], rtol=1e-5, atol=1e-6)


def test_scorecam_chunking_and_memory_budget_are_invisible(gapnet, images):
    whole = cambench.explain(gapnet, images, "scorecam", "features")
    chunked = cambench.explain(gapnet, images, "scorecam", "features", chunk_size=7)
    batched = cambench.explain(gapnet, images, "scorecam", "features", batch_size=4)
    tiny_budget = cambench.explain(gapnet, images, "scorecam", "features", memory_mb=0.5)
    torch.testing.assert_close(whole, chunked)
    torch.testing.assert_close(whole, tiny_budget)
    torch.testing.assert_close(whole, batched)


def test_scorecam_weights_equal_brute_force_including_constant_channels(images):
    """Channel by channel: mask = Norm(A^k) (eps-guarded, so a constant channel masks everything),
    score = target logit of the masked image, weights = softmax over channels."""
    torch.manual_seed(0)
    model = GapNet().eval()
    with torch.no_grad():
        model.features.conv2.weight[:3].zero_()
        model.features.conv2.bias[:3] = 0.3      # three constant channels
    inputs = capture(model, images, model.features, need_gradients=False)
    from cambench.methods.perturbation import scorecam
    weights = scorecam(inputs)
    scores = []
    for k in range(inputs.activations.shape[1]):
        a = inputs.activations[:, k:k + 1]
        lo = a.amin(dim=(2, 3), keepdim=True)
        hi = a.amax(dim=(2, 3), keepdim=True)
        with torch.no_grad():
            logits = model(images * (a - lo) / (hi - lo + 1e-8))
        scores.append(logits.gather(1, inputs.targets[:, None]).squeeze(1))
    expected = torch.stack(scores, dim=1).softmax(dim=1)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weights[:, 0], weights[:, 2])


def test_scorecam_official_variant_needs_classes(gapnet, images):
    with pytest.raises(CamError, match="needs class targets"):
        cambench.explain(gapnet, images, "scorecam", "features", variant="official",
                         targets=lambda logits: logits[:, 0])
    with pytest.raises(CamError, match=r"^method 'scorecam': parameter 'variant' of method 'scorecam' must be one of "
                                       r"'pgc', 'torchcam', 'official'"):
        cambench.explain(gapnet, images, "scorecam", "features", variant="fast")


# ------------------------------------------------------------------------------------------------
# Every registered method: 3D, and known-answer localisation on planted objects
# ------------------------------------------------------------------------------------------------

# Parameters a method cannot run without on these small GAP + linear nets.
NEEDED = {"layercam_ms": {"layers": ["features.conv1"]}, "cam": {"fc_layer": "fc"}}
OWN_MODEL = {"amecam"}  # needs a trained multi-exit model: tests/test_amecam.py covers it (2D and 3D)


@pytest.mark.parametrize("method", [m for m in cambench.methods() if m not in OWN_MODEL])
def test_every_method_runs_in_3d(method):
    torch.manual_seed(0)
    model = GapNet(dims=3, in_channels=1).eval()
    x = torch.randn(3, 1, 6, 10, 10)
    result = cambench.explain_many(model, x, {method: NEEDED.get(method, {})}, "features")
    maps = result.maps[method]
    assert maps.shape == (3, 6, 10, 10)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert (maps.flatten(1).amax(1) > 1 - 1e-5).all(), "every map should span [0, 1] on random data"


@pytest.fixture(scope="module")
def planted():
    """A small CNN trained for a few seconds on one-object shape images (32 px) with their masks."""
    from cambench.data.synthetic import SHAPES, render
    from cambench.models import accuracy, small_cnn, train_classifier

    def make(per_class, split):
        images, masks, labels = [], [], []
        for label, shape in enumerate(SHAPES[:4]):
            for i in range(per_class):
                image, mask = render(shape, np.random.default_rng([split, label, i]), size=32,
                                     scale=(0.18, 0.3), clutter=4)
                images.append(image)
                masks.append(mask)
                labels.append(label)
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        return x, torch.from_numpy(np.stack(masks)), torch.tensor(labels)

    torch.manual_seed(0)
    x_train, _, y_train = make(300, 0)
    x_test, m_test, y_test = make(16, 1)
    model = small_cnn(4, widths=[16, 32, 32, 32])
    train_classifier(model, x_train, y_train, epochs=15, batch_size=32, lr=0.01, weight_decay=1e-4, seed=0)
    assert accuracy(model, x_test, y_test) >= 0.75
    return model.eval(), x_test, m_test


PLANTED_PARAMS = {"layercam_ms": {"layers": ["features.block2", "features.block3"]}}


def chance_hit_rate(masks):
    """Expected pointing-game score of a uniformly random peak at 2 px tolerance (d^2 < 4): the
    fraction of pixels whose 3 x 3 neighbourhood touches the mask."""
    near = torch.nn.functional.max_pool2d(masks.float()[:, None], 3, stride=1, padding=1)
    return float(near.mean())


@pytest.mark.parametrize("method", [m for m in cambench.methods() if m not in OWN_MODEL])
def test_every_method_finds_the_planted_object(planted, method):
    """Pointing game (2 px tolerance at 32 px) far above the chance rate (about 0.2 here).

    Finer-CAM explains what separates the class from its nearest rivals, so it may point at a
    discriminative part outside the drawn mask more often; the bar is the same for all."""
    model, x, masks = planted
    maps = cambench.explain(model, x, method, "features.block4", **PLANTED_PARAMS.get(method, {}))
    hits = evaluate(model, x, maps, "pointing_game", masks=masks, tolerance_px=2)
    chance = chance_hit_rate(masks)
    assert 0.1 < chance < 0.3
    assert hits.nanmean() >= chance + 0.3, f"{method}: pointing game {hits.nanmean():.3f}, chance {chance:.3f}"

