import math

import numpy as np
import pytest
import torch
from conftest import GapNet

import cambench
from cambench.engine import METHODS, CamError, register_method
from cambench.methods.metacam import DEFAULT_COMPONENTS, cumulative_residual_effect, ensemble_sweep, select_k
from cambench.metrics import METRICS, register_metric

PLANTED = "_metacam_test_planted"
FRACTION = "_metacam_test_fraction"



def _planted(x):
    return x.images[:, 1] + 1.0


def _fraction(x):
    goal = x.images[:, 0].flatten(1)[:, 0]
    return -((x.heatmaps.flatten(1) > 0).float().mean(dim=1) - goal).abs()


@pytest.fixture(scope="module", autouse=True)
def test_entries():
    """A component with distinct planted values and a metric with a known best k, registered only
    while this module's tests run (so that no other module's 'every method' tests see them)."""
    register_method(PLANTED, needs_gradients=False, summary="test only: image channel 1 plus 1")(_planted)
    register_metric(FRACTION, higher_is_better=True, family="test",
                    summary="test only: -|fraction of non-zero map pixels - goal|, goal = image[0, 0, 0]")(_fraction)
    yield
    del METHODS._entries[PLANTED], METRICS._entries[FRACTION]


def raw(model, images, layer="features", **params):
    return cambench.explain_many(model, images, {"metacam": params}, layer).raw["metacam"]


def component_maps(model, images, names, layer="features"):
    res = cambench.explain_many(model, images, {n: {} for n in names}, layer)
    return np.stack([res.maps[n].numpy().astype(np.float64) for n in names])


def top_k_numpy(maps: np.ndarray, k: float) -> np.ndarray:
    """Independent oracle: per map, value >= its (100 - k)-th percentile and > 0."""
    flat = maps.reshape(maps.shape[0], -1)
    thr = np.percentile(flat, 100 - k, axis=1)[:, None]
    return ((flat >= thr) & (flat > 0)).reshape(maps.shape)


@pytest.mark.parametrize("name,k", [("gradcam", 10.0), ("gradcam", 37.5), (PLANTED, 10.0), (PLANTED, 80.0)])
def test_single_component_gated_mean_is_the_component_masked_to_its_top_k(gapnet, images, name, k):
    """docs/reliability.md §2.11."""
    c = component_maps(gapnet, images, [name])[0]
    expected = c * top_k_numpy(c, k)
    res = cambench.explain_many(gapnet, images, {"metacam": dict(components=[name], k=k)}, "features")
    np.testing.assert_allclose(res.raw["metacam"].numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.maps["metacam"].numpy(), expected, rtol=0, atol=1e-5)  # max 1, min 0
    frac = (expected > 0).reshape(len(c), -1).mean(axis=1)
    if name == PLANTED:  # distinct values: about k % of the pixels survive
        assert np.abs(frac - k / 100).max() < 1.5 / c[0].size + 1e-9


