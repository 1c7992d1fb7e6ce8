import numpy as np
import pytest
import torch
from scipy import stats

import cambench
from cambench.perturbations import counter_normal


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
