"""Robustness (similarities, consistency/responsiveness, max-sensitivity), axioms and MPRT."""
import math

import numpy as np
import pytest
import torch
from conftest import GapNet
from scipy import stats

import cambench
from cambench.metrics import MetricInputs, TableContext, evaluate_applies, explained_batches
from cambench.metrics.robustness import combine_robustness
from cambench.metrics.sanity import cascade_order, randomised_copy
from cambench.metrics.similarities import average_ranks, cosine, spearman, spearman_abs, topk_iou


def _maps(n=5, shape=(12, 12), seed=0, ties=True):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand((n,) + shape, generator=g)
    if ties:  # ReLU'd maps have many exact zeros and repeated values
        m = torch.where(m < 0.4, torch.zeros_like(m), (m * 8).round() / 8)
    return m


def test_average_ranks_and_spearman_match_scipy_with_ties():
    a, b = _maps(seed=0), _maps(seed=1)
    ranks = average_ranks(a.flatten(1).double())
    for i in range(a.shape[0]):
        np.testing.assert_allclose(ranks[i].numpy(), stats.rankdata(a[i].flatten().numpy()), atol=1e-12)
        rho = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert spearman(a, b)[i].item() == pytest.approx(rho, abs=1e-6)
        rho_abs = stats.spearmanr(np.abs(a[i].flatten().numpy() - 0.5), np.abs(b[i].flatten().numpy() - 0.5)).statistic
        assert spearman_abs(a - 0.5, b - 0.5)[i].item() == pytest.approx(rho_abs, abs=1e-6)


def test_spearman_in_3d_and_of_a_monotone_transform_is_one():
    a = _maps(n=3, shape=(4, 6, 6), ties=False)
    assert torch.allclose(spearman(a, a ** 3 + 1), torch.ones(3), atol=1e-6)
    assert torch.allclose(spearman(a, -a), -torch.ones(3), atol=1e-6)


def test_cosine_and_topk_iou_known_answers():
    a = torch.zeros(1, 10, 10)
    a[0, :2] = 1.0                          # top 20 % = the first two rows
    b = torch.zeros(1, 10, 10)
    b[0, 1:3] = 1.0                         # overlaps one row of two
    assert topk_iou(a, a).item() == 1.0
    assert topk_iou(a, b).item() == pytest.approx(10 / 30)
    assert cosine(a, b).item() == pytest.approx(0.5)
    assert cosine(a, 3 * a).item() == pytest.approx(1.0)


def _pairs(changed):
    ref = _maps(n=len(changed), ties=False)
    perturbed = ref.clone()
    perturbed[torch.tensor(changed)] = 1 - perturbed[torch.tensor(changed)]   # flipped maps where predictions changed
    preds = torch.tensor([1 if c else 0 for c in changed])
    clean_predictions = torch.zeros(len(changed), dtype=torch.long)
    return dict(reference=ref, predictions=preds, reference_predictions=clean_predictions), perturbed


@pytest.mark.parametrize("similarity", ["ssim", "pearson", "spearman", "cosine", "topk_iou"])
def test_consistency_responsiveness_and_combined_split_by_prediction_change(similarity):
    changed = [False, True, False, True, True]
    extra, perturbed = _pairs(changed)
    imgs = torch.zeros(5, 1, 12, 12)
    kw = dict(targets=torch.zeros(5), similarity=similarity, **extra)
    c = cambench.evaluate(None, imgs, perturbed, "consistency", **kw)
    r = cambench.evaluate(None, imgs, perturbed, "responsiveness", **kw)
    rob = cambench.evaluate(None, imgs, perturbed, "noise_robustness", **kw)
    flip = cambench.evaluate(None, imgs, perturbed, "flip_rate", targets=torch.zeros(5), **extra)
    changed_t = torch.tensor(changed)
    assert torch.isnan(c[changed_t]).all() and torch.isnan(r[~changed_t]).all()
    assert torch.allclose(c[~changed_t], torch.ones(2), atol=1e-5)   # unchanged maps: similarity 1
    assert (r[changed_t] > 0.4).all()                                  # inverted maps: far from 1 (cosine: ~0.5)
    assert torch.equal(torch.where(changed_t, r, c), rob)
    assert flip.tolist() == [float(v) for v in changed]
    combined = combine_robustness(rob.numpy().astype(float), ~changed_t.numpy())
    cm, rm = c[~changed_t].mean().item(), r[changed_t].mean().item()
    assert combined == pytest.approx(2 * cm * rm / (cm + rm), rel=1e-6)
    assert math.isnan(combine_robustness(rob.numpy(), np.ones(5, dtype=bool)))   # nothing flipped: undefined


