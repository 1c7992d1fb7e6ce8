"""Report figures on small synthetic tables with planted orderings: valid PNGs, the data each figure
draws (captured from the plotting calls), rank orientation, clear errors, no partial files."""
import json

import matplotlib.axes
import matplotlib.colors
import matplotlib.figure
import numpy as np
import pandas as pd
import pytest
import scikit_posthocs as sp
import seaborn as sns
from matplotlib.cbook import boxplot_stats
from PIL import Image
from scipy import stats

from cambench import plots
from cambench.aggregate import summary_table
from cambench.stats import STATS_COLUMNS, friedman_table

METHODS = ["good", "mid", "bad", "noisy"]
CONDITIONS = [("none", 0.0), ("gaussian", 0.1), ("gaussian", 0.2), ("pgd", 2.0)]
N_IMAGES = 12
# Per-image offsets planted per method: "good" has the lowest deletion AUC and the highest insertion
# AUC / pointing game / sparseness, so it must be rank 1 (best) for all of them once oriented.
QUALITY = {"good": 0.0, "mid": 0.2, "bad": 0.4, "noisy": 0.3}


def _tidy() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for kind, level in CONDITIONS:
        for img in range(N_IMAGES):
            label = img % 3
            flipped = kind != "none" and img % 4 == 0   # a quarter of the predictions change under perturbation
            for method in METHODS:
                q = QUALITY[method] + (rng.normal(0, 0.02) if method != "noisy" else rng.normal(0, 0.05))
                values = {"deletion_auc": 0.1 + q + level / 4, "insertion_auc": 0.9 - q - level / 4,
                          "pointing_game": float(q < 0.1 + 0.1 * (img % 3)), "sparseness": 0.8 - q,
                          "ablation_area": 0.3 + 0.1 * rng.random()}
                if kind != "none":
                    values["flip_rate"] = float(flipped)
                    values["consistency" if not flipped else "responsiveness"] = 0.9 - q - level
                for metric, value in values.items():
                    rows.append(dict(dataset="toy", model="toy_cnn", method=method, perturbation=kind, level=level,
                                     image_id=f"img{img:02d}", label=label, target=label,
                                     prediction=(label + 1) % 3 if flipped else label, clean_prediction=label,
                                     metric=metric, value=value, score="prob", params=json.dumps({})))
    return pd.DataFrame(rows)


def _nemenyi_rows(tidy: pd.DataFrame, friedman: pd.DataFrame) -> pd.DataFrame:
    """posthoc.csv rows (test 'nemenyi', groups 'a,b', p_adj) from scikit-posthocs, per Friedman block."""
    rows = []
    for rec in friedman[friedman["mean_ranks"].astype(str).str.len() > 0].itertuples(index=False):
        block = tidy[(tidy.model == rec.model) & (tidy.perturbation == rec.perturbation) & (tidy.level == rec.level)
                     & (tidy.metric == rec.metric)]
        wide = block.pivot_table(index="image_id", columns="method", values="value").dropna()
        pvals = sp.posthoc_nemenyi_friedman(wide.to_numpy())
        pvals.index = pvals.columns = list(wide.columns)
        methods = list(wide.columns)
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                rows.append(dict(dataset=rec.dataset, model=rec.model, perturbation=rec.perturbation, level=rec.level,
                                 metric=rec.metric, test="nemenyi", groups=f"{a},{b}", statistic=np.nan,
                                 p=pvals.loc[a, b], p_adj=pvals.loc[a, b], effect_size=np.nan, effect_name="",
                                 significant=pvals.loc[a, b] < 0.05, n=len(wide), k=2, mean_ranks="", note=""))
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    tidy = _tidy()
    summary, boxes = summary_table(tidy, n_boot=50, seed=0)
    summary.to_csv(root / "metric_summary.csv", index=False)
    boxes.to_parquet(root / "box_stats.parquet", index=False)
    friedman = friedman_table(tidy)
    friedman.to_csv(root / "friedman.csv", index=False)
    _nemenyi_rows(tidy, friedman).to_csv(root / "posthoc.csv", index=False)
    return root, tidy


def _assert_png(path):
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) > 50
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]  # no temporary file left behind


@pytest.fixture
def captured(monkeypatch):
    """The figure each plotting call saves (the PNG is still written)."""
    figures = []
    save = plots.save_figure

    def keep(fig, output):
        figures.append(fig)
        save(fig, output)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figures


