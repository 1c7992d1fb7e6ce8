"""The cost plan (cambench.plan): model passes per method and metric against counted FLOPs and hand
counts, the shipped configs, time and disk figures, `snakemake plan`, and the jobs' progress lines."""
import contextlib
import copy
import logging
import re
import types
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from workflow_helpers import ROOT, copy_workflow, snakemake

from cambench import pipeline, plan
from cambench.config import validate_config
from cambench.data import write_standin
from cambench.engine import METHODS, explain_many, method_of
from cambench.inference import inference_copy
from cambench.jobs import HeatmapJob, MetricJob
from cambench.metrics import METRICS, evaluate
from cambench.models import build_model, save_checkpoint
from cambench.scripting import logged

FORWARD_OPS = {torch.ops.aten.convolution, torch.ops.aten._convolution, torch.ops.aten.addmm}
BACKWARD_OPS = {torch.ops.aten.convolution_backward, torch.ops.aten.mm}
ONE_SECOND = plan.Calibration("test", 1, 1, 1, forward_s=1.0, backward_s=2.0, head_s=0.5)


class FlopCount(TorchDispatchMode):
    """FLOPs of forward (convolution, addmm) and backward (their gradients) ops, counted apart."""

    def __init__(self):
        super().__init__()
        self.forward = self.backward = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in FORWARD_OPS | BACKWARD_OPS:
            flops = flop_registry[packet](*args, **kwargs, out_val=out)
            if packet in FORWARD_OPS:
                self.forward += flops
            else:
                self.backward += flops
        return out


def forward_equivalents(model, images, fn) -> tuple[float, float]:
    """(forward, backward) FLOPs of ``fn()`` per image, in forwards of one image."""
    with torch.no_grad(), FlopCount() as one:
        model(images[:1])
    with FlopCount() as counted:
        fn()
    n = images.shape[0]
    return counted.forward / one.forward / n, counted.backward / one.forward / n


def small_cnn(width=8, classes=4):
    torch.manual_seed(0)
    return build_model("small_cnn", n_classes=classes, widths=[width] * 4).eval()


LAYER = "features.block4"


def test_every_method_and_model_metric_declares_its_cost():
    layer = {"channels": 8, "classes": 4}
    for name in METHODS.names():
        assert "cost" in METHODS.get(name).meta, name
    for name in METRICS.names():
        if "model" in METRICS.get(name).meta.get("needs", ()):
            plan.metric_work(name, {}, layer)  # raises where the registration declares no cost


@pytest.mark.parametrize("method, params", [("scorecam", {}), ("gradcam", {}), ("ablationcam", {}),
                                            ("metacam", {"components": ["gradcam", "scorecam"], "k_grid": [10, 50],
                                                         "metric_params": {"percentiles": [50]}})])
def test_method_forwards_match_the_counted_flops(method, params):
    """Score-CAM: 1 + K forwards per image on a K-channel layer; Grad-CAM 1 forward + 1 backward;
    Ablation-CAM K replays of the head; MetaCAM its members + 2 ROAD forwards per k of the grid."""
    model, k = small_cnn(), 8
    torch.manual_seed(2)
    images = torch.rand(16, 3, 32, 32)
    inference_copy(model, images)  # built and checked once per model: not the method's work
    capture, own = plan.heatmap_work({method: params}, {"channels": k, "classes": 4})
    planned = capture + own[method]
    info = plan.DataInfo(16, 0, (3, 32, 32), 4, False, "")
    head_fraction = plan.layer_profile({"architecture": "small_cnn", "params": {"widths": [8] * 4},
                                        "target_layer": LAYER}, info).head_fraction
    hand = {"scorecam": (1 + k, 0), "gradcam": (1, 1), "ablationcam": (1, 0), "metacam": (1 + k + 2 * 2, 1)}
    assert (planned.forward, planned.backward) == hand[method]
    forward, backward = forward_equivalents(
        model, images, lambda: explain_many(model, images, {method: params}, LAYER, batch_size=16))
    # Score-CAM scores the channels that are constant over an image with one baseline forward per
    # batch: the plan's K per image is the upper bound, reached where no channel is constant
    acts = []
    handle = model.features.block4.register_forward_hook(lambda m, i, out: acts.append(out.flatten(2)))
    with torch.no_grad():
        model(images)
    handle.remove()
    constant = int((acts[0].amax(2) == acts[0].amin(2)).sum())
    skipped = (constant - (constant > 0)) / 16 if method in ("scorecam", "metacam") else 0.0
    # Ablation-CAM's replays run the trunk on a zero image once per chunk and once to check they may:
    # per batch, not per image (2 / 16 here), and not planned
    per_batch = 2 / 16 if method == "ablationcam" else 0.0
    assert forward == pytest.approx(planned.forward + planned.head * head_fraction - skipped + per_batch, abs=0.01)
    assert (backward > 0) == (planned.backward > 0)


