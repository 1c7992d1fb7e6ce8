import math

import numpy as np
import pytest
import torch
from conftest import ConstantModel, GapNet, RegionModel, zoo_model

import cambench
from cambench.metrics.road import neighbour_kernel, noisy_linear_imputation, percentile


def neighbour_residual(imputed: np.ndarray, removed: np.ndarray, weights: dict) -> np.ndarray:
    """Max over removed pixels of |x_i - sum_j w_j x_j / sum_j w_j| (in-image neighbours j), per image.

    Written independently of the implementation: explicit offsets, numpy, no convolution.
    """
    m, c = imputed.shape[:2]
    size = imputed.shape[2:]
    out = np.zeros(m)
    for idx in zip(*np.nonzero(removed)):
        img, pos = idx[0], np.array(idx[1:])
        total, wsum = np.zeros(c), 0.0
        for offset, w in weights.items():
            q = pos + np.array(offset)
            if (q < 0).any() or (q >= np.array(size)).any():
                continue
            total += w * imputed[(img, slice(None)) + tuple(q)]
            wsum += w
        out[img] = max(out[img], np.abs(imputed[(img, slice(None)) + tuple(pos)] - total / wsum).max())
    return out


WEIGHTS_2D = {(di, dj): (1 / 6 if abs(di) + abs(dj) == 1 else 1 / 12)
              for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)}
WEIGHTS_SLICE = {(0,) + o: w for o, w in WEIGHTS_2D.items()}
WEIGHTS_3D = {(a, b, c): 1 / (a * a + b * b + c * c)
              for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)}


@pytest.mark.parametrize("shape,mode", [((2, 3, 9, 11), "slicewise"), ((2, 2, 4, 6, 5), "slicewise"),
                                        ((2, 2, 4, 6, 5), "3d")])
def test_constant_image_is_imputed_exactly(shape, mode):
    """docs/reliability.md §2.17: σ = 0, constant image, at least one kept pixel -> the constant."""
    torch.manual_seed(0)
    images = torch.full(shape, 0.37)
    removed = torch.rand((shape[0],) + shape[2:]) < 0.8
    removed.view(shape[0], -1)[:, 0] = False
    out = noisy_linear_imputation(images, removed, noise=0.0, volume_mode=mode)
    torch.testing.assert_close(out, images, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape,mode,weights", [((3, 3, 12, 10), "slicewise", WEIGHTS_2D),
                                                ((2, 2, 4, 7, 6), "slicewise", WEIGHTS_SLICE),
                                                ((2, 2, 4, 7, 6), "3d", WEIGHTS_3D)])
def test_imputed_pixels_solve_the_neighbour_equations(shape, mode, weights):
    torch.manual_seed(1)
    images = torch.rand(shape, dtype=torch.float64)
    removed = torch.rand((shape[0],) + shape[2:]) < 0.6
    if len(shape) == 5:
        removed[0, 1] = True  # a fully removed slice: it must still satisfy the 3D/slice equations
        removed[0, 2, 0, 0] = False
    out = noisy_linear_imputation(images, removed, noise=0.0, volume_mode=mode, tol=1e-12)
    assert torch.equal(out[~removed.unsqueeze(1).expand_as(out)], images[~removed.unsqueeze(1).expand_as(out)])
    res = neighbour_residual(out.numpy(), removed.numpy(), weights)
    assert res.max() < 1e-8
    assert (out - images).abs().max() > 0.01  # the removed pixels really changed


def test_kernel_weights_sum_to_one_and_match_the_reference():
    k2 = neighbour_kernel(2, dtype=torch.float64)[0, 0]
    assert torch.allclose(k2, torch.tensor([[1, 2, 1], [2, 0, 2], [1, 2, 1]], dtype=torch.float64) / 12)
    k3 = neighbour_kernel(3, "3d", dtype=torch.float64)[0, 0]
    assert math.isclose(k3.sum().item(), 1.0) and math.isclose(k3[1, 1, 0].item(), 3 / 44)
    assert math.isclose(k3[0, 1, 0].item(), 3 / 88) and math.isclose(k3[0, 0, 0].item(), 1 / 44)


def test_imputation_matches_pytorch_grad_cam_noisy_linear_imputer():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    torch.manual_seed(2)
    images = torch.rand(3, 3, 20, 24, dtype=torch.float64)
    removed = torch.rand(3, 20, 24) < torch.tensor([0.2, 0.6, 0.9]).view(3, 1, 1)
    ours = noisy_linear_imputation(images, removed, noise=0.0, tol=1e-12)
    for i in range(3):
        # the reference solves in float64 with spsolve and returns float32
        ref = NoisyLinearImputer(noise=0.0)(images[i].float(), (~removed[i]).float())
        assert (ours[i] - ref.double()).abs().max() < 1e-6


