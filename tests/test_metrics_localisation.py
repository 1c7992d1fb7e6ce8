"""Localisation (docs/metrics.md §7 to §10) and complexity (docs/metrics.md §12) metrics: known answers on planted
masks, the identities of §6.14/18/19, and agreement with independent references (scikit-image's
Otsu, scipy's entropy, pytorch-grad-cam's ARCC Complexity, and NumPy transcriptions of Quantus's
RelevanceMassAccuracy / RelevanceRankAccuracy / Sparseness, since installing Quantus would pull
opencv-python over the pinned opencv-python-headless)."""
import math

import numpy as np
import pytest
import torch

import cambench
from cambench.metrics import METRICS, evaluate_applies
from cambench.metrics.localisation import binarise, otsu_thresholds

MASK_METRICS = ["energy_pointing_game", "relevance_mass", "relevance_rank", "iou", "dice"]
SHAPES = {2: (16, 16), 3: (8, 8, 8)}


def run(maps, metric, masks=None, **params):
    """Metric values (N,) of heatmaps (N, *S); NaN where the metric does not apply."""
    n = maps.shape[0]
    fields = {} if masks is None else {"masks": masks}
    return cambench.evaluate(None, torch.zeros(n, 1, *maps.shape[1:]), maps, metric,
                             targets=torch.zeros(n, dtype=torch.long), **fields, **params)


def planted_masks(dims, n=3):
    """(n, *S) bool masks with a box object at a different place in each image."""
    shape = SHAPES[dims]
    masks = torch.zeros(n, *shape, dtype=torch.bool)
    for i in range(n):
        box = tuple(slice(i, i + 4) if axis == 0 else slice(2 * i, 2 * i + 5) for axis in range(dims))
        masks[(i, *box)] = True
    return masks


def random_maps(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g)


# ------------------------------------------------------------------------------------------------
# Independent references, written from the Quantus code (commit 85bc29d); one image at a time,
# so Quantus's batch-global max-normalisation is per image here too.
# ------------------------------------------------------------------------------------------------

def quantus_relevance_mass(a: np.ndarray, s: np.ndarray) -> float:
    a = a / np.abs(a).max()
    return float((a * s).sum() / a.sum()) if s.any() else math.nan


def quantus_relevance_rank(a: np.ndarray, s: np.ndarray) -> float:
    a, s = a.ravel(), s.ravel().astype(bool)
    m = int(s.sum())
    if m == 0:
        return math.nan
    top = np.argsort(-a)[:m]
    return float(s[top].sum() / m)


def quantus_sparseness(a: np.ndarray) -> float:
    a = np.abs(a.ravel().astype(np.float64))
    if a.max() > 0:
        a = a / a.max()
    a = np.sort(a + 1e-7)
    n = a.size
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * a).sum() / (n * a.sum()))


# ------------------------------------------------------------------------------------------------
# Planted masks: perfect map best, random in between, inverted worst
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("metric,params", [
    ("energy_pointing_game", {}), ("relevance_mass", {}), ("relevance_rank", {}),
    ("iou", {}), ("iou", {"threshold": "otsu"}), ("iou", {"threshold": "percentile"}),
    ("dice", {}), ("dice", {"threshold": "otsu"}), ("dice", {"threshold": "percentile", "top_percent": 10.0}),
])
def test_perfect_map_scores_best_random_between_inverted_worst(dims, metric, params):
    masks = planted_masks(dims)
    perfect, inverted = masks.float(), (~masks).float()
    rand = random_maps(3, SHAPES[dims])
    best, mid, worst = (run(m, metric, masks, **params) for m in (perfect, rand, inverted))
    assert (worst < mid).all() and (mid < best).all(), (best, mid, worst)
    assert (worst == 0).all()
    # top p % of a binary map: the tie at its floor is dropped, so the perfect map selects the mask
    torch.testing.assert_close(best, torch.ones(3))


@pytest.mark.parametrize("dims", [2, 3])
def test_percentile_threshold_with_the_mask_area_recovers_the_mask(dims):
    masks = planted_masks(dims, n=1)
    share = 100 * masks.sum().item() / masks.numel()
    maps = masks.float() * 0.9 + 0.1 * random_maps(1, SHAPES[dims])  # mask pixels rank first
    for metric in ("iou", "dice"):
        assert run(maps, metric, masks, threshold="percentile", top_percent=share).item() == 1.0


