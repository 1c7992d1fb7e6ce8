"""The whole Snakemake workflow on a tiny config, run for real (seconds, not minutes)."""
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from browser import assert_verdict_first, chromium_page
from workflow_helpers import ROOT, assert_reduce_equals_whole_table, copy_workflow, run_config, snakemake

from cambench.data import generate_shapes
from cambench.engine import FLAG_CONSTANT, FLAG_NONFINITE
from cambench.metrics import METRICS, metrics
from cambench.store import read_heatmaps

pytestmark = pytest.mark.workflow
ALL_METRICS = metrics()
# Metrics that exist only where a clean reference exists, or only for channel-weight methods.
NEEDS_REFERENCE = {m for m in ALL_METRICS if "reference" in METRICS.get(m).meta.get("needs", ())}
# A user's class folder named like markup: the report must show it as text, never run it.
HOSTILE_CLASS = 'ring<img src=x onerror="window.__pwned=1">&amp;'
WEIGHT_METHODS = {"gradcam", "gradcampp", "xgradcam", "ablationcam", "score_tc", "sycam"}  # sum_k w_k A^k

TINY = {
    "seed": 1,
    "device": "cpu",
    "datasets": {
        "tiny": {"standin": {"kind": "shapes", "counts": {"train": 24, "test": 4},
                             "classes": ["disk", "cross", "square"], "image_size": 32, "clutter": 3}},
        "byo": {"root": "mydata"},  # the user's own class-folder set, no masks
    },
    "models": {
        "tiny_cnn": {"dataset": "tiny", "params": {"widths": [4, 8, 8, 8]}, "target_layer": "features.block4",
                     "train": {"epochs": 2, "batch_size": 16}},
        "byo_cnn": {"dataset": "byo", "params": {"widths": [4, 8, 8, 8]}, "train": {"epochs": 1}},
    },
    "cam": {"methods": {"gradcam": {}, "gradcampp": {}, "xgradcam": {}, "ablationcam": {},
                        "score_tc": {"method": "scorecam", "variant": "torchcam"}, "sycam": {"expression": "search"}},
            "sycam": {"images": 8, "metric": "deletion_auc", "metric_params": {"steps": 4}, "max_size": 2,
                      "terminals": ["gradcam", "act_mean"]},
            "batch_size": 5},
    "perturbations": {"gaussian": [0.3], "pgd": {"levels": [8], "params": {"steps": 2}}},
    "metrics": {"compute": {**{name: {} for name in ALL_METRICS},
                            "deletion_auc": {"steps": 8}, "insertion_auc": {"steps": 8},
                            "road_morf": {"percentiles": [30, 70]}, "road_lerf": {"percentiles": [30, 70]},
                            "road_combined": {"percentiles": [30, 70]}, "max_sensitivity": {"samples": 1},
                            "pointing_game": {"tolerance_px": 2}, "consistency": {"similarity": "ssim"}}},
    "stats": {"bootstrap": 100},
    "report": {"gallery_images": 3},
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("workflow")
    copy_workflow(work)
    generate_shapes(work / "mydata", work / "unused_masks", {"train": 10, "test": 3}, classes=["ring", "diamond"],
                    image_size=32, seed=5)
    for split in ("train", "test"):
        (work / "mydata" / split / "ring").rename(work / "mydata" / split / HOSTILE_CLASS)
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    snakemake(work, "--cores", "2", "--configfile", "tiny.yaml")
    return work


def test_sycam_search_feeds_the_heatmap_jobs(workdir):
    """The searched expression is a parseable text file whose method runs under its label."""
    from cambench.sycam import format_expression, read_expression
    for model in ("tiny/tiny_cnn", "byo/byo_cnn"):
        expression = read_expression(workdir / f"results/{model}/sycam/expression.txt")
        table = pd.read_csv(workdir / f"results/{model}/sycam/search.csv")
        assert table.loc[table["best"], "expression"].tolist() == [format_expression(expression)]
        with h5py.File(workdir / f"results/{model}/heatmaps/none~0.h5") as f:
            assert {"sycam", "score_tc", "ablationcam"} <= set(f["flags"])
            params = json.loads(f["raw/score_tc"].attrs["params"])
            assert params == {"method": "scorecam", "variant": "torchcam"}
            assert json.loads(f["raw/sycam"].attrs["params"])["expression"].startswith("file:")


def test_outputs_exist(workdir):
    for rel in ["results/metrics.csv", "results/tables/metric_summary.csv",
                "results/tables/friedman.csv", "results/tables/models.csv",
                "results/figures/distributions_faithfulness.png",
                "results/figures/rank_heatmap.png", "results/figures/critical_difference_tiny_cnn.png",
                "results/figures/robustness_curves_byo_cnn.png", "results/figures/consistency_responsiveness.png",
                "results/tiny/tiny_cnn/figures/gallery_gaussian~0.3.jpg", "results/byo/byo_cnn/heatmaps/none~0.h5"]:
        assert (workdir / rel).stat().st_size > 0, rel


def test_the_reduce_rules_give_the_numbers_of_the_whole_table(workdir):
    assert_reduce_equals_whole_table(workdir, run_config(workdir, "tiny.yaml"))


def test_metric_table_is_tidy_complete_and_finite(workdir):
    t = pd.read_parquet(workdir / "results/metrics")
    assert list(t.columns) == ["dataset", "model", "method", "perturbation", "level", "image_id", "label", "target",
                               "prediction", "label_rank", "clean_prediction", "metric", "value", "score", "params",
                               "map_flags"]
    assert np.isfinite(t["value"]).all()
    assert set(t["map_flags"].unique()) <= set(range(8))  # engine.FLAG_* bits 1, 2, 4
    tiny = t[t.model == "tiny_cnn"]
    # one row per image x method x level for deletion and pointing game (12 test images, 3 levels)
    for metric in ("deletion_auc", "pointing_game", "insertion_auc", "mprt", "max_sensitivity"):
        assert len(tiny[tiny.metric == metric]) == 12 * 3 * len(TINY["cam"]["methods"]), metric
    # every metric, for every method, on clean and perturbed images (reference metrics: perturbed only)
    for (method, perturbation), group in tiny.groupby(["method", "perturbation"]):
        expected = set(ALL_METRICS) - (NEEDS_REFERENCE if perturbation == "none" else set())
        if method not in WEIGHT_METHODS:  # no channel weights: the sensitivity axiom cannot apply
            expected -= {"sensitivity_residual", "sensitivity_correlation"}
        got = set(group.metric)
        # responsiveness exists only where a prediction flipped; consistency only where one did not
        assert expected - got <= {"responsiveness", "consistency"}, (method, perturbation, expected - got)
    assert set(tiny.perturbation) == {"none", "gaussian", "pgd"}
    assert set(tiny[tiny.metric == "consistency"].perturbation) <= {"gaussian", "pgd"}
    assert set(tiny[tiny.metric.isin(["responsiveness", "consistency"])].perturbation) == {"gaussian", "pgd"}
    assert set(tiny[tiny.metric == "sensitivity_residual"].method) == WEIGHT_METHODS
    assert (tiny[tiny.metric == "conservation_residual"].score == "logit").all()
    flips = tiny[(tiny.metric == "flip_rate")]
    assert (flips.value == (flips.prediction != flips.clean_prediction)).all()
    assert (tiny[tiny.metric == "deletion_auc"].score == "prob").all()
    # byo has no masks: localisation is absent by design, not NaN
    byo = t[t.model == "byo_cnn"]
    assert "pointing_game" not in set(byo.metric) and "deletion_auc" in set(byo.metric)
    # consistency rows only where the prediction did not change
    clean = tiny[(tiny.perturbation == "none") & (tiny.metric == "deletion_auc")].set_index(["method", "image_id"])
    cons = tiny[tiny.metric == "consistency"]
    clean_predictions = clean.loc[list(zip(cons.method, cons.image_id)), "prediction"].to_numpy()
    assert (cons.prediction.to_numpy() == clean_predictions).all()
    assert json.loads(tiny[tiny.metric == "pointing_game"].params.iloc[0]) == {"tolerance_px": 2}


def test_identical_maps_get_identical_metric_values(workdir):
    """Behind tiny_cnn's GAP + linear head Grad-CAM and XGrad-CAM give the same maps (docs/reliability.md §2.1),
    so every map-driven metric must agree per image (a cache keyed by id() once broke this for ROAD)."""
    table = pd.read_parquet(workdir / "results/metrics")
    table = table[(table.model == "tiny_cnn") & table.metric.isin(
        ["road_morf", "road_lerf", "road_combined", "deletion_auc", "insertion_auc", "average_drop"])]
    wide = table.pivot_table(index=["perturbation", "level", "metric", "image_id"], columns="method", values="value")
    assert len(wide) > 0
    np.testing.assert_allclose(wide["gradcam"], wide["xgradcam"], atol=2e-3)


def test_heatmap_file_layout_and_provenance(workdir):
    with h5py.File(workdir / "results/tiny/tiny_cnn/heatmaps/gaussian~0.3/shard-0000.h5") as f:
        d = f["raw/gradcam"]  # the shard file holds the data (one shard at this size)
        assert d.chunks == (12, 8, 8) and d.compression == "gzip"  # several images per chunk
        assert "heatmaps" not in f and f.attrs["store"] == "feature"  # cam.store: maps rebuilt on read
    with h5py.File(workdir / "results/tiny/tiny_cnn/heatmaps/gaussian~0.3.h5") as f:
        assert sorted(f["flags"]) == sorted(TINY["cam"]["methods"])
        d = f["raw/gradcam"]
        assert d.shape == (12, 8, 8) and d.dtype == np.float32 and d.is_virtual
        assert (d.attrs["rebuild"], d.attrs["scaling"], d.attrs["dtype"]) == ("postprocess", "minmax", "float16")
        flags = f["flags/gradcam"][:]  # the counts are the shards' counts of the flagged maps
        assert d.attrs["n_constant"] == np.count_nonzero(flags & FLAG_CONSTANT)
        assert d.attrs["n_nonfinite"] == np.count_nonzero(flags & FLAG_NONFINITE) == 0
        assert json.loads(f.attrs["rows"]) == [0, 12]
        assert json.loads(d.attrs["params"]) == {}
        maps = read_heatmaps(f.filename, ["gradcam"]).maps["gradcam"]
        assert maps.shape == (12, 32, 32) and maps.min() >= 0 and maps.max() <= 1 and np.isfinite(maps).all()
        assert f.attrs["perturbation"] == "gaussian" and f.attrs["level"] == 0.3
        prov = json.loads(f.attrs["provenance"])
        assert set(prov) >= {"config_hash", "git_commit", "packages", "device", "seed", "inputs"}
        assert prov["device"].startswith("cpu") and prov["seed"] == 1
        assert all(len(v) == 64 for v in prov["inputs"].values())  # sha256 of dataset and model


def test_perturbed_heatmaps_are_reproducible(workdir, tmp_path):
    """Re-running a heatmap job gives identical array data (deterministic noise and CAMs on CPU)."""
    target = "results/tiny/tiny_cnn/heatmaps/gaussian~0.3.h5"
    before = read_heatmaps(workdir / target, raw=True)
    (workdir / target).unlink()
    (workdir / "results/tiny/tiny_cnn/heatmaps/gaussian~0.3/shard-0000.h5").unlink()
    snakemake(workdir, target, "--cores", "2", "--configfile", "tiny.yaml")  # only the shard job and its join
    after = read_heatmaps(workdir / target, raw=True)
    for m, arr in before.maps.items():
        assert np.array_equal(after.maps[m], arr) and np.array_equal(after.raw[m], before.raw[m]), m


def test_summary_and_statistics(workdir):
    s = pd.read_csv(workdir / "results/tables/metric_summary.csv")
    pg = s[(s.metric == "pointing_game")]
    assert (pg["aggregate"] == "class_mean").all()
    assert (pg.ci_low <= pg["mean"]).all() and (pg["mean"] <= pg.ci_high).all()
    f = pd.read_csv(workdir / "results/tables/friedman.csv")
    assert set(f.test) == {"friedman"}
    # MPRT leaves out images whose original or randomised map is constant (no similarity), so a method
    # can lose every image of a block there; every other metric has every method in every block
    mprt = f.metric == "mprt"
    assert (f.k[~mprt] == len(TINY["cam"]["methods"])).all() and (f.k[mprt] <= len(TINY["cam"]["methods"])).all()
    assert ((f.effect_size.dropna() >= 0) & (f.effect_size.dropna() <= 1)).all()


def test_report_and_nothing_left_to_do(workdir):
    snakemake(workdir, "--configfile", "tiny.yaml", "--report", "results/report.html")
    html = (workdir / "results/report.html").read_text(errors="replace")
    assert "metric_summary.csv" in html and "gallery_none~0.jpg" in html
    dry = snakemake(workdir, "-n", "--configfile", "tiny.yaml")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_report_opens_in_chromium_without_errors(workdir):
    """The self-contained report renders in a real browser: no console error, no uncaught exception,
    no failed request (it works offline), every category opens, the provenance page shows in the
    report's viewer, and user text (a class folder named like markup) stays text."""
    report = workdir / "results/report.html"
    if not report.exists():
        snakemake(workdir, "--configfile", "tiny.yaml", "--report", "results/report.html")
    with chromium_page() as page:
        def open_category(name):
            page.goto(report.as_uri())
            page.wait_for_load_state("networkidle")
            page.get_by_text(name, exact=True).first.click()
            page.wait_for_timeout(200)

        page.goto(report.as_uri())
        page.wait_for_load_state("networkidle")
        assert "cambench compared the CAM methods" in page.inner_text("body")
        assert_verdict_first(page, report.as_uri())
        for category, entry in [("Statistical tests", "Tables: across methods"), ("Heatmaps", "tiny_cnn"),
                                ("Tables", "metric summary (means, 95 % CIs)"), ("Robustness", "Severity curves"),
                                ("Provenance", "lineage of every output")]:
            open_category(category)
            assert entry in page.inner_text("body"), category
        open_category("Provenance")  # one subcategory: its entries are listed at once
        page.locator("tr", has_text="provenance: commit, config").locator("a[iconname=eye]").click()
        page.wait_for_timeout(1000)
        viewer = [f for f in page.frames if f.url.startswith("data:text/html")]
        assert len(viewer) == 1
        text = viewer[0].inner_text("body")
        assert "Provenance of this run" in text and HOSTILE_CLASS in text and "train_model" in text
        assert viewer[0].locator('img[src="x"]').count() == 0
        assert all(f.evaluate("window.__pwned") is None for f in page.frames)
        assert page.problems == [], page.problems


@pytest.mark.parametrize("section,change,key", [
    ("cam", {"batch_size": "many"}, "config key 'cam.batch_size'"),
    ("cam", {"methods": {"scorecamm": {}}}, "config key 'cam.methods.scorecamm': unknown method"),
    ("datasets", {"shapes": {"root": "does/not/exist"}}, "config key 'datasets.shapes.root': folder not found"),
    ("report", {"curve_metrics": ["pointing_gaem"]}, "config key 'report.curve_metrics': unknown metric(s)"),
    ("datasets", {"../evil": {"standin": {"kind": "shapes"}}}, "config key 'datasets': name '../evil' is not allowed"),
])
def test_bad_config_stops_before_any_job(tmp_path, section, change, key):
    copy_workflow(tmp_path)
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config[section].update(change)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path, "--cores", "1", "--configfile", "bad.yaml", check=False)
    assert run.returncode != 0
    assert key in run.stdout + run.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


