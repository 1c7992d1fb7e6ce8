import numpy as np
import pytest
import torch
from conftest import GapNet, zoo_model
from torch import nn

import cambench
from cambench.engine import FLAG_CONSTANT, CamError, capture, resolve_layer

GRADCAM_CLASSES = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
                   "hirescam": "HiResCAM", "gradcam_elementwise": "GradCAMElementWise", "layercam": "LayerCAM"}


def reference_maps(model, layer, x, method, targets):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    cls = getattr(pytorch_grad_cam, GRADCAM_CLASSES[method])
    with cls(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])


@pytest.mark.parametrize("arch,layer,size", [("resnet18", "layer4", 64), ("resnet50", "layer4", 64),
                                             ("vgg16", "features.28", 64)])
@pytest.mark.parametrize("method", sorted(GRADCAM_CLASSES))
def test_matches_grad_cam_package(arch, layer, size, method):
    """Same layer, same targets, same post-processing: max abs difference <= 1e-5.

    VGG's ReLUs are made non-in-place for the reference only: on CPU, grad-cam keeps the hooked
    tensor that the in-place ReLU after features.28 then overwrites, so it mixes post-ReLU
    activations with pre-ReLU gradients (on CUDA its .cpu() copy avoids that). See the next test.
    """
    model = zoo_model(arch, inplace=False)
    x = torch.randn(3, 3, size, size)
    targets = model(x).argmax(1)
    ours = cambench.explain(model, x, method, layer).numpy()
    ref = reference_maps(model, resolve_layer(model, layer), x, method, targets)
    assert ours.shape == ref.shape == (3, size, size)
    assert np.abs(ours - ref).max() <= 1e-5


def test_inplace_relu_after_the_target_layer_changes_nothing():
    """We use the target layer's own output, whatever runs in place after it."""
    x = torch.randn(2, 3, 64, 64)
    inplace = cambench.explain(zoo_model("vgg16", inplace=True), x, "gradcampp", "features.28")
    plain = cambench.explain(zoo_model("vgg16", inplace=False), x, "gradcampp", "features.28")
    torch.testing.assert_close(inplace, plain)


def _cam_over_z(model, x):
    """CAM (Zhou et al.) divided by Z, computed by hand from the head weights."""
    acts = model.features(x)
    c = model(x).argmax(1)
    w = model.fc.weight[c]                         # (N, K)
    z = acts[0, 0].numel()
    return torch.einsum("nk,nkhw->nhw", w, acts) / z


