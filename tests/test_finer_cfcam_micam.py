"""Finer-CAM, CF-CAM and MI-CAM (docs/methods.md §2.10, §2.12, §2.13; identities docs/reliability.md §2.10, §2.12)."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import GapNet, zoo_model

import cambench
from cambench.engine import METHODS, CamError, capture, resolve_layer
from cambench.methods.cfcam import bilateral_like_filter, cfcam_weights, dbscan, gaussian_filter, masked_percentile
from cambench.methods.finer import reference_classes
from cambench.methods.micam import micam, mutual_information


def head_cam(model, x, weights):
    """sum_k weights_k A^k / Z for a GapNet: pre-ReLU Grad-CAM of a linear combination of logits."""
    acts = model.features(x)
    z = acts[0, 0].numel()
    return torch.einsum("nk,nk...->n...", weights, acts).detach() / z


def rank_references(logits, targets, rank):
    """The class at ``rank`` when sorting by |y^j - y^c| (NumPy, for the tests)."""
    y = logits.detach().numpy()
    c = targets.numpy()
    order = np.argsort(np.abs(y - y[np.arange(len(c)), c][:, None]), axis=1, kind="stable")
    assert (order[:, 0] == c).all()
    return torch.from_numpy(order[:, rank])


# --------------------------------------------------------------------------------------------
# Finer-CAM
# --------------------------------------------------------------------------------------------

def test_finercam_matches_grad_cam_package():
    """repo mode, Grad-CAM base, alpha 1, ranks [1, 2, 3] = pytorch_grad_cam.FinerCAM's defaults."""
    from pytorch_grad_cam import FinerCAM, GradCAM
    model = zoo_model("resnet18")
    x = torch.randn(3, 3, 64, 64)
    ours = cambench.explain(model, x, "finercam", "layer4").numpy()
    with FinerCAM(model, [resolve_layer(model, "layer4")], base_method=GradCAM) as cam:
        ref = cam(input_tensor=x)
    assert ours.shape == ref.shape == (3, 64, 64)
    assert np.abs(ours - ref).max() <= 1e-5
    plain = cambench.explain(model, x, "gradcam", "layer4").numpy()
    assert np.abs(ours - plain).max() > 0.05  # the contrast changes the map


@pytest.mark.parametrize("base", ["gradcam", "layercam", "gradcampp"])
def test_finercam_alpha_zero_is_the_base_method(gapnet, images, base):
    for weighting in ("repo", "uniform"):
        result = cambench.explain_many(gapnet, images, {"finercam": {"alpha": 0, "base": base,
                                                                     "weighting": weighting}, base: {}},
                                       "features")
        assert torch.equal(result.raw["finercam"], result.raw[base])
        assert torch.equal(result.maps["finercam"], result.maps[base])


@pytest.mark.parametrize("dims", [2, 3])
def test_finercam_single_reference_uniform_is_gradcam_difference(dims):
    """§6.10: pre-ReLU Finer map = Grad-CAM(c) - alpha Grad-CAM(d); on GapNet also (w_c - alpha w_d) A / Z."""
    torch.manual_seed(0)
    model = GapNet(dims=dims, in_channels=3).eval()
    x = torch.rand((5, 3) + (8,) * dims if dims == 3 else (5, 3, 16, 16))
    alpha = 0.7
    targets = model(x).argmax(1)
    d = rank_references(model(x), targets, 1)
    finer = cambench.explain_many(model, x, {"finercam": {"alpha": alpha, "reference_ranks": [1],
                                                          "weighting": "uniform"}}, "features").raw["finercam"]
    grad_c = cambench.explain_many(model, x, ["gradcam"], "features", targets=targets).raw["gradcam"]
    grad_d = cambench.explain_many(model, x, ["gradcam"], "features", targets=d).raw["gradcam"]
    torch.testing.assert_close(finer, grad_c - alpha * grad_d, rtol=1e-5, atol=1e-6)
    w = model.fc.weight.detach()
    torch.testing.assert_close(finer, head_cam(model, x, w[targets] - alpha * w[d]), rtol=1e-4, atol=1e-6)


