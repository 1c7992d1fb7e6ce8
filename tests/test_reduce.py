"""The reduce side block by block (issue 22): the partitioned metric table, the summary and the statistics
read one block at a time and give the numbers of the whole-table functions; bounded bootstrap and mixed-model
cost; the CSV only on request; readers users have (pandas, pyarrow, DuckDB) take the table as it lies."""
import json

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import yaml
from scipy import stats as sps

from cambench import aggregate, stats, tables
from cambench.aggregate import (
    aggregate_metrics,
    bootstrap_mean_ci,
    bootstrap_robustness_ci,
    normal_mean_ci,
    normal_robustness_ci,
    summary_table,
)
from cambench.stats import (
    friedman_table,
    image_subsample,
    kruskal_table,
    mixed_model_table,
    posthoc_table,
    run_statistics,
)
from cambench.tables import METRIC_COLUMNS, partitions, read_block, write_csv, write_partition

METHODS = ["gradcam", "gradcampp", "layercam", "scorecam"]
METRICS = ["deletion_auc", "pointing_game", "noise_robustness", "flip_rate"]
LEVELS = [("none", 0.0), ("gaussian", 0.1), ("gaussian", 0.2), ("brightness", 0.5)]
MODELS = [("shapes", "net_a", 24), ("shapes", "net_b", 24), ("cifar", "net_c", 18)]  # net_a/net_b share images


def metric_table(seed: int = 0) -> pd.DataFrame:
    """Every column the workflow writes; planted method effects, NaNs, unbalanced classes, flipped predictions,
    robustness metrics on perturbed levels only, a model whose images differ (independent design)."""
    rng = np.random.default_rng(seed)
    frames = []
    for dataset, model, n in MODELS:
        labels = rng.choice(3, n, p=[0.6, 0.3, 0.1])
        for kind, level in LEVELS:
            prediction = np.where(rng.random(n) < (0.3 if kind != "none" else 0.0), (labels + 1) % 3, labels)
            for metric in METRICS:
                if kind == "none" and metric in ("noise_robustness", "flip_rate"):
                    continue
                for k, method in enumerate(METHODS):
                    value = 0.1 * k + level + rng.normal(0, 0.2, n)
                    if metric == "pointing_game":
                        value = (value > 0.3).astype(float)
                    if metric == "flip_rate":
                        value = (prediction != labels).astype(float)
                    value[rng.random(n) < 0.05] = np.nan
                    params = {"combine": "harmonic", "similarity": "ssim"} if metric == "noise_robustness" else {}
                    frames.append(pd.DataFrame({
                        "dataset": dataset, "model": model, "method": method, "perturbation": kind, "level": level,
                        "image_id": [f"{dataset}/{i:03d}" for i in range(n)], "label": labels, "target": prediction,
                        "prediction": prediction, "label_rank": pd.array(1 + (prediction != labels), "Int64"),
                        "clean_prediction": labels, "metric": metric, "value": value, "score": "prob",
                        "params": json.dumps(params), "map_flags": (rng.random(n) < 0.05).astype(np.uint8)}))
    return pd.concat(frames, ignore_index=True)[METRIC_COLUMNS]


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory):
    root = tmp_path_factory.mktemp("table") / "metrics"
    table = metric_table()
    for (dataset, model, kind, level), part in table.groupby(["dataset", "model", "perturbation", "level"]):
        write_partition(part, tables.partition_path(root, dataset, model, kind, f"{level:g}"), METRICS)
    return root, table


def _same(written: pd.DataFrame, reference: pd.DataFrame):
    written, reference = written.reset_index(drop=True), reference.reset_index(drop=True)
    if "fliers" in written:  # lists in memory, arrays once read back from parquet
        assert [list(f) for f in written.pop("fliers")] == [list(f) for f in reference.pop("fliers")]
    pd.testing.assert_frame_equal(written, reference, check_dtype=False, check_exact=True)


def test_summary_and_box_statistics_equal_the_whole_table_computation(partitioned, tmp_path):
    root, table = partitioned
    summary = aggregate_metrics(root, tmp_path / "summary.csv", tmp_path / "boxes.parquet", n_boot=200, seed=3,
                                workers=2)
    ref_summary, ref_boxes = summary_table(table, n_boot=200, seed=3)
    _same(summary, ref_summary)
    _same(pd.read_parquet(tmp_path / "boxes.parquet"), ref_boxes)
    assert len(summary) > 100 and set(summary["aggregate"]) == {"mean", "class_mean", "harmonic"}
    # the plain means are those of a groupby of the whole table
    keys = aggregate.GROUP_KEYS
    plain = summary[summary["aggregate"] == "mean"].set_index(keys)["mean"]
    expected = table.groupby(keys)["value"].apply(lambda v: v.to_numpy().mean())
    np.testing.assert_allclose(plain.to_numpy(), expected.loc[plain.index].to_numpy())