@pytest.mark.parametrize("dims", [2, 3])
def test_mass_and_rank_of_a_random_map_are_near_the_mask_share(dims):
    """E[score] = |GT| / n for a map independent of the mask; 60 images keep the mean close."""
    masks = planted_masks(dims, n=3).repeat(20, *([1] * dims))
    share = masks.flatten(1).float().mean(1)
    maps = random_maps(60, SHAPES[dims], seed=1)
    for metric in ("energy_pointing_game", "relevance_mass", "relevance_rank"):
        gap = (run(maps, metric, masks) - share).mean().abs()
        assert gap < 0.03, f"{metric}: mean deviation from |GT|/n is {gap:.3f}"


# ------------------------------------------------------------------------------------------------
# Energy pointing game and relevance mass: exact values, §6.14, Quantus
# ------------------------------------------------------------------------------------------------

def _half_inside():
    """4x4 map: GT = 4 pixels at 1.0; 4 other pixels at 0.5; the rest 0 -> EPG = 4 / (4 + 2)."""
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0] = True
    maps = torch.zeros(1, 4, 4)
    maps[0, 0], maps[0, 1] = 1.0, 0.5
    return maps, mask


def test_energy_pointing_game_exact_value_and_offset_removed_by_min_max():
    maps, mask = _half_inside()
    assert run(maps, "energy_pointing_game", mask).item() == pytest.approx(2 / 3)
    assert run(maps, "relevance_mass", mask).item() == pytest.approx(2 / 3)
    lifted = 0.2 + 0.8 * maps  # min-max undoes the offset for EPG; relevance mass keeps it
    assert run(lifted, "energy_pointing_game", mask).item() == pytest.approx(2 / 3)
    assert run(lifted, "relevance_mass", mask).item() == pytest.approx(4 / (4 + 4 * 0.6 + 8 * 0.2))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_uniform_and_all_zero_maps_give_the_mask_share(dims, value):
    """§6.14: a uniform map gives |GT| / n; a constant (all-zero after min-max) map is treated as uniform."""
    masks = planted_masks(dims)
    share = masks.flatten(1).float().mean(1)
    maps = torch.full((3, *SHAPES[dims]), value)
    for metric in ("energy_pointing_game", "relevance_mass", "relevance_rank", "iou"):
        torch.testing.assert_close(run(maps, metric, masks), share, msg=metric)


@pytest.mark.parametrize("dims", [2, 3])
def test_energy_pointing_game_equals_relevance_mass_on_normalised_maps(dims):
    """§3.8 / §6.14: on non-negative min-max maps EPG = RelevanceMassAccuracy."""
    masks = planted_masks(dims)
    raw = random_maps(3, SHAPES[dims], seed=2) ** 3
    low = raw.flatten(1).amin(1).view(-1, *([1] * dims))
    high = raw.flatten(1).amax(1).view(-1, *([1] * dims))
    maps = (raw - low) / (high - low)
    epg = run(maps, "energy_pointing_game", masks)
    torch.testing.assert_close(epg, run(maps, "relevance_mass", masks))
    assert not torch.allclose(epg, run(raw * 0.5 + 0.5, "relevance_mass", masks))  # not on offset maps


@pytest.mark.parametrize("dims", [2, 3])
def test_relevance_mass_and_rank_match_quantus(dims):
    masks = planted_masks(dims, n=4)
    masks[3] = torch.rand(SHAPES[dims], generator=torch.Generator().manual_seed(5)) < 0.3  # scattered GT
    maps = random_maps(4, SHAPES[dims], seed=3) ** 2  # continuous: no ties, so argsort order is moot
    mass, rank = run(maps, "relevance_mass", masks), run(maps, "relevance_rank", masks)
    for i in range(4):
        a, s = maps[i].double().numpy(), masks[i].numpy()
        assert mass[i].item() == pytest.approx(quantus_relevance_mass(a, s), rel=1e-6)
        assert rank[i].item() == pytest.approx(quantus_relevance_rank(a, s), abs=1e-7)


