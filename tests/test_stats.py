import json

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cambench.aggregate import bootstrap_mean_ci
from cambench.stats import (
    STATS_COLUMNS,
    cliffs_delta,
    friedman,
    friedman_table,
    kruskal_table,
    mixed_model_table,
    paired_wilcoxon,
    posthoc_table,
    rank_biserial,
    run_statistics,
)


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


# ------------------------------------------------------------------ post-hoc pairs, Kruskal-Wallis, mixed models


def long_table(wide: dict, metric="m", dataset="d", model="net", perturbation="none", level=0.0) -> pd.DataFrame:
    """Tidy rows from {method: values per image}."""
    return pd.DataFrame([dict(dataset=dataset, model=model, perturbation=perturbation, level=level, metric=metric,
                              image_id=i, method=method, value=float(v))
                         for method, values in wide.items() for i, v in enumerate(values)])


def test_posthoc_wilcoxon_agrees_with_scipy_and_holm_within_each_block():
    rng = np.random.default_rng(1)
    blocks = []
    # scipy's choices: n <= 13 with ties or zeros: permutation p; n <= 50 without: exact p; else normal approximation
    for metric, n, decimals in (("tied_small", 8, 0), ("exact", 12, 6), ("tied_large", 60, 1), ("large", 60, 6)):
        wide = {m: np.round(rng.normal(size=n) * 2 + shift, decimals) for m, shift in zip("pqrs", (0, 0.3, 0.6, 1))}
        blocks.append((metric, wide))
    # n = 30, one block mixing tie-free pairs (exact p) with a tied pair r,s (normal approximation)
    blocks.append(("mixed", {"p": rng.normal(size=30), "q": rng.normal(size=30), "r": rng.integers(0, 4, 30),
                             "s": rng.integers(0, 4, 30)}))
    table = pd.concat([long_table(w, metric=metric) for metric, w in blocks])
    out = posthoc_table(table, tests=("wilcoxon",))
    assert set(out.test) == {"wilcoxon"} and len(out) == 5 * 6
    for metric, wide in blocks:
        rows = out[out.metric == metric].set_index("groups")
        assert list(rows.index) == ["p,q", "p,r", "p,s", "q,r", "q,s", "r,s"]
        for pair, row in rows.iterrows():
            a, b = pair.split(",")
            ref = stats.wilcoxon(wide[a], wide[b])
            assert np.isclose(row.statistic, ref.statistic) and np.isclose(row.p, ref.pvalue, rtol=1e-10)
            d = wide[a] - wide[b]
            d = d[d != 0]
            # R+ is scipy's one-sided statistic; rank-biserial = 2 R+ / (n (n + 1) / 2) - 1
            r_plus = stats.wilcoxon(d, alternative="greater").statistic
            assert np.isclose(row.effect_size, 2 * r_plus / (len(d) * (len(d) + 1) / 2) - 1)
            assert row.effect_name == "rank_biserial" and row.n == len(wide[a]) and row.k == 4
        np.testing.assert_allclose(rows.p_adj, multipletests(rows.p, method="holm")[1])
        assert (rows.significant == (rows.p_adj < 0.05)).all()


def test_small_tied_samples_get_scipys_exact_sign_flip_p_without_its_python_loop():
    # n <= 13 with ties or zeros: scipy enumerates 2**n sign flips in Python (minutes for a workflow's
    # blocks); paired_wilcoxon computes the same null in one product and must agree to the last bit
    # (every n up to 13, several columns where scipy's loop is cheap: its n = 13 costs about 3 s)
    rng = np.random.default_rng(11)
    for n in range(2, 14):
        k = 4 if n <= 10 else 1
        d = np.round(rng.normal(size=(n, k)) * 2, n % 2)
        d[rng.integers(0, n), rng.integers(0, k)] = 0.0
        statistic, p = paired_wilcoxon(d)
        for j in range(k):
            if np.all(d[:, j] == 0):
                assert np.isnan(p[j]) and np.isnan(statistic[j])
                continue
            ref = stats.wilcoxon(d[:, j])
            assert statistic[j] == ref.statistic and p[j] == ref.pvalue, (d[:, j], p[j], ref.pvalue)
    # a one-sided planted shift: every difference positive gives the smallest two-sided p, 2 / 2**n
    statistic, p = paired_wilcoxon(np.array([[1.0], [1.0], [2.0], [3.0], [3.0]]))
    assert statistic[0] == 0 and p[0] == 2 / 2 ** 5


