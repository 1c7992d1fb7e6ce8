"""The model zoo: paper architectures, torchvision wrappers, module:function models, local weights."""
import copy
import os
import sys
import textwrap
import uuid

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import cambench
from cambench.engine import method_applies, resolve_layer
from cambench.models import (
    ARCHITECTURES,
    Normalize,
    accuracy,
    build_model,
    load_checkpoint,
    load_weights,
    resolve_architecture,
    save_checkpoint,
    train_classifier,
)
from cambench.models.external import IMAGENET_MEAN, IMAGENET_STD
from cambench.registry import UnknownNameError

# (architecture, params, input shape, whether CAM applies)
CASES = [
    ("cifake_cnn", {}, (3, 3, 32, 32), False),
    ("small_cnn3d", {"widths": [4, 8, 8]}, (3, 1, 8, 12, 12), True),
    ("attention_cnn", {"widths": [8, 16, 16]}, (3, 3, 24, 24), True),
    ("attention_cnn", {"backbone": "resnet18"}, (3, 3, 32, 32), True),
    ("resnet18", {}, (3, 3, 32, 32), True),
]


def _normalisation(shape):
    c = shape[1]
    return [0.3 + 0.1 * i for i in range(c)], [0.2 + 0.05 * i for i in range(c)]


def _without_normalisation(model):
    """A copy whose Normalize is the identity."""
    ref = copy.deepcopy(model)
    ref.normalize.mean.zero_()
    ref.normalize.std.fill_(1.0)
    return ref