def test_relevance_rank_shares_tied_places_equally():
    """m = 4 GT pixels; 2 map values above the rest (one in GT), then a tie of 4 pixels (2 in GT) for
    the 2 remaining places: hits = 1 + 2 * 2/4 = 2 -> 0.5, whatever the pixel order."""
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, :4] = True
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 1.0, 0.9      # above the tie: one GT, one not
    maps[0, 0, 1:3], maps[0, 2, 0:2] = 0.5, 0.5  # the tie: two GT, two not
    assert run(maps, "relevance_rank", mask).item() == pytest.approx(0.5)
    swapped = maps.flip(1)  # reorder pixels: the GT rows move, the answer must not change
    assert run(swapped, "relevance_rank", mask.flip(1)).item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------
# IoU and Dice: exact values, §6.18, thresholds, Otsu vs scikit-image
# ------------------------------------------------------------------------------------------------

def test_iou_and_dice_exact_values():
    """GT rows 0-3, B rows 2-5 (16 px each, 8 shared): IoU = 8/24, Dice = 16/32."""
    mask = torch.zeros(1, 8, 4, dtype=torch.bool)
    mask[0, :4] = True
    maps = torch.zeros(1, 8, 4)
    maps[0, 2:6] = 0.8
    maps[0, 6:] = 0.3  # below 0.5 x max
    assert run(maps, "iou", mask).item() == pytest.approx(1 / 3)
    assert run(maps, "dice", mask).item() == pytest.approx(0.5)
    # a lower fraction lets rows 6-7 in: B = 24 px, inter 8, union 32
    assert run(maps, "iou", mask, fraction=0.25).item() == pytest.approx(8 / 32)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("params", [{}, {"fraction": 0.3}, {"threshold": "percentile", "top_percent": 35.0},
                                    {"threshold": "otsu"}, {"threshold": "otsu", "bins": 16}])
def test_dice_is_two_iou_over_one_plus_iou(dims, params):
    """§6.18, for every threshold rule, on random maps and masks."""
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(5, *SHAPES[dims], generator=g) < 0.3
    maps = torch.rand(5, *SHAPES[dims], generator=g)
    i, d = run(maps, "iou", masks, **params), run(maps, "dice", masks, **params)
    assert ((i > 0) & (i < 1)).all()
    torch.testing.assert_close(d, 2 * i / (1 + i))


def test_percentile_keeps_the_top_ceil_p_percent_and_ties():
    maps = torch.arange(256.0).view(1, 16, 16) / 255
    assert binarise(maps, "percentile", top_percent=20.0).sum().item() == 52  # ceil(51.2)
    assert binarise(maps, "percentile", top_percent=100.0).all()
    assert binarise(maps, "percentile", top_percent=0.1).sum().item() == 1
    tied = torch.zeros(1, 16, 16)
    tied[0, 0, :3] = 1.0
    tied[0, 1:5] = 0.5
    assert binarise(tied, "percentile", top_percent=1.0).sum().item() == 3  # ceil(2.56) = 3 at the top
    assert binarise(tied, "percentile", top_percent=2.0).sum().item() == 3 + 64  # 6 places, 64 tied at 0.5
    # the floor (zeros, 189 of 256 pixels) is tied at the 80th percentile: only the 67 positives are kept
    assert binarise(tied, "percentile", top_percent=50.0).sum().item() == 67
    assert binarise(torch.full((1, 4, 4), 0.2), "percentile", top_percent=10.0).all()  # constant map


@pytest.mark.parametrize("bins", [256, 16])
@pytest.mark.parametrize("shape", [(6, 32, 32), (3, 8, 16, 16)])
def test_otsu_threshold_matches_scikit_image(bins, shape):
    from skimage.filters import threshold_otsu
    g = torch.Generator().manual_seed(6)
    n = shape[0]
    # bimodal maps with a different split and spread per image, plus one plain uniform one
    fg = torch.rand(shape, generator=g) < torch.linspace(0.1, 0.6, n).view(-1, *([1] * (len(shape) - 1)))
    maps = (0.25 * torch.randn(shape, generator=g).abs() + 0.6 * fg).double()
    maps[-1] = torch.rand(shape[1:], generator=g, dtype=torch.float64)
    ours = otsu_thresholds(maps, bins)
    ref = torch.tensor([threshold_otsu(m.numpy(), nbins=bins) for m in maps], dtype=torch.float64)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    assert otsu_thresholds(torch.full((1, 4, 4), 0.3), bins).item() == pytest.approx(0.3)  # constant map