def test_posthoc_nemenyi_agrees_with_scikit_posthocs():
    rng = np.random.default_rng(2)
    wide = {m: rng.normal(size=25) + shift for m, shift in zip("cab", (0.0, 0.8, 0.2))}
    out = posthoc_table(long_table(wide), tests="nemenyi").set_index("groups")
    frame = pd.DataFrame(wide)[["a", "b", "c"]]
    ref = scikit_posthocs.posthoc_nemenyi_friedman(frame)
    mean_ranks = dict(zip("abc", stats.rankdata(frame.to_numpy(), axis=1).mean(axis=0)))
    for pair, row in out.iterrows():
        a, b = pair.split(",")
        assert np.isclose(row.p, ref.loc[a, b]) and row.p_adj == row.p
        assert np.isclose(row.effect_size, mean_ranks[a] - mean_ranks[b])
        # the statistic is the studentized range q whose upper tail is Nemenyi's p
        assert np.isclose(stats.studentized_range.sf(row.statistic, 3, np.inf), row.p, rtol=1e-6)
        assert json.loads(row.mean_ranks) == pytest.approx({a: mean_ranks[a], b: mean_ranks[b]}, abs=1e-4)


def test_posthoc_detects_a_planted_shift_and_nothing_among_null_methods():
    rng = np.random.default_rng(3)
    n = 80  # the default run's test images
    image = rng.normal(size=n)  # shared per-image difficulty: the reason for a paired design
    wide = {m: image + rng.normal(size=n) for m in "abcd"}
    wide["e"] = image + rng.normal(size=n) + 1.0  # +1 SD of the method noise
    out = posthoc_table(long_table(wide))
    for test in ("wilcoxon", "nemenyi"):
        rows = out[out.test == test]
        with_e = rows.groups.str.contains("e")
        assert rows[with_e].significant.all(), test
        assert not rows[~with_e].significant.any(), test
        # e is the second of every pair it is in: negative effect sizes
        assert (rows[with_e].effect_size < 0).all()


def test_rank_biserial_and_mean_rank_signs_at_the_extremes():
    a = np.arange(10.0)
    table = long_table({"a": a + 1.0, "b": a})  # a always wins
    out = posthoc_table(table).set_index("test")
    assert out.loc["wilcoxon", "effect_size"] == 1.0 and out.loc["nemenyi", "effect_size"] == 1.0
    out = posthoc_table(long_table({"a": a, "b": a + np.linspace(0.1, 2, 10)})).set_index("test")
    assert out.loc["wilcoxon", "effect_size"] == -1.0 and out.loc["nemenyi", "effect_size"] == -1.0
    assert out.loc["wilcoxon", "groups"] == "a,b"
    np.testing.assert_array_equal(rank_biserial(np.array([[1.0, -2.0, 0.0], [2.0, -1.0, 0.0]])), [1.0, -1.0, np.nan])


def test_posthoc_all_zero_differences_give_a_note_not_an_error():
    rng = np.random.default_rng(4)
    x = rng.normal(size=15)
    out = posthoc_table(long_table({"a": x, "b": x.copy(), "c": x + 1}), tests=("wilcoxon",)).set_index("groups")
    assert np.isnan(out.loc["a,b", "p"]) and np.isnan(out.loc["a,b", "p_adj"]) and "zero" in out.loc["a,b", "note"]
    assert not out.loc["a,b", "significant"]
    assert out.loc["a,c", "p"] < 1e-3 and out.loc["a,c", "note"] == ""
    # Holm over the two finite p only
    np.testing.assert_allclose(out.loc[["a,c", "b,c"], "p_adj"], multipletests(out.loc[["a,c", "b,c"], "p"],
                                                                               method="holm")[1])
    with pytest.raises(ValueError, match="tests"):
        posthoc_table(long_table({"a": x, "b": x}), tests=("ttest",))


def test_posthoc_skips_method_independent_metrics_and_uses_complete_cases():
    x = np.arange(8.0)
    table = pd.concat([long_table({"a": x, "b": x[::-1], "c": x * 2}, metric="flip_rate"),
                       long_table({"a": x, "b": x + 1, "c": np.r_[x[:6] * 2, np.nan, np.nan]}, metric="m")])
    out = posthoc_table(table)
    assert set(out.metric) == {"m"} and (out.n == 6).all() and (out.k == 3).all()


