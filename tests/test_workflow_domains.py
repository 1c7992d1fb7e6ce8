"""config/domains.yaml, shrunk to seconds, run for real through Snakemake: every format's stand-in
(3D CT included) through heatmaps, metrics and the report. Also: a dataset pointed at a real-layout
root outside resources/ runs with no code change, and a broken root stops before any job."""
import copy
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_helpers import ROOT, assert_reduce_equals_whole_table, copy_workflow, run_config, snakemake

from cambench.data import generate_standin
from cambench.store import read_heatmaps

DOMAINS = yaml.safe_load((ROOT / "config" / "domains.yaml").read_text())

pytestmark = pytest.mark.workflow

# Per dataset of domains.yaml: (counts, generator params, reader options) at test scale.
SMALL = {
    "cifar10": ({"train": 4, "test": 2}, {}, {}),
    "cifake": ({"train": 8, "test": 3}, {}, {}),
    "mosmed": ({"studies": 5}, {"shape": [12, 24, 24], "spacing": [2.5, 1.0, 1.0], "lesion_radius": [2.0, 3.0]},
               {"grid": [8, 16, 16], "test_fraction": 0.4}),
    "ct_dicom": ({"series": 4}, {"shape": [12, 24, 24], "spacing": [2.5, 1.0, 1.0], "lesion_radius": [2.0, 3.0]},
                 {"grid": [8, 16, 16], "test_fraction": 0.5}),
    "brats": ({"cases": 4}, {"shape": [24, 24, 8], "tumour_radius": [2.5, 4.0]}, {"test_fraction": 0.5}),
    "street": ({"images": 6}, {"image_size": 32}, {"test_fraction": 0.5}),
    "shapes": ({"train": 6, "test": 2}, {}, {}),
}


