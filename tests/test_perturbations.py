import io

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

import cambench
from cambench.config import LEVEL_LIMITS
from cambench.counter_rng import uniform
from cambench.perturbations import PERTURBATIONS, counter_normal, counter_poisson, jpeg_quality, perturbation_keys


def test_counter_normal_is_standard_normal():
    keys = torch.arange(50)
    z = counter_normal(keys, (4000,)).flatten().double().numpy()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # images are independent of each other: correlation between two keys' streams is ~0
    a, b = counter_normal(torch.tensor([1, 2]), (20000,))
    assert abs(np.corrcoef(a.numpy(), b.numpy())[0, 1]) < 0.03


def test_gaussian_is_deterministic_per_image_and_independent_of_the_batch():
    x = torch.rand(8, 3, 16, 16)
    keys = torch.tensor([11, 22, 33, 44, 55, 66, 77, 88])
    full = cambench.perturb(x, "gaussian", 0.1, seed=3, keys=keys)
    part = cambench.perturb(x[[5, 2]], "gaussian", 0.1, seed=3, keys=keys[[5, 2]])
    torch.testing.assert_close(part, full[[5, 2]], rtol=0, atol=0)
    assert torch.equal(full, cambench.perturb(x, "gaussian", 0.1, seed=3, keys=keys))
    assert not torch.equal(full, cambench.perturb(x, "gaussian", 0.1, seed=4, keys=keys))
    assert not torch.equal(full, cambench.perturb(x, "gaussian", 0.2, seed=3, keys=keys))


def test_gaussian_level_is_the_noise_std_and_output_is_clipped():
    x = torch.full((4, 3, 64, 64), 0.5)
    y = cambench.perturb(x, "gaussian", 0.05, seed=0)
    assert abs(float((y - x).std()) - 0.05) < 0.002
    z = cambench.perturb(torch.rand(2, 3, 32, 32), "gaussian", 0.9, seed=0)
    assert z.min() >= 0 and z.max() <= 1
    assert torch.equal(cambench.perturb(x, "none", 0, seed=0), x)


def test_bad_calls():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(Exception, match="unknown perturbation 'gauss'"):
        cambench.perturb(x, "gauss", 0.1)
    with pytest.raises(ValueError, match="keys"):
        cambench.perturb(x, "gaussian", 0.1, keys=torch.arange(3))
    with pytest.raises(ValueError, match=">= 0"):
        cambench.perturb(x, "gaussian", -0.1)


# --- the other perturbation families ------------------------------------------------------------

KINDS = ["gaussian", "shot", "salt_and_pepper", "speckle", "gaussian_blur", "jpeg", "brightness", "contrast"]
RANDOM_KINDS = ["gaussian", "shot", "salt_and_pepper", "speckle"]
LEVEL = {"gaussian": 0.1, "shot": 0.2, "salt_and_pepper": 0.1, "speckle": 0.2, "gaussian_blur": 1.5,
         "jpeg": 50, "brightness": 0.3, "contrast": 0.4}


def _images(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=dtype)


def test_registered_with_summary_and_max_level_matching_the_config_limits():
    attacks = {"fgsm", "pgd", "part_pgd"}
    for kind in [*KINDS, *attacks]:
        entry = PERTURBATIONS.get(kind)
        assert entry.meta["summary"]
        assert entry.meta["max_level"] == LEVEL_LIMITS[kind]
    assert set(LEVEL_LIMITS) == set(KINDS) | attacks
    assert set(cambench.perturbations()) == set(KINDS) | attacks | {"none"}
    x = torch.rand(1, 1, 8, 8)
    cambench.perturb(x, "jpeg", 99)  # the bound itself is allowed
    with pytest.raises(ValueError, match="max_level"):
        cambench.perturb(x, "salt_and_pepper", 1.5)
    with pytest.raises(ValueError, match="max_level"):
        cambench.perturb(x, "jpeg", 100)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(5, 3, 16, 16), (4, 2, 5, 8, 8)], ids=["2d", "3d"])
