import math

import numpy as np
import pytest
import torch
from conftest import ConstantModel, RegionModel
from torch import nn

import cambench
from cambench.metrics.faithfulness import trapezoid_auc
from cambench.metrics.similarities import pearson, ssim


def test_deletion_auc_of_an_input_independent_model_is_that_constant():
    """docs/reliability.md §2.16."""
    x = torch.rand(3, 3, 8, 8)
    p = torch.softmax(torch.tensor([1.0, 2.0, 0.5]), 0)[1]
    for maps in (torch.rand(3, 8, 8), torch.zeros(3, 8, 8)):
        auc = cambench.evaluate(ConstantModel(), x, maps, "deletion_auc", targets=torch.ones(3), steps=8,
                                substrate="zero")
        torch.testing.assert_close(auc, p.expand(3))


def test_deletion_ranks_the_true_evidence_first():
    x = torch.ones(2, 3, 16, 16)
    truth = torch.zeros(2, 16, 16)
    truth[:, :4, :4] = 1
    t = torch.ones(2, dtype=torch.long)
    good = cambench.evaluate(RegionModel(), x, truth, "deletion_auc", targets=t, steps=16, substrate="zero")
    bad = cambench.evaluate(RegionModel(), x, 1 - truth, "deletion_auc", targets=t, steps=16, substrate="zero")
    assert (good < bad).all()
    # perfect map: the region (16 of 256 pixels) goes in the first step: curve = [p0, 0.5, 0.5, ...]
    p0 = torch.sigmoid(torch.tensor(20.0))
    expected = (p0 + 0.5 * 15 + 0.5 - p0 / 2 - 0.5 / 2) / 16
    torch.testing.assert_close(good, expected.expand(2))


def test_trapezoid_auc():
    curve = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.2, 0.2]])
    torch.testing.assert_close(trapezoid_auc(curve), torch.tensor([0.5, 0.2]))


def test_deletion_chunking_does_not_change_values():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x, maps = torch.rand(5, 3, 12, 12), torch.rand(5, 12, 12)
    a = cambench.evaluate(model, x, maps, "deletion_auc", steps=12, fill=torch.full((3,), 0.5))
    b = cambench.evaluate(model, x, maps, "deletion_auc", steps=12, fill=torch.full((3,), 0.5), memory_mb=0.01)
    torch.testing.assert_close(a, b)


def _point(y, x, size=64):
    m = torch.zeros(1, size, size)
    m[0, y, x] = 1
    return m


def test_pointing_game_tolerance():
    """docs/reliability.md §2.13: on a GT pixel hits; 14 px away hits, 16 px away misses (15 px)."""
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 30, 10] = True
    pg = lambda m, tol=15.0: cambench.evaluate(None, torch.zeros(1, 3, 64, 64), m, "pointing_game",  # noqa: E731
                                               targets=torch.zeros(1), masks=mask, tolerance_px=tol)
    assert pg(_point(30, 10)).item() == 1
    assert pg(_point(30, 24)).item() == 1
    assert pg(_point(30, 26)).item() == 0
    assert pg(_point(30, 10), tol=0).item() == 1 and pg(_point(30, 11), tol=0).item() == 0
    empty = torch.zeros_like(mask)
    value = cambench.evaluate(None, torch.zeros(1, 3, 64, 64), _point(3, 3), "pointing_game",
                              targets=torch.zeros(1), masks=empty)
    assert math.isnan(value.item())  # no object: the metric does not apply


def test_pointing_game_3d_and_ties_go_to_the_first_index():
    mask = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    mask[0, 0, 0, 0] = True
    flat = torch.ones(1, 8, 8, 8)  # all tied: the peak is index 0
    v = cambench.evaluate(None, torch.zeros(1, 1, 8, 8, 8), flat, "pointing_game", targets=torch.zeros(1),
                          masks=mask, tolerance_px=0)
    assert v.item() == 1


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 12, 16, 16)])
def test_ssim_matches_scikit_image(shape):
    from skimage.metrics import structural_similarity
    torch.manual_seed(0)
    a = torch.rand(shape)
    b = (a + 0.2 * torch.rand(shape)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(shape[0]):
        ref = structural_similarity(a[i].numpy(), b[i].numpy(), data_range=1.0)
        assert abs(ours[i].item() - ref) < 1e-5
    torch.testing.assert_close(ssim(a, a), torch.ones(shape[0]))


def test_pearson():
    a = torch.rand(4, 10, 10)
    torch.testing.assert_close(pearson(a, 2 * a + 1), torch.ones(4))
    torch.testing.assert_close(pearson(a, -a), -torch.ones(4))
    assert pearson(torch.ones(1, 10, 10), a[:1]).item() == 0


def test_consistency_applies_only_where_the_prediction_is_unchanged():
    a = torch.rand(3, 16, 16)
    values = cambench.evaluate(None, torch.zeros(3, 3, 16, 16), a, "consistency", targets=torch.zeros(3),
                               reference=a, predictions=torch.tensor([0, 1, 2]),
                               reference_predictions=torch.tensor([0, 1, 0]), similarity="pearson")
    torch.testing.assert_close(values[:2], torch.ones(2))
    assert math.isnan(values[2].item())


def test_unknown_metric_and_parameter():
    x, m = torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8)
    with pytest.raises(Exception, match="unknown metric 'deletion'"):
        cambench.evaluate(None, x, m, "deletion", targets=torch.zeros(1))
    with pytest.raises(ValueError, match="unknown parameter"):
        cambench.evaluate(None, x, m, "pointing_game", targets=torch.zeros(1), masks=m.bool(), radius=3)
    assert set(cambench.metrics()) >= {"deletion_auc", "pointing_game", "consistency"}
    assert np.all(np.isin(["gradcam", "gradcampp", "xgradcam"], cambench.methods()))