def test_finercam_repo_and_uniform_agree_for_one_reference_and_differ_for_several(gapnet, images):
    spec = {"finercam": {"weighting": "repo", "reference_ranks": [1]}}
    repo1 = cambench.explain_many(gapnet, images, spec, "features").raw["finercam"]
    spec["finercam"]["weighting"] = "uniform"
    uniform1 = cambench.explain_many(gapnet, images, spec, "features").raw["finercam"]
    torch.testing.assert_close(repo1, uniform1, rtol=1e-5, atol=1e-7)
    repo3 = cambench.explain_many(gapnet, images, {"finercam": {}}, "features").raw["finercam"]
    uniform3 = cambench.explain_many(gapnet, images, {"finercam": {"weighting": "uniform"}},
                                     "features").raw["finercam"]
    scale = uniform3.abs().amax(dim=(1, 2))
    assert ((repo3 - uniform3).abs().amax(dim=(1, 2)) > 1e-3 * scale).all()


def test_finercam_repo_mode_is_the_gradient_of_the_weighted_target(gapnet, images):
    """repo, T = 2 (ranks 1 and 3): Grad-CAM of s = sum p_d (y_c - a y_d) / (sum p_d + 1e-9), by autograd."""
    alpha = 0.5
    ours = cambench.explain_many(gapnet, images, {"finercam": {"alpha": alpha, "reference_ranks": [1, 3]}},
                                 "features").raw["finercam"]
    acts = gapnet.features(images).detach().requires_grad_(True)
    logits = gapnet.fc(gapnet.pool(acts).flatten(1))
    c = logits.argmax(1)
    refs = torch.stack([rank_references(logits, c, 1), rank_references(logits, c, 3)], dim=1)
    p = logits.softmax(1).gather(1, refs)
    s = (p * (logits.gather(1, c[:, None]) - alpha * logits.gather(1, refs))).sum(1) / (p.sum(1) + 1e-9)
    (grads,) = torch.autograd.grad(s.sum(), acts)
    expected = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1).detach()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


def test_finercam_reference_ranks_beyond_the_classes_are_ignored(gapnet, images):
    result = cambench.explain_many(gapnet, images, {"finercam": {"reference_ranks": [1, 7]}}, "features")
    single = cambench.explain_many(gapnet, images, {"finercam": {"reference_ranks": [1]}}, "features")
    assert torch.equal(result.raw["finercam"], single.raw["finercam"])
    none = cambench.explain_many(gapnet, images, {"finercam": {"reference_ranks": [9]}, "gradcam": {}}, "features")
    assert torch.equal(none.raw["finercam"], none.raw["gradcam"])
    logits = gapnet(images)
    refs = reference_classes(logits, logits.argmax(1), [1, 2, 3, 4, 5])
    assert refs.shape == (6, 4)
    assert torch.equal(refs[:, 0], rank_references(logits, logits.argmax(1), 1))
    assert not (refs == logits.argmax(1)[:, None]).any()


def test_finercam_with_scorecam_base_scores_the_contrast(images):
    """Two classes: the reference is always the other class, so Finer-Score-CAM (uniform, T = 1)
    equals Score-CAM of the callable target y_c - alpha y_d, and repo mode agrees with it."""
    torch.manual_seed(0)
    model = GapNet(n_classes=2).eval()
    with torch.no_grad():
        model.fc.weight.mul_(300)  # spread the masked scores so that Score-CAM's softmax is not flat
    alpha = 0.8
    spec = {"finercam": {"base": "scorecam", "alpha": alpha, "weighting": "uniform"}}
    assert METHODS.get("finercam").meta["needs_gradients"]({"base": "scorecam"}) is False
    finer = cambench.explain_many(model, images, spec, "features", targets=[0] * 6).raw["finercam"]
    ref = cambench.explain_many(model, images, ["scorecam"], "features",
                                targets=lambda y: y[:, 0] - alpha * y[:, 1]).raw["scorecam"]
    torch.testing.assert_close(finer, ref, rtol=1e-5, atol=1e-6)
    spec["finercam"]["weighting"] = "repo"
    repo = cambench.explain_many(model, images, spec, "features", targets=[0] * 6).raw["finercam"]
    torch.testing.assert_close(repo, ref, rtol=1e-4, atol=1e-6)
    plain = cambench.explain_many(model, images, ["scorecam"], "features", targets=[0] * 6).raw["scorecam"]
    assert ((plain - finer).abs().amax(dim=(1, 2)) > 0.01 * plain.abs().amax(dim=(1, 2))).all()


