"""In-place operations after the target layer change no map.

torchvision's ResNet adds the identity in place (``out += identity``) right after ``bn2`` and
VGG runs ``ReLU(inplace=True)`` right after ``features.28``; both rewrite the target layer's
output tensor. Every registered method, computed together in one ``explain_many`` call on the
models as the pipeline builds them (Normalize inside), must equal the same network with every
in-place operation made out-of-place; the gradient methods must also equal ``grad-cam`` on the
normalised input.
"""
import copy

import numpy as np
import pytest
import torch
from torchvision.models.resnet import BasicBlock

import cambench
from cambench.engine import method_applies, postprocess, resolve_layer
from cambench.models.external import resnet18, vgg16

# (architecture, target layer, extra layers for layercam_ms, image size, images, memory_mb)
CASES = {"resnet18": (resnet18, "net.layer4.1.bn2", ["net.layer3"], 48, 2, 64),
         "vgg16": (vgg16, "net.features.28", ["net.features.21"], 32, 1, 64)}
GRADCAM_CLASSES = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
                   "hirescam": "HiResCAM", "layercam": "LayerCAM", "eigencam": "EigenCAM"}


class OutOfPlaceBasicBlock(BasicBlock):
    """torchvision's BasicBlock.forward with ``out + identity`` instead of ``out += identity``."""

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def out_of_place(model):
    ref = copy.deepcopy(model)
    for module in ref.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
        if type(module) is BasicBlock:
            module.__class__ = OutOfPlaceBasicBlock
    return ref


def method_spec(model, layers):
    """Every registered method that applies to ``model``, with cheap, valid parameters."""
    params = {"layercam_ms": {"layers": layers}, "sycam": {"expression": "relu(gradcam) * act_mean + 0.5"},
              "metacam": {"k": 10}}
    spec = {name: params.get(name, {}) for name in cambench.methods()}
    return {m: p for m, p in spec.items() if method_applies(m, p, model)}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    build, layer, layers, size, n, memory_mb = CASES[request.param]
    torch.manual_seed(0)
    model = build(10).eval()
    ref = out_of_place(model)
    assert any(getattr(m, "inplace", False) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in ref.modules())
    torch.manual_seed(1)
    x = torch.rand(n, 3, size, size)
    spec = method_spec(model, layers)
    ours = cambench.explain_many(model, x, spec, layer, memory_mb=memory_mb)
    plain = cambench.explain_many(ref, x, spec, layer, memory_mb=memory_mb)
    return dict(name=request.param, model=model, ref=ref, x=x, layer=layer, spec=spec, ours=ours, plain=plain)


def test_every_method_equals_the_out_of_place_network(case):
    skipped = set(cambench.methods()) - set(case["spec"])  # only what does not apply (AME-CAM; CAM on VGG)
    assert skipped == ({"amecam"} if case["name"] == "resnet18" else {"amecam", "cam"})
    ours, plain = case["ours"], case["plain"]
    bad = {}
    for m in case["spec"]:
        d_map = (ours.maps[m] - plain.maps[m]).abs().max().item()
        d_raw = (ours.raw[m] - plain.raw[m]).abs().max().item()
        if not (d_map <= 1e-6 and d_raw <= 1e-6):
            bad[m] = (d_map, d_raw)
    assert not bad, f"maps / raw maps differ from the out-of-place network: {bad}"
    assert torch.equal(ours.flags["ablationcam"], plain.flags["ablationcam"])


def test_gradient_methods_equal_grad_cam_on_the_normalised_input(case):
    """grad-cam runs on the out-of-place copy's ``net`` (on CPU it keeps the hooked tensor itself, which an
    in-place op would rewrite; docs/methods.md §4). Eigen-CAM: grad-cam does not correct the
    SVD's sign, so every image is aligned to grad-cam's sign and post-processed again."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
    ours, x = case["ours"], case["x"]
    net, layer = case["ref"].net, case["layer"].removeprefix("net.")
    z = case["ref"].normalize(x)
    targets = [ClassifierOutputTarget(int(t)) for t in ours.targets]
    diffs = {}
    for m, cls in GRADCAM_CLASSES.items():
        with getattr(pytorch_grad_cam, cls)(model=net, target_layers=[resolve_layer(net, layer)]) as cam:
            ref = torch.from_numpy(cam(input_tensor=z, targets=targets))
        mine = ours.maps[m]
        if m == "eigencam":
            acts = {}
            hook = resolve_layer(net, layer).register_forward_hook(lambda _m, _i, o: acts.update(a=o))
            with torch.no_grad():
                net(z)
            hook.remove()
            ref_raw = torch.from_numpy(get_2d_projection(acts["a"].numpy()))
            sign = torch.where((ours.raw[m] * ref_raw).flatten(1).sum(1) < 0, -1.0, 1.0)
            aligned = ours.raw[m] * sign[:, None, None]
            assert (aligned - ref_raw).abs().max() <= 1e-4 * ref_raw.abs().max()
            mine = postprocess(aligned, x.shape[2:])[0]
        diffs[m] = (mine - ref).abs().max().item()
    assert max(diffs.values()) <= 1e-5, diffs


def test_replay_leaves_the_captured_activations_alone():
    """Ablation-CAM's replay (and its direct-replay probe) runs the head on our activations: a head that works
    in place must not rewrite them for the methods computed after it in the same batch."""
    torch.manual_seed(0)
    model = resnet18(10).eval()
    x = torch.rand(2, 3, 64, 64)
    inputs = cambench.engine.capture(model, x, "net.layer4.1.bn2", need_gradients=False)
    before = inputs.activations.clone()
    rows = torch.arange(2)
    inputs.replay(inputs.activations, rows)
    assert torch.equal(inputs.activations, before)
    assert inputs.session._replay_direct is False  # the head needs the block input (the identity)


def test_capture_stores_the_layer_output_before_in_place_ops():
    """With and without gradients (only the latter went wrong)."""
    torch.manual_seed(0)
    model = vgg16(10).eval()
    x = torch.rand(2, 3, 32, 32)
    seen = {}
    hook = resolve_layer(model, "net.features.28").register_forward_hook(
        lambda _m, _i, o: seen.update(a=o.detach().clone()))
    for need_gradients in (False, True):
        inputs = cambench.engine.capture(model, x, "net.features.28", need_gradients=need_gradients)
        assert (seen["a"] < 0).any()  # pre-ReLU values, which the in-place ReLU after the layer would zero
        assert torch.equal(inputs.activations, seen["a"]), need_gradients
        np.testing.assert_array_equal(inputs.logits.numpy(), model(x).detach().numpy())
    hook.remove()