# ------------------------------------------------------------------------------------------------
# Complexity family: §6.19 and the references
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_uniform_and_one_hot_identities(dims):
    """§6.19: uniform -> Gini ~0, entropy ln n; one-hot -> Gini ~(n-1)/n, entropy ~0."""
    shape = SHAPES[dims]
    n = math.prod(shape)
    uniform = torch.full((2, *shape), 0.7)
    one_hot = torch.zeros(2, *shape)
    one_hot.view(2, -1)[0, 5] = 1.0
    one_hot.view(2, -1)[1, n - 1] = 0.4
    torch.testing.assert_close(run(uniform, "sparseness"), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(run(uniform, "complexity"), torch.full((2,), math.log(n)))
    torch.testing.assert_close(run(one_hot, "sparseness"), torch.full((2,), (n - 1) / n), atol=1e-4, rtol=0)
    torch.testing.assert_close(run(one_hot, "complexity"), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(run(uniform, "mean_activation"), torch.full((2,), 0.7))
    torch.testing.assert_close(run(one_hot, "mean_activation"), torch.tensor([1.0, 0.4]) / n)


@pytest.mark.parametrize("dims", [2, 3])
def test_concentrated_maps_rank_as_expected(dims):
    """one pixel < small blob < planted box < random < uniform in entropy; Gini the other way round."""
    shape = SHAPES[dims]
    point = torch.zeros(shape)
    point[(1,) * dims] = 1.0
    blob = torch.zeros(shape)
    blob[(slice(1, 3),) * dims] = 1.0
    box = planted_masks(dims, n=1)[0].float()
    maps = torch.stack([point, blob, box, random_maps(1, shape)[0], torch.ones(shape)])
    entropy, gini = run(maps, "complexity"), run(maps, "sparseness")
    assert (entropy.diff() > 0).all(), entropy
    assert (gini.diff() < 0).all(), gini


def test_all_zero_map_counts_as_uniform():
    zero = torch.zeros(1, 8, 8)
    assert run(zero, "sparseness").item() == pytest.approx(0.0, abs=1e-9)
    assert run(zero, "complexity").item() == pytest.approx(math.log(64))
    assert run(zero, "mean_activation").item() == 0.0


@pytest.mark.parametrize("shape", [(4, 16, 16), (3, 8, 8, 8)])
def test_complexity_metrics_match_references(shape):
    from pytorch_grad_cam.metrics.arcc import Complexity as ArccComplexity
    from scipy.stats import entropy
    g = torch.Generator().manual_seed(7)
    maps = torch.rand(shape, generator=g) ** 4
    maps[0] = (maps[0] > 0.5) * maps[0]  # exact zeros: 0 log 0 and sorting ties
    gini, h, mean = run(maps, "sparseness"), run(maps, "complexity"), run(maps, "mean_activation")
    arrays = maps.double().numpy()
    torch.testing.assert_close(gini, torch.tensor([quantus_sparseness(a) for a in arrays], dtype=torch.float32))
    torch.testing.assert_close(h, torch.tensor([entropy(a.ravel()) for a in arrays], dtype=torch.float32))
    torch.testing.assert_close(mean, torch.from_numpy(ArccComplexity()(arrays)).float())


def test_values_do_not_depend_on_batch_neighbours():
    """Normalisation is per map (Quantus's default is batch-global): a batch gives each map's own value."""
    maps = random_maps(4, (16, 16), seed=8) * torch.tensor([1.0, 0.1, 0.5, 0.01]).view(4, 1, 1)
    masks = planted_masks(2, n=4)
    for metric, m in [("sparseness", None), ("complexity", None), ("energy_pointing_game", masks),
                      ("relevance_rank", masks), ("iou", masks), ("dice", masks)]:
        batch = run(maps, metric, m, **({"threshold": "otsu"} if metric == "iou" else {}))
        alone = torch.cat([run(maps[i:i + 1], metric, None if m is None else m[i:i + 1],
                               **({"threshold": "otsu"} if metric == "iou" else {})) for i in range(4)])
        torch.testing.assert_close(batch, alone, msg=metric)


# ------------------------------------------------------------------------------------------------
# Contract: applies, parameters, registration, devices
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", MASK_METRICS)
def test_empty_mask_does_not_apply(metric):
    masks = planted_masks(2, n=2)
    masks[1] = False
    values, applies = evaluate_applies(None, torch.zeros(2, 1, 16, 16), random_maps(2, (16, 16)), metric,
                                       targets=torch.zeros(2, dtype=torch.long), masks=masks)
    assert applies.tolist() == [True, False]
    assert torch.isfinite(values).all()  # no 0/0 leaks out, even where it does not apply
    assert math.isnan(run(random_maps(2, (16, 16)), metric, masks)[1].item())


@pytest.mark.parametrize("metric", ["iou", "dice"])
@pytest.mark.parametrize("params,name", [({"threshold": "mean"}, "threshold"), ({"fraction": 0.0}, "fraction"),
                                         ({"fraction": 1.5}, "fraction"), ({"top_percent": 0.0}, "top_percent"),
                                         ({"top_percent": 101.0}, "top_percent"), ({"bins": 1}, "bins"),
                                         ({"bins": 8.5}, "bins"), ({"fraction": "half"}, "fraction")])
def test_bad_parameters_name_the_metric_and_the_parameter(metric, params, name):
    with pytest.raises(ValueError, match=rf"(?s)(?=.*{metric})(?=.*{name})"):
        run(random_maps(1, (8, 8)), metric, planted_masks(2, n=1)[:, :8, :8], **params)


@pytest.mark.parametrize("metric", MASK_METRICS)
def test_masks_are_required_and_must_match(metric):
    with pytest.raises(ValueError, match=f"{metric}.*masks"):
        run(random_maps(1, (8, 8)), metric)
    with pytest.raises(ValueError, match=f"{metric}.*masks"):
        run(random_maps(1, (8, 8)), metric, torch.ones(1, 8, 4, dtype=torch.bool))


def test_registration():
    expected = {"energy_pointing_game": ("localisation", True), "relevance_mass": ("localisation", True),
                "relevance_rank": ("localisation", True), "iou": ("localisation", True),
                "dice": ("localisation", True), "sparseness": ("complexity", True),
                "complexity": ("complexity", False), "mean_activation": ("complexity", False)}
    for name, (family, higher) in expected.items():
        meta = METRICS.get(name).meta
        assert (meta["family"], meta["higher_is_better"]) == (family, higher), name
        assert meta["summary"] and "\n" not in meta["summary"]
        assert ("masks" in meta.get("needs", ())) == (family == "localisation"), name
    assert METRICS.get("iou").parameters() == {"threshold": "frac", "fraction": 0.5, "top_percent": 20.0, "bins": 256}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dims", [2, 3])
def test_cuda_matches_cpu(dims):
    masks = planted_masks(dims)
    maps = random_maps(3, SHAPES[dims], seed=9)
    runs = [(m, {}) for m in ("energy_pointing_game", "relevance_mass", "relevance_rank", "sparseness",
                              "complexity", "mean_activation")]
    runs += [(m, {"threshold": t}) for m in ("iou", "dice") for t in ("frac", "percentile", "otsu")]
    for metric, params in runs:
        needs_mask = "masks" in METRICS.get(metric).meta.get("needs", ())
        cpu = run(maps, metric, masks if needs_mask else None, **params)
        n = maps.shape[0]
        gpu = cambench.evaluate(None, torch.zeros(n, 1, *maps.shape[1:], device="cuda"), maps.cuda(), metric,
                                targets=torch.zeros(n, dtype=torch.long, device="cuda"),
                                **({"masks": masks.cuda()} if needs_mask else {}), **params)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, msg=f"{metric} {params}")