def test_finercam_needs_gradients_follows_the_base_and_bad_parameters_fail(gapnet, images):
    need = METHODS.get("finercam").meta["needs_gradients"]
    assert need({}) is True and need({"base": "ablationcam"}) is False
    assert need({"base": "scorecam", "base_params": {"variant": "torchcam"}}) is False
    with pytest.raises(CamError, match="needs class targets"):
        cambench.explain(gapnet, images, "finercam", "features", targets=lambda y: y[:, 0])
    bad = [({"weighting": "mean"}, "weighting"), ({"base": "nope"}, "base"), ({"base": "finercam"}, "base"),
           ({"reference_ranks": [0, 1]}, "reference_ranks"), ({"alpha": "x"}, "alpha"),
           ({"base_params": {"variantt": 1}, "base": "scorecam"}, "variantt"),
           ({"base": "layercam_ms", "base_params": {"layers": ["features.conv1"]}}, "other layers")]
    for params, message in bad:
        with pytest.raises(CamError, match=message):
            cambench.explain(gapnet, images, "finercam", "features", **params)


# --------------------------------------------------------------------------------------------
# CF-CAM
# --------------------------------------------------------------------------------------------

def same_partition(ours, ref):
    """Labels equal up to a permutation of the cluster ids, with noise (-1) fixed."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    if not np.array_equal(ours == -1, ref == -1):
        return False
    pairs = set(zip(ours[ref != -1].tolist(), ref[ref != -1].tolist()))
    return len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_batched_dbscan_matches_sklearn():
    from sklearn.cluster import DBSCAN
    g = torch.Generator().manual_seed(0)
    n, m, d = 12, 70, 3
    centres = torch.randn(n, 5, d, generator=g, dtype=torch.float64) * 3
    assign = torch.randint(0, 5, (n, m), generator=g)
    points = centres.gather(1, assign[..., None].expand(n, m, d)) + \
        0.5 * torch.randn(n, m, d, generator=g, dtype=torch.float64)
    points[-1] = torch.linspace(0, 10, m, dtype=torch.float64)[:, None] * torch.ones(d, dtype=torch.float64)
    valid = torch.rand(n, m, generator=g) > 0.15
    valid[-1] = True                                   # a chain of 70 points: one long component
    eps = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.3
    eps[-1] = 0.3
    min_samples = torch.randint(2, 8, (n,), generator=g)
    min_samples[-1] = 3
    labels = dbscan(points, eps, min_samples, valid)
    kinds = set()
    for i in range(n):
        v = valid[i].numpy()
        ref = DBSCAN(eps=float(eps[i]), min_samples=int(min_samples[i])).fit(points[i].numpy()[v]).labels_
        assert same_partition(labels[i].numpy()[v], ref), i
        assert (labels[i][~valid[i]] == -1).all()
        kinds.add((ref.max() >= 1, (ref == -1).any()))
    assert (True, True) in kinds                       # several clusters and noise occurred
    assert labels[-1].unique().tolist() == [0]


def test_masked_percentile_matches_numpy():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(5, 31, generator=g, dtype=torch.float64)
    valid = torch.rand(5, 31, generator=g) > 0.3
    for q in (0, 25, 33.3, 75, 100):
        ours = masked_percentile(values, valid, q)
        ref = [np.percentile(values[i][valid[i]].numpy(), q) for i in range(5)]
        np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-12)
        doubled = [np.percentile(np.repeat(values[i][valid[i]].numpy(), 2), q) for i in range(5)]
        np.testing.assert_allclose(masked_percentile(values, valid, q, multiplicity=2).numpy(), doubled, atol=1e-12)


def code_filter(g, sigma_s=5.0, sigma_r=0.1):
    """The repository's bilateral-like filter for one 2D map, written out again."""
    h, w = g.shape
    u, v = torch.meshgrid(torch.arange(h, dtype=g.dtype) - h / 2, torch.arange(w, dtype=g.dtype) - w / 2,
                          indexing="ij")
    kernel = torch.exp(-(u ** 2 + v ** 2) / (2 * sigma_s ** 2)) * torch.exp(-(g - g.mean()) ** 2 / (2 * sigma_r ** 2))
    kernel = kernel / (kernel.sum() + 1e-6)
    with warnings.catch_warnings():  # torch warns that even kernels need a padded copy
        warnings.simplefilter("ignore", UserWarning)
        return F.conv2d(g[None, None], kernel[None, None], padding="same")[0, 0]


