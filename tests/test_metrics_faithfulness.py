"""Faithfulness metrics: deletion / insertion (RISE), Average Drop / Increase / Gain, Finer-CAM RD and
the street-scene ablation measure. Known answers on planted data, docs/reliability.md §2 identities, and
agreement with independent references (scipy for RISE's blur, a RISE-style per-image loop for the
curves, pytorch-grad-cam's cam_mult_image metrics for the explanation-image scores)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from conftest import ConstantModel
from torch import nn

import cambench
from cambench.metrics import METRICS
from cambench.metrics.faithfulness import rise_blur, rise_blur_kernel1d
from cambench.models import build_model

FILL = torch.tensor([0.4, 0.5, 0.6])
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class CornerModel(nn.Module):
    """Logits linear in the mean brightness of fixed corner regions (2D or 3D).

    ``weights[k]`` scales the mean of region k (all channels) into logit k; region k is the
    ``side``-cube starting at ``corners[k]``; ``bias`` is added to every logit."""

    def __init__(self, weights, corners, side=4, bias=None):
        super().__init__()
        self.weights, self.corners, self.side = list(weights), list(corners), side
        self.bias = torch.zeros(len(self.weights)) if bias is None else torch.as_tensor(bias, dtype=torch.float32)

    def forward(self, x):
        cols = []
        for w, corner in zip(self.weights, self.corners):
            if corner is None:
                cols.append(torch.zeros(x.shape[0], device=x.device))
                continue
            region = x[(slice(None), slice(None)) + tuple(slice(c, c + self.side) for c in corner)]
            cols.append(w * region.mean(dim=tuple(range(1, x.ndim))))
        return torch.stack(cols, dim=1) + self.bias.to(x.device)


def corner_map(shape, corner, side=4):
    m = torch.zeros(shape)
    m[(slice(None),) + tuple(slice(c, c + side) for c in corner)] = 1
    return m


def small_cnn(seed=0):
    torch.manual_seed(seed)
    model = build_model("small_cnn", n_classes=4, in_channels=3, mean=FILL.tolist(), std=[0.25] * 3,
                        widths=[8, 8, 8, 8]).eval()
    _randomise_batchnorm(model)
    return model


def small_cnn3d(seed=0):
    torch.manual_seed(seed)
    model = build_model("small_cnn3d", n_classes=3, in_channels=1, mean=[0.5], std=[0.25], widths=[4, 4, 4, 4]).eval()
    _randomise_batchnorm(model)
    return model


def _randomise_batchnorm(model):
    """Untrained BN statistics make every logit nearly the same linear function; vary them."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.05, 0.5)


def rise_reference_curve(model, image, heatmap, start, finish, steps):
    """RISE's CausalMetric.single_run, transcribed: one image, one forward per step, in-place copy of
    the next ceil(P / steps) pixels from ``finish`` into ``start`` after each evaluation."""
    c, p = image.shape[0], heatmap.numel()
    target = model(image[None]).argmax(1).item()
    per_step = math.ceil(p / steps)
    order = torch.from_numpy(np.flip(np.argsort(heatmap.flatten().numpy())).copy())
    current, finish = start.clone().reshape(c, p), finish.reshape(c, p)
    scores = []
    for i in range(steps + 1):
        scores.append(model(current.view((1,) + tuple(image.shape))).softmax(1)[0, target].item())
        coords = order[per_step * i:per_step * (i + 1)]
        current[:, coords] = finish[:, coords]
    s = np.array(scores)
    return (s.sum() - s[0] / 2 - s[-1] / 2) / steps


# --------------------------------------------------------------------------------------------
# RISE's blur substrate
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_blur_kernel_is_rise_gkern(dims):
    """gkern(11, 5) = scipy.ndimage.gaussian_filter of a centred delta (reflect, truncate 4)."""
    delta = np.zeros((11,) * dims)
    delta[(5,) * dims] = 1
    expected = scipy.ndimage.gaussian_filter(delta, 5)
    k = rise_blur_kernel1d()
    ours = k[:, None] * k[None, :] if dims == 2 else k[:, None, None] * k[None, :, None] * k[None, None, :]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-15)
    # the folded tails make the kernel flatter than a plain truncated Gaussian, and it sums to 1
    assert abs(k.sum().item() - 1) < 1e-12 and k[0] > math.exp(-25 / 50) * k[5] * 1.01