def test_finercam_runs_its_base_per_contrast():
    layer = {"channels": 8, "classes": 5}
    work = lambda **p: plan.method_work("finercam", p, layer)  # noqa: E731
    assert work(base="scorecam") == plan.Work(forward=8)                       # repo: one contrast target
    assert work(base="scorecam", weighting="uniform") == plan.Work(forward=24)  # one per reference class
    assert work(base="gradcam", weighting="uniform", reference_ranks=[1, 2, 3, 4, 5]) == plan.Work(backward=4)
    assert work(base="gradcam", alpha=0) == plan.Work()                        # the base on the plain target


def test_members_the_table_runs_anyway_count_once():
    """MetaCAM's components come from the batch's cache: Score-CAM in the table is not paid twice,
    Grad-CAM needs no model pass beyond the shared one, and ROAD scores 2 k values x 2 orders."""
    layer = {"channels": 8, "classes": 4}
    metacam = {"components": ["scorecam", "gradcam"], "k_grid": [10, 50], "metric_params": {"percentiles": [50]}}
    capture, own = plan.heatmap_work({"scorecam": {}, "metacam": metacam}, layer)
    assert capture == plan.Work(forward=1, backward=1)
    assert own == {"scorecam": plan.Work(forward=8), "metacam": plan.Work(forward=2 * 2)}
    _, alone = plan.heatmap_work({"scorecam": {"variant": "torchcam"}, "metacam": metacam}, layer)
    assert alone["metacam"] == plan.Work(forward=8 + 2 * 2)  # other parameters: another map


def test_declared_channel_weights_match_the_engine():
    """Which methods store channel weights (disk, the sensitivity axioms' rows), against what the engine returns."""
    model = small_cnn()
    spec = {name: {} for name in METHODS.names() if name not in ("amecam", "layercam_ms", "sycam")}
    spec.update(layercam_ms={"layers": ["features.block2"]}, sycam={"expression": "score + gradcam"},
                finer_uniform={"method": "finercam", "weighting": "uniform"},
                finer_eigen={"method": "finercam", "base": "eigengradcam"},
                score_official={"method": "scorecam", "variant": "official"})
    result = explain_many(model, torch.rand(2, 3, 32, 32), spec, LAYER)
    declared = {label for label, params in spec.items()
                if METHODS.get(method_of(label, params)[0]).declared("channel_weights", method_of(label, params)[1],
                                                                     False)}
    assert declared == set(result.weights)
    # and the resolution of each signed map (/raw): the target layer's 4 x 4, the input's, or block2's
    info = plan.DataInfo(2, 0, (3, 32, 32), 4, False, "")
    spec_model = {"architecture": "small_cnn", "params": {"widths": [8] * 4}, "target_layer": LAYER}
    profile = plan.layer_profile(spec_model, info)
    for label, params in spec.items():
        planned = plan._raw_spatial(*method_of(label, params), profile, spec_model, (32, 32))
        assert planned == tuple(result.raw[label].shape[1:]), label