def test_every_kind_is_deterministic_batch_independent_in_range_and_identity_at_zero(kind, shape):
    x = _images(shape, seed=1)
    x[0, 0].fill_(0)
    x[0, -1].fill_(1)  # exact 0 and 1 stay legal inputs
    keys = torch.tensor([7, 3, 99, 12345, 2**31 + 5][: shape[0]])
    lv = LEVEL[kind]
    full = cambench.perturb(x, kind, lv, seed=2, keys=keys)
    assert full.shape == x.shape and full.dtype == x.dtype
    assert full.min() >= 0 and full.max() <= 1
    assert not torch.equal(full, x)
    part = cambench.perturb(x[[3, 1]], kind, lv, seed=2, keys=keys[[3, 1]])
    torch.testing.assert_close(part, full[[3, 1]], rtol=0, atol=0)
    assert torch.equal(full, cambench.perturb(x, kind, lv, seed=2, keys=keys))
    if kind in RANDOM_KINDS:
        assert not torch.equal(full, cambench.perturb(x, kind, lv, seed=3, keys=keys))
        # the same image content under another key gets other noise
        twin = cambench.perturb(x[[1, 1]], kind, lv, seed=2, keys=torch.tensor([1, 2]))
        assert not torch.equal(twin[0], twin[1])
    zero = cambench.perturb(x, kind, 0, seed=2, keys=keys)
    assert torch.equal(zero, x) and zero.data_ptr() != x.data_ptr()
    top = cambench.perturb(x, kind, LEVEL_LIMITS[kind], seed=2, keys=keys)
    assert top.min() >= 0 and top.max() <= 1 and torch.isfinite(top).all()


# shot (Poisson)

@pytest.mark.parametrize("lam", [0.02, 0.7, 4.0, 37.5, 900.0, 2.5e5])
def test_counter_poisson_is_the_exact_inverse_cdf_and_poisson_distributed(lam):
    keys = torch.arange(10) * 7919
    rates = torch.full((10, 4000), lam, dtype=torch.float64)
    k = counter_poisson(keys, rates).numpy().ravel()
    u = uniform(keys, (4000,), 3).numpy().ravel()
    # inversion of the exact CDF: the very quantile scipy gives for the same uniforms
    np.testing.assert_array_equal(k, stats.poisson.ppf(u, lam))
    n = k.size
    assert abs(k.mean() - lam) < 5 * np.sqrt(lam / n)
    assert abs(k.var() / lam - 1) < 5 * np.sqrt(2 / n) + 5 / np.sqrt(n * lam)
    # chi-square goodness of fit: bins k <= e_0, e_0 < k <= e_1, ..., k > e_last at Poisson quantiles
    e = np.unique(stats.poisson.ppf(np.linspace(0.05, 0.95, 19), lam))
    obs = np.bincount(np.searchsorted(e, k, side="left"), minlength=len(e) + 1)
    expected = n * np.diff(np.concatenate([[0.0], stats.poisson.cdf(e, lam), [1.0]]))
    assert expected.min() >= 5 and obs.sum() == n
    assert stats.chisquare(obs, expected).pvalue > 1e-3


def test_counter_poisson_zero_rate_mixed_rates_and_the_large_rate_approximation():
    keys = torch.tensor([5, 6])
    rates = torch.tensor([[0.0, 3.0, 1e6, 4e6, 1e12], [2e-3, 0.0, 50.0, 1e9, 0.0]], dtype=torch.float64)
    rates = rates.repeat(1, 400)
    k = counter_poisson(keys, rates)
    assert torch.equal(k[rates == 0], torch.zeros_like(k[rates == 0]))
    u = uniform(keys, (rates.shape[1],), 3).numpy()
    ref = stats.poisson.ppf(u, rates.numpy())
    exact = rates.numpy() <= 1e6
    np.testing.assert_array_equal(k.numpy()[exact], ref[exact])
    # above 1e6 the Cornish-Fisher quantile: within a count of the exact one (scipy's ppf itself
    # fails at 1e12, so there only the moments are checked)
    approx = ~exact & (rates.numpy() <= 1e9)
    assert np.abs(k.numpy()[approx] - ref[approx]).max() <= 1
    huge = k[rates == 1e12].numpy()
    assert abs(huge.mean() - 1e12) < 5 * 1e6 / np.sqrt(huge.size) and abs(huge.std() / 1e6 - 1) < 0.2
    # each element's count only depends on its own rate and uniform (no cross-talk between elements)
    torch.testing.assert_close(counter_poisson(keys, rates[:, :5]), k[:, :5], rtol=0, atol=0)


def test_shot_noise_level_is_the_std_at_white_and_mean_is_preserved():
    level = 0.1  # photon scale 100 at white
    x = torch.cat([torch.full((6, 1, 64, 64), 0.25), torch.zeros(2, 1, 64, 64)])
    y = cambench.perturb(x, "shot", level, seed=0).double()
    counts = y[:6] / level**2
    torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-4)  # multiples of 1/scale
    assert abs(float(y[:6].mean()) - 0.25) < 5 * level * 0.5 / np.sqrt(y[:6].numel())
    assert abs(float(y[:6].std()) - level * 0.5) < 0.002  # std = level·√x
    assert torch.equal(y[6:], torch.zeros_like(y[6:]))  # no photons from black
    keys = perturbation_keys(torch.arange(8), "shot", level, 0)
    wired = counter_poisson(keys, x.double() / level**2) * level**2
    torch.testing.assert_close(y, wired.float().double(), rtol=0, atol=0)
    white = cambench.perturb(torch.ones(2, 1, 32, 32), "shot", 0.3, seed=0)
    assert white.max() == 1 and (white < 1).any()  # clipped above