def test_blur_matches_rise_on_the_normalised_tensor():
    """RISE: conv2d(normalised, gkern, padding=5); in pixel space that is mean-colour padding."""
    torch.manual_seed(0)
    x, std = torch.rand(2, 3, 20, 17), torch.tensor([0.2, 0.3, 0.25])
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    k = torch.from_numpy(scipy.ndimage.gaussian_filter(delta, 5).astype("float32"))
    kern = torch.zeros(3, 3, 11, 11)
    for i in range(3):
        kern[i, i] = k
    z = (x - FILL.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    reference = F.conv2d(z, kern, padding=5) * std.view(1, 3, 1, 1) + FILL.view(1, 3, 1, 1)
    torch.testing.assert_close(rise_blur(x, FILL, "mean"), reference, rtol=0, atol=2e-6)
    # borders are pulled toward the mean colour: a constant image stays constant inside only
    const = torch.ones(1, 3, 20, 17)
    blurred = rise_blur(const, FILL, "mean")
    assert (blurred[..., 0, 0] < 1).all() and torch.allclose(blurred[..., 10, 8], torch.ones(1, 3), atol=0.2)


def test_blur_3d_and_reflect_padding_match_scipy():
    torch.manual_seed(0)
    vol = torch.rand(1, 1, 9, 12, 10, dtype=torch.float64)
    delta = np.zeros((11, 11, 11))
    delta[5, 5, 5] = 1
    k3 = scipy.ndimage.gaussian_filter(delta, 5)
    fill = torch.tensor([0.3], dtype=torch.float64)
    expected = scipy.ndimage.correlate(vol[0, 0].numpy() - 0.3, k3, mode="constant", cval=0.0) + 0.3
    np.testing.assert_allclose(rise_blur(vol, fill, "mean")[0, 0].numpy(), expected, atol=1e-12)
    expected = scipy.ndimage.correlate(vol[0, 0].numpy(), k3, mode="reflect")
    np.testing.assert_allclose(rise_blur(vol, None, "reflect")[0, 0].numpy(), expected, atol=1e-12)
    # reflect keeps a constant image constant everywhere (no mean-colour border)
    torch.testing.assert_close(rise_blur(torch.ones(1, 3, 8, 8), None, "reflect"), torch.ones(1, 3, 8, 8))


# --------------------------------------------------------------------------------------------
# Deletion and insertion
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("substrate", ["blur", "mean", "zero"])
@pytest.mark.parametrize("dims", [2, 3])
def test_curves_of_an_input_independent_model_are_that_constant(substrate, dims):
    """docs/reliability.md §2.16, for every substrate, 2D and 3D."""
    shape = (3, 3) + ((8, 8) if dims == 2 else (4, 6, 5))
    x = torch.rand(shape)
    p = torch.softmax(torch.tensor([1.0, 2.0, 0.5]), 0)[1]
    for metric in ("deletion_auc", "insertion_auc"):
        for maps in (torch.rand(shape[:1] + shape[2:]), torch.zeros(shape[:1] + shape[2:])):
            auc = cambench.evaluate(ConstantModel(), x, maps, metric, targets=torch.ones(3), steps=8,
                                    substrate=substrate, fill=FILL)
            torch.testing.assert_close(auc, p.expand(3))


@pytest.mark.parametrize("dims", [2, 3])
def test_insertion_known_answers_perfect_random_inverted(dims):
    """Class 1's logit is 20 x the corner's mean; on a zero substrate the perfect map restores the
    corner in the first step, the inverted map in the last one."""
    size = (16, 16) if dims == 2 else (4, 8, 8)
    corner = (0,) * dims
    side = 4 if dims == 2 else 2
    model = CornerModel([0.0, 20.0], [None, corner], side=side)
    n, p = 3, math.prod(size)
    steps = p // side ** dims                      # the corner is exactly one step
    x = torch.ones((n, 3) + size)
    truth = corner_map((n,) + size, corner, side)
    t = torch.ones(n, dtype=torch.long)
    auc = {name: cambench.evaluate(model, x, maps, "insertion_auc", targets=t, steps=steps, substrate="zero")
           for name, maps in [("perfect", truth), ("inverted", 1 - truth),
                              ("random", torch.rand((n,) + size, generator=torch.Generator().manual_seed(0)))]}
    p0 = torch.sigmoid(torch.tensor(20.0))
    torch.testing.assert_close(auc["perfect"], ((0.5 + steps * p0 - 0.25 - p0 / 2) / steps).expand(n))
    torch.testing.assert_close(auc["inverted"], ((steps * 0.5 + p0 - 0.25 - p0 / 2) / steps).expand(n))
    assert (auc["perfect"] > auc["random"]).all() and (auc["random"] > auc["inverted"]).all()
    # deletion orders the same maps the other way round
    dele = {k: cambench.evaluate(model, x, m, "deletion_auc", targets=t, steps=steps, substrate="zero")
            for k, m in [("perfect", truth), ("inverted", 1 - truth)]}
    assert (dele["perfect"] < dele["inverted"]).all()


@pytest.mark.parametrize("metric,substrate", [("insertion_auc", "blur"), ("insertion_auc", "mean"),
                                              ("deletion_auc", "mean"), ("deletion_auc", "blur")])
def test_curves_match_a_rise_style_per_image_loop(metric, substrate):
    model = small_cnn()
    torch.manual_seed(3)
    x, maps = torch.rand(3, 3, 16, 16), torch.rand(3, 16, 16)
    steps = 16
    ours = cambench.evaluate(model, x, maps, metric, steps=steps, substrate=substrate, fill=FILL)
    sub = rise_blur(x, FILL, "mean") if substrate == "blur" else FILL.view(1, 3, 1, 1).expand_as(x)
    with torch.no_grad():
        ref = [rise_reference_curve(model, x[i], maps[i], *((x[i], sub[i]) if metric == "deletion_auc"
                                                             else (sub[i], x[i])), steps) for i in range(3)]
    torch.testing.assert_close(ours, torch.tensor(ref, dtype=torch.float32), rtol=0, atol=2e-5)


def test_insertion_3d_matches_a_per_image_loop_and_chunking_is_invisible():
    model = small_cnn3d()
    torch.manual_seed(4)
    x, maps = torch.rand(2, 1, 8, 8, 8), torch.rand(2, 8, 8, 8)
    fill = torch.tensor([0.5])
    ours = cambench.evaluate(model, x, maps, "insertion_auc", steps=8, fill=fill)
    tiny = cambench.evaluate(model, x, maps, "insertion_auc", steps=8, fill=fill, memory_mb=0.005)
    torch.testing.assert_close(ours, tiny)
    sub = rise_blur(x, fill, "mean")
    with torch.no_grad():
        ref = [rise_reference_curve(model, x[i], maps[i], sub[i], x[i], 8) for i in range(2)]
    torch.testing.assert_close(ours, torch.tensor(ref, dtype=torch.float32), rtol=0, atol=2e-5)


def test_insertion_blur_padding_and_substrates_change_the_start():
    """The insertion curve starts at the substrate's score: different substrates, different AUCs."""
    model = small_cnn()
    torch.manual_seed(5)
    x, maps = torch.rand(4, 3, 16, 16), torch.rand(4, 16, 16)
    values = {s: cambench.evaluate(model, x, maps, "insertion_auc", steps=8, substrate=s, fill=FILL)
              for s in ("blur", "mean", "zero")}
    values["reflect"] = cambench.evaluate(model, x, maps, "insertion_auc", steps=8, blur_padding="reflect")
    names = list(values)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(values[a], values[b]), (a, b)


# --------------------------------------------------------------------------------------------
# Average Drop / Increase in Confidence / Average Gain
# --------------------------------------------------------------------------------------------

def test_all_ones_map_gives_no_drop_no_increase():
    """docs/reliability.md §2.15, both multiply spaces, 2D and 3D."""
    for model, x, fill in [(small_cnn(), torch.rand(4, 3, 16, 16), FILL),
                           (small_cnn3d(), torch.rand(3, 1, 8, 8, 8), torch.tensor([0.5]))]:
        ones = torch.ones((x.shape[0],) + x.shape[2:])
        for space in ("normalised", "pixel"):
            for metric in ("average_drop", "increase_in_confidence", "average_gain"):
                v = cambench.evaluate(model, x, ones, metric, multiply_space=space, fill=fill)
                assert torch.equal(v, torch.zeros_like(v)), (metric, space, v)


def test_explanation_scores_known_answers():
    """Corner model, target 1 (logit 5 x corner mean, bias 1 on class 0). A map covering the corner
    leaves the score unchanged; the inverted map empties the corner: pixel space to 0, normalised
    space to the mean colour."""
    model = CornerModel([0.0, 5.0], [None, (0, 0)], bias=[1.0, 0.0])
    x, truth = torch.ones(2, 3, 16, 16), corner_map((2, 16, 16), (0, 0))
    t = torch.ones(2, dtype=torch.long)
    y0, y = torch.softmax(torch.tensor([1.0, 5.0]), 0)
    for space, corner_logit in [("pixel", 0.0), ("normalised", 5 * FILL.mean().item())]:
        o0, o = torch.softmax(torch.tensor([1.0, corner_logit]), 0)
        def ev(m, name, space=space):
            return cambench.evaluate(model, x, m, name, targets=t, multiply_space=space, fill=FILL)
        torch.testing.assert_close(ev(truth, "average_drop"), torch.zeros(2))
        torch.testing.assert_close(ev(1 - truth, "average_drop"), (100 * (y - o) / y).expand(2))
        torch.testing.assert_close(ev(1 - truth, "increase_in_confidence"), torch.zeros(2))
        # class 0 gains what class 1 loses
        gain = cambench.evaluate(model, x, 1 - truth, "average_gain", targets=1 - t, multiply_space=space, fill=FILL)
        torch.testing.assert_close(gain, (100 * (o0 - y0) / y0).expand(2))
        inc = cambench.evaluate(model, x, 1 - truth, "increase_in_confidence", targets=1 - t,
                                multiply_space=space, fill=FILL)
        torch.testing.assert_close(inc, torch.full((2,), 100.0))


def _grad_cam_oracle(model, tensor, maps, targets):
    """pytorch-grad-cam's per-image (absolute) drop, indicator and signed change, on ``tensor``."""
    from pytorch_grad_cam.metrics.cam_mult_image import (
        CamMultImageConfidenceChange,
        DropInConfidence,
        IncreaseInConfidence,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    tg = [ClassifierOutputSoftmaxTarget(int(c)) for c in targets]
    cams = maps.numpy().astype(np.float32)
    with torch.no_grad():
        y = model(tensor).softmax(1).gather(1, targets[:, None]).squeeze(1).numpy()
    drop = DropInConfidence()(tensor, cams, tg, model)
    increase = IncreaseInConfidence()(tensor, cams, tg, model)
    change = CamMultImageConfidenceChange()(tensor, cams, tg, model)
    # docs/metrics.md §3 pitfall: grad-cam's drop is absolute and a fraction; divide by Y, in %
    return {"average_drop": 100 * drop / y, "increase_in_confidence": 100 * increase,
            "average_gain": 100 * np.maximum(change, 0) / y}


@pytest.mark.parametrize("dims", [2, 3])
def test_explanation_scores_match_pytorch_grad_cam(dims):
    """'normalised' = grad-cam multiplying the model's normalised tensor (the model minus its
    Normalize module); 'pixel' = grad-cam given the pixel tensor and the whole model. Targets
    cycle through the classes so that both drops and increases occur."""
    gen = torch.Generator().manual_seed(6)
    if dims == 2:
        model, x, fill = small_cnn(), torch.rand(6, 3, 12, 12, generator=gen), FILL
    else:
        model, x, fill = small_cnn3d(), torch.rand(6, 1, 8, 8, 8, generator=gen), torch.tensor([0.5])
    maps = torch.rand((x.shape[0],) + x.shape[2:], generator=torch.Generator().manual_seed(7)) ** 2
    maps[:2] = 1 - maps[:2] * 0.1                    # some maps keep almost everything
    targets = torch.arange(x.shape[0]) % model.fc.out_features
    with torch.no_grad():
        normalised = model.normalize(x)
    oracles = {"normalised": _grad_cam_oracle(model[1:], normalised, maps, targets),
               "pixel": _grad_cam_oracle(model, x, maps, targets)}
    for space, expected in oracles.items():
        for metric, values in expected.items():
            ours = cambench.evaluate(model, x, maps, metric, targets=targets, multiply_space=space, fill=fill)
            torch.testing.assert_close(ours, torch.from_numpy(np.float32(values)), rtol=1e-4, atol=1e-4)
        # the inputs exercise both outcomes
        assert (expected["average_drop"] > 0).any() and (expected["increase_in_confidence"] > 0).any(), space
    assert not np.allclose(oracles["normalised"]["average_drop"], oracles["pixel"]["average_drop"])


def test_average_drop_logit_score_applies_only_to_positive_scores():
    model = CornerModel([0.0, 4.0], [None, (0, 0)], bias=[0.0, -2.0])
    x = torch.stack([torch.ones(3, 16, 16), torch.zeros(3, 16, 16)])   # logits 2 and -2
    maps = torch.full((2, 16, 16), 0.5)
    v = cambench.evaluate(model, x, maps, "average_drop", targets=torch.ones(2), score="logit",
                          multiply_space="pixel")
    # image 0: Y = 2, O = 4 * 0.5 - 2 = 0 -> 100 % drop; image 1 has Y < 0: not applicable
    torch.testing.assert_close(v[0], torch.tensor(100.0))
    assert math.isnan(v[1])


# --------------------------------------------------------------------------------------------
# Finer-CAM relative drop
# --------------------------------------------------------------------------------------------

def _rd_expected(clean_logits, masked_logits, target, refs):
    p, q = torch.softmax(clean_logits, 0), torch.softmax(masked_logits, 0)
    return (p[target] - q[target]) - torch.stack([p[d] - q[d] for d in refs]).mean()


@pytest.mark.parametrize("dims", [2, 3])
def test_relative_drop_known_answers(dims):
    """Class 0 reads corner A (weight 4), class 1 corner B (3), class 2 is 0. The map on A masks
    the target's evidence: RD > 0; the map on B masks the reference class's: RD < 0."""
    size, side = ((16, 16), 4) if dims == 2 else ((8, 8, 8), 2)
    a, b = (0,) * dims, (size[0] - side,) * dims
    model = CornerModel([4.0, 3.0, 0.0], [a, b, None], side=side)
    x = torch.ones((2, 3) + size)
    t = torch.zeros(2, dtype=torch.long)
    fraction = side ** dims / math.prod(size)         # exactly the corner
    on_a, on_b = corner_map((2,) + size, a, side), corner_map((2,) + size, b, side)
    clean = torch.tensor([4.0, 3.0, 0.0])
    for reference, refs in [("rank1", [1]), ("mean_top3", [1, 2])]:
        for maps, masked in [(on_a, torch.tensor([0.0, 3.0, 0.0])), (on_b, torch.tensor([4.0, 0.0, 0.0]))]:
            for mask_value, fill in [("zero", None), ("mean", torch.zeros(3))]:
                rd = cambench.evaluate(model, x, maps, "relative_drop", targets=t, fractions=[fraction],
                                       reference_class=reference, mask_value=mask_value, fill=fill)
                torch.testing.assert_close(rd, _rd_expected(clean, masked, 0, refs).expand(2))
    good = cambench.evaluate(model, x, on_a, "relative_drop", targets=t, fractions=[fraction], mask_value="zero")
    bad = cambench.evaluate(model, x, on_b, "relative_drop", targets=t, fractions=[fraction], mask_value="zero")
    assert (good > 0).all() and (bad < 0).all()


def test_relative_drop_default_masks_ceil_five_percent_and_averages_fractions():
    """16 x 16 = 256 pixels: 5 % is ceil(12.8) = 13 pixels. A one-pixel logit model sees pixel 12
    (the 13th most salient) removed at 5 % and kept at 4.6 % (ceil = 12)."""
    class PixelModel(nn.Module):
        def forward(self, x):
            v = x[:, 0].flatten(1)[:, 12] * 5
            return torch.stack([v, torch.zeros_like(v)], dim=1)
    x = torch.ones(1, 3, 16, 16)
    maps = torch.linspace(1, 0, 256).view(1, 16, 16)     # pixel i has rank i
    t = torch.zeros(1, dtype=torch.long)
    full = cambench.evaluate(PixelModel(), x, maps, "relative_drop", targets=t, mask_value="zero")
    p = torch.softmax(torch.tensor([5.0, 0.0]), 0)
    torch.testing.assert_close(full, ((p[0] - 0.5) - (p[1] - 0.5)).view(1))
    kept = cambench.evaluate(PixelModel(), x, maps, "relative_drop", targets=t, mask_value="zero",
                             fractions=[12 / 256])
    torch.testing.assert_close(kept, torch.zeros(1))
    both = cambench.evaluate(PixelModel(), x, maps, "relative_drop", targets=t, mask_value="zero",
                             fractions=[0.05, 12 / 256])
    torch.testing.assert_close(both, (full + kept) / 2)


def test_relative_drop_on_a_cnn_is_the_mean_over_fractions_and_chunk_invariant():
    model = small_cnn()
    torch.manual_seed(8)
    x, maps = torch.rand(5, 3, 16, 16), torch.rand(5, 16, 16)
    single = [cambench.evaluate(model, x, maps, "relative_drop", fractions=[f], fill=FILL) for f in (0.05, 0.3)]
    both = cambench.evaluate(model, x, maps, "relative_drop", fractions=[0.05, 0.3], fill=FILL, memory_mb=0.01)
    torch.testing.assert_close(both, (single[0] + single[1]) / 2)
    assert not torch.allclose(single[0], single[1])
    ones = ConstantModel()
    torch.testing.assert_close(cambench.evaluate(ones, x, maps, "relative_drop", targets=torch.ones(5), fill=FILL),
                               torch.zeros(5))


# --------------------------------------------------------------------------------------------
# Street-scene ablation measure
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_ablation_area_counts_pixels_at_or_above_threshold(dims):
    size = (10, 10) if dims == 2 else (4, 5, 5)
    maps = torch.zeros((2,) + size)
    maps.view(2, -1)[0, :7] = 0.5           # exactly at the threshold: inside
    maps.view(2, -1)[0, 7:9] = 0.4999
    maps.view(2, -1)[1, :] = 0.9
    area = cambench.evaluate(None, torch.rand((2, 3) + size), maps, "ablation_area", targets=torch.zeros(2))
    torch.testing.assert_close(area, torch.tensor([7 / 100, 1.0]))
    area = cambench.evaluate(None, torch.rand((2, 3) + size), maps, "ablation_area", targets=torch.zeros(2),
                             threshold=0.45)
    torch.testing.assert_close(area, torch.tensor([9 / 100, 1.0]))


def test_ablation_drop_and_flip_known_answers():
    """Hotspot model: class 1 (hotspot) logit 20 x the sign patch's mean, class 0 a constant 1."""
    model = CornerModel([0.0, 20.0], [None, (0, 0)], bias=[1.0, 0.0])
    x = torch.ones(3, 3, 16, 16)
    truth = corner_map((3, 16, 16), (0, 0))
    hotspot = torch.ones(3, dtype=torch.long)
    before = torch.softmax(torch.tensor([1.0, 20.0]), 0)[1]
    after = torch.softmax(torch.tensor([1.0, 0.0]), 0)[1]
    zero = torch.zeros(3)
    drop = cambench.evaluate(model, x, truth, "ablation_drop", targets=hotspot, substrate="mean", fill=zero)
    torch.testing.assert_close(drop, (before - after).expand(3))
    # = the increase of P(non-hotspot): the drop of class 0's probability, negated
    other = cambench.evaluate(model, x, truth, "ablation_drop", targets=1 - hotspot, substrate="mean", fill=zero)
    torch.testing.assert_close(drop, -other)
    kept = cambench.evaluate(model, x, 1 - truth * 0.9, "ablation_drop", targets=hotspot, substrate="mean", fill=zero)
    torch.testing.assert_close(kept, torch.zeros(3))
    flip = cambench.evaluate(model, x, truth, "ablation_flip", targets=hotspot, substrate="mean", fill=zero)
    torch.testing.assert_close(flip, torch.ones(3))
    torch.testing.assert_close(cambench.evaluate(model, x, truth * 0.4, "ablation_flip", targets=hotspot,
                                                 substrate="mean", fill=zero), torch.zeros(3))
    # flip is only defined where the clean prediction is the target
    assert cambench.evaluate(model, x, truth, "ablation_flip", targets=1 - hotspot, fill=zero).isnan().all()


def test_ablation_drop_blur_fills_the_region_with_the_insertion_substrate():
    model = small_cnn()
    torch.manual_seed(9)
    x, maps = torch.rand(4, 3, 16, 16), torch.rand(4, 16, 16)
    drop = cambench.evaluate(model, x, maps, "ablation_drop", fill=FILL)
    with torch.no_grad():
        t = model(x).argmax(1)
        ablated = torch.where((maps >= 0.5).unsqueeze(1), rise_blur(x, FILL, "mean"), x)
        expected = (model(x).softmax(1) - model(ablated).softmax(1)).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(drop, expected, rtol=0, atol=1e-5)
    assert (drop.abs() > 1e-4).any()


# --------------------------------------------------------------------------------------------
# Registration, parameters, devices
# --------------------------------------------------------------------------------------------

def test_registration_metadata():
    expected = {"deletion_auc": False, "insertion_auc": True, "average_drop": False,
                "increase_in_confidence": True, "average_gain": True, "relative_drop": True,
                "ablation_area": None, "ablation_drop": True, "ablation_flip": True}
    for name, better in expected.items():
        meta = METRICS.get(name).meta
        assert meta["higher_is_better"] is better and meta["family"] == "faithfulness" and meta["summary"], name
    assert METRICS.get("ablation_area").meta["needs"] == ()
    assert METRICS.get("insertion_auc").parameters() == {"steps": 64, "substrate": "blur", "score": "prob",
                                                         "blur_padding": "mean"}
    assert METRICS.get("relative_drop").parameters()["fractions"] == (0.05,)
    assert "our reading" in METRICS.get("relative_drop").fn.__doc__
    assert "our reading" in METRICS.get("ablation_drop").fn.__doc__


@pytest.mark.parametrize("metric,params,word", [
    ("insertion_auc", {"steps": 0}, "steps"), ("insertion_auc", {"substrate": "noise"}, "substrate"),
    ("insertion_auc", {"blur_padding": "wrap"}, "blur_padding"), ("insertion_auc", {"score": "rank"}, "score"),
    ("deletion_auc", {"substrate": "noise"}, "substrate"),
    ("average_drop", {"multiply_space": "log"}, "multiply_space"),
    ("increase_in_confidence", {"score": "rank"}, "score"),
    ("relative_drop", {"fractions": []}, "fractions"), ("relative_drop", {"fractions": [1.5]}, "fractions"),
    ("relative_drop", {"reference_class": "rank2"}, "reference_class"),
    ("relative_drop", {"mask_value": "blur"}, "mask_value"),
    ("ablation_drop", {"threshold": 1.5}, "threshold"), ("ablation_area", {"threshold": -0.1}, "threshold"),
    ("ablation_drop", {"substrate": "zero"}, "substrate"), ("ablation_flip", {"substrate": 3}, "substrate"),
])
def test_bad_parameters_raise_naming_metric_and_parameter(metric, params, word):
    x, maps = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    with pytest.raises(ValueError) as err:
        cambench.evaluate(ConstantModel(), x, maps, metric, targets=torch.ones(2), fill=FILL, **params)
    assert metric in str(err.value) and word in str(err.value)


def test_mean_colour_choices_need_the_fill():
    x, maps = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    for metric in ("insertion_auc", "average_drop", "relative_drop", "ablation_drop"):
        with pytest.raises(ValueError, match=f"{metric}.*fill"):
            cambench.evaluate(ConstantModel(), x, maps, metric, targets=torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cases = [("insertion_auc", {"steps": 8}), ("deletion_auc", {"steps": 8, "substrate": "blur"}),
             ("average_drop", {}), ("increase_in_confidence", {}), ("average_gain", {}),
             ("relative_drop", {"fractions": [0.05, 0.2]}), ("ablation_drop", {}), ("ablation_flip", {}),
             ("ablation_area", {})]
    for model, x, fill in [(small_cnn(), torch.rand(4, 3, 16, 16), FILL),
                           (small_cnn3d(), torch.rand(3, 1, 8, 8, 8), torch.tensor([0.5]))]:
        maps = torch.rand((x.shape[0],) + x.shape[2:])
        with torch.no_grad():
            t = model(x).argmax(1)
        for metric, params in cases:
            cpu = cambench.evaluate(model, x, maps, metric, targets=t, fill=fill, **params)
            gpu = cambench.evaluate(model.cuda(), x.cuda(), maps.cuda(), metric, targets=t.cuda(),
                                    fill=fill.cuda(), **params)
            model.cpu()
            torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3, equal_nan=True, msg=metric)


def test_a_table_computes_the_images_logits_once_and_shares_each_maps_logits(monkeypatch):
    """In a table (one cache for every method), the images' logits are computed once, and the
    explanation / ablation images of a map once for the metrics that read them; the values are
    those computed without a cache."""
    import importlib
    metrics_module = importlib.import_module("cambench.metrics.base")  # where evaluate looks up inference_copy

    class Counting(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.rows = model, 0

        def forward(self, x):
            self.rows += x.shape[0]
            return self.model(x)

    torch.manual_seed(0)
    model = build_model("small_cnn", n_classes=4, in_channels=3, mean=[.5] * 3, std=[.25] * 3, widths=[8, 8, 8, 8])
    images = torch.rand(5, 3, 16, 16)
    maps = {"a": torch.rand(5, 16, 16), "b": torch.rand(5, 16, 16)}
    targets = torch.tensor([0, 1, 2, 3, 0])
    counting = Counting(model)  # the metrics' model (the table's one inference copy), counting its input rows
    monkeypatch.setattr(metrics_module, "inference_copy", lambda m, imgs: (counting, False))
    names = ("average_drop", "increase_in_confidence", "average_gain", "ablation_drop", "ablation_flip", "road_morf")

    def table(cache):
        counting.rows = 0
        values = {(m, name): cambench.evaluate(model, images, maps[m], name, targets=targets, fill=torch.full((3,), .5),
                                               cache=cache, **({"percentiles": [50]} if name == "road_morf" else {}))
                  for m in maps for name in names}
        return values, counting.rows

    alone, rows_alone = table(None)
    shared, rows_shared = table({})
    n = images.shape[0]
    road_rows = 2 * n  # one imputed image per (image, order) at one percentile, for each map
    # without a cache: the images and one modified stack per metric; with one: the images once, then
    # per map one explanation stack and one ablation stack (ablation_flip reads ablation_drop's)
    assert rows_alone == 2 * (5 * 2 * n + road_rows + n)
    assert rows_shared == n + 2 * (2 * n + road_rows)
    for key, value in alone.items():
        assert torch.equal(torch.nan_to_num(shared[key], nan=-1.0), torch.nan_to_num(value, nan=-1.0)), key


def test_a_cache_shared_across_models_or_fill_colours_recomputes():
    torch.manual_seed(0)
    models = [build_model("small_cnn", n_classes=4, in_channels=3, mean=[.5] * 3, std=[.25] * 3, widths=[8, 8, 8, 8])
              for _ in range(2)]
    images, maps = torch.rand(4, 3, 16, 16), torch.rand(4, 16, 16)
    targets = torch.tensor([0, 1, 2, 3])
    cache = {}
    for name in ("average_drop", "ablation_drop", "road_morf"):
        for model, fill in ((models[0], .5), (models[1], .5), (models[1], .2)):
            kw = dict(targets=targets, fill=torch.full((3,), fill),
                      **({"percentiles": [50]} if name == "road_morf" else {}))
            shared = cambench.evaluate(model, images, maps, name, cache=cache, **kw)
            alone = cambench.evaluate(model, images, maps, name, **kw)
            assert torch.equal(torch.nan_to_num(shared, nan=-1.0), torch.nan_to_num(alone, nan=-1.0)), (name, fill)