def test_metric_forward_counts():
    """Deletion: steps + 1 forwards per image and method (counted); max-sensitivity: samples engine
    passes of every method, paid once for the table; ROAD's three variants share their forwards."""
    model = small_cnn()
    torch.manual_seed(3)
    images, maps = torch.rand(8, 3, 32, 32), torch.rand(8, 32, 32)
    targets = torch.zeros(8, dtype=torch.long)
    inference_copy(model, images)
    layer = {"channels": 8, "classes": 4}
    assert plan.metric_work("deletion_auc", {"steps": 5}, layer) == plan.Work(forward=6)
    forward, _ = forward_equivalents(model, images, lambda: evaluate(
        model, images, maps, "deletion_auc", targets=targets, predictions=targets, steps=5, fill=torch.full((3,), 0.5)))
    assert forward == pytest.approx(6)

    methods = {"gradcam": {}, "scorecam": {}}
    capture, own = plan.heatmap_work(methods, layer)
    explain = capture + sum(own.values(), plan.Work())
    assert explain == plan.Work(forward=1 + 8, backward=1)
    metrics = {"max_sensitivity": {"samples": 3}, "road_morf": {"percentiles": [20, 40]},
               "road_lerf": {"percentiles": [20, 40]}, "road_combined": {"percentiles": [20, 40]},
               "consistency": {}}
    full = {m: {**METRICS.get(m).parameters(), **p} for m, p in metrics.items()}
    steps = plan.metric_steps(full, list(methods), explain, layer, perturbed=True, masks=False)
    assert steps["gradcam", "max_sensitivity"] == plan.Work(forward=3 * 9, backward=3)  # every method, 3 draws
    assert steps["scorecam", "max_sensitivity"] == plan.Work()                         # computed with the first
    assert steps["scorecam", "road_morf"] == plan.Work(forward=2 * 2) and steps["scorecam", "road_lerf"] == plan.Work()
    job = plan.metric_job_work(full, list(methods), explain, layer, perturbed=True, masks=False)
    assert job["road_morf"] == plan.Work(forward=2 * 2 * 2) and job["consistency"] == plan.Work()


def tiny_config(**changes) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["datasets"]["shapes"]["standin"].update(counts={"train": 4, "test": 5}, image_size=32)
    config["models"] = {"shapes_cnn": {**config["models"]["shapes_cnn"], "train": {"epochs": 2}}}
    config["cam"]["methods"] = {"gradcam": {}, "scorecam": {}, "ablationcam": {}}
    config["metrics"]["compute"] = {"deletion_auc": {"steps": 4}, "sparseness": {}, "consistency": {}}
    config["perturbations"] = {"gaussian": [0.1, 0.2], "pgd": {"levels": [2], "params": {"steps": 5}}}
    for key, value in changes.items():
        config[key] = value
    return validate_config(config, ROOT / "config" / "schema.yaml", ROOT)


def test_levels_images_and_attacks_multiply(tmp_path):
    """Per image: heatmaps 1 + 64 (Score-CAM) forwards, 1 backward, 64 head replays per level, PGD's
    5 forward + backward steps in each job of its level; metrics 3 methods x 5 deletion forwards."""
    result = plan.make_plan(tiny_config(), tmp_path, calibrate=ONE_SECOND)
    (m,) = result.models
    assert m.data.images == 20 and m.data.train == 16 and m.data.shape == (3, 32, 32)
    assert [kind for kind, _ in m.levels] == ["none", "gaussian", "gaussian", "pgd"]
    levels, pgd = 4, plan.Work(forward=5, backward=5)
    heat = plan.Work(forward=65, backward=1, head=64)
    assert m.stages["heatmaps"] == (heat * levels + pgd) * 20
    assert m.stages["metrics"] == (plan.Work(forward=3 * 5) * levels + pgd) * 20
    assert m.stages["training"] == plan.Work(1, 1) * (2 * 16) + plan.Work(forward=16 + 20)
    assert m.maps == 20 * 3 * levels
    assert m.metric_rows == 20 * 3 * (2 * levels + (levels - 1))  # consistency on perturbed levels only
    assert m.seconds(m.stages["heatmaps"]) == pytest.approx(20 * (4 * (65 + 2 + 32) + 5 + 10))