def test_gradient_methods_equal_cam_on_gap_linear_heads(gapnet, images):
    """docs/reliability.md §2.1: pre-ReLU Grad-CAM = XGrad-CAM = CAM / Z for GAP + linear."""
    expected = _cam_over_z(gapnet, images).detach()
    result = cambench.explain_many(gapnet, images, ["gradcam", "xgradcam"], "features")
    torch.testing.assert_close(result.raw["gradcam"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.raw["xgradcam"], expected, rtol=1e-4, atol=1e-5)  # up to its eps
    torch.testing.assert_close(result.maps["gradcam"], result.maps["xgradcam"], rtol=0, atol=1e-4)


def test_gradcampp_weights_on_gap_linear_heads(gapnet, images):
    """docs/reliability.md §2.5: weight = w / (2 + w S/Z) for w > 0, else 0."""
    inputs = capture(gapnet, images, gapnet.features, None)
    from cambench.methods.gradient import gradcampp
    weights = gradcampp(inputs, eps=0.0)
    w = gapnet.fc.weight[inputs.targets].detach()
    s_over_z = inputs.activations.mean(dim=(2, 3))
    expected = torch.where(w > 0, w / (2 + w * s_over_z), torch.zeros_like(w))
    torch.testing.assert_close(weights, expected, rtol=1e-4, atol=1e-6)


def test_maps_are_in_unit_range_on_the_images_device_and_batching_is_invisible(gapnet, images):
    whole = cambench.explain(gapnet, images, "gradcampp", "features")
    parts = cambench.explain(gapnet, images, "gradcampp", "features", batch_size=4)
    assert whole.shape == (6, 16, 16) and whole.device == images.device
    assert whole.min() >= 0 and whole.max() <= 1
    torch.testing.assert_close(whole, parts)
    flat = whole.flatten(1)
    assert torch.allclose(flat.max(1).values, torch.ones(6))  # every non-constant map spans [0, 1]


def test_targets_index_callable_and_errors(gapnet, images):
    by_index = cambench.explain(gapnet, images, "gradcam", "features", targets=[2] * 6)
    by_callable = cambench.explain(gapnet, images, "gradcam", "features", targets=lambda logits: logits[:, 2])
    torch.testing.assert_close(by_index, by_callable)
    other = cambench.explain(gapnet, images, "gradcam", "features", targets=[3] * 6)
    assert not torch.allclose(by_index, other)
    with pytest.raises(CamError, match="5 targets for 6 images"):
        cambench.explain(gapnet, images, "gradcam", "features", targets=[1] * 5)
    with pytest.raises(CamError, match="out of range"):
        cambench.explain(gapnet, images, "gradcam", "features", targets=[9] * 6)


def test_no_hooks_left_and_train_mode_restored_even_after_errors(gapnet, images):
    gapnet.train()
    gapnet.features.conv1.eval()  # a mixed state must come back as it was
    with pytest.raises(CamError, match=r"a callable target must return a tensor of shape \(6,\)"):
        cambench.explain(gapnet, images, "gradcam", "features", targets=lambda logits: logits)  # bad shape
    cambench.explain(gapnet, images, "gradcam", "features")
    assert gapnet.training and not gapnet.features.conv1.training and gapnet.fc.training
    assert all(not m._forward_hooks for m in gapnet.modules())
    assert torch.is_grad_enabled()


def test_layer_names_and_errors(gapnet, images):
    assert resolve_layer(gapnet, "features.-1") is gapnet.features.relu2
    assert resolve_layer(gapnet, "features.conv2") is gapnet.features.conv2
    with pytest.raises(CamError, match="no submodule 'layer4'"):
        cambench.explain(gapnet, images, "gradcam", "layer4")
    with pytest.raises(Exception, match="unknown method 'gradcamm'"):
        cambench.explain(gapnet, images, "gradcamm", "features")


def test_module_called_twice_is_refused(images):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean(dim=(2, 3)))

    with pytest.raises(CamError, match="more than once"):
        cambench.explain(Twice(), images, "gradcam", "conv")


def test_constant_maps_are_flagged_not_nan(images):
    torch.manual_seed(0)
    model = GapNet()
    with torch.no_grad():
        model.features.conv2.weight.zero_()
        model.features.conv2.bias.fill_(0.5)   # every activation is the same constant
    result = cambench.explain_many(model.eval(), images, ["gradcam", "gradcampp", "xgradcam"], "features")
    for method, maps in result.maps.items():
        assert torch.isfinite(maps).all(), method
        assert (result.flags[method] & FLAG_CONSTANT).all(), method


def test_3d_gradcam_matches_captum():
    """3D: the signed Grad-CAM map at feature resolution equals captum's LayerGradCam."""
    from captum.attr import LayerGradCam
    torch.manual_seed(0)
    model = GapNet(dims=3, in_channels=1).eval()
    x = torch.randn(2, 1, 8, 12, 12)
    targets = model(x).argmax(1)
    result = cambench.explain_many(model, x, ["gradcam", "gradcampp", "xgradcam"], "features")
    ref = LayerGradCam(model, model.features).attribute(x, target=targets).squeeze(1)
    torch.testing.assert_close(result.raw["gradcam"], ref.detach(), rtol=1e-4, atol=1e-6)
    for maps in result.maps.values():
        assert maps.shape == (2, 8, 12, 12) and maps.min() >= 0 and maps.max() <= 1