def test_vote_counts_the_top_sets_and_gated_mean_weighs_them(gapnet, images):
    names = ["gradcam", "eigencam", PLANTED]
    c = component_maps(gapnet, images, names)
    chosen = np.stack([top_k_numpy(m, 30) for m in c])
    vote = raw(gapnet, images, components=names, consensus="vote", k=30).numpy()
    gated = raw(gapnet, images, components=names, consensus="gated_mean", k=30).numpy()
    counts = np.rint(3 * vote - 0.25)  # 3·vote = votes + ½·mean activation, the latter in [0, ½]
    np.testing.assert_array_equal(counts, chosen.sum(axis=0))
    np.testing.assert_allclose(3 * vote - counts, 0.5 * c.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(3 * gated, (chosen * c).sum(axis=0), atol=1e-6)
    assert ((gated > 0) == (counts > 0)).all() and (gated <= counts / 3 + 1e-7).all()
    assert (counts == 0).any() and (counts >= 2).any()  # the test sees both outcomes


def test_k_100_gated_mean_is_the_component_mean(gapnet, images):
    names = ["gradcam", "eigencam", PLANTED]
    c = component_maps(gapnet, images, names)
    np.testing.assert_allclose(raw(gapnet, images, components=names, k=100).numpy(), c.mean(axis=0), atol=1e-6)


def test_default_components_and_gradient_needs(gapnet, images):
    entry = METHODS.get("metacam")
    need = entry.meta["needs_gradients"]
    assert need({}) is True
    assert need({"components": ["eigencam", "scorecam", "ablationcam"]}) is False
    assert need({"components": ["eigencam", "layercam"]}) is True
    c = component_maps(gapnet, images, list(DEFAULT_COMPONENTS))
    expected = (c * np.stack([top_k_numpy(m, 10) for m in c])).mean(axis=0)
    np.testing.assert_allclose(raw(gapnet, images, k=10).numpy(), expected, atol=1e-6)


def test_cre_on_hand_built_tables():
    two = {frozenset("a"): 0.1, frozenset("b"): 0.3, frozenset("ab"): 0.5}
    res = cumulative_residual_effect(two, ["a", "b"], "residual")
    assert res == pytest.approx({"a": -0.2, "b": 0.2})  # only size 1 has subsets without m
    res = cumulative_residual_effect(two, ["a", "b"], "marginal")
    assert res == pytest.approx({"a": 0.5 - 0.3, "b": 0.5 - 0.1})
    # additive scores: marginal gain of m is v_m; residual with 3 components is 2 v_m - (V - v_m)
    v = {"a": 0.3, "b": -0.1, "c": 0.05}
    table = {frozenset(s): sum(v[i] for i in s) for s in ["a", "b", "c", "ab", "ac", "bc", "abc"]}
    total = sum(v.values())
    assert cumulative_residual_effect(table, "abc", "marginal") == pytest.approx(v)
    assert cumulative_residual_effect(table, "abc") == pytest.approx(
        {m: 2 * v[m] - (total - v[m]) for m in v})
    with pytest.raises(ValueError):
        cumulative_residual_effect({frozenset("a"): 1.0}, ["a", "b"])
    with pytest.raises(ValueError):
        cumulative_residual_effect(two, ["a", "b"], "shapley")


def test_select_k_same_image():
    values = torch.tensor([[1.0, 0.0, 5.0],
                           [0.0, 2.0, math.nan],
                           [0.5, 1.5, 0.0]])  # (G = 3, N = 3)
    assert select_k(values, "same_image").tolist() == [0, 1, 0]
    assert select_k(-values, "same_image", higher_is_better=False).tolist() == [0, 1, 0]
    with pytest.raises(CamError, match="k_selection"):  # leave-one-out over the batch is gone
        select_k(values, "held_out")


def adaptive_images(goals):
    torch.manual_seed(3)
    x = torch.rand(len(goals), 3, 16, 16)
    x[:, 0, 0, 0] = torch.tensor(goals)
    return x


def test_adaptive_k_picks_the_known_best(gapnet):
    """The test metric peaks where the share of surviving pixels equals the goal planted in each
    image: each image gets its own goal (same_image), also in a batch of one."""
    x = adaptive_images([0.2, 0.2, 0.2, 0.6])
    got = raw(gapnet, x, components=[PLANTED], k="adaptive", metric=FRACTION)
    for i, k in enumerate([20, 20, 20, 60]):
        torch.testing.assert_close(got[i], raw(gapnet, x, components=[PLANTED], k=k)[i])
    torch.testing.assert_close(raw(gapnet, x[3:], components=[PLANTED], metric=FRACTION), got[3:])


def test_adaptive_k_with_road_matches_a_brute_force_search(gapnet, images):
    x, grid = images, [10, 50, 100]
    road = dict(percentiles=[30, 70])
    names = ["gradcam", "eigencam"]
    fixed = [cambench.explain_many(gapnet, x, {"metacam": dict(components=names, k=k)}, "features") for k in grid]
    values = torch.stack([cambench.evaluate(gapnet, x, r.maps["metacam"], "road_combined", **road) for r in fixed])
    got = raw(gapnet, x, components=names, k="adaptive", k_grid=grid, metric_params=road)
    best = values.argmax(dim=0)
    for i in range(len(x)):
        torch.testing.assert_close(got[i], fixed[best[i]].raw["metacam"][i])
    assert len(set(best.tolist())) > 1  # the choice differs across images


@pytest.mark.parametrize("dims", [2, 3])
def test_runs_in_2d_and_3d_with_gradient_components(dims):
    torch.manual_seed(4)
    model = GapNet(dims=dims).eval()
    x = torch.rand((2, 3, 8, 8) if dims == 2 else (2, 3, 4, 8, 8))
    names = ["gradcam", "hirescam", "gradcam_elementwise", "gradcampp", "xgradcam", "layercam"]
    for params in (dict(k=25), dict(consensus="vote", k=25),
                   dict(k="adaptive", k_grid=[20, 60], metric_params=dict(percentiles=[50]))):
        res = cambench.explain_many(model, x, {"metacam": dict(components=names, **params)}, "features")
        m = res.maps["metacam"]
        assert m.shape == x.shape[:1] + x.shape[2:] and torch.isfinite(m).all()
        assert m.min() >= 0 and m.max() <= 1 and (m.flatten(1).amax(dim=1) > 0.999).all()


@pytest.mark.parametrize("consensus,k", [("gated_mean", 30), ("vote", 30), ("gated_mean", "adaptive"),
                                         ("vote", "adaptive")])
def test_ensemble_sweep_agrees_with_the_method(gapnet, images, consensus, k):
    """The paper table's sweep scores each subset exactly as the method would map and be scored,
    with adaptive k too (each image's best k of the grid by the same metric)."""
    names = ["gradcam", "eigencam", PLANTED]
    metric = dict(steps=4, substrate="zero")
    grid = dict(k_grid=[10, 30, 70]) if k == "adaptive" else {}
    scores = ensemble_sweep(gapnet, images, "features", names, consensus=consensus, k=k,
                            metric="deletion_auc", metric_params=metric, **grid)
    assert set(scores) == {frozenset(s) for s in (["gradcam"], ["eigencam"], [PLANTED], ["gradcam", "eigencam"],
                                                  ["gradcam", PLANTED], ["eigencam", PLANTED], names)}
    for subset in (["eigencam"], ["gradcam", PLANTED], names):
        adaptive = dict(metric="deletion_auc", metric_params=metric, **grid) if k == "adaptive" else {}
        maps = cambench.explain(gapnet, images, "metacam", "features", components=subset, consensus=consensus, k=k,
                                **adaptive)
        direct = cambench.evaluate(gapnet, images, maps, "deletion_auc", **metric).mean().item()
        assert scores[frozenset(subset)] == pytest.approx(direct, abs=1e-5)
    if k == "adaptive":  # the best k per image scores no worse (deletion: lower) than any single k of the grid
        for fixed in grid["k_grid"]:
            single = ensemble_sweep(gapnet, images, "features", names, consensus=consensus, k=fixed,
                                    metric="deletion_auc", metric_params=metric)
            assert all(scores[s] <= single[s] + 1e-6 for s in scores)
    cre = cumulative_residual_effect(scores, names)
    assert set(cre) == set(names) and all(math.isfinite(v) for v in cre.values())


@pytest.mark.parametrize("params", [dict(components="gradcam"), dict(components=["nope"]), dict(components=[]),
                                    dict(components=["metacam"]), dict(components=["gradcam", "gradcam"]),
                                    dict(components=["gradcam"], component_params={"eigencam": {}}),
                                    dict(components=["gradcam"], component_params={"gradcam": {"eps": 1}}),
                                    dict(consensus="max"), dict(k=0), dict(k=150), dict(k="auto"),
                                    dict(k="adaptive", k_grid=[]), dict(k="adaptive", k_selection="cv"),
                                    dict(k="adaptive", k_selection="held_out"),
                                    dict(k="adaptive", metric="nope"), dict(k="adaptive", metric="pointing_game")])
def test_bad_parameters_raise(gapnet, images, params):
    with pytest.raises(CamError):
        cambench.explain(gapnet, images[:2], "metacam", "features", **params)


# --- issue 20, item 7: adaptive k by default, a function of each image alone -------------------

CHEAP = dict(components=["gradcam", "scorecam"], metric_params=dict(percentiles=[50]))


def test_adaptive_k_is_the_default(gapnet, images):
    from cambench.methods.metacam import DEFAULT_K
    assert DEFAULT_K == "adaptive" and METHODS.get("metacam").parameters()["k"] == "adaptive"
    default = raw(gapnet, images, **CHEAP)
    torch.testing.assert_close(default, raw(gapnet, images, k="adaptive", **CHEAP))
    assert (default - raw(gapnet, images, k=10, **CHEAP)).abs().max() > 0.01


def test_adaptive_maps_do_not_depend_on_batch_size_or_composition():
    """65 images at batch sizes 1, 7 and 64: the same maps (float64, so that batched BLAS round-off
    cannot move a pixel across a top-k threshold; in float32 that happens with a fixed k too)."""
    from cambench.models import build_model
    torch.manual_seed(0)
    model = build_model("small_cnn", n_classes=3, widths=[4, 8, 8, 8]).double().eval()
    torch.manual_seed(1)
    x = torch.rand(65, 3, 16, 16, dtype=torch.float64)
    spec = {"metacam": dict(k="adaptive", components=["gradcam", "eigencam"], k_grid=[10, 30, 60, 100],
                            metric_params=dict(percentiles=[50]))}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny float64 convolutions: threads only contend (10x slower on 2 busy cores)
    try:
        maps = {b: cambench.explain_many(model, x, spec, "features.block4", batch_size=b).maps["metacam"]
                for b in (1, 7, 64)}
        shuffled = torch.randperm(65)  # batch composition: the same image among other neighbours
        again = cambench.explain_many(model, x[shuffled], spec, "features.block4", batch_size=7).maps["metacam"]
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(maps[7], maps[1], rtol=0, atol=1e-9)
    torch.testing.assert_close(maps[64], maps[1], rtol=0, atol=1e-9)
    torch.testing.assert_close(again, maps[1][shuffled], rtol=0, atol=1e-9)


def test_held_out_k_is_the_best_mean_on_a_separate_set(gapnet):
    from cambench.methods.metacam import held_out_k
    x = adaptive_images([0.2, 0.2, 0.6])  # means over the images: k 20 -> -0.13, 40 -> -0.2, 60 -> -0.27
    assert held_out_k(gapnet, x, "features", components=[PLANTED], k_grid=[20, 40, 60], metric=FRACTION) == 20
