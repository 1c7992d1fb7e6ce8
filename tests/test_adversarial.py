"""FGSM, PGD and PART's CAM-reweighted PGD (cambench.adversarial), against captum and known answers."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.robust import FGSM, PGD
from matplotlib import cm
from scipy import stats
from torch import nn

import cambench
from cambench.adversarial import (
    intent_full_budget,
    jet,
    jet_lut,
    part_eps_map,
    random_start,
    repo_full_budget,
    repo_zscores,
)
from cambench.config import LEVEL_LIMITS
from cambench.perturbations import PERTURBATIONS, perturbation_keys, perturbation_needs, perturbation_params

ADVERSARIAL = ["fgsm", "pgd", "part_pgd"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run many small forward/backward passes; on a shared CPU a second thread only waits
    (measured 10x slower than one thread under load). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(shape, seed=0, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def tiny_net(channels=3, dims=2, n_classes=5, seed=0, bn=False):
    """conv -> ReLU -> max-pool -> conv (target layer "4") -> ReLU -> GAP -> linear: nonlinear, CAM-able."""
    torch.manual_seed(seed)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(8) if bn else nn.Identity()
    pool = nn.MaxPool2d(2) if dims == 2 else nn.MaxPool3d(2)
    gap = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
    return nn.Sequential(conv(channels, 8, 3, padding=1), norm, nn.ReLU(), pool, conv(8, 8, 3, padding=1),
                         nn.ReLU(), gap, nn.Flatten(), nn.Linear(8, n_classes)).eval()


class LinearNet(nn.Module):
    """Two classes, logits linear in the pixels: logit_k = g · mean_s(Σ_c W_kc (x_cs − 1/2)) + b_k.

    The input gradient of CE(label y) is p_other · (w_other − w_y): its sign, sign(W_other,c − W_y,c)
    on every element of channel c, does not depend on x, so every attack's answer is known: the
    corner x + ε_map · s of the budget box (clipped to [0, 1]). The 1×1 conv is the CAM target layer.
    """

    def __init__(self, channels=3, dims=2, gain=3.0):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.conv = conv(channels, 2, 1, bias=False)
        sign = torch.tensor([(-1.0) ** c for c in range(channels)])
        w = torch.stack([sign * (1 + 0.5 * torch.arange(channels)), -sign * (1 + 0.5 * torch.arange(channels))])
        self.conv.weight.data = w.view(2, channels, *([1] * dims)).clone()
        self.gain = gain
        self.bias = nn.Parameter(torch.tensor([0.0, 0.1]))

    def forward(self, x):
        return self.gain * self.conv(x - 0.5).flatten(2).mean(dim=2) + self.bias

    def direction(self, labels, shape):
        """sign of d CE / d x: sign(W_other − W_label) per channel, broadcast to ``shape``."""
        w = self.conv.weight.detach().flatten(1)  # (2, C)
        s = torch.sign(w[1 - labels] - w[labels])  # (N, C)
        return s.view(s.shape + (1,) * (len(shape) - 2)).expand(shape)

    def margins(self, x, labels):
        """logit_label − logit_other in float64."""
        w = self.conv.weight.detach().double().flatten(1)
        means = x.double().flatten(2).mean(dim=2) - 0.5  # (N, C)
        logits = self.gain * means @ w.T + self.bias.detach().double()
        return logits.gather(1, labels[:, None])[:, 0] - logits.gather(1, 1 - labels[:, None])[:, 0]

    def sensitivity(self):
        """How much ε of L∞ perturbation lowers the margin: g · Σ_c |W_0c − W_1c|."""
        w = self.conv.weight.detach().double().flatten(1)
        return self.gain * float((w[0] - w[1]).abs().sum())


def _ce(logits, target):
    return F.cross_entropy(logits, target, reduction="none")


def _captum_pgd(model, keys_for_start=None, start=None):
    pgd = PGD(model, loss_func=_ce, lower_bound=0.0, upper_bound=1.0)
    pgd.fgsm.zero_thresh = 0.0  # captum leaves elements with |grad| <= 1e-6 unperturbed; a plain sign does not
    if start is not None:  # captum's start is torch.rand_like; ours is keyed: hand it ours
        pgd._random_point = lambda center, radius, norm, mask: center + start
    return pgd


# --- registry and interface ---------------------------------------------------------------------

def test_registered_with_needs_params_and_the_config_limits():
    for kind in ADVERSARIAL:
        entry = PERTURBATIONS.get(kind)
        assert entry.meta["summary"] and entry.meta["max_level"] == LEVEL_LIMITS[kind] == 255
        assert kind in cambench.perturbations()
    assert perturbation_needs("fgsm") == perturbation_needs("pgd") == ("model", "labels")
    assert perturbation_needs("part_pgd") == ("model", "labels", "target_layer")
    assert perturbation_needs("gaussian") == () and perturbation_params("gaussian") == {}
    assert perturbation_params("pgd") == {"steps": 10, "step_ratio": 0.25, "random_start": True, "memory_mb": 1024.0}
    part = perturbation_params("part_pgd")
    assert part["method"] == "gradcam" and part["mask_mode"] == "auto" and part["tau"] == 0.5
    assert part["eps_low_ratio"] == 7 / 8 and part["steps"] == 10 and part["step_ratio"] == 0.25
    assert part["random_start"] is True


def test_bad_calls_name_the_kind_and_the_argument():
    model, x, y = tiny_net(), _images((2, 3, 8, 8)), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="'fgsm' needs model and labels"):
        cambench.perturb(x, "fgsm", 8)
    with pytest.raises(ValueError, match="'pgd' needs labels"):
        cambench.perturb(x, "pgd", 8, model=model)
    with pytest.raises(ValueError, match="'part_pgd' needs target_layer"):
        cambench.perturb(x, "part_pgd", 8, model=model, labels=y)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['step'\] for perturbation 'pgd'"):
        cambench.perturb(x, "pgd", 8, model=model, labels=y, params={"step": 3})
    with pytest.raises(ValueError, match=r"parameter 'steps' of perturbation 'pgd' must be an integer in \[1, inf\), "
                                         r"got '10'"):
        cambench.perturb(x, "pgd", 8, model=model, labels=y, params={"steps": "10"})
    # bounds declared on the registration (cambench.registry)
    for params, name in [({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"step_ratio": 0}, "step_ratio"),
                         ({"memory_mb": -1}, "memory_mb")]:
        with pytest.raises(ValueError, match=f"parameter '{name}' of perturbation 'pgd' must be "):
            cambench.perturb(x, "pgd", 8, model=model, labels=y, params=params)
    for params, name in [({"mask_mode": "rgb"}, "mask_mode"), ({"tau": 1.5}, "tau"),
                         ({"eps_low_ratio": 2.0}, "eps_low_ratio")]:
        with pytest.raises(ValueError, match=f"parameter '{name}' of perturbation 'part_pgd' must be "):
            cambench.perturb(x, "part_pgd", 8, model=model, labels=y, target_layer="4", params=params)
    with pytest.raises(ValueError, match="'part_pgd': parameter 'method' must be a registered CAM method"):
        cambench.perturb(x, "part_pgd", 8, model=model, labels=y, target_layer="4", params={"method": "nocam"})
    grey = tiny_net(channels=1)
    with pytest.raises(ValueError, match="'part_pgd': parameter 'mask_mode' 'repo'.*3-channel 2D"):
        cambench.perturb(x[:, :1], "part_pgd", 8, model=grey, labels=y, target_layer="4",
                         params={"mask_mode": "repo"})
    with pytest.raises(ValueError, match="'gaussian' takes no parameters"):
        cambench.perturb(x, "gaussian", 0.1, params={"steps": 3})
    with pytest.raises(ValueError, match="max_level"):
        cambench.perturb(x, "fgsm", 256, model=model, labels=y)
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        cambench.perturb(x, "fgsm", 8, model=model, labels=torch.tensor([0, 1, 2]))
    # parameters are checked even at level 0, where the result is the identity
    with pytest.raises(ValueError, match="'steps'"):
        cambench.perturb(x, "pgd", 0, model=model, labels=y, params={"steps": 0})


@pytest.mark.parametrize("kind", ADVERSARIAL)
def test_level_zero_is_the_exact_identity_and_the_model_is_left_as_it_was(kind):
    model = tiny_net(bn=True).train()
    bn = model[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _images((3, 3, 8, 8)), torch.tensor([0, 3, 4])
    params = {} if kind == "fgsm" else {"steps": 2}
    zero = cambench.perturb(x, kind, 0, model=model, labels=y, target_layer="4", params=params)
    assert torch.equal(zero, x) and zero.data_ptr() != x.data_ptr()
    out = cambench.perturb(x, kind, 8, model=model, labels=y, target_layer="4", params=params)
    assert not torch.equal(out, x)
    # attacked in eval mode (BN running statistics untouched), the train flags restored, no parameter grads
    assert model.training and bn.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    # the same under torch.no_grad (callers evaluate models under it)
    with torch.no_grad():
        assert torch.equal(cambench.perturb(x, kind, 8, model=model, labels=y, target_layer="4", params=params), out)


# --- oracles: captum.robust ------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_fgsm_and_pgd_equal_captum(dims):
    shape = (4, 3, 8, 8) if dims == 2 else (3, 2, 6, 6, 6)
    model = tiny_net(channels=shape[1], dims=dims, bn=True)
    x, y = _images(shape, seed=dims), torch.tensor([0, 1, 2, 3][: shape[0]])
    keys = torch.tensor([5, 9, 1, 7][: shape[0]])
    fgsm = FGSM(model, loss_func=_ce, lower_bound=0.0, upper_bound=1.0)
    fgsm.zero_thresh = 0.0
    for level in (2, 8):
        ours = cambench.perturb(x, "fgsm", level, model=model, labels=y)
        torch.testing.assert_close(ours, fgsm.perturb(x, level / 255, y), rtol=0, atol=0)
    ours = cambench.perturb(x, "pgd", 4, model=model, labels=y, params={"random_start": False, "steps": 3})
    ref = _captum_pgd(model).perturb(x, 4 / 255, 0.25 * 4 / 255, 3, y)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    # with the random start: captum's draw replaced by our keyed δ, the rest is captum's own loop
    ours = cambench.perturb(x, "pgd", 8, seed=3, keys=keys, model=model, labels=y,
                            params={"step_ratio": 0.1, "steps": 3})
    start = random_start(perturbation_keys(keys, "pgd", 8, 3), x, 8 / 255)
    ref = _captum_pgd(model, start=start).perturb(x, 8 / 255, 0.1 * 8 / 255, 3, y, random_start=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_random_start_is_uniform_in_the_ball_keyed_per_image_and_seed():
    x = torch.zeros(4, 3, 40, 40)
    keys = perturbation_keys(torch.arange(4), "pgd", 8, 0)
    delta = random_start(keys, x, 8 / 255)
    u = (delta * 255 / 8).flatten().double().numpy()
    assert np.abs(u).max() < 1 and stats.kstest(u, "uniform", args=(-1, 2)).pvalue > 1e-3
    torch.testing.assert_close(random_start(keys[[2, 0]], x[:2], 8 / 255), delta[[2, 0]], rtol=0, atol=0)
    assert not torch.equal(delta, random_start(perturbation_keys(torch.arange(4), "pgd", 8, 1), x, 8 / 255))


# --- known answers on a linear model ---------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_every_attack_reaches_the_known_corner_of_its_budget_on_a_linear_model(dims):
    shape = (6, 3, 8, 8) if dims == 2 else (4, 2, 4, 4, 4)
    model = LinearNet(shape[1], dims)
    x = _images(shape, seed=4)  # the full [0, 1] range: some corners are clipped
    y = torch.tensor([0, 1, 1, 0, 1, 0][: shape[0]])
    s = model.direction(y, shape)
    eps = 8 / 255
    expected = (x + eps * s).clamp(0, 1)
    torch.testing.assert_close(cambench.perturb(x, "fgsm", 8, model=model, labels=y), expected, rtol=0, atol=0)
    for random in (False, True):  # the default 10 steps of ε/4 cross the box from any start
        out = cambench.perturb(x, "pgd", 8, model=model, labels=y, params={"random_start": random})
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # PART: the same corner of its own element-wise box
    params = {"mask_mode": "intent", "tau": 0.3, "steps": 4, "step_ratio": 0.6}
    budget = part_eps_map(model, x, "conv", eps, 7 / 255, mask_mode="intent", tau=0.3)
    assert set((budget * 255).round().unique().tolist()) == {7.0, 8.0}
    out = cambench.perturb(x, "part_pgd", 8, model=model, labels=y, target_layer="conv", params=params)
    torch.testing.assert_close(out, (x + budget * s).clamp(0, 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_accuracy_falls_with_eps_exactly_as_the_margins_predict(dims):
    shape = (64, 3, 8, 8) if dims == 2 else (48, 2, 4, 4, 4)
    model = LinearNet(shape[1], dims)
    # interior images in [0.26, 0.74] (no clipping up to ε = 64/255): flat per-channel levels spread the margins
    x = (_images(shape[:2] + (1,) * dims, seed=5, lo=0.3, hi=0.7) + _images(shape, seed=6, lo=-0.04, hi=0.04))
    y = (model.margins(x, torch.zeros(shape[0], dtype=torch.long)) < 0).long()  # the clean prediction
    margins, slope = model.margins(x, y), model.sensitivity()
    levels = [0, 1, 2, 4, 8, 16, 32, 64]
    thresholds = torch.tensor([lv / 255 * slope for lv in levels], dtype=torch.float64)
    assert (margins[:, None] - thresholds[None]).abs().min() > 1e-4  # no image on a decision boundary
    predicted = (margins[:, None] > thresholds[None]).double().mean(dim=0)
    assert predicted[0] == 1 and predicted[-1] < 0.3 and (predicted.diff() <= 0).all()
    assert len(set(predicted.tolist())) >= 4  # the grid really moves accuracy
    fast = {"steps": 4, "step_ratio": 0.6}  # 2.4 ε of travel: enough to cross the box
    for kind, params in (("fgsm", {}), ("pgd", fast)):
        acc = [(model(cambench.perturb(x, kind, lv, model=model, labels=y, params=params)).argmax(1) == y)
               .double().mean() for lv in levels]
        torch.testing.assert_close(torch.stack(acc), predicted, rtol=0, atol=0)
    # PART's budget lies between ε_low and ε, so its accuracy lies between PGD's at those budgets
    for lv in (8, 16):
        out = cambench.perturb(x, "part_pgd", lv, model=model, labels=y, target_layer="conv",
                               params={"mask_mode": "intent", **fast})
        part = float((model(out).argmax(1) == y).double().mean())
        assert float((margins > lv / 255 * slope).double().mean()) <= part
        assert part <= float((margins > lv * 7 / 8 / 255 * slope).double().mean())


def _quadrant_data(n, seed):
    """4 classes: a bright 2×2 patch in quadrant y of a dim, noisy 8×8 image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    rows, cols = torch.arange(8).view(1, 8, 1), torch.arange(8).view(1, 1, 8)
    r0, c0 = ((y // 2) * 4 + 1).view(-1, 1, 1), ((y % 2) * 4 + 1).view(-1, 1, 1)
    patch = (rows >= r0) & (rows < r0 + 2) & (cols >= c0) & (cols < c0 + 2)
    return 0.3 * torch.rand(n, 3, 8, 8, generator=g) + 0.5 * patch[:, None], y


def test_attacks_defeat_a_trained_nonlinear_model_and_pgd_beats_fgsm():
    x, y = _quadrant_data(32, 0)
    model = tiny_net(n_classes=4, seed=2).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(25):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    x, y = _quadrant_data(24, 1)
    levels = (0, 4, 16, 32)
    losses, accs = {}, {}
    for kind in ("fgsm", "pgd"):
        for lv in levels:
            params = {"steps": 4, "step_ratio": 0.6} if kind == "pgd" else {}
            out = cambench.perturb(x, kind, lv, model=model, labels=y, params=params)
            assert (out - x).abs().max() <= lv / 255 + 1e-6 and out.min() >= 0 and out.max() <= 1
            with torch.no_grad():
                logits = model(out)
            losses[kind, lv] = float(F.cross_entropy(logits, y))
            accs[kind, lv] = float((logits.argmax(1) == y).double().mean())
    for kind in ("fgsm", "pgd"):
        acc = [accs[kind, lv] for lv in levels]
        assert acc[0] == 1 and acc[-1] < 0.25 and all(a >= b for a, b in zip(acc, acc[1:])), (kind, acc)
        loss = [losses[kind, lv] for lv in levels]
        assert all(a < b for a, b in zip(loss, loss[1:])), (kind, loss)
    for lv in levels[1:]:
        assert losses["pgd", lv] >= losses["fgsm", lv] and accs["pgd", lv] <= accs["fgsm", lv]


# --- budgets, determinism, 3D ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ADVERSARIAL)
@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (4, 2, 6, 6, 6)], ids=["2d", "3d"])
def test_budget_range_and_determinism_across_batch_splits_and_chunks(kind, shape):
    dims = len(shape) - 2
    model = tiny_net(channels=shape[1], dims=dims)
    x = _images(shape, seed=8)
    x[0, 0].fill_(0)
    x[0, -1].fill_(1)
    y = torch.tensor([1, 0, 4, 2, 3][: shape[0]])
    keys = torch.tensor([7, 3, 99, 12345, 2**31 + 5][: shape[0]])
    params = {} if kind == "fgsm" else {"steps": 3, "step_ratio": 0.8}
    common = dict(model=model, labels=y, target_layer="4")
    full = cambench.perturb(x, kind, 8, seed=2, keys=keys, params=params, **common)
    assert full.shape == x.shape and full.dtype == x.dtype and full.min() >= 0 and full.max() <= 1
    bound = 8 / 255
    if kind == "part_pgd":
        bound = part_eps_map(model, x, "4", 8 / 255, 7 / 255)
        assert ((bound == 8 / 255) | (bound == torch.tensor(7 / 8 * 8 / 255))).all()
        assert (bound == 8 / 255).any() and (bound < 8 / 255).any()
    assert ((full - x).abs() <= bound + 1e-6).all()
    assert ((full - x).abs() > bound - 1e-6).float().mean() > 0.5  # sign steps end on the box's faces
    sub = cambench.perturb(x[[3, 1]], kind, 8, seed=2, keys=keys[[3, 1]], model=model, labels=y[[3, 1]],
                           target_layer="4", params=params)
    torch.testing.assert_close(sub, full[[3, 1]], rtol=0, atol=0)
    one_by_one = cambench.perturb(x, kind, 8, seed=2, keys=keys, params={**params, "memory_mb": 1e-3}, **common)
    torch.testing.assert_close(one_by_one, full, rtol=0, atol=0)
    if kind != "fgsm":  # the random start is keyed by the seed; without it the seed does not matter
        assert not torch.equal(full, cambench.perturb(x, kind, 8, seed=3, keys=keys, params=params, **common))
        fixed = {**params, "random_start": False}
        assert torch.equal(cambench.perturb(x, kind, 8, seed=2, keys=keys, params=fixed, **common),
                           cambench.perturb(x, kind, 8, seed=3, keys=keys, params=fixed, **common))


