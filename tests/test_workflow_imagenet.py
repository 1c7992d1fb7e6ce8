"""The evaluation-only path of pretrained classifiers, run for real through Snakemake: ILSVRC val in
both real layouts (flat JPEGs + LOC_val_solution.csv; class folders + Pascal VOC XML), images of
mixed sizes resized and centre-cropped, a 1000-class mapping file, and a torchvision ResNet-18 with a
1000-way head loaded from a local weights file (random weights; train.epochs 0, no train split)."""
import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import yaml
from workflow_helpers import ROOT, copy_workflow, snakemake

import cambench
from cambench.data import read_dataset
from cambench.models import load_checkpoint
from cambench.models.external import IMAGENET_MEAN, IMAGENET_STD
from cambench.store import read_heatmaps

pytestmark = pytest.mark.workflow

IMAGENET = yaml.safe_load((ROOT / "config" / "imagenet.yaml").read_text())
LAYOUTS = {"inet_flat": ("flat", "csv"), "inet_folders": ("folders", "xml")}


def small_imagenet() -> dict:
    """config/imagenet.yaml with the two stand-ins in place of ILSVRC val and ResNet-18 weights."""
    cfg = copy.deepcopy(IMAGENET)
    cfg["device"] = "cpu"
    cfg["shards"] = {"size": 5}             # 12 images per data set: 3 shards, the last one short
    cfg["datasets"] = {
        name: {"standin": {"kind": "imagenet", "counts": {"val": 3},
                           "params": {"layout": layout, "annotations": notes, "present": 4, "min_size": 72,
                                      "max_size": 140}},
               "classes": f"resources/{name}/data/LOC_synset_mapping.txt", "resize": 72, "crop": 64,
               "options": {"split": "val", "boxes": "optional"}}
        for name, (layout, notes) in LAYOUTS.items()}
    cfg["models"] = {f"r18_{name}": {"dataset": name, "architecture": "resnet18", "weights": "r18-1000.pth",
                                     "train": {"epochs": 0}} for name in LAYOUTS}
    cfg["cam"].update(batch_size=8, memory_mb=256)
    cfg["cam"]["methods"] = {"cam": {}, "gradcam": {}, "gradcampp": {}, "layercam": {}}
    cfg["perturbations"] = {"gaussian": [0.1]}
    compute = cfg["metrics"]["compute"]
    compute["pointing_game"] = {"tolerance_px": 4}
    compute["deletion_auc"] = {"steps": 4}
    compute["insertion_auc"] = {"steps": 4, "substrate": "blur"}
    cfg["stats"]["bootstrap"] = 100
    cfg["report"]["gallery_images"] = 2
    return cfg


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("imagenet")
    copy_workflow(work)
    torch.manual_seed(3)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), work / "r18-1000.pth")
    cfg = small_imagenet()
    (work / "small.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(work, "all", "paper_figures", "--cores", "2", "--configfile", "small.yaml")
    return work, cfg


def _saved_network(work) -> torch.nn.Module:
    net = torchvision.models.resnet18(num_classes=1000)
    net.load_state_dict(torch.load(work / "r18-1000.pth", weights_only=True))
    return net.eval()


def _normalised(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_accuracy_through_the_workflow_equals_the_saved_model_in_torch(imagenet_run):
    work, _ = imagenet_run
    net = _saved_network(work)
    for name in LAYOUTS:
        ds = read_dataset(work / f"results/{name}/dataset.h5", "val")
        assert len(ds.class_names) == 1000 and len(set(ds.labels.tolist())) == 4
        assert ds.images.shape[1:] == (3, 64, 64)       # mixed sizes, resized and centre-cropped
        with torch.no_grad():
            logits = net(_normalised(ds.pixels(slice(None))))
        labels = torch.from_numpy(ds.labels)
        expected_top1 = (logits.argmax(1) == labels).float().mean().item()
        expected_top5 = (logits.topk(5, 1).indices == labels[:, None]).any(1).float().mean().item()
        record = json.loads((work / f"results/{name}/r18_{name}/train.json").read_text())
        assert record["test_accuracy"] == pytest.approx(expected_top1, abs=1e-12)
        assert record["test_top5_accuracy"] == pytest.approx(expected_top5, abs=1e-12)
        assert record["n_train"] == 0 and record["n_classes"] == 1000
        # the heatmap file's label ranks are those of the saved model
        hm = read_heatmaps(work / f"results/{name}/r18_{name}/heatmaps/none~0.h5")
        ranks = 1 + (logits > logits.gather(1, labels[:, None])).sum(1)
        assert hm.label_rank.tolist() == ranks.tolist()


def test_heatmaps_equal_cambench_explain_on_the_same_preprocessed_images(imagenet_run):
    work, _ = imagenet_run
    for name in LAYOUTS:
        ds = read_dataset(work / f"results/{name}/dataset.h5", "val")
        model, _ = load_checkpoint(work / f"results/{name}/r18_{name}/model.pt")
        hm = read_heatmaps(work / f"results/{name}/r18_{name}/heatmaps/none~0.h5")
        assert list(hm.ids) == list(ds.ids)
        for method in ("gradcam", "gradcampp", "layercam", "cam"):
            expected = cambench.explain(model.eval(), ds.pixels(slice(None)), method, "net.layer4",
                                        targets=torch.from_numpy(ds.labels))   # class_source: gt
            # stored as float16 at feature resolution and rebuilt on read
            np.testing.assert_allclose(hm.maps[method], expected.numpy(), atol=2e-3, err_msg=f"{name} {method}")


def test_box_localisation_uses_the_annotated_boxes_and_fills_the_paper_rows(imagenet_run):
    work, _ = imagenet_run
    table = pd.read_parquet(work / "results/metrics")
    boxes = table[table.metric == "box_iou"]
    assert set(boxes.model) == {f"r18_{n}" for n in LAYOUTS}
    assert all(json.loads(p)["gt_box"] == "boxes" for p in boxes.params.unique())
    assert (boxes.target == boxes.label).all()               # class_source gt: the label's map
    paper = pd.read_csv(work / "results/papers/selvaraju2017_gradcam.csv")
    ours = paper[(paper.source == "cambench") & (paper.method == "gradcam")]
    for name in LAYOUTS:
        mine = ours[ours.model == f"r18_{name}"].set_index("quantity")
        assert {"localisation_error_top1", "localisation_error_top5"} <= set(mine.index)
        clean = boxes[(boxes.model == f"r18_{name}") & (boxes.method == "gradcam") & (boxes.perturbation == "none")]
        located = (clean.value >= 0.5) & (clean.label_rank <= 5)
        assert mine.loc["localisation_error_top5", "value"] == pytest.approx(100 * (1 - located.mean()))
    assert {"56.51", "46.41"} <= {f"{v:.2f}" for v in paper[paper.source != "cambench"].value}


def test_the_verdict_names_the_identity_of_cam_and_gradcam(imagenet_run):
    """Behind ResNet's GAP + linear head CAM and Grad-CAM give the same map."""
    work, _ = imagenet_run
    verdict = pd.read_csv(work / "results/tables/verdict.csv")
    assert set(verdict.model) == {f"r18_{n}" for n in LAYOUTS}
    for model, rows in verdict.groupby("model"):
        assert set(rows.identical_maps) == {"cam = gradcam"}, model        # not gradcampp, not layercam
        assert rows.caveats.str.contains("synthetic stand-in").all(), model
