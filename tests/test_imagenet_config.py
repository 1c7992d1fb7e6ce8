"""config/imagenet.yaml as shipped, against placeholder files at the paths it names: it validates,
dry-runs, and its cost plan counts ILSVRC val's work and disk before anything runs."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from workflow_helpers import copy_workflow, snakemake

pytestmark = pytest.mark.workflow

VAL = "data/imagenet/ILSVRC/Data/CLS-LOC/val"


def placeholders(work):
    """Three real JPEGs of mixed sizes in the flat layout, the CSV of their boxes, a 1000-line synset
    mapping, and the two weights files (empty: the dry run and the plan never load them)."""
    val = work / VAL
    val.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["ImageId,PredictionString"]
    for i, (w, h) in enumerate([(500, 375), (333, 500), (640, 480)], start=1):
        stem = f"ILSVRC2012_val_{i:08d}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(val / f"{stem}.JPEG")
        rows.append(f"{stem},n{i:08d} 10 20 {w // 2} {h // 2} ")
    (work / "data/imagenet/LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (work / "data/imagenet/LOC_synset_mapping.txt").write_text(
        "".join(f"n{k:08d} class {k}, synonym\n" for k in range(1000)))
    (work / "weights").mkdir()
    for name in ("resnet50-0676ba61.pth", "vgg16-397923af.pth"):
        (work / "weights" / name).write_bytes(b"")


def test_imagenet_config_dry_runs_and_plans(tmp_path):
    copy_workflow(tmp_path)
    placeholders(tmp_path)
    dry = snakemake(tmp_path, "-n", "--configfile", "config/imagenet.yaml")
    out = dry.stdout + dry.stderr
    assert "prepare_dataset" in out and "train_model" not in out.split("prepare_dataset")[0]
    plan = subprocess.run([sys.executable, "-m", "cambench.plan", "--configfile", "config/imagenet.yaml",
                           "--workdir", str(tmp_path), "--images", "ilsvrc_val=50000", "--no-calibrate"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert plan.returncode == 0, plan.stderr
    text = plan.stdout
    for model in ("resnet50", "vgg16"):
        assert f"== {model}" in text
    assert "50,000" in text and "3x224x224" in text


def test_imagenet_config_without_its_files_names_the_key_to_edit(tmp_path):
    copy_workflow(tmp_path)
    run = snakemake(tmp_path, "-n", "--configfile", "config/imagenet.yaml", check=False)
    assert run.returncode != 0
    assert "config key 'datasets.ilsvrc_val.root': folder not found: data/imagenet/ILSVRC/Data/CLS-LOC/val" in \
        run.stdout + run.stderr