# salt and pepper

def test_salt_and_pepper_replaces_the_level_fraction_half_each_per_element_like_skimage():
    from skimage.util import random_noise

    x = torch.full((4, 3, 64, 64), 0.5)
    level = 0.2
    y = cambench.perturb(x, "salt_and_pepper", level, seed=1)
    n = y.numel()
    pepper, salt = float((y == 0).float().mean()), float((y == 1).float().mean())
    sd = np.sqrt(0.1 * 0.9 / n)
    assert abs(pepper - 0.1) < 5 * sd and abs(salt - 0.1) < 5 * sd
    assert torch.equal(y[(y != 0) & (y != 1)], x[(y != 0) & (y != 1)])  # the rest untouched
    # per element: a pixel's channels are hit independently (P(all 3 hit) = level³, not level)
    hit = (y != 0.5)
    all3 = float(hit.all(dim=1).float().mean())
    assert abs(all3 - level**3) < 5 * np.sqrt(level**3 / hit[:, 0].numel())
    sk = random_noise(x.numpy(), mode="s&p", amount=level, salt_vs_pepper=0.5, rng=0)
    for v, ours in ((0.0, pepper), (1.0, salt)):
        assert abs(float((sk == v).mean()) - ours) < 5 * np.sqrt(2) * sd
    full = cambench.perturb(x, "salt_and_pepper", 1.0, seed=1)
    assert ((full == 0) | (full == 1)).all() and abs(float(full.mean()) - 0.5) < 0.01


# speckle

def test_speckle_is_x_plus_x_times_normal_noise_exactly_and_matches_skimage_in_distribution():
    from skimage.util import random_noise

    x = _images((3, 2, 8, 8), seed=4)
    keys = torch.tensor([4, 5, 6])
    level = 0.3
    y = cambench.perturb(x, "speckle", level, seed=9, keys=keys)
    n = counter_normal(perturbation_keys(keys, "speckle", level, 9), tuple(x.shape[1:]))
    torch.testing.assert_close(y, (x + x * (level * n)).clamp(0, 1), rtol=0, atol=0)
    flat = torch.full((8, 1, 64, 64), 0.4)
    ours = cambench.perturb(flat, "speckle", 0.2, seed=0).numpy().ravel()
    assert abs(ours.std() - 0.4 * 0.2) < 0.002
    sk = random_noise(flat.numpy(), mode="speckle", var=0.2**2, rng=0).ravel()
    assert stats.ks_2samp(ours, sk).pvalue > 1e-3
    assert torch.equal(cambench.perturb(torch.zeros(1, 1, 8, 8), "speckle", 1.0), torch.zeros(1, 1, 8, 8))


# gaussian blur

@pytest.mark.parametrize("shape", [(2, 3, 13, 10), (2, 2, 7, 9, 6)], ids=["2d", "3d"])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5, 6.0])  # 6.0: radius 24 > every axis (repeated reflection)
def test_gaussian_blur_matches_scipy_gaussian_filter(shape, sigma):
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        x = _images(shape, seed=5, dtype=dtype)
        y = cambench.perturb(x, "gaussian_blur", sigma)
        ref = np.stack([[ndimage.gaussian_filter(x[i, c].numpy().astype(np.float64), sigma, mode="reflect",
                                                 truncate=4.0) for c in range(shape[1])] for i in range(shape[0])])
        assert y.dtype == dtype
        np.testing.assert_allclose(y.numpy(), ref, rtol=0, atol=tol)


def test_gaussian_blur_small_sigma_is_identity_and_constant_images_stay_constant():
    x = _images((1, 1, 6, 6))
    assert torch.equal(cambench.perturb(x, "gaussian_blur", 0.1), x)  # radius int(0.4 + 0.5) = 0
    c = torch.full((1, 2, 9, 9), 0.375, dtype=torch.float64)
    torch.testing.assert_close(cambench.perturb(c, "gaussian_blur", 3.0), c, rtol=0, atol=1e-15)


# jpeg

def _smooth(shape, seed=6):
    """Image-like content (smooth ramps plus texture) so that JPEG behaves as on photographs."""
    g = torch.Generator().manual_seed(seed)
    h, w = shape[-2:]
    ramp = torch.linspace(0, 0.6, w)[None, :] + torch.linspace(0, 0.3, h)[:, None]
    return (ramp + 0.1 * torch.rand(shape, generator=g)).clamp(0, 1)