# --- PART masks ----------------------------------------------------------------------------------

def test_jet_equals_matplotlib():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.random(5000), np.arange(257) / 256, [0, 1, 1 + 1e-6, 1.5, -0.2, 255.5 / 256]])
    v = v.astype(np.float32)
    np.testing.assert_allclose(jet(torch.from_numpy(v)).numpy(), cm.jet(v)[:, :3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(jet_lut().numpy(), cm.jet(np.arange(256))[:, :3], rtol=0, atol=1e-12)


def _repo_reference(cam_feature: np.ndarray, size: int, resize: str) -> np.ndarray:
    """PART's craft_weight_matrix + process_overlay + generate_weighted_eps mask, in NumPy with
    matplotlib, for one (h, w) CAM; the resize by torch's bicubic or by PIL's (as the code)."""
    if resize == "pil":
        from PIL import Image
        overlay = np.asarray(Image.fromarray(cam_feature.astype(np.float32), mode="F")
                             .resize((size, size), resample=Image.BICUBIC))
    else:
        t = torch.from_numpy(cam_feature.astype(np.float32))[None, None]
        overlay = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()
    rgb = (255 * cm.jet(overlay ** 2)[:, :, :3]).astype(np.double) / 255
    z = (rgb - rgb.mean()) / rgb.std()
    weight = np.clip(z, 1, z.max())
    return (weight > 1).transpose(2, 0, 1)


def test_repo_mask_equals_the_codes_steps_and_mostly_agrees_with_pil_resizing():
    g = torch.Generator().manual_seed(9)
    blobs = torch.rand(6, 4, 4, generator=g)
    cam = (blobs - blobs.amin(dim=(1, 2), keepdim=True)) / (blobs.amax(dim=(1, 2), keepdim=True)
                                                           - blobs.amin(dim=(1, 2), keepdim=True))
    ours = repo_full_budget(cam, (32, 32)).numpy()
    agree = []
    for i in range(cam.shape[0]):
        np.testing.assert_array_equal(ours[i], _repo_reference(cam[i].numpy(), 32, "torch"))
        agree.append((ours[i] == _repo_reference(cam[i].numpy(), 32, "pil")).mean())
    # PIL's bicubic (a = -0.5) and torch's (a = -0.75) differ a little: the masks nearly agree
    assert min(agree) > 0.9, agree
    # channel-dependent masks, as §4 describes: blue covers low-to-mid CAM values, red high ones
    up = F.interpolate(cam[:, None], size=(32, 32), mode="bicubic", align_corners=False)[:, 0]
    assert ours[:, 2][(up < 0.3).numpy()].mean() > ours[:, 0][(up < 0.3).numpy()].mean()
    assert ours[:, 0][(up > 0.9).numpy()].mean() > ours[:, 2][(up > 0.9).numpy()].mean()


def test_all_zero_cam_gives_full_eps_in_blue_only():
    """docs/reliability.md §2.21: jet(0) = (0, 0, 0.5): z = √2 in blue, −1/√2 in red and green."""
    z = repo_zscores(torch.zeros(2, 4, 4), (16, 16))
    torch.testing.assert_close(z[:, 2], torch.full((2, 16, 16), math.sqrt(2), dtype=torch.float64))
    torch.testing.assert_close(z[:, :2], torch.full((2, 2, 16, 16), -1 / math.sqrt(2), dtype=torch.float64))
    # end to end: a target layer with zero weights has constant activations, so its Grad-CAM is all zero
    model = tiny_net()
    nn.init.zeros_(model[4].weight)
    x = _images((3, 3, 16, 16), seed=10)
    budget = part_eps_map(model, x, "4", 8 / 255, 7 / 255)
    assert torch.equal(budget[:, 2], torch.full_like(budget[:, 2], 8 / 255))
    assert torch.equal(budget[:, :2], torch.full_like(budget[:, :2], 7 / 255))
    # the intent mode marks nothing: ε_low everywhere
    budget = part_eps_map(model, x, "4", 8 / 255, 7 / 255, mask_mode="intent")
    assert torch.equal(budget, torch.full_like(budget, 7 / 255))


def test_intent_mask_thresholds_the_squared_map_and_broadcasts_over_channels():
    maps = torch.tensor([[[0.0, 0.5, 0.7, 0.71], [0.8, 1.0, 0.69, 0.72]]])
    expected = torch.tensor([[[False, False, False, True], [True, True, False, True]]])
    assert torch.equal(intent_full_budget(maps, 0.5), expected[:, None])
    assert intent_full_budget(maps, 0.0).all() and not intent_full_budget(maps, 1.0)[0, 0, 0, :3].any()
    for shape, dims in [((3, 1, 16, 16), 2), ((2, 2, 8, 8, 8), 3), ((2, 3, 8, 8, 8), 3)]:
        model, x = tiny_net(channels=shape[1], dims=dims), _images(shape, seed=11)
        maps = cambench.explain(model, x, "gradcam", "4")  # predicted class, input resolution
        budget = part_eps_map(model, x, "4", 8 / 255, 7 / 255, tau=0.4)  # auto: intent for these
        expected = torch.where(maps[:, None] ** 2 >= 0.4, 8 / 255, 7 / 255).expand(shape)
        assert torch.equal(budget, expected)
        assert (budget == 8 / 255).any() and (budget == 7 / 255).any()


def test_auto_mode_is_repo_for_rgb_images_and_repo_uses_the_feature_resolution_cam():
    model, x = tiny_net(), _images((3, 3, 16, 16), seed=12)
    auto = part_eps_map(model, x, "4", 8 / 255, 7 / 255)
    assert torch.equal(auto, part_eps_map(model, x, "4", 8 / 255, 7 / 255, mask_mode="repo"))
    raw = cambench.explain_many(model, x, {"gradcam": {}}, "4").raw["gradcam"].clamp_min(0)
    lo, hi = raw.amin(dim=(1, 2), keepdim=True), raw.amax(dim=(1, 2), keepdim=True)
    cam = ((raw - lo) / (hi - lo + 1e-8)).numpy()
    for i in range(3):
        expected = np.where(_repo_reference(cam[i], 16, "torch"), 8 / 255, 7 / 255).astype(np.float32)
        np.testing.assert_array_equal(auto[i].numpy(), expected)
    intent = part_eps_map(model, x, "4", 8 / 255, 7 / 255, mask_mode="intent")
    assert not torch.equal(auto, intent) and (intent[:, 0] == intent[:, 1]).all()
    # another CAM method changes the mask
    assert not torch.equal(auto, part_eps_map(model, x, "4", 8 / 255, 7 / 255, method="layercam"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ADVERSARIAL)
def test_cuda_matches_the_budget_and_the_cpu_random_start(kind):
    model, x, y = tiny_net(), _images((4, 3, 16, 16), seed=13), torch.tensor([0, 1, 2, 3])
    keys = perturbation_keys(torch.arange(4), kind, 8, 0)
    torch.testing.assert_close(random_start(keys.cuda(), x.cuda(), 8 / 255).cpu(), random_start(keys, x, 8 / 255),
                               rtol=0, atol=0)
    out = cambench.perturb(x.cuda(), kind, 8, model=model.cuda(), labels=y.cuda(), target_layer="4")
    assert out.is_cuda and out.min() >= 0 and out.max() <= 1
    assert ((out - x.cuda()).abs() <= 8 / 255 + 1e-6).all()
    cpu = cambench.perturb(x, kind, 8, model=model.cpu(), labels=y, target_layer="4")
    assert (out.cpu() - cpu).abs().le(1e-5).float().mean() > 0.9  # sign flips only where gradients ≈ 0
