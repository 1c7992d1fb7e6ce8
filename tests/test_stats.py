import numpy as np
import pandas as pd
from scipy import stats

from cambench.pipeline import bootstrap_mean_ci
from cambench.stats import friedman, friedman_table


def test_friedman_agrees_with_scipy_and_kendalls_w():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(30, 4)) + np.array([0, 0.5, 1.0, 1.5])
    chi2, p, w, ranks = friedman(values)
    ref = stats.friedmanchisquare(*values.T)
    assert np.isclose(chi2, ref.statistic) and np.isclose(p, ref.pvalue)
    assert np.isclose(w, chi2 / (30 * 3))
    # perfect agreement of every block: W = 1
    perfect = np.tile(np.arange(4.0), (10, 1))
    assert np.isclose(friedman(perfect)[2], 1.0)
    assert np.allclose(friedman(perfect)[3], [1, 2, 3, 4])


def test_friedman_table_all_ties_and_holm():
    rows = []
    for img in range(12):
        for m, v in zip("abc", (1.0, 1.0, 1.0)):
            rows.append(dict(dataset="d", model="m", perturbation="none", level=0.0, metric="tied", image_id=img,
                             method=m, value=v))
        for m, v in zip("abc", (0.1, 0.5, 0.9)):
            rows.append(dict(dataset="d", model="m", perturbation="none", level=0.0, metric="ordered",
                             image_id=img, method=m, value=v + img * 0.01))
    table = friedman_table(pd.DataFrame(rows)).set_index("metric")
    assert np.isnan(table.loc["tied", "p"]) and "tied" in table.loc["tied", "note"]
    assert table.loc["ordered", "effect_size"] == 1.0 and table.loc["ordered", "p"] < 1e-4
    assert table.loc["ordered", "p_adj"] == table.loc["ordered", "p"]  # one finite test: Holm = identity


def test_bootstrap_mean_and_class_mean():
    rng = np.random.default_rng(0)
    values = np.r_[np.ones(90), np.zeros(10)]
    classes = np.r_[np.zeros(90), np.ones(10)]
    mean, lo, hi = bootstrap_mean_ci(values, None, 500, rng)
    assert mean == 0.9 and lo < 0.9 < hi
    cmean, clo, chi = bootstrap_mean_ci(values, classes, 500, rng)
    assert cmean == 0.5 and clo <= 0.5 <= chi


def test_method_independent_metrics_are_not_tested_across_methods():
    """flip_rate is the same for every method (compare=False): no Friedman row for it."""
    rows = [dict(dataset="d", model="m", perturbation="gaussian", level=0.1, metric=metric, image_id=img,
                 method=method, value=float((img + k) % 3))
            for metric in ("flip_rate", "consistency") for img in range(6) for k, method in enumerate("abc")]
    table = friedman_table(pd.DataFrame(rows))
    assert list(table.metric) == ["consistency"]