def test_time_scales_with_the_image_count(tmp_path):
    """The model timed here (one forward, one forward + backward per image), times the work: twice
    the images, twice the heatmap and metric time."""
    counts = lambda n: tiny_config(datasets={"shapes": {"standin": {  # noqa: E731
        "kind": "shapes", "counts": {"train": 4, "test": n}, "image_size": 32}}})
    small = plan.make_plan(counts(5), tmp_path, calibrate=True, threads=1).models[0]
    timed = small.calibration
    assert timed.device == "cpu" and timed.forward_s > 0 and timed.backward_s > 0 and timed.head_s < timed.forward_s
    large = plan.make_plan(counts(10), tmp_path, calibrate=timed).models[0]
    for stage in ("heatmaps", "metrics"):
        assert large.seconds(large.stages[stage]) == pytest.approx(2 * small.seconds(small.stages[stage]))
        assert small.seconds(small.stages[stage]) == pytest.approx(
            small.stages[stage].forward * timed.forward_s + small.stages[stage].backward * timed.backward_s
            + small.stages[stage].head * timed.head_s)


def load(name: str) -> dict:
    return plan.load_config(f"config/{name}", ROOT)


def test_shipped_configs_plan_with_the_readme_counts():
    """Stand-in counts as docs/datasets.md §10 gives them (test items per data set)."""
    expected = {"config.yaml": {"shapes": 80},
                "domains.yaml": {"cifar10": 300, "cifake": 100, "mosmed": 24, "ct_dicom": 16, "brats": 136,
                                 "street": 120, "shapes": 60},
                "paper.yaml": {"shapes224": 50_000}}
    for name, images in expected.items():
        result = plan.make_plan(load(name), ROOT, calibrate=False)
        assert {d: i.images for d, i in result.datasets.items()} == images, name
        text = plan.format_plan(result)
        assert "TOTAL:" in text and f"{sum(images.values()):,} evaluation images" in text


def test_paper_config_disk_feature_versus_input_store():
    """50,000 images x 15 methods x 51 levels at 224 px: 8 channel-weight methods x 2,048 float32
    weights per image and level, and store 'input' adds a float16 224 x 224 map per map."""
    config = load("paper.yaml")
    feature = plan.make_plan(config, ROOT, calibrate=False)
    config = copy.deepcopy(config)
    config["cam"]["store"] = "input"
    stored = plan.make_plan(config, ROOT, calibrate=False)
    (m,) = feature.models
    assert (m.data.images, len(m.levels), len(m.methods), m.feature_shape) == (50_000, 51, 15, (2048, 7, 7))
    assert m.maps == 50_000 * 15 * 51
    # clean: 15 methods x 10 metrics without a reference + sensitivity_residual of the 8 channel-weight
    # methods; each of the 50 perturbed levels: 15 x 14 + 8
    assert m.metric_rows == 50_000 * (15 * 10 + 8 + 50 * (15 * 14 + 8))
    # per image and level (store.py's layout): a float32 7 x 7 /raw map + a flag byte for 14 methods,
    # MetaCAM's /raw at 224 x 224 (its consensus is built there), the weights of the 8 channel-weight methods
    per_image = 14 * (7 * 7 * 4 + 1) + (224 * 224 * 4 + 1) + 8 * 2048 * 4
    assert m.disk["heatmaps"] == 50_000 * 51 * per_image
    assert stored.models[0].disk["heatmaps"] - m.disk["heatmaps"] == 50_000 * 51 * 15 * 224 * 224 * 2
    text = plan.format_plan(stored)
    assert "WARNING: this run is large" in text and "TB" in text


