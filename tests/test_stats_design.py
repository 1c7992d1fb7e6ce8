"""Issue 20, items 10-11: the across-models comparison is paired when the groups share images (Wilcoxon /
Friedman on the aligned images) and Kruskal-Wallis only for disjoint samples; every test table states its
design and its multiple-comparison family and carries a table-wide Holm p beside the per-family one."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cambench import plots
from cambench.stats import (
    STATS_COLUMNS,
    friedman_table,
    kruskal_table,
    mixed_model_table,
    posthoc_table,
    run_statistics,
)


def tidy(groups: dict, method="gradcam", metric="deletion_auc", perturbation="none", level=0.0) -> pd.DataFrame:
    """Tidy rows from {"dataset/model": {image_id: value}}."""
    return pd.DataFrame([dict(dataset=name.split("/")[0], model=name.split("/")[1], method=method,
                              perturbation=perturbation, level=level, metric=metric, image_id=i, value=float(v))
                         for name, values in groups.items() for i, v in values.items()])


def paired_models(n=40, shift=0.15, seed=0, models=("m1", "m2")) -> dict:
    """Models explaining the same n images: a large per-image effect, a small shift between models."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=n) * 2.0
    return {f"shapes/{m}": dict(enumerate(image + j * shift + rng.normal(size=n) * 0.1)) for j, m in enumerate(models)}


def test_two_models_on_the_same_images_are_compared_by_a_paired_wilcoxon():
    groups = paired_models()
    out = kruskal_table(tidy(groups))
    assert len(out) == 1
    row = out.iloc[0]
    a, b = (np.array(list(groups[g].values())) for g in ("shapes/m1", "shapes/m2"))
    ref = stats.wilcoxon(a, b)
    assert row.test == "wilcoxon" and row.design == "paired" and row.family == "table"
    assert row.p == pytest.approx(ref.pvalue, rel=1e-12) and row.statistic == ref.statistic
    assert row.groups == "shapes/m1,shapes/m2" and row.dataset == "shapes" and row.model == "*"
    assert row.n == 40 and row.k == 2 and row.effect_name == "rank_biserial"
    # matched-pairs rank-biserial of m1 - m2 from scipy's R+: negative, m2 has the larger values
    r_plus = stats.wilcoxon(a - b, alternative="greater").statistic
    assert row.effect_size == pytest.approx(2 * r_plus / (40 * 41 / 2) - 1) and row.effect_size < -0.5
    # the independent test cannot see a shift that small against the spread between images
    assert row.p < 1e-4 and stats.kruskal(a, b).pvalue > 0.5


def test_three_models_on_the_same_images_get_friedman_and_wilcoxon_pairs_holm_within_the_block():
    groups = paired_models(n=30, models=("m1", "m2", "m3"), seed=1)
    # m3 lacks two images: paired on the 28 every model has, and the note says so
    del groups["shapes/m3"][0], groups["shapes/m3"][5]
    out = kruskal_table(tidy(groups))
    names = sorted(groups)
    shared = sorted(set(groups[names[0]]) & set(groups[names[2]]))
    aligned = [np.array([groups[g][i] for i in shared]) for g in names]
    omnibus = out[out.test == "friedman"].iloc[0]
    ref = stats.friedmanchisquare(*aligned)
    assert omnibus.p == pytest.approx(ref.pvalue, rel=1e-10) and omnibus.statistic == pytest.approx(ref.statistic)
    assert omnibus.design == "paired" and omnibus.family == "table" and omnibus.n == 28 and omnibus.k == 3
    assert "28 images" in omnibus.note
    pairs = out[out.test == "wilcoxon"].set_index("groups")
    assert list(pairs.index) == ["shapes/m1,shapes/m2", "shapes/m1,shapes/m3", "shapes/m2,shapes/m3"]
    assert (pairs.family == "block").all() and (pairs.design == "paired").all()
    for pair, row in pairs.iterrows():
        a, b = (aligned[names.index(g)] for g in pair.split(","))
        assert row.p == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
    np.testing.assert_allclose(pairs.p_adj, multipletests(pairs.p, method="holm")[1])


def test_disjoint_images_keep_kruskal_wallis_dunn_and_cliffs_delta():
    rng = np.random.default_rng(2)
    # the same data set but different images (ids 0-24 and 100-129), and a second data set (ids overlap the
    # first's numbers, but they number other images): no image is in two groups
    groups = {"shapes/m1": dict(enumerate(rng.normal(size=25))),
              "shapes/m2": {100 + i: v for i, v in enumerate(rng.normal(size=30) + 1.0)},
              "cifar/m3": dict(enumerate(rng.normal(size=20)))}
    out = kruskal_table(tidy(groups))
    kruskal = out[out.test == "kruskal"].iloc[0]
    samples = [np.array(list(groups[g].values())) for g in sorted(groups)]
    ref = stats.kruskal(*samples)
    assert kruskal.design == "independent" and kruskal.family == "table" and kruskal.dataset == "*"
    assert kruskal.p == pytest.approx(ref.pvalue, rel=1e-12) and kruskal.statistic == pytest.approx(ref.statistic)
    dunn = out[out.test == "dunn"]
    assert len(dunn) == 3 and (dunn.design == "independent").all() and (dunn.family == "block").all()
    assert set(dunn.effect_name) == {"cliffs_delta"}