def cfcam_reference(acts, grads):
    """One image, the code's steps with NumPy and sklearn (distances precomputed in float64)."""
    from sklearn.cluster import DBSCAN
    k = acts.shape[0]
    features = acts.reshape(k, -1).numpy()
    norms = np.linalg.norm(features, axis=1)
    important = norms >= np.percentile(norms, 75)
    rest = np.where(~important)[0]
    labels = np.full(k, -2)
    if len(rest) == 1:
        labels[rest] = -1
    elif len(rest) > 1:
        dist = np.linalg.norm(features[rest][:, None] - features[rest][None], axis=2)
        eps = max(np.percentile(dist[~np.eye(len(rest), dtype=bool)], 25), 1e-5)
        min_samples = max(2, int(len(rest) * 0.05))
        labels[rest] = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(dist).labels_
    weights = grads.reshape(k, -1).mean(1).clone()
    for cluster in set(labels[labels >= 0].tolist()):
        members = torch.from_numpy(labels == cluster)
        weights[members] = code_filter(grads[members].mean(0)).mean()
    beta = torch.zeros(k, dtype=acts.dtype)
    valid = torch.from_numpy(labels != -1)
    beta[valid] = weights[valid].softmax(0)
    return beta, labels


@pytest.mark.parametrize("layer", ["features", "features.conv2"])
def test_cfcam_matches_the_code_steps(layer):
    torch.manual_seed(0)
    model = GapNet(width=40).double().eval()
    x = torch.rand(4, 3, 12, 12, dtype=torch.float64)
    inputs = capture(model, x, layer)
    beta, labels = cfcam_weights(inputs.activations, inputs.gradients, chunk=3)
    clustered = 0
    for i in range(4):
        ref_beta, ref_labels = cfcam_reference(inputs.activations[i], inputs.gradients[i])
        torch.testing.assert_close(beta[i], ref_beta, rtol=1e-9, atol=1e-12)
        assert np.array_equal(labels[i].numpy() == -2, ref_labels == -2)
        assert same_partition(labels[i].numpy(), ref_labels)
        clustered += (ref_labels >= 0).sum()
    assert clustered > 0
    raw = cambench.explain_many(model, x, ["cfcam"], layer).raw["cfcam"]
    torch.testing.assert_close(raw, (beta[:, :, None, None] * inputs.activations).sum(1))


def planted_channels():
    """10 strong channels (the important quarter), two tight groups of 12 weak ones, 6 weak
    outliers far from everything; the gradient of channel k is the constant grad_values[k]."""
    g = torch.Generator().manual_seed(3)
    z = (7, 7)
    strong = 10 + torch.rand(10, *z, generator=g)
    group_a = 1.0 + 0.01 * torch.randn(12, *z, generator=g)
    group_b = torch.zeros(12, *z)
    group_b[:, :3] = 1.0
    group_b += 0.01 * torch.randn(12, *z, generator=g)
    outliers = torch.zeros(6, *z)
    for i in range(6):
        outliers[i].view(-1)[i * 8:i * 8 + 4] = 2.0 + i / 2  # disjoint spots
    acts = torch.cat([strong, group_a, group_b, outliers])[None].double()
    grad_values = torch.linspace(-0.5, 0.5, 40, dtype=torch.float64)
    grads = grad_values.view(1, 40, 1, 1).expand_as(acts).clone()
    return acts, grads, grad_values


def test_cfcam_known_answer_on_planted_channels():
    acts, grads, gv = planted_channels()
    beta, labels = cfcam_weights(acts, grads)
    labels = labels[0]
    a, b = slice(10, 22), slice(22, 34)
    assert (labels[:10] == -2).all()
    assert (labels[a] == labels[10]).all() and (labels[b] == labels[22]).all()
    assert labels[10] >= 0 and labels[22] >= 0 and labels[10] != labels[22]
    assert (labels[34:] == -1).all()
    # constant gradients: the code filter multiplies the cluster mean by the mean in-bounds kernel mass
    h = w = 7
    u, v = np.meshgrid(np.arange(h) - h / 2, np.arange(w) - w / 2, indexing="ij")
    kernel = np.exp(-(u ** 2 + v ** 2) / 50.0)
    kernel /= kernel.sum() + 1e-6
    padded = np.pad(np.ones((h, w)), ((3, 3), (3, 3)))
    mass = np.mean([(padded[i:i + h, j:j + w] * kernel).sum() for i in range(h) for j in range(w)])
    assert 0.3 < mass < 0.9
    w_expected = gv.clone()
    w_expected[a] = gv[a].mean() * mass
    w_expected[b] = gv[b].mean() * mass
    expected = torch.zeros(40, dtype=torch.float64)
    expected[:34] = w_expected[:34].softmax(0)
    torch.testing.assert_close(beta[0], expected, rtol=1e-9, atol=1e-12)
    # gaussian filter with replicate padding keeps a constant map: cluster weight = mean gradient
    beta_g, _ = cfcam_weights(acts, grads, filter="gaussian")
    w_expected[a], w_expected[b] = gv[a].mean(), gv[b].mean()
    expected[:34] = w_expected[:34].softmax(0)
    torch.testing.assert_close(beta_g[0], expected, rtol=1e-9, atol=1e-12)