@pytest.mark.parametrize("text,message", [
    ("seed: [1\n", "Config file is not valid JSON or YAML"),
    ("- 1\n- 2\n", "Config file must be given as JSON or YAML with keys at top level"),
])
def test_unreadable_config_file_stops_before_any_job(tmp_path, text, message):
    copy_workflow(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    run = snakemake(tmp_path, "--cores", "1", "--configfile", "bad.yaml", check=False)
    assert run.returncode != 0 and message in run.stdout + run.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_lint_is_clean():
    run = snakemake(ROOT, "--lint", check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "Lints for" not in out, out


def test_stored_perturbed_images_give_the_same_heatmaps(workdir):
    """Runs last (it changes the heatmap jobs' inputs). store_perturbed: true writes the PGD images once and the
    heatmap job reads them: same maps."""
    target = "results/tiny/tiny_cnn/heatmaps/pgd~8.h5"
    before = read_heatmaps(workdir / target).maps
    (workdir / "tiny_store.yaml").write_text(yaml.safe_dump({**TINY, "store_perturbed": True}))
    snakemake(workdir, "--cores", "2", "--configfile", "tiny_store.yaml", "--forcerun", "heatmaps", "--until", target)
    stored = workdir / "results/tiny/tiny_cnn/perturbed/pgd~8/shard-0000.h5"
    with h5py.File(stored) as f:
        assert f["images"].shape == (12, 3, 32, 32) and f.attrs["perturbation"] == "pgd"
        assert json.loads(f.attrs["params"]) == {"steps": 2}
        assert 0 <= f["images"][:].min() and f["images"][:].max() <= 1
    after = read_heatmaps(workdir / target).maps
    for m, arr in before.items():
        assert np.array_equal(after[m], arr), m
    with h5py.File(workdir / target) as f:
        assert str(stored.relative_to(workdir)) in json.loads(f.attrs["provenance"])["inputs"]
