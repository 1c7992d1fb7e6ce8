"""Jobs as typed objects (cambench.jobs; docs/design.md §4): each rule builds one `job` param from the
config and the wildcards, its script turns it into a frozen dataclass, and a wrong or missing key is
named."""
import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from cambench.config import validate_config
from cambench.jobs import HeatmapJob, MetricJob, TrainingJob, job_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                          ROOT / "config" / "schema.yaml", ROOT)


@pytest.fixture
def config():
    """The default config, validated (defaults filled in), with a distinct value in every setting a
    job reads: a field that read the wrong key would show."""
    cfg = copy.deepcopy(DEFAULT)
    cfg["seed"], cfg["device"] = 7, "cpu"
    cfg["cam"].update(split="val", class_source="gt", batch_size=3, dtype="float32", memory_mb=11.0, store="input")
    cfg["metrics"].update(compute={"sparseness": {}}, score="logit", memory_mb=13.0)
    cfg["models"]["shapes_cnn"].update(target_layer="features.block2", weights="w.pt", weights_exclude=["net.fc"],
                                       params={"widths": [4, 4, 4, 4]})
    return cfg


WILDCARDS = dict(dataset="shapes", model="shapes_cnn", perturbation="gaussian", level=0.1)


def test_heatmap_job_from_the_config_and_the_wildcards(config):
    params = job_params(HeatmapJob, config, **WILDCARDS, shard=[0, 80], methods={"gradcam": {}},
                        perturbation_params={})
    job = HeatmapJob.from_params(params)
    assert job == HeatmapJob(dataset="shapes", model="shapes_cnn", perturbation="gaussian", level=0.1, shard=[0, 80],
                             methods={"gradcam": {}}, perturbation_params={}, target_layer="features.block2",
                             split="val", class_source="gt", batch_size=3, dtype="float32", seed=7, device="cpu",
                             memory_mb=11.0, store="input")


def test_metric_job_reads_the_metric_settings_not_the_cam_ones(config):
    job = MetricJob.from_params(job_params(MetricJob, config, **WILDCARDS, shard=[80, 160],
                                           perturbation_params={"a": 1}))
    assert job == MetricJob(dataset="shapes", model="shapes_cnn", perturbation="gaussian", level=0.1, shard=[80, 160],
                            perturbation_params={"a": 1}, metrics={"sparseness": {}}, score="logit", memory_mb=13.0,
                            split="val", batch_size=3, seed=7, device="cpu")


def test_training_job_reads_its_model_block(config):
    job = TrainingJob.from_params(job_params(TrainingJob, config, model="shapes_cnn", dataset="shapes"))
    spec = config["models"]["shapes_cnn"]
    assert job == TrainingJob(model="shapes_cnn", dataset="shapes", architecture=spec["architecture"],
                              params={"widths": [4, 4, 4, 4]}, train=spec["train"], weights="w.pt",
                              weights_exclude=["net.fc"], eval_split="val", seed=7, device="cpu")


def test_per_job_values_win_over_the_config(config):
    params = job_params(HeatmapJob, config, **WILDCARDS, methods={}, target_layer="layer4")
    assert params["target_layer"] == "layer4" and params["dtype"] == "float32"


@pytest.mark.parametrize("job_class", [HeatmapJob, MetricJob, TrainingJob])
def test_every_config_setting_of_every_model_is_in_the_default_config(job_class):
    """The default config (schema defaults filled in) holds every setting each job reads, for each model."""
    for model, spec in DEFAULT["models"].items():
        params = job_params(job_class, DEFAULT, model=model, dataset=spec["dataset"])
        read = {f.name for f in dataclasses.fields(job_class) if "config" in f.metadata}
        assert read <= set(params), (model, read - set(params))


def test_defaults_of_the_settings_the_params_leave_out():
    job = HeatmapJob.from_params({"perturbation": "none", "level": 0.0, "methods": {}, "split": "test",
                                  "class_source": "pred", "batch_size": 4, "dtype": "float16", "seed": 0})
    assert (job.device, job.memory_mb, job.store, job.target_layer, job.shard) == ("auto", 1024.0, "feature", "", None)
    assert (job.dataset, job.model, job.perturbation_params) == ("", "", {})
    metric = MetricJob.from_params({"dataset": "d", "model": "m", "perturbation": "none", "level": 0.0,
                                    "metrics": {}, "score": "prob", "memory_mb": 64, "split": "test", "seed": 0})
    assert (metric.batch_size, metric.device, metric.shard, metric.perturbation_params) == (64, "auto", None, {})
    training = TrainingJob.from_params({"architecture": "small_cnn", "params": {}, "train": {}, "seed": 0})
    assert (training.weights, tuple(training.weights_exclude), training.eval_split, training.device) == \
        ("", (), "test", "auto")


def test_a_config_key_that_is_absent_leaves_the_default(config):
    del config["cam"]["store"]
    assert "store" not in job_params(HeatmapJob, config, **WILDCARDS, methods={})
    del config["cam"]["dtype"]
    with pytest.raises(ValueError, match=r"^HeatmapJob: missing setting\(s\) 'dtype' \(config: cam\.dtype\)$"):
        HeatmapJob.from_params(job_params(HeatmapJob, config, **WILDCARDS, methods={}))


def test_an_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"^MetricJob: unknown setting\(s\) 'dtpye' \(known: dataset, model, "):
        MetricJob.from_params({"dataset": "d", "model": "m", "perturbation": "none", "level": 0.0, "metrics": {},
                               "score": "prob", "memory_mb": 64, "split": "test", "seed": 0, "dtpye": "float16"})


def test_missing_keys_are_named_with_their_config_key():
    with pytest.raises(ValueError, match=r"^TrainingJob: missing setting\(s\) 'train' \(config: models\.\{model\}"
                                         r"\.train\), 'seed' \(config: seed\)$"):
        TrainingJob.from_params({"architecture": "small_cnn", "params": {}})
    with pytest.raises(ValueError, match=r"^MetricJob: missing setting\(s\) 'dataset', 'model'$"):
        MetricJob.from_params({"perturbation": "none", "level": 0.0, "metrics": {}, "score": "prob", "memory_mb": 64,
                               "split": "test", "seed": 0})


def test_a_model_setting_needs_the_model(config):
    with pytest.raises(ValueError, match=r"TrainingJob\.architecture is read from models\.\{model\}\.architecture: "
                                         r"give model=\.\.\. to job_params"):
        job_params(TrainingJob, config, dataset="shapes")


def test_a_job_is_frozen():
    job = TrainingJob(architecture="small_cnn", params={}, train={}, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.seed = 1