@pytest.mark.parametrize("arch,params,shape,cam", CASES, ids=[f"{a}-{i}" for i, (a, *_) in enumerate(CASES)])
def test_architecture_normalises_explains_and_round_trips(arch, params, shape, cam, tmp_path):
    torch.manual_seed(0)
    mean, std = _normalisation(shape)
    full = {"n_classes": 2, "in_channels": shape[1], "mean": mean, "std": std, **params}
    model = build_model(arch, **full).eval()
    x = torch.rand(shape)
    logits = model(x)
    assert logits.shape == (shape[0], 2)

    # Normalisation is the model's first module and uses the given mean/std.
    assert next(iter(model.named_children()))[0] == "normalize"
    assert isinstance(model.normalize, Normalize)
    ref = _without_normalisation(model)
    m = torch.tensor(mean).view((1, -1) + (1,) * (len(shape) - 2))
    s = torch.tensor(std).view((1, -1) + (1,) * (len(shape) - 2))
    torch.testing.assert_close(logits, ref((x - m) / s))
    assert not torch.allclose(logits, ref(x), atol=1e-4)  # the buffers matter

    # Grad-CAM at the registered default target layer; CAM where the head is GAP + linear.
    layer = resolve_architecture(arch).meta["default_target_layer"]
    maps = cambench.explain(model, x, "gradcam", target_layer=layer)
    assert maps.shape == (shape[0],) + shape[2:]
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert method_applies("cam", {}, model) is cam
    if cam:
        cam_maps = cambench.explain(model, x, "cam", target_layer=layer)
        assert cam_maps.shape == maps.shape

    save_checkpoint(tmp_path / "m.pt", model, arch, full)
    loaded, payload = load_checkpoint(tmp_path / "m.pt")
    assert payload["architecture"] == arch
    torch.testing.assert_close(loaded.eval()(x), logits, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# cifake_cnn
# --------------------------------------------------------------------------------------------

def test_cifake_cnn_emits_its_sigmoid_as_two_logits():
    torch.manual_seed(0)
    model = build_model("cifake_cnn", n_classes=2, in_channels=3, width=16).eval()
    with torch.no_grad():
        model.out.bias.fill_(0.0)
    seen = {}
    model.out.register_forward_hook(lambda _m, _i, out: seen.__setitem__("z", out.detach()))
    x = torch.rand(16, 3, 32, 32)
    logits = model(x).detach()
    z = seen["z"]
    assert z.shape == (16, 1)
    torch.testing.assert_close(logits, torch.cat([-z / 2, z / 2], dim=1), rtol=0, atol=0)
    torch.testing.assert_close(logits.softmax(1)[:, 1:], torch.sigmoid(z), rtol=1e-6, atol=1e-7)
    assert torch.equal(logits.argmax(1), (z[:, 0] > 0).long())
    y = torch.randint(0, 2, (16,))
    torch.testing.assert_close(F.cross_entropy(logits, y),
                               F.binary_cross_entropy_with_logits(z[:, 0], y.float()))
    # The default target is the last conv layer's ReLU, before its max-pool.
    layer = resolve_layer(model, ARCHITECTURES.get("cifake_cnn").meta["default_target_layer"])
    assert layer is model.features.relu2 and isinstance(layer, nn.ReLU)
    assert not getattr(model, "cam_fc_layer", "")

    with pytest.raises(ValueError, match="n_classes must be 2"):
        build_model("cifake_cnn", n_classes=3)
    with pytest.raises(ValueError, match="image_size"):
        model(torch.rand(1, 3, 40, 40))
    assert build_model("cifake_cnn", n_classes=2, image_size=40)(torch.rand(1, 3, 40, 40)).shape == (1, 2)


# --------------------------------------------------------------------------------------------
# Planted tasks: the 3D CNN and the attention CNN learn what they should, and CAMs find it
# --------------------------------------------------------------------------------------------

def _blob_volumes(n, seed, size=12):
    """Noise volumes (N, 1, 8, size, size); class 1 holds a bright 4x4x4 cube."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, size, size, generator=g) * 0.3
    y = torch.arange(n) % 2
    mask = torch.zeros(n, 8, size, size, dtype=torch.bool)
    for i in range(n):
        d = int(torch.randint(0, 5, (1,), generator=g))
        h, w = torch.randint(0, size - 4, (2,), generator=g).tolist()
        if y[i]:
            x[i, :, d:d + 4, h:h + 4, w:w + 4] = 0.9
            mask[i, d:d + 4, h:h + 4, w:w + 4] = True
    return x, y, mask


def _patch_images(n, seed, size=24):
    """Grey noise images; class 1 holds a 4x4 red patch, class 0 a green or blue one (same size)."""
    g = torch.Generator().manual_seed(seed)
    grey = torch.rand(n, 1, 1, 1, generator=g) * 0.6 + 0.2
    x = (grey + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    y = torch.arange(n) % 2
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    colours = torch.eye(3)
    for i in range(n):
        r, c = torch.randint(0, size - 4, (2,), generator=g).tolist()
        x[i, :, r:r + 4, c:c + 4] = colours[0 if y[i] else 1 + (i // 2) % 2].view(3, 1, 1)
        mask[i, r:r + 4, c:c + 4] = True
    return x, y, mask


def _inside_over_outside(maps, mask):
    """Per image: is the mean heat on the planted object > 1.5 x the mean heat elsewhere?"""
    return [bool(mp[mk].mean() > 1.5 * mp[~mk].mean()) for mp, mk in zip(maps, mask)]


def test_small_cnn3d_learns_a_planted_blob_and_cam_finds_it():
    torch.manual_seed(0)
    x, y, _ = _blob_volumes(64, seed=0)
    xt, yt, mt = _blob_volumes(32, seed=100)
    model = build_model("small_cnn3d", n_classes=2, in_channels=1, widths=[4, 8, 8])
    assert accuracy(model, xt, yt) < 0.8  # untrained: no better than chance here
    train_classifier(model, x, y, epochs=8, batch_size=16, lr=5e-3, weight_decay=0.0, seed=0)
    assert accuracy(model, xt, yt) >= 0.9
    maps = cambench.explain(model.eval(), xt[yt == 1], "cam", target_layer="features.-1")
    assert maps.shape == (16, 8, 12, 12)
    hits = _inside_over_outside(maps, mt[yt == 1])
    assert sum(hits) >= 0.8 * len(hits), hits


def test_attention_cnn_learns_a_planted_red_patch_and_gradcam_finds_it():
    torch.manual_seed(0)
    x, y, _ = _patch_images(64, seed=0)
    xt, yt, mt = _patch_images(32, seed=100)
    model = build_model("attention_cnn", n_classes=2, widths=[8, 16, 16])
    assert accuracy(model, xt, yt) < 0.8
    train_classifier(model, x, y, epochs=8, batch_size=16, lr=1e-2, weight_decay=0.0, seed=0)
    assert accuracy(model, xt, yt) >= 0.9
    maps = cambench.explain(model.eval(), xt[yt == 1], "gradcam", target_layer="attention")
    hits = _inside_over_outside(maps, mt[yt == 1])
    assert sum(hits) >= 0.8 * len(hits), hits


def test_zoo_parameters_are_checked():
    with pytest.raises(ValueError, match="backbone must be 'small' or 'resnet18'"):
        build_model("attention_cnn", n_classes=2, backbone="vit")
    with pytest.raises(ValueError, match="parameter 'backbone' of architecture 'attention_cnn' must be a string"):
        build_model("attention_cnn", n_classes=2, backbone=3)
    with pytest.raises(ValueError, match="pools must be between 0 and"):
        build_model("small_cnn3d", n_classes=2, widths=[8, 8], pools=2)
    with pytest.raises(ValueError, match="unknown parameter"):
        build_model("small_cnn3d", n_classes=2, width=8)


def test_attention_module_applies_channel_point_and_spatial_gates():
    torch.manual_seed(0)
    model = build_model("attention_cnn", n_classes=2, widths=[8, 8, 8]).eval()
    att = model.attention
    assert [n for n, _ in att.named_children()] == ["channel", "point", "spatial"]
    feats = torch.randn(2, 8, 6, 6)
    c = att.channel(feats)
    assert c.shape == (2, 8, 1, 1)                 # one weight per channel (squeeze-excitation)
    p = att.point(feats * c)
    assert p.shape == (2, 8, 6, 6)                 # one weight per channel and position (1x1 conv)
    s = att.spatial(feats * c * p)
    assert s.shape == (2, 1, 6, 6)                 # one weight per position (CBAM)
    pooled = torch.cat([(feats * c * p).mean(1, keepdim=True), (feats * c * p).amax(1, keepdim=True)], 1)
    torch.testing.assert_close(s, torch.sigmoid(att.spatial.conv(pooled)))
    for gate in (c, p, s):
        assert gate.min() > 0 and gate.max() < 1 and gate.std() > 0
    torch.testing.assert_close(att(feats), feats * c * p * s)


# --------------------------------------------------------------------------------------------
# torchvision wrappers and load_weights
# --------------------------------------------------------------------------------------------

def _bare_resnet18(num_classes=5, seed=1):
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes).eval()


def _imagenet_normalised(x):
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("layout", ["plain", "net_prefix_in_state_dict_entry", "model_entry", "cambench"])
def test_resnet18_weights_load_with_or_without_net_prefix(layout, tmp_path):
    bare = _bare_resnet18()
    state = bare.state_dict()
    path = tmp_path / f"{layout}.pt"
    if layout == "plain":
        torch.save(state, path)
    elif layout == "net_prefix_in_state_dict_entry":
        torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    elif layout == "model_entry":
        torch.save({"model": state}, path)
    else:
        source = build_model("resnet18", n_classes=5)
        source.net.load_state_dict(state)
        save_checkpoint(path, source, "resnet18", {"n_classes": 5})
    torch.manual_seed(2)
    model = build_model("resnet18", n_classes=5).eval()
    x = torch.rand(2, 3, 32, 32)
    expected = bare(_imagenet_normalised(x))
    assert not torch.allclose(model(x), expected, atol=1e-3)
    summary = load_weights(model, path)
    assert summary["excluded"] == 0 and summary["initialised"] == 0
    assert summary["loaded"] == len(state) + (2 if layout == "cambench" else 0)
    torch.testing.assert_close(model(x), expected)


def test_load_weights_exclude_and_mismatch_errors(tmp_path):
    bare = _bare_resnet18(num_classes=1000)  # an ImageNet-style head
    torch.save(bare.state_dict(), tmp_path / "imagenet.pt")
    model = build_model("resnet18", n_classes=5)
    with pytest.raises(ValueError) as err:
        load_weights(model, tmp_path / "imagenet.pt")
    message = str(err.value)
    for part in ("imagenet.pt", "net.fc.weight", "(1000, 512)", "(5, 512)", "weights_exclude", "net.fc"):
        assert part in message, message

    for exclude in (["fc"], ["net.fc"]):
        model = build_model("resnet18", n_classes=5)
        head = model.net.fc.weight.detach().clone()
        summary = load_weights(model, tmp_path / "imagenet.pt", exclude=exclude)
        assert summary["excluded"] == 2 and summary["initialised"] == 2
        assert summary["loaded"] == len(bare.state_dict()) - 2
        assert torch.equal(model.net.fc.weight, head)                       # the new head is kept
        assert torch.equal(model.net.layer4[1].conv2.weight, bare.layer4[1].conv2.weight)  # the trunk loaded
    # A prefix matches at dot boundaries only: 'f' does not exclude 'fc'.
    with pytest.raises(ValueError, match="net.fc.weight"):
        load_weights(build_model("resnet18", n_classes=5), tmp_path / "imagenet.pt", exclude=["f"])

    state = _bare_resnet18().state_dict()
    missing = {k: v for k, v in state.items() if not k.startswith("layer4.1.")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing.pt: .*missing in the file \['net.layer4.1"):
        load_weights(build_model("resnet18", n_classes=5), tmp_path / "missing.pt")
    torch.save({**state, "extra.weight": torch.zeros(3)}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"extra.pt: .*not in the model \['extra.weight'\]"):
        load_weights(build_model("resnet18", n_classes=5), tmp_path / "extra.pt")
    torch.save({"epoch": 3, "notes": "no tensors"}, tmp_path / "notweights.pt")
    with pytest.raises(ValueError, match="notweights.pt: .*not a state dict"):
        load_weights(build_model("resnet18", n_classes=5), tmp_path / "notweights.pt")
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_weights(build_model("resnet18", n_classes=5), tmp_path / "nothere.pt")


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['CAMBENCH_PWNED']}",))


def test_a_malicious_weights_file_does_not_execute(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("CAMBENCH_PWNED", str(marker))
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": Exploit()}, tmp_path / "evil.pt")
    model = build_model("small_cnn", n_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="evil.pt: cannot load weights with weights_only=True"):
        load_weights(model, tmp_path / "evil.pt")
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("arch", ["resnet50", "vgg16", "vgg19"])
def test_large_torchvision_models_build_and_run(arch):
    torch.manual_seed(0)
    model = build_model(arch, n_classes=3).eval()
    assert isinstance(model.net, getattr(torchvision.models, "ResNet" if arch.startswith("resnet") else "VGG"))
    torch.testing.assert_close(model.normalize.mean, torch.tensor(IMAGENET_MEAN))
    torch.testing.assert_close(model.normalize.std, torch.tensor(IMAGENET_STD))
    x = torch.rand(1, 3, 32, 32)
    assert model(x).shape == (1, 3)
    layer_name = ARCHITECTURES.get(arch).meta["default_target_layer"]
    layer = resolve_layer(model, layer_name)
    if arch.startswith("vgg"):
        features = list(model.net.features)
        idx = int(layer_name.rsplit(".", 1)[1])
        assert isinstance(layer, nn.ReLU) and isinstance(features[idx - 1], nn.Conv2d)
        assert idx == max(i for i, m in enumerate(features) if isinstance(m, nn.ReLU))
        assert not method_applies("cam", {}, model)
    else:
        assert layer is model.net.layer4 and model.cam_fc_layer == "net.fc"
        assert method_applies("cam", {}, model)
    assert cambench.explain(model, x, "gradcam", target_layer=layer_name).shape == (1, 32, 32)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "vgg16", "vgg19"])
def test_torchvision_models_need_rgb(arch):
    with pytest.raises(ValueError, match=f"'{arch}' .*3-channel RGB images, got in_channels=1"):
        build_model(arch, n_classes=2, in_channels=1)


# --------------------------------------------------------------------------------------------
# module:function architectures
# --------------------------------------------------------------------------------------------

EXTERNAL_SOURCE = '''
import torch
from torch import nn
from cambench.models import small_cnn


def plain(n_classes, width=4):
    """A bare CNN that does not normalise its inputs."""
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, width, 3, padding=1))
    model.add_module("relu", nn.ReLU())
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(width, n_classes))
    model.cam_fc_layer = "fc"
    return model


def normalising(n_classes, in_channels=3, mean=None, std=None, widths=(4, 4, 8, 8)):
    return small_cnn(n_classes, in_channels, mean, std, widths)


def torchvision_style(num_classes, **kwargs):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))


def not_a_module(n_classes):
    return 42
'''


@pytest.fixture
def external_module(tmp_path, monkeypatch):
    name = f"cambench_ext_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(EXTERNAL_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_module_function_model_is_wrapped_explained_and_reloads(external_module, tmp_path):
    arch = f"{external_module}:plain"
    entry = resolve_architecture(arch)
    assert entry.meta["default_target_layer"] == "" and "does not normalise" in entry.meta["summary"]
    params = {"n_classes": 3, "in_channels": 3, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4], "width": 6}
    entry.check_params({k: v for k, v in params.items() if k != "n_classes"})
    with pytest.raises(ValueError, match="unknown parameter"):
        entry.check_params({"depth": 2})
    with pytest.raises(ValueError, match="parameter 'width' .* must be a number"):
        entry.check_params({"width": "wide"})

    torch.manual_seed(0)
    model = build_model(arch, **params).eval()
    assert [n for n, _ in model.named_children()] == ["normalize", "net"]
    assert model.cam_fc_layer == "net.fc" and model.net.fc.out_features == 3 and model.net.conv.out_channels == 6
    x = torch.rand(2, 3, 16, 16)
    m, s = torch.tensor(params["mean"]).view(1, 3, 1, 1), torch.tensor(params["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), model.net((x - m) / s))
    assert cambench.explain(model, x, "gradcam", target_layer="net.relu").shape == (2, 16, 16)
    assert cambench.explain(model, x, "cam", target_layer="net.relu").shape == (2, 16, 16)

    save_checkpoint(tmp_path / "ext.pt", model, arch, params)
    loaded, payload = load_checkpoint(tmp_path / "ext.pt")
    assert payload["architecture"] == arch
    torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)


def test_module_function_variants_and_errors(external_module):
    # A function that normalises itself is not wrapped; its own mean/std are used.
    model = build_model(f"{external_module}:normalising", n_classes=2, in_channels=3, mean=[0.1] * 3, std=[0.5] * 3)
    assert "net" not in dict(model.named_children())
    torch.testing.assert_close(model.normalize.mean, torch.tensor([0.1] * 3))
    # num_classes is the class count of a torchvision-style function; **kwargs take any parameter.
    entry = resolve_architecture(f"{external_module}:torchvision_style")
    entry.check_params({"anything": 1, "in_channels": 3})
    assert build_model(f"{external_module}:torchvision_style", n_classes=4, anything=1)(
        torch.rand(2, 3, 8, 8)).shape == (2, 4)
    with pytest.raises(ValueError, match="never downloads weights"):
        build_model(f"{external_module}:torchvision_style", n_classes=4, weights="IMAGENET1K_V1")

    with pytest.raises(ValueError, match="'no_such_module_cb:make'.*cannot import module 'no_such_module_cb'"):
        resolve_architecture("no_such_module_cb:make")
    with pytest.raises(ValueError, match=f"'{external_module}:missing'.*has no attribute 'missing'"):
        build_model(f"{external_module}:missing", n_classes=2)
    with pytest.raises(ValueError, match=f"'{external_module}:not_a_module' returned a int"):
        build_model(f"{external_module}:not_a_module", n_classes=2)
    with pytest.raises(UnknownNameError, match="unknown architecture 'resnet1000'"):
        resolve_architecture("resnet1000")
    assert resolve_architecture("small_cnn") is ARCHITECTURES.get("small_cnn")