def test_bad_similarity_and_combine_name_the_metric():
    extra, perturbed = _pairs([False, True])
    with pytest.raises(ValueError, match="parameter 'similarity' of metric 'consistency' must be one of 'ssim', "):
        cambench.evaluate(None, torch.zeros(2, 1, 12, 12), perturbed, "consistency", targets=torch.zeros(2),
                          similarity="hamming", **extra)
    with pytest.raises(ValueError, match="parameter 'combine' of metric 'noise_robustness' must be one of 'harmonic'"):
        cambench.evaluate(None, torch.zeros(2, 1, 12, 12), perturbed, "noise_robustness", targets=torch.zeros(2),
                          combine="max", **extra)


# --------------------------------------------------------------------------------------------
# Metrics that re-explain: max-sensitivity, axioms, MPRT
# --------------------------------------------------------------------------------------------

@pytest.fixture
def net():
    torch.manual_seed(0)
    return GapNet(n_classes=4, width=6).eval()


def _explained(net, images, method="gradcam", **params):
    return cambench.explain(net, images, method, "features.relu2", **params)


def _fields(method="gradcam", params=None, **extra):
    return dict(method=method, method_params=params or {}, target_layer="features.relu2", **extra)


def test_max_sensitivity_matches_captum(net, images):
    from captum.metrics import sensitivity_max

    from cambench.counter_rng import perturbation_keys, uniform
    targets = net(images).argmax(1)
    keys = torch.arange(10, 10 + images.shape[0])
    samples, radius = 4, 0.05
    ours = cambench.evaluate(net, images, _explained(net, images), "max_sensitivity", targets=targets,
                             radius=radius, samples=samples, seed=3, **_fields(keys=keys))

    def perturb(inputs):  # rows are image-major (repeat_interleave): row r = image r // S, draw r % S
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        rows = torch.arange(inputs.shape[0])
        out = torch.empty_like(inputs)
        for j in range(samples):
            sel = rows % samples == j
            k = perturbation_keys(keys[rows[sel] // samples], "max_sensitivity", float(j), 3)
            out[sel] = inputs[sel] + (2 * uniform(k, tuple(inputs.shape[1:]), 7) - 1).float() * radius
        return out

    def explanation(inputs, target):
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        return (cambench.explain(net, inputs, "gradcam", "features.relu2", targets=target).unsqueeze(1),)

    ref = sensitivity_max(explanation, images, perturb_func=perturb, n_perturb_samples=samples, target=targets)
    assert torch.allclose(ours, ref.float(), rtol=1e-4, atol=1e-5)
    assert (ours > 0).all()


def test_max_sensitivity_of_a_model_that_ignores_small_noise_is_zero(images):
    """A model of the rounded input: noise below the rounding step leaves every map unchanged."""
    net = GapNet(n_classes=3, width=4).eval()
    step = 0.25
    net.features.conv1.register_forward_pre_hook(lambda _m, args: ((args[0] / step).round() * step,))
    x = (torch.rand(4, 3, 16, 16) / step).round() * step + 0.02   # far from the rounding boundaries
    out = cambench.evaluate(net, x, _explained(net, x), "max_sensitivity", radius=0.01, samples=3, **_fields())
    assert torch.equal(out, torch.zeros(4))


def test_axioms_on_gap_linear_known_answers(net, images):
    """docs/reliability.md §2.3: conservation residual |b_c| / |y_c|, sensitivity residual 0 (Grad-CAM, XGrad-CAM)."""
    logits = net(images)
    targets = logits.argmax(1)
    y = logits.gather(1, targets[:, None]).squeeze(1)
    b = net.fc.bias[targets]
    expected = (b.abs() / y.abs()).detach()
    cache = {}
    z = images.shape[2] * images.shape[3]
    for method, params in (("gradcam", {}), ("xgradcam", {}), ("cam", {"fc_layer": "fc"})):
        heat = _explained(net, images, method, **params)
        kw = dict(targets=targets, **_fields(method, params, cache=cache))
        cons = cambench.evaluate(net, images, heat, "conservation_residual", **kw)
        if method == "cam":  # CAM = Z x Grad-CAM (identity 1): its map sums to Z (y - b)
            assert torch.allclose(cons, ((y - z * (y - b)).abs() / y.abs()).detach(), rtol=1e-4)
            sens = cambench.evaluate(net, images, heat, "sensitivity_residual", **kw)
            assert (sens > 1e-2).all()
            continue
        assert torch.allclose(cons, expected, rtol=1e-4, atol=1e-6), method
        sens = cambench.evaluate(net, images, heat, "sensitivity_residual", **kw)
        assert sens.abs().max() < 1e-4, method
        corr = cambench.evaluate(net, images, heat, "sensitivity_correlation", **kw)
        assert torch.allclose(corr, torch.ones_like(corr), atol=1e-4), method
    assert len(cache) == 1   # the channel score drops are shared by the methods


def test_axioms_tell_methods_apart_and_skip_map_methods(net, images):
    targets = net(images).argmax(1)
    heat = _explained(net, images, "gradcampp")
    kw = dict(targets=targets, **_fields("gradcampp"))
    sens = cambench.evaluate(net, images, heat, "sensitivity_residual", **kw)
    assert (sens > 1e-3).all()                  # Grad-CAM++'s weights are not w_k / Z: the axiom fails
    _, applies = evaluate_applies(net, images, _explained(net, images, "hirescam"),
                                                   "sensitivity_residual", targets=targets, **_fields("hirescam"))
    assert not applies.any()                    # an element-wise map has no channel weights
    cons = cambench.evaluate(net, images, _explained(net, images, "hirescam"), "conservation_residual",
                             targets=targets, **_fields("hirescam"))
    assert torch.isfinite(cons).all()


def test_axioms_in_3d():
    torch.manual_seed(0)
    net = GapNet(n_classes=3, width=4, in_channels=1, dims=3).eval()
    vol = torch.rand(3, 1, 6, 8, 8)
    targets = net(vol).argmax(1)
    y = net(vol).gather(1, targets[:, None]).squeeze(1)
    heat = _explained(net, vol, "gradcam")
    cons = cambench.evaluate(net, vol, heat, "conservation_residual", targets=targets, **_fields())
    assert torch.allclose(cons, (net.fc.bias[targets].abs() / y.abs()).detach(), rtol=1e-4)


def test_cascade_order_and_scopes(net):
    assert cascade_order(net, "features.relu2", "all") == ["fc", "features.conv2", "features.conv1"]
    assert cascade_order(net, "features.relu2", "above") == ["fc"]
    assert cascade_order(net, "features.conv2", "below") == ["features.conv2", "features.conv1"]
    assert cascade_order(net, "features.-1", "above") == ["fc"]        # engine-style names (negative index)
    assert cascade_order(net, "features.-2", "below") == ["features.conv2", "features.conv1"]
    with pytest.raises(ValueError, match="no layer with parameters above"):
        cascade_order(net, "fc", "above")
    clone = randomised_copy(net, ["fc"], seed=0)
    assert not torch.equal(clone.fc.weight, net.fc.weight)
    assert torch.equal(clone.features.conv1.weight, net.features.conv1.weight)
    assert torch.equal(randomised_copy(net, ["fc"], seed=0).fc.weight, clone.fc.weight)   # seeded


def test_mprt_model_independent_control_keeps_similarity_one(net, images, monkeypatch):
    """docs/reliability.md §2.20: an explanation that ignores the model keeps similarity 1."""
    from cambench.metrics import sanity
    monkeypatch.setattr(sanity, "explained_batches",
                        lambda x, methods, imgs, model=None:
                        iter([(slice(None), {m: imgs.mean(dim=1) for m in methods})]))
    out = cambench.evaluate(net, images, images.mean(dim=1), "mprt", targets=torch.zeros(6), **_fields())
    assert torch.allclose(out, torch.ones(6), atol=1e-6)


def test_mprt_gradcam_loses_similarity_under_full_randomisation(net, images):
    targets = net(images).argmax(1)
    heat = _explained(net, images)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    full = cambench.evaluate(net, images, heat, "mprt", targets=targets, seed=1, **_fields())
    head = cambench.evaluate(net, images, heat, "mprt", targets=targets, depth=1, similarity="ssim",
                             seed=1, **_fields())
    assert full.mean() < 0.6
    assert torch.isfinite(head).all() and (head <= 1 + 1e-6).all()
    again = cambench.evaluate(net, images, heat, "mprt", targets=targets, seed=1, **_fields())
    assert torch.equal(full, again)   # deterministic in the seed
    assert not torch.equal(net.fc.weight, randomised_copy(net, ["fc"], 1).fc.weight)  # a copy is randomised
    after = net.state_dict()  # ... and the model itself is untouched, weights and buffers
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_explained_batches_cover_every_image_like_one_pass(net, images):
    targets = net(images).argmax(1)
    x = MetricInputs(images, images[:, 0], targets, context=TableContext(model=net, batch_size=4, **_fields()))
    batches = list(explained_batches(x, {"gradcam": {}, "gradcampp": {}}, images))
    assert [rows for rows, _ in batches] == [slice(0, 4), slice(4, 6)]
    for method in ("gradcam", "gradcampp"):
        joined = torch.cat([maps[method] for _, maps in batches])
        assert torch.allclose(joined, _explained(net, images, method, targets=targets), atol=1e-6)


@pytest.mark.parametrize("metric, params", [("max_sensitivity", {"samples": 2, "radius": 0.05}),
                                            ("mprt", {"similarity": "ssim"}), ("mprt", {"depth": 1})])
def test_a_table_of_methods_is_re_explained_in_shared_passes_with_the_same_values(net, images, monkeypatch,
                                                                                   metric, params):
    """In a table (cache + table_methods), one engine pass per batch serves every method; each method's
    value equals the one computed for it alone, bit for bit."""
    import cambench.engine
    targets = net(images).argmax(1)
    specs = {"gradcam": {}, "scorecam": {}, "eigencam": {}, "sc": {"method": "scorecam", "variant": "pgc"},
             "metacam": {"components": ["gradcam", "scorecam"], "k": 20}}
    stored = cambench.explain_many(net, images, specs, "features.relu2", targets).maps
    calls = []
    real = cambench.engine.explain_many
    monkeypatch.setattr(cambench.engine, "explain_many",
                        lambda *a, **k: calls.append(sorted(a[2])) or real(*a, **k))

    def each(**table):  # targets rebuilt for every call, as a caller may: equal values share the passes
        return {m: cambench.evaluate(net, images, stored[m], metric, targets=targets.clone(),
                                     **_fields(m, p, batch_size=4), **table, **params) for m, p in specs.items()}

    alone = each()
    passes_alone = len(calls)
    calls.clear()
    shared = each(cache={}, table_methods={m: (p, stored[m]) for m, p in specs.items()})
    assert passes_alone == len(specs) * len(calls)          # one pass per batch (and draw) for all five
    assert all(c == sorted(specs) for c in calls)
    for m in specs:  # NaN: MPRT excludes constant maps (gradcam's, with only the head randomised)
        torch.testing.assert_close(shared[m], alone[m], rtol=0, atol=0, equal_nan=True, msg=m)
    assert not torch.equal(shared["gradcam"], shared["eigencam"])   # each method gets its own values


def test_axioms_from_stored_terms_equal_recomputed(net, images):
    """The workflow passes the heatmap file's raw maps, logits and weights; the values must not change."""
    targets = net(images).argmax(1)
    res = cambench.explain_many(net, images, {"gradcampp": {}, "hirescam": {}}, "features.relu2", targets)
    assert set(res.weights) == {"gradcampp"} and res.weights["gradcampp"].shape == (6, 6)
    for method in ("gradcampp", "hirescam"):
        stored = dict(raw=res.raw[method], scores=res.scores, weights=res.weights.get(method))
        for metric in ("conservation_residual", "sensitivity_residual"):
            a = cambench.evaluate(net, images, res.maps[method], metric, targets=targets, **_fields(method))
            b = cambench.evaluate(net, images, res.maps[method], metric, targets=targets, **_fields(method), **stored)
            assert torch.allclose(a, b, equal_nan=True, rtol=1e-5, atol=1e-7), (method, metric)