def _pil_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """PIL's JPEG round trip of an (H, W) or (H, W, 3) uint8 array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("level", [5, 25, 70, 99])
def test_jpeg_matches_pil_at_quality_100_minus_level(channels, level):
    x = _smooth((2, channels, 24, 40))
    y = cambench.perturb(x, "jpeg", level)
    u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(2):
        ref = _pil_jpeg(u8[i, ..., 0] if channels == 1 else u8[i], 100 - level).reshape(24, 40, channels)
        diff = np.abs(y[i].permute(1, 2, 0).numpy() * 255 - ref.astype(np.float64))
        # both sides are libjpeg(-turbo) with the same defaults (identical bytes here); the tolerance
        # allows another libjpeg build's rounding: at most 2 levels anywhere, 0.25 on average
        assert diff.max() <= 2 + 1e-3 and diff.mean() <= 0.25


def test_jpeg_quality_mapping_volumes_per_slice_other_channel_counts_and_strength():
    assert [jpeg_quality(lv) for lv in (0.2, 0.5, 1, 24.6, 25, 50.5, 99)] == [100, 100, 99, 75, 75, 50, 1]
    x = _smooth((2, 3, 16, 24))
    torch.testing.assert_close(cambench.perturb(x, "jpeg", 24.6), cambench.perturb(x, "jpeg", 25), rtol=0, atol=0)
    # a volume is coded slice by slice along the first spatial axis
    vol = _smooth((2, 3, 4, 16, 24))
    yv = cambench.perturb(vol, "jpeg", 40)
    for d in range(4):
        torch.testing.assert_close(yv[:, :, d], cambench.perturb(vol[:, :, d].contiguous(), "jpeg", 40),
                                   rtol=0, atol=0)
    # two (or four) channels: each channel is its own greyscale image
    two = _smooth((2, 2, 16, 24))
    y2 = cambench.perturb(two, "jpeg", 40)
    for c in range(2):
        torch.testing.assert_close(y2[:, c:c + 1], cambench.perturb(two[:, c:c + 1].contiguous(), "jpeg", 40),
                                   rtol=0, atol=0)
    # stronger compression, larger error; output on the uint8 grid
    err = [float((cambench.perturb(x, "jpeg", lv) - x).abs().mean()) for lv in (10, 60, 95)]
    assert err[0] < err[1] < err[2]
    y = cambench.perturb(x, "jpeg", 60)
    torch.testing.assert_close(y * 255, (y * 255).round(), rtol=0, atol=1e-4)


# brightness and contrast

def test_brightness_adds_the_level_and_clips_exactly():
    x = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]).view(1, 1, 1, 5)
    expect = torch.tensor([0.25, 0.5, 0.75, 1.0, 1.0]).view(1, 1, 1, 5)
    assert torch.equal(cambench.perturb(x, "brightness", 0.25), expect)
    assert torch.equal(cambench.perturb(x, "brightness", 1.0), torch.ones_like(x))
    v = _images((2, 1, 3, 4, 4))
    torch.testing.assert_close(cambench.perturb(v, "brightness", 0.1), (v + 0.1).clamp(0, 1), rtol=0, atol=0)


def test_contrast_shrinks_towards_the_per_image_per_channel_mean_exactly():
    # image 0: channel 0 = [0, 1, 0, 1] (mean 0.5), channel 1 = [0.25] * 4 (flat); image 1: [1, 1, 1, 0]
    x = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]], [[0.25, 0.25], [0.25, 0.25]]],
                      [[[1.0, 1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]]])
    y = cambench.perturb(x, "contrast", 0.5)
    expect = torch.tensor([[[[0.25, 0.75], [0.25, 0.75]], [[0.25, 0.25], [0.25, 0.25]]],
                           [[[0.875, 0.875], [0.875, 0.375]], [[0.125, 0.125], [0.125, 0.625]]]])
    assert torch.equal(y, expect)
    flat = cambench.perturb(x, "contrast", 1.0)
    assert torch.equal(flat, x.mean(dim=(2, 3), keepdim=True).expand_as(x))
    v = _images((2, 2, 3, 4, 5), dtype=torch.float64)
    m = v.mean(dim=(2, 3, 4), keepdim=True)
    torch.testing.assert_close(cambench.perturb(v, "contrast", 0.3), (v - m) * 0.7 + m, rtol=0, atol=1e-15)
    torch.testing.assert_close(cambench.perturb(v, "contrast", 0.3).mean(dim=(2, 3, 4), keepdim=True), m,
                               rtol=0, atol=1e-15)