def test_cfcam_weights_positive_sum_to_one_and_noise_gets_zero():
    """§6.12 on random models and on the planted case (which has noise channels)."""
    model = zoo_model("resnet18")
    inputs = capture(model, torch.randn(3, 3, 64, 64), "layer4.0")
    acts, grads, _ = planted_channels()
    for a, g in ((inputs.activations, inputs.gradients), (acts, grads)):
        for filter in ("code", "gaussian"):
            beta, labels = cfcam_weights(a, g, filter=filter)
            valid = labels != -1
            assert (beta[valid] > 0).all() and (beta[~valid] == 0).all()
            torch.testing.assert_close(beta.sum(1), torch.ones(len(beta), dtype=beta.dtype))
    assert (labels == -1).any()


def test_cfcam_filters_in_3d_and_2d():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(5, 6, 7, generator=g, dtype=torch.float64) * 0.1
    ref = torch.stack([code_filter(m) for m in maps])
    torch.testing.assert_close(bilateral_like_filter(maps), ref)
    # a 3D map of depth 1 is the 2D map: the depth term of the kernel is a constant factor
    torch.testing.assert_close(bilateral_like_filter(maps[:, None])[:, 0], ref)
    vol = torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64)
    blurred = gaussian_filter(vol, 1.0)
    assert blurred.shape == vol.shape and blurred.std() < vol.std()
    torch.testing.assert_close(gaussian_filter(torch.full((1, 4, 4, 4), 2.5), 1.0), torch.full((1, 4, 4, 4), 2.5))
    # separable Gaussian = scipy's with 'nearest' (replicate) borders and the same truncation
    from scipy.ndimage import gaussian_filter as scipy_gaussian
    ref3 = np.stack([scipy_gaussian(v.numpy(), 1.0, mode="nearest", truncate=3.0) for v in vol])
    np.testing.assert_allclose(blurred.numpy(), ref3, atol=1e-10)


def test_cfcam_runs_in_2d_and_3d(gapnet, images):
    torch.manual_seed(0)
    model3 = GapNet(dims=3, in_channels=1, width=16).eval()
    x3 = torch.randn(2, 1, 6, 8, 8)
    for model, x in ((gapnet, images), (model3, x3)):
        for filter in ("code", "gaussian"):
            maps = cambench.explain(model, x, "cfcam", "features", filter=filter)
            assert maps.shape == (x.shape[0],) + x.shape[2:] and maps.min() >= 0 and maps.max() <= 1
    inputs = capture(model3, x3, "features")
    beta3, labels3 = cfcam_weights(inputs.activations, inputs.gradients)
    # the same channels as a 2D problem (height and width folded) cluster the same way
    beta2, labels2 = cfcam_weights(inputs.activations.flatten(3), inputs.gradients.flatten(3), filter="gaussian")
    assert torch.equal(labels2, labels3)
    with pytest.raises(CamError, match="filter"):
        cambench.explain(gapnet, images, "cfcam", "features", filter="median")
    with pytest.raises(CamError, match="importance_percentile"):
        cambench.explain(gapnet, images, "cfcam", "features", importance_percentile=120)


# --------------------------------------------------------------------------------------------
# MI-CAM
# --------------------------------------------------------------------------------------------