def test_noise_is_added_to_the_removed_pixels_only():
    torch.manual_seed(3)
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    removed = torch.rand(2, 16, 16) < 0.5
    field = torch.randn(3, 16, 16, dtype=torch.float64)
    clean = noisy_linear_imputation(images, removed, noise=0.0, tol=1e-12)
    noisy = noisy_linear_imputation(images, removed, noise=0.01, noise_field=field, tol=1e-12)
    expected = clean + 0.01 * field * removed.unsqueeze(1)
    torch.testing.assert_close(noisy, expected, rtol=0, atol=1e-9)


def test_no_kept_pixel_is_undefined():
    out = noisy_linear_imputation(torch.rand(2, 1, 5, 5), torch.tensor([True, False]).view(2, 1, 1).expand(2, 5, 5),
                                  noise=0.0)
    assert out[0].isnan().all() and torch.isfinite(out[1]).all()
    # a constant map with no tie-breaking removes every pixel at every MoRF percentile: NaN
    v = cambench.evaluate(ConstantModel(), torch.rand(2, 3, 8, 8), torch.zeros(2, 8, 8), "road_combined",
                          targets=torch.ones(2), tie_noise=0.0)
    assert v.isnan().all()
    v = cambench.evaluate(ConstantModel(), torch.rand(2, 3, 8, 8), torch.zeros(2, 8, 8), "road_combined",
                          targets=torch.ones(2))
    assert torch.isfinite(v).all()


def test_percentile_matches_numpy():
    torch.manual_seed(4)
    values = torch.rand(3, 37)
    values[0, :10] = 0.5  # ties
    q = torch.tensor([0.0, 10, 25, 50, 62.5, 90, 100], dtype=torch.float64)
    ref = np.percentile(values.numpy().astype(np.float64), q.numpy(), axis=1).T
    np.testing.assert_allclose(percentile(values.double(), q).numpy(), ref, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def resnet():
    return zoo_model("resnet18")


def test_road_matches_pytorch_grad_cam(resnet, monkeypatch):
    """ROADCombined and the MoRF / LeRF averages of pytorch-grad-cam, both without imputation noise.

    32×32 maps: every percentile position q/100·1023 is fractional, so the thresholds lie strictly
    between two map values and float rounding cannot move a pixel across them.
    """
    from pytorch_grad_cam.metrics import road as pgc_road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    monkeypatch.setattr(pgc_road.NoisyLinearImputer.__init__, "__defaults__", (0.0, pgc_road.neighbors_weights))
    torch.manual_seed(5)
    x = torch.rand(2, 3, 32, 32)
    cams = torch.nn.functional.interpolate(torch.rand(2, 1, 4, 4), size=(32, 32), mode="bilinear").squeeze(1)
    cams = (cams - cams.amin(dim=(1, 2), keepdim=True)) / (cams.amax(dim=(1, 2), keepdim=True)
                                                          - cams.amin(dim=(1, 2), keepdim=True))
    targets = torch.tensor([3, 7])
    pct = [10, 30, 50, 70, 90]
    pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    morf = pgc_road.ROADMostRelevantFirstAverage(pct)(x, cams.numpy(), pgc_targets, resnet)
    lerf = pgc_road.ROADLeastRelevantFirstAverage(pct)(x, cams.numpy(), pgc_targets, resnet)
    combined = (lerf - morf) / 2  # what ROADCombined returns
    common = dict(targets=targets, percentiles=pct, noise=0.0, tie_noise=0.0, score="logit", tol=1e-7)
    ours = {name: cambench.evaluate(resnet, x, cams, name, **common).numpy()
            for name in ("road_morf", "road_lerf", "road_combined")}
    assert np.abs(morf).min() > 1e-3  # the removals change the logits: the comparison means something
    np.testing.assert_allclose(ours["road_morf"], morf, rtol=0, atol=2e-5)
    np.testing.assert_allclose(ours["road_lerf"], lerf, rtol=0, atol=2e-5)
    np.testing.assert_allclose(ours["road_combined"], combined, rtol=0, atol=2e-5)


def test_input_independent_model_gives_zero():
    x = torch.rand(3, 3, 12, 12)
    maps = torch.rand(3, 12, 12)
    for name in ("road_combined", "road_morf", "road_lerf"):
        v = cambench.evaluate(ConstantModel(), x, maps, name, targets=torch.ones(3))
        assert torch.equal(v, torch.zeros(3))


def test_the_true_evidence_scores_higher():
    x = torch.rand(2, 3, 16, 16) * 0.5
    x[:, :, :4, :4] += 0.5
    truth = torch.zeros(2, 16, 16)
    truth[:, :4, :4] = 1
    t = torch.ones(2, dtype=torch.long)
    good = cambench.evaluate(RegionModel(), x, truth, "road_combined", targets=t, score="logit")
    bad = cambench.evaluate(RegionModel(), x, 1 - truth, "road_combined", targets=t, score="logit")
    assert (good > 0).all() and (bad < 0).all()
    morf = cambench.evaluate(RegionModel(), x, truth, "road_morf", targets=t, score="logit")
    lerf = cambench.evaluate(RegionModel(), x, truth, "road_lerf", targets=t, score="logit")
    torch.testing.assert_close(good, (lerf - morf) / 2)


def test_noise_is_seeded_and_independent_of_chunking_and_batch():
    torch.manual_seed(6)
    model = GapNet().eval()
    x, maps = torch.rand(3, 3, 16, 16), torch.rand(3, 16, 16)
    a = cambench.evaluate(model, x, maps, "road_combined", seed=1)
    b = cambench.evaluate(model, x, maps, "road_combined", seed=1, memory_mb=0.5)  # chunks of 7 rows
    c = cambench.evaluate(model, x, maps, "road_combined", seed=2)
    alone = cambench.evaluate(model, x[1:2], maps[1:2], "road_combined", seed=1)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a[1:2], alone, rtol=0, atol=1e-6)
    assert (a - c).abs().max() > 1e-6


