"""CF-CAM's final normalisation and LayerCAM's torchcam fusion against transcriptions of the code
(issue 20, item 8), on models as the pipeline builds them (Normalize inside, in-place ReLUs,
residual adds)."""
import pytest
import torch
import torch.nn.functional as F

import cambench
from cambench.models import build_model


def code_normalisation(raw: torch.Tensor, size) -> torch.Tensor:
    """Transcription of CF-CAM's cfcam.py after the weighted sum: relu, bilinear up-sampling
    (align_corners=False) to the input, then ``cam / cam.max()`` when the max is positive."""
    out = []
    for cam in raw:                                   # the code explains one image at a time
        cam = torch.relu(cam)
        cam = F.interpolate(cam.unsqueeze(0).unsqueeze(0), size=tuple(size), mode="bilinear",
                            align_corners=False).squeeze()
        cam_max = torch.max(cam)
        if cam_max > 0:
            cam = cam / cam_max
        out.append(cam)
    return torch.stack(out)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return (maps - lo) / (hi - lo + 1e-7)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = build_model("resnet18", n_classes=10).eval()  # Normalize inside, in-place ReLUs, residual adds
    torch.manual_seed(1)
    return model, torch.rand(3, 3, 64, 64)


def test_cfcam_default_is_the_codes_divide_by_max(resnet):
    model, x = resnet
    res = cambench.explain_many(model, x, ["cfcam"], "net.layer4")
    expected = code_normalisation(res.raw["cfcam"], x.shape[2:])
    torch.testing.assert_close(res.maps["cfcam"], expected, rtol=0, atol=1e-6)
    assert (expected.flatten(1).amin(1) > 0.05).any()  # a floor the engine's min-max would remove


def test_cfcam_minmax_option_is_the_engines_usual_scaling(resnet):
    model, x = resnet
    res = cambench.explain_many(model, x, {"cfcam": {}, "cf_minmax": {"method": "cfcam", "normalise": "minmax"}},
                                "net.layer4")
    torch.testing.assert_close(res.raw["cf_minmax"], res.raw["cfcam"], rtol=0, atol=0)
    up = F.interpolate(res.raw["cfcam"].clamp_min(0).unsqueeze(1), size=tuple(x.shape[2:]), mode="bilinear",
                       align_corners=False).squeeze(1)
    torch.testing.assert_close(res.maps["cf_minmax"], minmax(up), rtol=0, atol=1e-5)
    assert (res.maps["cfcam"] - res.maps["cf_minmax"]).abs().max() > 0.05


def test_finercam_on_cfcam_keeps_the_codes_normalisation(resnet):
    model, x = resnet
    res = cambench.explain_many(model, x, {"cfcam": {}, "finercam": {"base": "cfcam", "alpha": 0}}, "net.layer4")
    torch.testing.assert_close(res.maps["finercam"], res.maps["cfcam"], rtol=0, atol=0)


def torchcam_layercam(model, x, layers, gamma=2.0):
    """Transcription of torchcam's LayerCAM (hooks, per-layer map, _normalize with eps 1e-8) and
    fuse_cams (_scale_cams: tanh(gamma * cam) on every map; bilinear, align_corners=False, to the
    largest size on each axis; element-wise max)."""
    modules = dict(model.named_modules())
    acts, grads, handles = {}, {}, []

    def hook(name):
        def fn(_m, _i, out):
            acts[name] = out.data
            out.register_hook(lambda g: grads.__setitem__(name, g.data))
        return fn
    for name in layers:
        handles.append(modules[name].register_forward_hook(hook(name)))
    try:
        scores = model(x)
        targets = scores.argmax(1)
        scores.gather(1, targets[:, None]).sum().backward()
    finally:
        for h in handles:
            h.remove()
    cams = []
    for name in layers:
        cam = torch.nansum(torch.relu(grads[name]) * acts[name], dim=1)
        cam = F.relu(cam)
        cam = cam - cam.flatten(1).min(-1).values[:, None, None]
        cam = cam / (cam.flatten(1).max(-1).values[:, None, None] + 1e-8)
        cams.append(torch.tanh(gamma * cam))
    shape = tuple(map(max, zip(*[tuple(c.shape[1:]) for c in cams])))
    scaled = [F.interpolate(c.unsqueeze(1), shape, mode="bilinear", align_corners=False) for c in cams]
    return torch.stack(scaled).max(dim=0).values.squeeze(1)


@pytest.mark.parametrize("gamma", [2.0, 0.7])
def test_layercam_torchcam_fusion_matches_a_transcription(gamma):
    torch.manual_seed(2)
    model = build_model("small_cnn", n_classes=4).eval()  # Normalize inside, in-place ReLUs
    torch.manual_seed(3)
    x = torch.rand(3, 3, 32, 32)
    shallow = ["features.block2", "features.block3"]
    spec = {"tc": {"method": "layercam_ms", "layers": shallow, "fusion": "torchcam", "gamma": gamma},
            "ours": {"method": "layercam_ms", "layers": shallow, "fusion": "max", "gamma": gamma}}
    res = cambench.explain_many(model, x, spec, "features.block4")
    expected = torchcam_layercam(model, x, shallow + ["features.block4"], gamma)
    torch.testing.assert_close(res.raw["tc"], expected, rtol=0, atol=1e-6)
    up = F.interpolate(expected.unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False).squeeze(1)
    torch.testing.assert_close(res.maps["tc"], minmax(up), rtol=0, atol=1e-5)  # min-max is affine
    # our 'max' reading (no min subtracted, no tanh on the target layer) is a different map
    assert (res.maps["tc"] - res.maps["ours"]).abs().max() > 0.01