def kruskal_groups(samples: dict, method="gradcam") -> pd.DataFrame:
    """Tidy rows: one (dataset, model) group per key 'dataset/model', each on its own images (independent
    samples: image ids offset by 1000 per group; shared ids would make the design paired)."""
    return pd.concat([long_table({method: values}, dataset=name.split("/")[0], model=name.split("/")[1])
                      .assign(image_id=lambda f, j=j: f.image_id + 1000 * j)
                      for j, (name, values) in enumerate(samples.items())])


def test_kruskal_and_dunn_agree_with_the_references():
    rng = np.random.default_rng(5)
    samples = {"d1/m1": rng.normal(size=30), "d1/m2": rng.normal(size=25) + 1.5, "d2/m3": rng.normal(size=20)}
    out = kruskal_table(kruskal_groups(samples))
    assert list(out.columns) == STATS_COLUMNS[:2] + ["method"] + STATS_COLUMNS[2:]
    kruskal = out[out.test == "kruskal"].iloc[0]
    ref = stats.kruskal(*samples.values())
    assert np.isclose(kruskal.statistic, ref.statistic) and np.isclose(kruskal.p, ref.pvalue)
    assert np.isclose(kruskal.effect_size, ref.statistic / (75 - 1)) and kruskal.effect_name == "epsilon_squared"
    assert kruskal.groups == "d1/m1,d1/m2,d2/m3" and kruskal.dataset == "*" and kruskal.method == "gradcam"
    assert kruskal.significant and kruskal.n == 75 and kruskal.k == 3
    long = pd.DataFrame([(g, v) for g, vs in samples.items() for v in vs], columns=["group", "value"])
    raw = scikit_posthocs.posthoc_dunn(long, val_col="value", group_col="group")
    holm = scikit_posthocs.posthoc_dunn(long, val_col="value", group_col="group", p_adjust="holm")
    dunn = out[out.test == "dunn"].set_index("groups")
    assert list(dunn.index) == ["d1/m1,d1/m2", "d1/m1,d2/m3", "d1/m2,d2/m3"]
    for pair, row in dunn.iterrows():
        a, b = pair.split(",")
        assert np.isclose(row.p, raw.loc[a, b]) and np.isclose(row.p_adj, holm.loc[a, b])
        # Cliff's delta by its definition: mean sign of every cross-group difference
        assert np.isclose(row.effect_size, np.sign(samples[a][:, None] - samples[b][None, :]).mean())
    assert dunn.loc["d1/m1,d1/m2", "significant"] and dunn.loc["d1/m2,d2/m3", "significant"]
    assert not dunn.loc["d1/m1,d2/m3", "significant"]
    assert dunn.loc["d1/m1,d1/m2", "effect_size"] < 0 < dunn.loc["d1/m2,d2/m3", "effect_size"]


def test_kruskal_identical_groups_are_not_significant_and_holm_runs_over_kruskal_rows():
    rng = np.random.default_rng(6)
    same = rng.normal(size=20)
    table = pd.concat([kruskal_groups({"d/a": same, "d/b": same.copy()}, method="same"),
                       kruskal_groups({"d/a": same, "d/b": same + 10.0}, method="shifted"),
                       kruskal_groups({"d/a": np.ones(5), "d/b": np.ones(5)}, method="constant"),
                       kruskal_groups({"d/a": same}, method="alone")])
    out = kruskal_table(table)
    assert "alone" not in set(out.method)  # present in one group only
    k = out[out.test == "kruskal"].set_index("method")
    assert np.isclose(k.loc["same", "p"], 1.0) and not k.loc["same", "significant"]
    assert k.loc["shifted", "significant"] and k.loc["shifted", "p"] < 1e-6
    assert np.isnan(k.loc["constant", "p"]) and "identical" in k.loc["constant", "note"]
    np.testing.assert_allclose(k.loc[["same", "shifted"], "p_adj"],
                               multipletests(k.loc[["same", "shifted"], "p"], method="holm")[1])
    dunn = out[out.test == "dunn"].set_index("method")
    assert dunn.loc["shifted", "effect_size"] == -1.0 and dunn.loc["shifted", "significant"]
    assert dunn.loc["same", "effect_size"] == 0.0 and not dunn.loc["same", "significant"]


def test_cliffs_delta_extremes():
    assert cliffs_delta(np.array([5.0, 6, 7]), np.array([1.0, 2])) == 1.0
    assert cliffs_delta(np.array([1.0, 2]), np.array([5.0, 6, 7])) == -1.0
    assert cliffs_delta(np.array([1.0, 2]), np.array([1.0, 2])) == 0.0