def test_statistics_equal_the_whole_table_functions(partitioned, tmp_path):
    root, table = partitioned
    outputs = {name: str(tmp_path / f"{name}.csv") for name in stats.STATS_OUTPUTS}
    written = run_statistics(root, outputs, alpha=0.05, mixed_model_metrics=["deletion_auc"], workers=2)
    _same(written["friedman"], friedman_table(table))
    _same(written["posthoc"], posthoc_table(table))
    _same(written["kruskal"], kruskal_table(table))
    _same(written["mixed_model"], mixed_model_table(table, ["deletion_auc"]))
    assert set(written["kruskal"].design) == {"paired"} and set(written["kruskal"].dataset) == {"shapes"}
    # without net_b no two models share images: Kruskal-Wallis across the data sets, from the same blocks
    independent = run_statistics([root / "shapes" / "net_a", root / "cifar"], outputs, mixed_model_metrics=[])
    alone = table[table.model != "net_b"]
    _same(independent["kruskal"], kruskal_table(alone))
    assert set(independent["kruskal"].design) == {"independent"} and len(independent["kruskal"]) > 0
    assert len(written["posthoc"]) == len(written["friedman"]) * 2 * 6   # 2 tests x 6 pairs per block
    # the subsampled mixed models are those of the whole-table function with the same cap
    capped = run_statistics(root, outputs, mixed_model_metrics=["deletion_auc"], mixed_model_max_images=10, seed=4)
    _same(capped["mixed_model"], mixed_model_table(table, ["deletion_auc"], max_images=10, seed=4))


def test_the_reduce_reads_one_block_at_a_time(partitioned, tmp_path, monkeypatch):
    """Every read is one (dataset, model, kind, level, metric): never a whole partition or the table."""
    root, table = partitioned
    reads = []

    def recording(part, metric, columns=None):
        block = read_block(part, metric, columns)
        reads.append((part.key, metric, len(block)))
        return block

    monkeypatch.setattr(aggregate, "read_block", recording)
    monkeypatch.setattr(stats, "read_block", recording)
    aggregate_metrics(root, tmp_path / "s.csv", tmp_path / "b.parquet", n_boot=100, seed=0)
    run_statistics(root, {name: str(tmp_path / f"{name}.csv") for name in stats.STATS_OUTPUTS},
                   mixed_model_metrics=["deletion_auc"])
    sizes = table.groupby(["dataset", "model", "perturbation", "level", "metric"]).size()
    assert {(*key, metric) for key, metric, _ in reads} == set(sizes.index)
    for key, metric, rows in reads:
        assert rows == sizes[(*key, metric)], (key, metric)
    assert max(rows for *_, rows in reads) == 24 * len(METHODS)   # the largest block, not the table


def test_the_table_reads_as_one_table_with_pandas_pyarrow_and_duckdb(partitioned, tmp_path):
    root, table = partitioned
    order = ["dataset", "model", "perturbation", "level", "metric", "method", "image_id"]
    expected = table.sort_values(order).reset_index(drop=True)
    by_pandas = pd.read_parquet(root).sort_values(order).reset_index(drop=True)
    assert list(by_pandas.columns) == METRIC_COLUMNS
    _same(by_pandas, expected)
    assert pads.dataset(root).count_rows() == len(table)
    duckdb = pytest.importorskip("duckdb")
    counted = duckdb.sql(f"select metric, count(*) as n, avg(value) as mean from read_parquet('{root}/*/*/*.parquet') "
                         "group by metric order by metric").df()
    reference = table.groupby("metric")["value"].agg(["size", "mean"]).sort_index()
    assert counted["n"].tolist() == reference["size"].tolist()
    np.testing.assert_allclose(counted["mean"], reference["mean"])
    # one key in two files would be counted twice: refused
    write_partition(table[(table.model == "net_c") & (table.level == 0.5)], tmp_path / "copy.parquet", METRICS)
    with pytest.raises(ValueError, match="both hold .*net_c"):
        partitions([root, tmp_path / "copy.parquet"])
    # the CSV, written block by block, holds the same rows
    assert write_csv(root, tmp_path / "metrics.csv") == len(table)
    _same(pd.read_csv(tmp_path / "metrics.csv", dtype={"label_rank": "Int64"}).sort_values(order)
          .reset_index(drop=True), expected.assign(params=expected.params.astype(object)))


# ------------------------------------------------------------------------ bounded cost of the intervals