# -- oriented ranks -------------------------------------------------------------------------------

def test_oriented_ranks_put_the_best_method_first_in_both_directions(tables):
    root, tidy = tables
    ranks = plots.oriented_ranks(pd.read_csv(root / "friedman.csv"))
    clean = ranks[(ranks.perturbation == "none")].set_index(["metric", "method"])["rank"]
    for metric in ("deletion_auc", "insertion_auc", "sparseness"):  # lower-better and higher-better alike
        assert clean[metric].idxmin() == "good" and clean[metric].min() == 1.0, metric
        assert clean[metric].idxmax() == "bad", metric
    assert "ablation_area" not in set(ranks.metric)   # higher_is_better None: no orientation, left out
    assert "flip_rate" not in set(ranks.metric)       # the same for every method: no Friedman test


def test_oriented_ranks_match_scipy_ranks_with_ties():
    """Oracle: higher-is-better ranks = mean over blocks of rankdata(-values) (ties averaged)."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, 3, size=(20, 4)).astype(float)   # many ties
    rows = [dict(dataset="d", model="m", perturbation="none", level=0.0, metric=metric, image_id=i, method=f"m{j}",
                 value=values[i, j])
            for metric in ("insertion_auc", "deletion_auc") for i in range(20) for j in range(4)]
    ranks = plots.oriented_ranks(friedman_table(pd.DataFrame(rows))).set_index(["metric", "method"])["rank"]
    expected_higher = stats.rankdata(-values, axis=1).mean(axis=0)
    expected_lower = stats.rankdata(values, axis=1).mean(axis=0)
    assert np.allclose([ranks["insertion_auc", f"m{j}"] for j in range(4)], expected_higher, atol=1e-4)
    assert np.allclose([ranks["deletion_auc", f"m{j}"] for j in range(4)], expected_lower, atol=1e-4)


def test_oriented_ranks_errors():
    with pytest.raises(ValueError, match="mean_ranks"):
        plots.oriented_ranks(pd.DataFrame({"metric": ["deletion_auc"]}))
    bad = pd.DataFrame([dict(dataset="d", model="m", perturbation="none", level=0.0, metric="not_a_metric",
                             mean_ranks=json.dumps({"a": 1.0, "b": 2.0}))])
    with pytest.raises(ValueError, match="unknown metric 'not_a_metric'"):
        plots.oriented_ranks(bad)


# -- rank heatmap ---------------------------------------------------------------------------------

def test_rank_heatmap_plots_oriented_ranks(tables, tmp_path, monkeypatch):
    root, _ = tables
    grids = []
    heatmap = plots.sns.heatmap

    def spy(data, **kwargs):
        grids.append(data.copy())
        return heatmap(data, **kwargs)

    monkeypatch.setattr(plots.sns, "heatmap", spy)
    out = tmp_path / "rank_heatmap.png"
    plots.rank_heatmap(root / "friedman.csv", out, "clean")
    _assert_png(out)
    (grid,) = grids
    assert grid.loc["good", "deletion_auc"] == 1.0 and grid.loc["bad", "deletion_auc"] == 4.0  # lower is better
    assert grid.loc["good", "insertion_auc"] == 1.0                                           # higher is better
    assert grid.index[0] == "good"                  # methods sorted best first
    assert "ablation_area" not in grid.columns
    plots.rank_heatmap(root / "friedman.csv", tmp_path / "perturbed.png", "gaussian~0.2")
    assert "consistency" in grids[-1].columns
    with pytest.raises(ValueError, match="no rows for condition 'gaussian~0.5'"):
        plots.rank_heatmap(root / "friedman.csv", tmp_path / "x.png", "gaussian~0.5")
    with pytest.raises(ValueError, match="condition must be"):
        plots.rank_heatmap(root / "friedman.csv", tmp_path / "x.png", "gaussian@0.5")


# -- critical difference --------------------------------------------------------------------------

def test_critical_difference_ranks_and_significance(tables, tmp_path, monkeypatch):
    root, tidy = tables
    calls = []
    diagram = sp.critical_difference_diagram

    def spy(ranks, sig_matrix, **kwargs):
        calls.append((ranks.copy(), sig_matrix.copy(), kwargs["alpha"]))
        return diagram(ranks, sig_matrix, **kwargs)

    monkeypatch.setattr(plots.sp, "critical_difference_diagram", spy)
    out = tmp_path / "cd.png"
    plots.critical_difference(root / "friedman.csv", root / "posthoc.csv", out, ["deletion_auc", "insertion_auc"],
                              model="toy_cnn", alpha=0.05)
    _assert_png(out)
    assert len(calls) == 2
    posthoc = pd.read_csv(root / "posthoc.csv")
    for (ranks, matrix, alpha), metric in zip(calls, ["deletion_auc", "insertion_auc"]):
        assert ranks.idxmin() == "good" and ranks.min() == 1.0 and ranks.idxmax() == "bad"
        assert np.allclose(matrix.to_numpy(), matrix.to_numpy().T) and alpha == 0.05
        ref = posthoc[(posthoc.metric == metric) & (posthoc.perturbation == "none") & (posthoc.groups == "bad,good")]
        assert np.isclose(matrix.loc["good", "bad"], ref.p_adj.iloc[0])
    assert calls[0][1].loc["good", "bad"] < 0.05    # planted: far apart, significantly different


def test_critical_difference_without_posthoc_rows_draws_untested_pairs(tables, tmp_path, captured):
    root, _ = tables
    empty = tmp_path / "posthoc.csv"
    pd.DataFrame(columns=STATS_COLUMNS).to_csv(empty, index=False)
    out = tmp_path / "cd.png"
    plots.critical_difference(root / "friedman.csv", empty, out, ["sparseness"], model="toy_cnn")
    _assert_png(out)
    assert "pairs not tested" in captured[0].axes[0].get_title()


def test_critical_difference_errors(tables, tmp_path):
    root, _ = tables
    args = (root / "friedman.csv", root / "posthoc.csv", tmp_path / "cd.png")
    with pytest.raises(ValueError, match=r"metric\(s\) \['dice'\] have no rows"):
        plots.critical_difference(*args, ["deletion_auc", "dice"], model="toy_cnn")
    with pytest.raises(ValueError, match="no better direction"):
        plots.critical_difference(*args, ["ablation_area"], model="toy_cnn")
    with pytest.raises(ValueError, match="model 'other' has no rows"):
        plots.critical_difference(*args, ["deletion_auc"], model="other")
    with pytest.raises(ValueError, match="non-empty list"):
        plots.critical_difference(*args, [], model="toy_cnn")
    # skip_missing (the workflow's setting) leaves out an absent metric but still needs one present
    plots.critical_difference(*args, ["deletion_auc", "dice"], model="toy_cnn", skip_missing=True)
    _assert_png(tmp_path / "cd.png")
    with pytest.raises(ValueError, match="have no rows"):
        plots.critical_difference(*args, ["dice"], model="toy_cnn", skip_missing=True)


def test_a_model_with_two_methods_gets_panels_that_say_why(tables, tmp_path, captured):
    """Friedman needs >= 3 methods: such a model's panels carry the table's note instead of failing."""
    root, tidy = tables
    pair = tidy[tidy.method.isin(["good", "bad"])].assign(model="pair_cnn")
    friedman = friedman_table(pd.concat([tidy, pair]))
    friedman.to_csv(tmp_path / "friedman.csv", index=False)
    plots.critical_difference(tmp_path / "friedman.csv", root / "posthoc.csv", tmp_path / "cd.png", ["deletion_auc"],
                              model="pair_cnn")
    _assert_png(tmp_path / "cd.png")
    assert "needs >= 3 methods" in captured[-1].axes[0].texts[0].get_text()
    plots.rank_heatmap(tmp_path / "friedman.csv", tmp_path / "ranks.png")
    _assert_png(tmp_path / "ranks.png")
    titles = [ax.get_title() for ax in captured[-1].axes]
    assert "toy / pair_cnn" in titles and "toy / toy_cnn" in titles


# -- robustness curves ----------------------------------------------------------------------------

def test_robustness_curves_draw_summary_means_with_the_clean_point(tables, tmp_path, captured):
    root, _ = tables
    out = tmp_path / "curves.png"
    metrics = ["deletion_auc", "consistency", "pointing_game"]
    plots.robustness_curves(root / "metric_summary.csv", out, metrics, model="toy_cnn")
    _assert_png(out)
    axes = np.array(captured[0].axes[:3 * 2]).reshape(3, 2)   # rows = metrics, columns = gaussian, pgd
    summary = pd.read_csv(root / "metric_summary.csv")
    good = summary[(summary.method == "good")].set_index(["metric", "perturbation", "level"])["mean"]

    def line(ax, method):
        (found,) = [ln for ln in ax.get_lines() if ln.get_label() == method]
        return found.get_xdata(), found.get_ydata()

    x, y = line(axes[0, 0], "good")   # deletion_auc x gaussian: clean point at 0, then the two levels
    assert list(x) == [0.0, 0.1, 0.2]
    assert np.allclose(y, [good["deletion_auc", "none", 0.0], good["deletion_auc", "gaussian", 0.1],
                           good["deletion_auc", "gaussian", 0.2]])
    x, _ = line(axes[0, 1], "good")   # pgd column
    assert list(x) == [0.0, 2.0]
    x, _ = line(axes[1, 0], "good")   # consistency has no clean value: perturbed levels only
    assert list(x) == [0.1, 0.2]
    assert len(axes[0, 0].collections) == len(METHODS)   # one CI band per method


def test_robustness_curves_errors(tables, tmp_path):
    root, _ = tables
    summary = root / "metric_summary.csv"
    with pytest.raises(ValueError, match="unknown metric 'delition_auc'"):
        plots.robustness_curves(summary, tmp_path / "c.png", ["delition_auc"], model="toy_cnn")
    with pytest.raises(ValueError, match=r"\['iou'\] have no rows"):
        plots.robustness_curves(summary, tmp_path / "c.png", ["deletion_auc", "iou"], model="toy_cnn")
    header_only = tmp_path / "empty.csv"
    pd.read_csv(summary).iloc[:0].to_csv(header_only, index=False)
    with pytest.raises(ValueError, match="no rows; nothing to plot"):
        plots.robustness_curves(header_only, tmp_path / "c.png", ["deletion_auc"], model="toy_cnn")
    clean_only = tmp_path / "clean.csv"
    pd.read_csv(summary).query("perturbation == 'none'").to_csv(clean_only, index=False)
    with pytest.raises(ValueError, match="no perturbed rows"):
        plots.robustness_curves(clean_only, tmp_path / "c.png", ["deletion_auc"], model="toy_cnn")
    assert not (tmp_path / "c.png").exists()


# -- consistency / responsiveness plane -----------------------------------------------------------

def test_consistency_responsiveness_plane(tables, tmp_path, captured):
    root, _ = tables
    out = tmp_path / "plane.png"
    plots.consistency_responsiveness_plane(root / "metric_summary.csv", out)
    _assert_png(out)
    visible = [ax for ax in captured[0].axes if ax.get_visible()]
    assert len(visible) == 3   # gaussian 0.1, gaussian 0.2, pgd 2
    summary = pd.read_csv(root / "metric_summary.csv").set_index(["method", "perturbation", "level", "metric"])["mean"]
    panel = [ax for ax in visible if ax.get_title() == "toy_cnn: gaussian 0.2"][0]
    labels = {t.get_text(): t.xy for t in panel.texts}
    assert set(labels) == set(METHODS)
    assert np.allclose(labels["good"], (summary["good", "gaussian", 0.2, "consistency"],
                                        summary["good", "gaussian", 0.2, "responsiveness"]))
    no_pair = tmp_path / "no_pair.csv"
    pd.read_csv(root / "metric_summary.csv").query("metric != 'consistency' and metric != 'responsiveness'") \
        .to_csv(no_pair, index=False)
    with pytest.raises(ValueError, match="no consistency or responsiveness rows"):
        plots.consistency_responsiveness_plane(no_pair, tmp_path / "p.png")


# -- distributions per family ---------------------------------------------------------------------

def test_metric_distributions_one_panel_per_family_metric(tables, tmp_path, captured):
    root, _ = tables
    out = tmp_path / "distributions_faithfulness.png"
    plots.metric_distributions(root / "box_stats.parquet", out, "faithfulness")
    _assert_png(out)
    visible = [ax for ax in captured[0].axes if ax.get_visible()]
    assert sorted(ax.get_title().split(" ")[0] for ax in visible) == ["ablation_area", "deletion_auc", "insertion_auc"]
    assert [t.get_text() for t in visible[0].get_yticklabels()] == sorted(METHODS)   # methods on the y axis
    legend = captured[0].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["clean", "gaussian 0.1", "gaussian 0.2", "pgd 2"]
    # a family with no rows in the table (here: axioms) still gets a figure that says so
    plots.metric_distributions(root / "box_stats.parquet", tmp_path / "distributions_axioms.png", "axioms")
    _assert_png(tmp_path / "distributions_axioms.png")
    with pytest.raises(ValueError, match="family must be one of"):
        plots.metric_distributions(root / "box_stats.parquet", tmp_path / "d.png", "faithful")


def test_metric_distributions_draw_the_box_statistics_of_the_per_image_values(tables, tmp_path, captured,
                                                                              monkeypatch):
    """Oracle: every box of a panel (method row, condition dodged within it, condition colour) has
    matplotlib's boxplot_stats of that method's per-image values at that condition."""
    root, tidy = tables
    drawn = []   # (axes, artists) of each Axes.bxp call
    bxp = matplotlib.axes.Axes.bxp

    def record(ax, *args, **kwargs):
        artists = bxp(ax, *args, **kwargs)
        drawn.append((ax, artists))
        return artists

    monkeypatch.setattr(matplotlib.axes.Axes, "bxp", record)
    plots.metric_distributions(root / "box_stats.parquet", tmp_path / "d.png", "faithfulness")
    legend = {t.get_text(): h.get_facecolor() for t, h in zip(captured[0].legends[0].get_texts(),
                                                              captured[0].legends[0].legend_handles)}
    conditions = ["clean", "gaussian 0.1", "gaussian 0.2", "pgd 2"]
    # four conditions share a row's 0.8: boxes 0.2 wide, centred at -0.3, -0.1, 0.1, 0.3 from the row
    offsets = dict(zip([-0.3, -0.1, 0.1, 0.3], conditions))
    boxes = {}
    for ax, artists in drawn:
        if not ax.get_title().startswith("deletion_auc"):
            continue
        for i, box in enumerate(artists["boxes"]):
            corners = box.get_path().vertices
            centre = (corners[:, 1].min() + corners[:, 1].max()) / 2
            row = round(centre)
            assert np.ptp(corners[:, 1]) == pytest.approx(0.2)
            method, condition = sorted(METHODS)[row], offsets[round(centre - row, 6)]
            assert (method, condition) not in boxes
            assert matplotlib.colors.to_rgb(box.get_facecolor()) == \
                pytest.approx(sns.desaturate(legend[condition], 0.75))   # seaborn's box colour of the legend's
            (q1, whislo), (q3, whishi) = (line.get_xdata() for line in artists["whiskers"][2 * i:2 * i + 2])
            assert (q1, q3) == (corners[:, 0].min(), corners[:, 0].max())   # whiskers start at the box's edges
            boxes[method, condition] = dict(q1=q1, q3=q3, med=artists["medians"][i].get_xdata()[0], whislo=whislo,
                                            whishi=whishi, mean=artists["means"][i].get_xdata()[0],
                                            fliers=sorted(artists["fliers"][i].get_xdata()))
    assert sorted(boxes) == sorted((m, c) for m in METHODS for c in conditions)
    raw = tidy[tidy.metric == "deletion_auc"]
    for (method, kind, level), group in raw.groupby(["method", "perturbation", "level"]):
        expected = boxplot_stats(group["value"].to_numpy(), whis=1.5)[0]
        got = boxes[method, plots._condition(kind, level)]
        for stat in ("q1", "med", "q3", "whislo", "whishi", "mean"):
            assert got[stat] == pytest.approx(expected[stat], rel=1e-12), (method, kind, level, stat)
        assert got["fliers"] == pytest.approx(sorted(expected["fliers"]), rel=1e-12)
    assert any(len(b["fliers"]) for b in boxes.values())   # the data has outliers, so they are checked too


# -- atomic writes --------------------------------------------------------------------------------

def test_no_partial_png_when_saving_fails(tables, tmp_path, monkeypatch):
    root, _ = tables

    def broken(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    out = tmp_path / "figs" / "rank_heatmap.png"
    with pytest.raises(OSError, match="disk full"):
        plots.rank_heatmap(root / "friedman.csv", out)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_bad_input_leaves_an_existing_figure_alone(tables, tmp_path):
    root, _ = tables
    out = tmp_path / "rank_heatmap.png"
    out.write_bytes(b"previous")
    with pytest.raises(ValueError):
        plots.rank_heatmap(root / "friedman.csv", out, "pgd~7")
    assert out.read_bytes() == b"previous"