def test_partial_overlap_pairs_on_the_intersection_or_refuses():
    rng = np.random.default_rng(3)
    image = rng.normal(size=40)
    # consistency-like: each model has rows on a different subset (where its own prediction did not change)
    groups = {"shapes/m1": {i: image[i] for i in range(0, 36)},
              "shapes/m2": {i: image[i] + 0.1 for i in range(4, 40)}}
    row = kruskal_table(tidy(groups)).iloc[0]
    ids = range(4, 36)
    ref = stats.wilcoxon([groups["shapes/m1"][i] for i in ids], [groups["shapes/m2"][i] for i in ids])
    assert row.test == "wilcoxon" and row.design == "paired" and row.n == 32
    assert row.p == pytest.approx(ref.pvalue, rel=1e-12) and "32 images" in row.note
    # sharing 5 of 20 images (< half of the smaller group): no test, and the note says why
    small = {"shapes/m1": {i: image[i] for i in range(0, 20)}, "shapes/m2": {i: image[i] for i in range(15, 35)}}
    row = kruskal_table(tidy(small)).iloc[0]
    assert row.design == "paired" and np.isnan(row.p) and not row.significant and "share 5 images" in row.note


def test_models_are_paired_within_a_data_set_and_data_sets_are_not_mixed_in():
    groups = paired_models(n=20, seed=4)
    groups["cifar/m3"] = dict(enumerate(np.random.default_rng(5).normal(size=20)))
    out = kruskal_table(tidy(groups))
    assert len(out) == 1 and out.iloc[0].groups == "shapes/m1,shapes/m2" and out.iloc[0].test == "wilcoxon"


def method_table(seed=6, n=25) -> pd.DataFrame:
    """Two blocks (metrics) of four methods on the same images, and a perturbed level for the mixed model."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=n)
    rows = []
    for metric in ("deletion_auc", "insertion_auc"):
        for perturbation, level in (("none", 0.0), ("gaussian", 0.5)):
            for j, method in enumerate(("a", "b", "c", "d")):
                values = image + 0.3 * j + level * (1 + 0.2 * j) + rng.normal(size=n) * 0.5
                rows += [dict(dataset="shapes", model=model, method=method, perturbation=perturbation, level=level,
                              metric=metric, image_id=i, value=float(v + (model == "m2") * 0.05))
                         for model in ("m1", "m2") for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_every_table_states_its_design_and_family_and_adds_a_table_wide_holm_p():
    table = method_table()
    tables = {"friedman": friedman_table(table), "posthoc": posthoc_table(table),
              "kruskal": kruskal_table(table), "mixed_model": mixed_model_table(table)}
    families = {"friedman": {"friedman": {"table"}}, "posthoc": {"wilcoxon": {"block"}, "nemenyi": {"block"}},
                "kruskal": {"wilcoxon": {"table"}}, "mixed_model": {"mixedlm": {"table"}}}
    for name, out in tables.items():
        assert {"design", "family", "p_adj_table"} <= set(out.columns), name
        assert (out.design == "paired").all(), name   # every group here is the same images
        assert {t: set(f.family) for t, f in out.groupby("test")} == families[name], name
        ok = out.p.notna()
        # p_adj_table: Holm over every finite p of the table, whatever the test or the block
        np.testing.assert_allclose(out.p_adj_table[ok], multipletests(out.p[ok], method="holm")[1], err_msg=name)
        assert out.p_adj_table[~ok].isna().all() and (out.p_adj_table[ok] >= out.p_adj[ok] - 1e-12).all(), name
        table_family = out.family == "table"
        np.testing.assert_allclose(out.p_adj[table_family & ok], out.p_adj_table[table_family & ok], err_msg=name)
    # the per-block family: Holm within each block's Wilcoxon pairs, not over the table
    wilcoxon = tables["posthoc"][tables["posthoc"].test == "wilcoxon"]
    for _, block in wilcoxon.groupby(["model", "perturbation", "level", "metric"]):
        np.testing.assert_allclose(block.p_adj, multipletests(block.p, method="holm")[1])
    assert (wilcoxon.p_adj_table > wilcoxon.p_adj).any()  # 48 pairs in the table, 6 in a block


def test_run_statistics_writes_the_new_columns(tmp_path):
    method_table(n=12).to_parquet(tmp_path / "metrics.parquet")
    outputs = {name: str(tmp_path / f"{name}.csv") for name in ("friedman", "posthoc", "kruskal", "mixed_model")}
    run_statistics(str(tmp_path / "metrics.parquet"), outputs, mixed_model_metrics=["deletion_auc"])
    for name, path in outputs.items():
        written = pd.read_csv(path)
        assert [c for c in STATS_COLUMNS if c not in written.columns] == [], name
        assert written.family.isin(["table", "block"]).all() and written.design.isin(["paired", "independent"]).all()


def test_the_critical_difference_figure_says_which_p_it_shows(tmp_path, monkeypatch):
    table = method_table()
    table = table[table.model == "m1"]
    friedman_table(table).to_csv(tmp_path / "friedman.csv", index=False)
    posthoc_table(table).to_csv(tmp_path / "posthoc.csv", index=False)
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, output: figures.append(fig))
    plots.critical_difference(tmp_path / "friedman.csv", tmp_path / "posthoc.csv", tmp_path / "cd.png",
                              ["deletion_auc"], model="m1")
    title = figures[0].axes[0].get_title()
    assert "Friedman p (Holm, whole table)" in title
    assert "Nemenyi p, family-wise over the metric's pairs" in figures[0]._suptitle.get_text()