def planted_severity_table(interaction=0.8, seed=7, n=60) -> pd.DataFrame:
    """Methods a, b, c; value = image effect + offset + slope * severity (+ interaction for c) + noise."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=n) * 0.5
    rows = []
    for kind, levels in (("none", [0.0]), ("gauss", [0.5, 1.0])):
        for level in levels:
            for method, offset, extra in (("a", 0.0, 0.0), ("b", 0.3, 0.0), ("c", -0.2, interaction)):
                value = image + offset + (0.5 + extra) * level + rng.normal(size=n) * 0.2
                rows.append(long_table({method: value}, metric="quality", perturbation=kind, level=level))
        if kind != "none":  # a metric that exists on the perturbed level only (consistency-like)
            rows.append(long_table({m: rng.normal(size=n) for m in "abc"}, metric="consistency", perturbation=kind,
                                   level=levels[0]))
    return pd.concat(rows, ignore_index=True)


def test_mixed_model_recovers_a_planted_interaction_and_notes_a_single_severity():
    table = planted_severity_table()
    out = mixed_model_table(table)
    assert list(out.columns) == STATS_COLUMNS and set(out.test) == {"mixedlm"}
    fit = out[out.metric == "quality"].set_index("groups")
    assert "reference method a" in fit.note.iloc[0] and (fit.k == 3).all() and (fit.n == 3 * 3 * 60).all()
    term = "C(method)[T.c]:severity"
    coef, z = fit.loc[term, "effect_size"], fit.loc[term, "statistic"]
    se = coef / z
    assert coef - 1.96 * se < 0.8 < coef + 1.96 * se and fit.loc[term, "significant"]
    assert not fit.loc["C(method)[T.b]:severity", "significant"]  # no planted interaction for b
    # the reference: the same fit called directly
    data = table[table.metric == "quality"].assign(severity=lambda f: f.level)
    ref = smf.mixedlm("value ~ C(method) * severity", data, groups=data["image_id"]).fit(reml=True)
    np.testing.assert_allclose(fit.loc[ref.fe_params.index, "effect_size"], ref.fe_params, rtol=1e-6)
    np.testing.assert_allclose(fit.loc[ref.fe_params.index, "p"], ref.pvalues[ref.fe_params.index], rtol=1e-5)
    one = out[out.metric == "consistency"]
    assert len(one) == 1 and np.isnan(one.p.iloc[0]) and "severities" in one.note.iloc[0]
    np.testing.assert_allclose(out.p_adj.dropna(), multipletests(out.p.dropna(), method="holm")[1])


def test_mixed_model_cannot_run_cases_give_notes():
    table = planted_severity_table()
    single = table[table.method == "a"]
    out = mixed_model_table(single, metrics=["quality"])
    assert len(out) == 1 and "methods" in out.note.iloc[0] and np.isnan(out.p.iloc[0])
    # method c lacks the perturbed rows: its interaction cannot be estimated
    partial = table[(table.metric == "quality") & ~((table.method == "c") & (table.perturbation == "gauss"))]
    out = mixed_model_table(partial)
    assert len(out) == 1 and "singular" in out.note.iloc[0]
    with pytest.raises(ValueError, match="metrics"):
        mixed_model_table(table, metrics=["no_such_metric"])


def test_every_table_has_the_same_columns_and_run_statistics_writes_them(tmp_path):
    table = planted_severity_table(n=15)
    kruskal = pd.concat([table, table.assign(model="net2")])
    kruskal.to_parquet(tmp_path / "metrics.parquet")
    outputs = {name: str(tmp_path / f"{name}.csv") for name in ("friedman", "posthoc", "kruskal", "mixed_model")}
    results = run_statistics(str(tmp_path / "metrics.parquet"), outputs, alpha=0.05, mixed_model_metrics=["quality"])
    for name, frame in results.items():
        written = pd.read_csv(outputs[name])
        expected = STATS_COLUMNS[:2] + ["method"] + STATS_COLUMNS[2:] if name == "kruskal" else STATS_COLUMNS
        assert list(frame.columns) == list(written.columns) == expected, name
        assert len(written) == len(frame) > 0, name
    assert set(results["mixed_model"].metric) == {"quality"}
    with pytest.raises(ValueError, match="outputs"):
        run_statistics(str(tmp_path / "metrics.parquet"), {"friedman": outputs["friedman"]})