def test_mutual_information_matches_sklearn():
    from sklearn.metrics import mutual_info_score, normalized_mutual_info_score
    g = torch.Generator().manual_seed(0)
    bins, m, p = 8, 6, 500
    a = torch.randint(0, bins, (m, p), generator=g)
    noise = torch.randint(0, bins, (m, p), generator=g)
    keep = torch.rand(m, p, generator=g) < torch.linspace(0.1, 0.9, m)[:, None]
    b = torch.where(keep, a // 2, noise)               # partly dependent, to a different degree per row
    mi = mutual_information(a, b, bins)
    nmi = mutual_information(a, b, bins, normalised=True)
    for i in range(m):
        assert mi[i].item() == pytest.approx(mutual_info_score(a[i].numpy(), b[i].numpy()), abs=1e-12)
        assert nmi[i].item() == pytest.approx(normalized_mutual_info_score(a[i].numpy(), b[i].numpy()), abs=1e-12)
    assert mi.std() > 0.05


def test_mutual_information_identities():
    g = torch.Generator().manual_seed(1)
    bins = 16
    a = torch.randint(0, bins, (3, 100000), generator=g)
    a[1] = a[1] // 4                                   # fewer distinct values
    counts = torch.stack([torch.bincount(r, minlength=bins) for r in a]).double() / a.shape[1]
    entropy = -(counts * torch.where(counts > 0, counts.log(), 0.0)).sum(1)
    torch.testing.assert_close(mutual_information(a, a, bins), entropy, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mutual_information(a, a, bins, normalised=True), torch.ones(3, dtype=torch.float64))
    independent = mutual_information(a, torch.randint(0, bins, a.shape, generator=g), bins)
    assert (independent < 5e-3).all() and (independent >= 0).all()
    nmi = mutual_information(a, torch.where(torch.rand(a.shape, generator=g) < 0.5, a, 0), bins, normalised=True)
    assert ((nmi > 0) & (nmi < 1)).all()


def micam_reference(inputs, bins, pair, normalised):
    from sklearn.metrics import mutual_info_score, normalized_mutual_info_score
    acts, images = inputs.activations, inputs.images
    size = images.shape[2:]
    mode = "bilinear" if len(size) == 2 else "trilinear"
    weights = np.zeros(acts.shape[:2])
    score = normalized_mutual_info_score if normalised else mutual_info_score
    for i in range(acts.shape[0]):
        gray = images[i].mean(0).numpy().ravel()
        gray = (gray - gray.min()) / (gray.max() - gray.min())
        gbins = np.minimum((gray * bins).astype(int), bins - 1)
        for k in range(acts.shape[1]):
            up = F.interpolate(acts[i, k][None, None], size=tuple(size), mode=mode, align_corners=False).numpy().ravel()
            h = (up - up.min()) / (up.max() - up.min()) if up.max() > up.min() else np.zeros_like(up)
            if pair == "masked_vs_image":
                h = gray * h
            hbins = np.minimum((h * bins).astype(int), bins - 1)
            weights[i, k] = score(gbins, hbins)
    return torch.from_numpy(weights)


@pytest.mark.parametrize("dims", [2, 3])
def test_micam_weights_match_a_per_channel_sklearn_reference(dims, gapnet, images):
    if dims == 3:
        torch.manual_seed(0)
        model, x = GapNet(dims=3, in_channels=2).eval(), torch.randn(2, 2, 6, 8, 8)
    else:
        model, x = gapnet, images
    inputs = capture(model, x, "features.conv2", need_gradients=False)
    for pair, normalised in (("map_vs_image", False), ("masked_vs_image", True)):
        ours = micam(inputs, bins=16, pair=pair, normalised=normalised)
        ref = micam_reference(inputs, 16, pair, normalised)
        torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    weights = micam(inputs, normalise_weights=True)
    torch.testing.assert_close(weights.sum(1), torch.ones(x.shape[0]))
    assert (weights >= 0).all()


def test_micam_is_class_agnostic_chunking_is_invisible_and_bad_parameters_fail(gapnet, images):
    a = cambench.explain_many(gapnet, images, ["micam"], "features", targets=[0] * 6)
    b = cambench.explain_many(gapnet, images, ["micam"], "features", targets=[3] * 6, memory_mb=0.05)
    assert torch.equal(a.raw["micam"], b.raw["micam"])
    assert a.maps["micam"].shape == (6, 16, 16)
    assert not METHODS.get("micam").meta["needs_gradients"]
    for params, message in (({"bins": 1}, "bins"), ({"pair": "x"}, "pair"), ({"normalised": 1}, "normalised")):
        with pytest.raises(CamError, match=message):
            cambench.explain(gapnet, images, "micam", "features", **params)
    assert math.isfinite(float(a.raw["micam"].sum()))