def small_domains() -> dict:
    cfg = copy.deepcopy(DOMAINS)
    assert set(SMALL) == set(cfg["datasets"]), "keep SMALL in step with config/domains.yaml"
    cfg["device"] = "cpu"
    for name, (counts, params, options) in SMALL.items():
        ds = cfg["datasets"][name]
        ds["standin"]["counts"] = counts
        if params:
            ds["standin"]["params"] = {**ds["standin"].get("params", {}), **params}
        if ds["standin"]["kind"] == "shapes":
            ds["standin"]["image_size"] = 32
        ds["options"] = {**ds.get("options", {}), **options}
    for model in cfg["models"].values():
        model["train"].update(epochs=1, min_test_accuracy=0.0)
        if "aggregator_epochs" in model["train"]:
            model["train"]["aggregator_epochs"] = 1
        if model["architecture"] in ("small_cnn", "multi_exit_cnn"):
            model.setdefault("params", {})["widths"] = [4, 8, 8, 8]
    cfg["perturbations"] = {"gaussian": [0.1]}
    cfg["metrics"]["compute"]["deletion_auc"]["steps"] = 4
    cfg["stats"]["bootstrap"] = 100
    cfg["report"]["gallery_images"] = 2
    return cfg


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    work = tmp_path_factory.mktemp("domains")
    copy_workflow(work)
    cfg = small_domains()
    (work / "small.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(work, "--cores", "2", "--configfile", "small.yaml")
    return work, cfg


def test_every_domain_runs_through_heatmaps_and_metrics(domains):
    work, cfg = domains
    table = pd.read_parquet(work / "results/metrics")
    assert set(table.model) == set(cfg["models"])
    assert np.isfinite(table.value).all()
    for model, spec in cfg["models"].items():
        rows = table[table.model == model]
        assert set(rows.perturbation) == {"none", "gaussian"}, model
        assert "deletion_auc" in set(rows.metric), model
        # consistency applies to the noisy images whose prediction the noise left unchanged
        noisy = rows[rows.perturbation == "gaussian"]
        if (noisy.prediction == noisy.clean_prediction).any():
            assert "consistency" in set(noisy.metric), model
        assert "consistency" not in set(rows[rows.perturbation == "none"].metric), model
    models = pd.read_csv(work / "results/tables/models.csv")
    assert set(models.model) == set(cfg["models"])


def test_ct_heatmaps_are_volumes(domains):
    work, cfg = domains
    grid = cfg["datasets"]["mosmed"]["options"]["grid"]
    for dataset, model in (("mosmed", "mosmed_cnn3d"), ("ct_dicom", "dicom_cnn3d")):
        hm = read_heatmaps(work / f"results/{dataset}/{model}/heatmaps/none~0.h5", rows=[0])
        assert hm.maps["gradcam"].shape[1:] == tuple(grid)  # rebuilt from /raw by trilinear up-sampling
        assert "cam" in hm.maps  # GAP + linear: plain CAM in 3D
        with h5py.File(work / f"results/{dataset}/dataset.h5") as f:
            assert f["images"].shape[1:] == (1, *grid) and f.attrs["format"] == ("mosmed" if dataset == "mosmed"
                                                                                   else "dicom_ct")


def test_the_reduce_rules_give_the_numbers_of_the_whole_table(domains):
    work, _ = domains
    assert_reduce_equals_whole_table(work, run_config(work, "small.yaml"))


def test_localisation_ground_truth_reaches_the_metrics(domains):
    work, _ = domains
    table = pd.read_parquet(work / "results/metrics")
    pointing = table[table.metric == "pointing_game"]
    # Stand-ins with object masks on their evaluation images yield pointing-game rows.
    assert {"brats_ame", "shapes_cnn", "cifar_cnn"} <= set(pointing.model)
    # Images without a planted object (REAL CIFAKE, non-hotspot streets) have empty masks: no row, not NaN.
    cifake = pointing[pointing.model == "cifake_cnn"]
    assert set(cifake.image_id.str.split("/").str[1]) == {"FAKE"}
    street = pointing[pointing.model == "street_attention"]
    assert set(street.image_id.str.split("/").str[1]) == {"hotspot"}


def test_report_builds_with_every_domain(domains):
    work, _ = domains
    snakemake(work, "--configfile", "small.yaml", "--report", "results/report.html")
    html = (work / "results/report.html").read_text(errors="replace")
    for model in ("mosmed_cnn3d", "street_attention", "brats_ame", "cifake_cnn"):
        assert model in html


def test_a_real_layout_root_runs_with_no_code_change(tmp_path):
    """The same reader on files outside resources/: the config names format + root, nothing else."""
    copy_workflow(tmp_path)
    generate_standin("brats", tmp_path / "external", counts={"cases": 4}, seed=2,
                     shape=[24, 24, 8], tumour_radius=[2.5, 4.0])
    shutil.move(tmp_path / "external" / "data", tmp_path / "BraTS2021_Training_Data")
    cfg = {"device": "cpu",
           "datasets": {"mri": {"format": "brats", "root": "BraTS2021_Training_Data",
                                "options": {"modalities": ["flair", "t1ce"], "test_fraction": 0.5}}},
           "models": {"mri_cnn": {"dataset": "mri", "params": {"widths": [4, 8, 8, 8]}, "train": {"epochs": 1}}},
           "cam": {"methods": {"gradcam": {}}}, "perturbations": {},
           "metrics": {"compute": {"deletion_auc": {"steps": 4}, "pointing_game": {"tolerance_px": 2}}},
           "stats": {"bootstrap": 100}, "report": {"gallery_images": 2}}
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "--cores", "2", "--configfile", "real.yaml")
    with h5py.File(tmp_path / "results/mri/dataset.h5") as f:
        assert f["images"].shape[1] == 2  # two modalities = two channels
        assert f.attrs["source_root"] == "BraTS2021_Training_Data"
    table = pd.read_parquet(tmp_path / "results/metrics")
    assert {"deletion_auc", "pointing_game"} <= set(table.metric)

    # Break the layout: the run stops before any job, naming the missing file and the layout.
    victim = next((tmp_path / "BraTS2021_Training_Data").glob("*/*_t1ce.nii.gz"))
    victim.unlink()
    shutil.rmtree(tmp_path / "results")
    run = snakemake(tmp_path, "--cores", "2", "--configfile", "real.yaml", check=False)
    assert run.returncode != 0
    message = run.stdout + run.stderr
    assert "config key 'datasets.mri.root'" in message and victim.name in message and "layout" in message
    assert not (tmp_path / "results").exists()
