"""Attributes of input files are data, never code; determinism is switched on in every job; GPU
jobs take distinct devices.

The other security cases live beside the code they guard (docs/reliability.md §5):
the CIFAR restricted unpickler (test_data_cifar.py), weights_only checkpoints (test_models.py,
test_models_zoo.py), names that would become paths (test_config.py), HTML escaping (test_report.py
and the Chromium test in test_workflow.py)."""
import os
import subprocess
import sys

import h5py
import pytest
import torch

from cambench.data import generate_shapes, prepare, read_dataset
from cambench.jobs import HeatmapJob, MetricJob
from cambench.models import build_model, save_checkpoint
from cambench.pipeline import compute_heatmaps, compute_metrics
from cambench.provenance import dataset_summary, embedded_provenance
from cambench.scripting import claim_gpu, set_deterministic


def payload(marker):
    return f"__import__('os').system('touch {marker}')"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    work = tmp_path_factory.mktemp("attrs")
    generate_shapes(work / "data", work / "masks", {"train": 2, "test": 1}, classes=["disk", "cross"], image_size=16,
                    clutter=0, seed=0)
    prepare("imagefolder", work / "data", work / "ds.h5", mask_root=work / "masks")
    torch.manual_seed(0)
    params = {"widths": [4, 4, 4, 4], "n_classes": 2}
    save_checkpoint(work / "m.pt", build_model("small_cnn", **params), "small_cnn", params)
    compute_heatmaps(work / "ds.h5", work / "m.pt", work / "hm.h5", HeatmapJob(
        perturbation="none", level=0.0, methods={"gradcam": {}}, target_layer="features.block4", split="test",
        class_source="pred", batch_size=2, dtype="float16", seed=0, device="cpu"))
    return work


def _tamper(path, key, value, tmp_path):
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    with h5py.File(copy, "a") as f:
        f.attrs[key] = value
    return copy


def test_dataset_attribute_is_not_evaluated(files, tmp_path):
    marker = tmp_path / "pwned"
    bad = _tamper(files / "ds.h5", "class_names", payload(marker), tmp_path)
    with pytest.raises(ValueError, match=r"ds.h5: attribute 'class_names' is not a JSON list \(got \"__import__"):
        read_dataset(bad)
    assert dataset_summary(bad) is None
    assert not marker.exists()


def test_heatmap_attribute_is_not_evaluated(files, tmp_path):
    marker = tmp_path / "pwned"
    bad = _tamper(files / "hm.h5", "methods", payload(marker), tmp_path)
    with pytest.raises(ValueError, match=r"hm.h5: attribute 'methods' is not a JSON dict .*not written by cambench"):
        compute_metrics(files / "ds.h5", files / "m.pt", bad, bad, tmp_path / "out.parquet", MetricJob(
            metrics={"sparseness": {}}, score="prob", memory_mb=64, perturbation="none", level=0.0,
            split="test", seed=0, dataset="d", model="m", device="cpu"))
    assert not (tmp_path / "out.parquet").exists() and not marker.exists()


@pytest.mark.parametrize("value", ["{'a': 1}", "!!python/object/apply:os.system ['touch X']", "[1, 2]"])
def test_provenance_attribute_that_is_no_json_object_is_ignored(files, tmp_path, value):
    marker = tmp_path / "pwned"
    bad = _tamper(files / "hm.h5", "provenance", value.replace("X", str(marker)), tmp_path)
    assert embedded_provenance(bad) is None
    assert embedded_provenance(files / "hm.h5")["seed"] == 0
    assert not marker.exists()


def test_jobs_run_with_deterministic_kernels(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
        torch.backends.cudnn.deterministic = False


def test_deterministic_kernels_are_set_without_loading_the_compiler():
    # torch.use_deterministic_algorithms imports inductor's config (and with it the compiler
    # stack, 1.6 s of a 4 s job); the kernel flag must be set without it, in a fresh process.
    code = ("import sys, torch; from cambench.scripting import set_deterministic; set_deterministic(True); "
            "print(torch.are_deterministic_algorithms_enabled(), "
            "torch.is_deterministic_algorithms_warn_only_enabled(), "
            "'torch._inductor.config' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"]


def test_a_loaded_compiler_gets_the_deterministic_flag_too():
    import torch._inductor.config as inductor_config
    before = (torch.are_deterministic_algorithms_enabled(), inductor_config.deterministic,
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        set_deterministic(True)
        assert inductor_config.deterministic and torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0])
        (inductor_config.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) = before[1:]


def _claim_in_another_process(lock_dir, devices):
    """A job holding a GPU: a child process that claims one and waits."""
    code = ("import os, sys, time; from cambench.scripting import claim_gpu; "
            f"print(claim_gpu({{'CUDA_VISIBLE_DEVICES': {devices!r}}}, {str(lock_dir)!r}), flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return child, child.stdout.readline().strip()


def test_gpu_jobs_take_distinct_visible_devices_and_a_kill_frees_one(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "3,5"}
    first, device = _claim_in_another_process(tmp_path, "3,5")
    try:
        assert device == "3"
        assert claim_gpu(env, tmp_path) == "5" and env["CUDA_VISIBLE_DEVICES"] == "5"
        first.kill()
        first.wait()
        assert claim_gpu({"CUDA_VISIBLE_DEVICES": "3,5"}, tmp_path) == "3"  # the killed job's GPU is free again
        # More jobs than GPUs: the extra one shares the first device rather than failing.
        assert claim_gpu({"CUDA_VISIBLE_DEVICES": "3,5"}, tmp_path) == "3"
    finally:
        first.kill()
        first.wait()
    assert claim_gpu({"CUDA_VISIBLE_DEVICES": "7"}, tmp_path) == "7" and claim_gpu({}, tmp_path) is None