def test_images_override_and_unknown_real_data(tmp_path):
    config = tiny_config()
    assert plan.make_plan(config, tmp_path, calibrate=False, images=1000).models[0].data.images == 1000
    with pytest.raises(plan.PlanError, match="not data sets"):
        plan.make_plan(config, tmp_path, calibrate=False, images={"nope": 3})


def test_real_image_folder_counts_files_and_resizes(tmp_path):
    from PIL import Image
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (60, 40)).save(tmp_path / "data" / split / cls / f"{i}.png")
    info = plan.dataset_info("mine", {"root": "data", "resize": 32, "crop": 24}, "test", 0, tmp_path)
    assert (info.images, info.train, info.shape, info.classes) == (4, 6, (3, 24, 24), 2)
    info = plan.dataset_info("mine", {"root": "data", "resize": 32}, "test", 0, tmp_path)
    assert info.shape == (3, 32, 48)  # the shorter side to 32, as torchvision's Resize(int)
    unknown = plan.dataset_info("cts", {"format": "dicom_ct", "root": "data"}, "test", 0, tmp_path)
    assert unknown.images is None and "--images cts=N" in unknown.source


def write_job_inputs(tmp_path: Path, test_per_class: int) -> tuple[Path, Path]:
    standin = {"kind": "shapes", "counts": {"train": 1, "test": test_per_class}, "image_size": 32}
    write_standin(tmp_path / "standin", standin, seed=0)
    data = tmp_path / "dataset.h5"
    pipeline.prepare_dataset("imagefolder", tmp_path / "standin" / "data", data,
                             mask_root=tmp_path / "standin" / "masks")
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, small_cnn(), "small_cnn", {"n_classes": 4, "widths": [8] * 4})
    return data, checkpoint