def test_large_groups_get_the_normal_interval_the_bootstrap_converges_to():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 0.2, 4000)
    classes = rng.choice(3, 4000, p=[0.7, 0.2, 0.1])
    for cls in (None, classes):
        boot = bootstrap_mean_ci(values, cls, 4000, np.random.default_rng(1))
        normal = normal_mean_ci(values, cls)
        assert normal[0] == pytest.approx(boot[0])
        np.testing.assert_allclose(normal[1:], boot[1:], atol=0.002)   # half-widths ~0.012
    unchanged = rng.random(4000) < 0.7
    boot = bootstrap_robustness_ci(values, unchanged, 4000, np.random.default_rng(2))
    normal = normal_robustness_ci(values, unchanged)
    assert normal[0] == pytest.approx(boot[0])
    np.testing.assert_allclose(normal[1:], boot[1:], atol=0.002)
    # the t-free normal interval of the plain mean, by hand
    half = sps.norm.ppf(0.975) * values.std(ddof=1) / np.sqrt(len(values))
    np.testing.assert_allclose(normal_mean_ci(values, None)[1:], [values.mean() - half, values.mean() + half])


def test_the_summary_states_its_interval_and_each_group_has_its_own_seed(partitioned):
    _, table = partitioned
    summary, _ = summary_table(table, n_boot=100, seed=0, bootstrap_max_n=20)
    n = summary["n"]
    assert (summary.loc[n <= 20, "ci"] == "bootstrap 100").all() and (summary.loc[n > 20, "ci"] == "normal").all()
    assert (n <= 20).any() and (n > 20).any()
    # a group's interval does not depend on the other groups of the run
    alone, _ = summary_table(table[(table.model == "net_c") & (table.metric == "deletion_auc")], n_boot=100, seed=0)
    full, _ = summary_table(table, n_boot=100, seed=0)
    merged = alone.merge(full, on=aggregate.GROUP_KEYS, suffixes=("", "_full"))
    assert len(merged) == len(alone) > 0
    np.testing.assert_array_equal(merged.ci_low, merged.ci_low_full)
    other_seed, _ = summary_table(table[table.metric == "deletion_auc"], n_boot=100, seed=1)
    assert not np.allclose(other_seed.ci_low, full[full.metric == "deletion_auc"].ci_low.to_numpy())


def test_mixed_models_above_the_cap_fit_a_seeded_subsample_and_say_so():
    ids = [f"img{i:03d}" for i in range(40)]
    chosen = image_subsample(ids, 10, seed=0)
    assert len(chosen) == 10 and chosen == image_subsample(list(reversed(ids)) + ids[:5], 10, seed=0)
    assert chosen != image_subsample(ids, 10, seed=1) and image_subsample(ids, 40, seed=0) is None
    rng = np.random.default_rng(0)
    rows = [dict(dataset="d", model="m", method=method, perturbation=kind, level=level, image_id=image, metric="q",
                 value=0.5 * (method == "b") - level + rng.normal(0, 0.1))
            for image in ids for method in ("a", "b") for kind, level in (("none", 0.0), ("gaussian", 0.5))]
    table = pd.DataFrame(rows)
    full = mixed_model_table(table)
    capped = mixed_model_table(table, max_images=10, seed=0)
    assert (full.n == 40 * 4).all() and (capped.n == 10 * 4).all()
    assert capped.note.str.contains("subsample of 10 of the 40 images").all()
    assert not full.note.str.contains("subsample").any()
    effect = capped.set_index("groups").loc["C(method)[T.b]", "effect_size"]
    assert effect == pytest.approx(0.5, abs=0.1)  # the planted method effect, from a quarter of the images


# ------------------------------------------------------------------------------- the CSV on request only

def test_the_csv_is_a_default_output_of_small_runs_only(tmp_path):
    from workflow_helpers import ROOT, copy_workflow, snakemake

    from cambench.plan import load_config, metric_row_bound
    default = load_config("config/config.yaml", ROOT)
    rows = metric_row_bound(default, tmp_path)
    # the default run wrote 118,983 metric rows (BENCHMARKS.md); the bound counts every metric for every method
    assert 118_983 <= rows <= default["metrics"]["csv_max_rows"]
    paper = load_config("config/paper.yaml", ROOT)
    assert metric_row_bound(paper, tmp_path) > 500_000_000   # ~90 GB as CSV: not a default output
    copy_workflow(tmp_path)

    def planned(*args):
        run = snakemake(tmp_path, "-n", "--cores", "1", *args)
        return {line.split()[0] for line in run.stdout.splitlines() if line.strip()}

    assert "metrics_csv" in planned()
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for name, setting in (("never", {"csv": "never"}), ("small", {"csv_max_rows": 1000})):
        changed = {**config, "metrics": {**config["metrics"], **setting}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(changed))
    assert "metrics_csv" not in planned("--configfile", "never.yaml")
    assert "metrics_csv" not in planned("--configfile", "small.yaml")
    assert "metrics_csv" in planned("results/metrics.csv", "--configfile", "never.yaml")   # on request