@pytest.mark.parametrize("mode", ["slicewise", "3d"])
def test_volumes(mode):
    torch.manual_seed(7)
    model = GapNet(dims=3).eval()
    x, maps = torch.rand(2, 3, 6, 8, 8), torch.rand(2, 6, 8, 8)
    v = cambench.evaluate(model, x, maps, "road_combined", volume_mode=mode, percentiles=[25, 75])
    assert v.shape == (2,) and torch.isfinite(v).all()


@pytest.mark.parametrize("params", [dict(percentiles=[0, 50]), dict(percentiles=[]), dict(percentiles=[50, 100]),
                                    dict(noise=-1.0), dict(volume_mode="cube"), dict(score="rank"), dict(tol=0.0)])
def test_bad_parameters_raise(params):
    with pytest.raises(ValueError):
        cambench.evaluate(ConstantModel(), torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), "road_combined",
                          targets=torch.ones(1), **params)


def test_the_three_road_metrics_share_one_imputation_through_the_cache(monkeypatch):
    """The workflow passes one cache per table: morf, lerf and combined impute once, same values."""
    from cambench.metrics import road
    torch.manual_seed(0)
    net = GapNet(n_classes=3, width=4).eval()
    images, maps = torch.rand(4, 3, 16, 16), torch.rand(4, 16, 16)
    alone = {m: cambench.evaluate(net, images, maps, m, percentiles=[30, 70]) for m in
             ("road_morf", "road_lerf", "road_combined")}
    calls = []
    real = road.road_scores
    monkeypatch.setattr(road, "road_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = {}
    shared = {m: cambench.evaluate(net, images, maps, m, percentiles=[30, 70], cache=cache) for m in alone}
    assert len(calls) == 1
    for m in alone:
        assert torch.allclose(alone[m], shared[m], atol=1e-6), m
    assert torch.allclose(shared["road_combined"], (shared["road_lerf"] - shared["road_morf"]) / 2, atol=1e-6)


def test_the_cache_never_serves_another_methods_maps():
    """Regression: the workflow frees each method's maps before loading the next, so the next tensor
    can get the same id(); the ROAD cache must recompute for it (it once served the previous
    method's values, which made Grad-CAM differ from the identical CAM)."""
    torch.manual_seed(0)
    net = GapNet(n_classes=3, width=4).eval()
    images = torch.rand(4, 3, 16, 16)
    stored = [torch.rand(4, 16, 16), torch.rand(4, 16, 16), torch.rand(4, 16, 16)]
    expected = [cambench.evaluate(net, images, m, "road_combined", percentiles=[30, 70]) for m in stored]
    # Checked when this was written: with a cache keyed on id(maps) that does not hold the maps,
    # the three fresh tensors below get one and the same id() and the 2nd and 3rd values are wrong.
    cache = {}
    for maps, want in zip(stored, expected):
        heat = maps.clone()  # a fresh tensor per method, freed at the end of the iteration
        got = cambench.evaluate(net, images, heat, "road_combined", percentiles=[30, 70], cache=cache)
        assert torch.allclose(got, want, atol=1e-6)
        del heat, got
    assert len(cache) == 1  # one entry, replaced per method (memory stays bounded)