def test_metric_row_bytes_and_count_of_a_real_table(tmp_path):
    data, checkpoint = write_job_inputs(tmp_path, 16)
    methods = {m: {} for m in ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam")}
    metrics = {m: {} for m in ("sparseness", "complexity", "mean_activation", "relevance_mass", "relevance_rank",
                               "energy_pointing_game", "iou", "dice")}
    metrics["deletion_auc"] = {"steps": 4}
    common = dict(perturbation="none", level=0.0, split="test", seed=0, device="cpu")
    heat = tmp_path / "heatmaps.h5"
    heatmap_job = HeatmapJob(methods=methods, target_layer=LAYER, class_source="pred", batch_size=64,
                             dtype="float16", **common)
    pipeline.compute_heatmaps(data, checkpoint, heat, heatmap_job)
    out = tmp_path / "metrics.parquet"
    metric_job = MetricJob(metrics=metrics, score="prob", memory_mb=64, dataset="shapes", model="m", **common)
    table = pipeline.compute_metrics(data, checkpoint, heat, heat, out, metric_job)
    assert len(table) == 64 * len(methods) * len(metrics)  # every metric applies to every image here
    config = tiny_config()  # 4 levels, each a table like this one
    config["datasets"]["shapes"]["standin"]["counts"]["test"] = 16
    config["cam"]["methods"], config["metrics"]["compute"] = methods, metrics
    (m,) = plan.make_plan(config, tmp_path, calibrate=False).models
    assert m.metric_rows == 4 * len(table)
    assert m.disk["metrics (parquet)"] == 4 * len(table) * plan.METRIC_ROW_BYTES * plan.METRIC_PARQUET_COPIES
    per_row = out.stat().st_size / len(table)
    assert plan.METRIC_ROW_BYTES / 2 <= per_row <= 2 * plan.METRIC_ROW_BYTES, per_row


@contextlib.contextmanager
def restored_process_state():
    """What scripting.logged sets for a job's process (threads, deterministic kernels, the logging
    handlers on the job's log), put back for the tests that follow."""
    root = logging.getLogger()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        root.handlers[:] = handlers
        root.setLevel(level)


def test_job_logs_show_progress_with_elapsed_and_remaining_time(tmp_path, monkeypatch):
    """Under scripting.logged (what every job script runs in) the log gets one line per refresh,
    each with elapsed<remaining; the metric job's bar counts forward-equivalents."""
    data, checkpoint = write_job_inputs(tmp_path, 4)
    monkeypatch.setattr(pipeline, "PROGRESS_LOG_SECONDS", 0.0)  # every refresh (jobs: every 30 s)
    log = tmp_path / "job.log"
    job = types.SimpleNamespace(log=[str(log)], threads=1, config={}, resources=types.SimpleNamespace(gpu=0),
                                rule="heatmaps")
    common = dict(perturbation="none", level=0.0, split="test", seed=0, device="cpu")
    heat = tmp_path / "heatmaps.h5"
    methods = {"gradcam": {}, "scorecam": {}}
    with restored_process_state(), logged(job):
        pipeline.compute_heatmaps(data, checkpoint, heat, HeatmapJob(
            methods=methods, target_layer=LAYER, class_source="pred", batch_size=4, dtype="float16", **common))
        pipeline.compute_metrics(data, checkpoint, heat, heat, tmp_path / "m.parquet", MetricJob(
            metrics={"max_sensitivity": {"samples": 2}, "sparseness": {}}, score="prob", memory_mb=64,
            dataset="shapes", model="m", batch_size=4, **common))
    raw = log.read_bytes()  # bytes: reading text would turn a carriage return into a line break
    assert b"\r" not in raw
    text = raw.decode()
    bar = re.compile(r"^(heatmaps|metrics) none~0\.0: +(\d+)%\|.*\| ([\d.k]+)/([\d.k]+) "
                     r"\[(\d\d:\d\d)<(\d\d:\d\d|\?), ([^\]]+)\]$")
    lines = [bar.match(line) for line in text.splitlines() if line.startswith(("heatmaps ", "metrics "))]
    assert all(lines) and {m.group(1) for m in lines} == {"heatmaps", "metrics"}
    heat_lines = [m for m in lines if m.group(1) == "heatmaps"]
    assert [m.group(3) for m in heat_lines][:5] == ["0", "4", "8", "12", "16"]  # a line per batch of 4
    assert heat_lines[2].group(6) != "?"   # halfway: a remaining time
    metric_lines = [m for m in lines if m.group(1) == "metrics"]
    assert all("FE" in m.group(7) for m in metric_lines)
    # the first step (gradcam's max-sensitivity) re-explains both methods twice: most of the job's work
    first = next(m for m in metric_lines if m.group(3) != "0.00")
    assert int(first.group(2)) > 60


def test_snakemake_plan_target_prints_the_plan_and_is_not_part_of_all(tmp_path):
    copy_workflow(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_config()))
    run = snakemake(tmp_path, "plan", "--cores", "1", "--configfile", "tiny.yaml", timeout=300)
    assert "== shapes_cnn (small_cnn) on shapes: 20 images" in run.stdout and "TOTAL:" in run.stdout
    # nothing prepared, trained or written: only the plan kept in its log
    assert [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "results").rglob("*") if p.is_file()] == \
        ["results/logs/plan.log"]
    assert (tmp_path / "results/logs/plan.log").read_text() in run.stdout
    dry = snakemake(tmp_path, "-n", "--configfile", "tiny.yaml", timeout=300)
    assert "plan" not in re.findall(r"^(\w+)\s+\d+$", dry.stdout, flags=re.M)


def test_command_line(tmp_path, capsys):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "schema.yaml").write_text((ROOT / "config" / "schema.yaml").read_text())
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_config()))
    assert plan.main(["--configfile", "tiny.yaml", "--workdir", str(tmp_path), "--no-calibrate",
                      "--images", "shapes=7"]) == 0
    assert "on shapes: 7 images" in capsys.readouterr().out
    assert plan.main(["--configfile", "tiny.yaml", "--workdir", str(tmp_path), "--images", "x"]) == 2
