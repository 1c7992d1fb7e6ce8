"""Evaluation-only models (train.epochs 0): no train split, the model's own normalisation, and a
model whose logits do not match the dataset's class mapping refused before any heatmap."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image

from cambench.config import ConfigError, validate_config
from cambench.data.dataset import read_dataset, write_dataset
from cambench.data.formats import Prepared
from cambench.jobs import TrainingJob
from cambench.models import load_checkpoint
from cambench.models.external import IMAGENET_MEAN, IMAGENET_STD
from cambench.pipeline import train_model

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
EVAL_ONLY = {"epochs": 0, "batch_size": 8, "lr": 0.005, "weight_decay": 0.0, "min_test_accuracy": 0.0}


def _dataset(path, n_classes, labels, size=40, split="val", seed=0):
    rng = np.random.default_rng(seed)
    n = len(labels)
    images = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    write_dataset(path, Prepared(images=images, labels=np.asarray(labels, dtype=np.int64),
                                 class_names=[f"n{k:08d}" for k in range(n_classes)],
                                 ids=[f"{split}/img{i}" for i in range(n)], split=[split] * n,
                                 source=[f"img{i}.JPEG" for i in range(n)], sha256=["0" * 64] * n), {})
    return images


def test_a_pretrained_1000_way_model_is_evaluated_without_a_train_split(tmp_path):
    """Accuracy through train_model (epochs 0) equals the saved torchvision model run directly in
    torch with ImageNet's normalisation, on a dataset with only a 'val' split and 6 of 1000 classes."""
    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=1000).eval()
    weights = tmp_path / "resnet18-random.pth"
    torch.save(net.state_dict(), weights)
    images = _dataset(tmp_path / "ds.h5", 1000, [3, 17, 17, 512, 998, 3, 41, 700, 512, 0])
    x = torch.from_numpy(images).float() / 255
    with torch.no_grad():
        logits = net((x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    # Make the planted labels the model's own top-1 on half of the images: a known accuracy of 0.5.
    labels = read_dataset(tmp_path / "ds.h5").labels.copy()
    top1 = logits.argmax(1).numpy()
    labels[:5] = top1[:5]
    labels[5:] = (top1[5:] + 1) % 1000
    _dataset(tmp_path / "ds.h5", 1000, labels.tolist())
    top5 = (logits.topk(5, dim=1).indices == torch.from_numpy(labels)[:, None]).any(1).float().mean().item()

    result = train_model(tmp_path / "ds.h5", tmp_path / "model.pt", tmp_path / "train.json", TrainingJob(
        architecture="resnet18", params={}, train=EVAL_ONLY, seed=0, device="cpu", eval_split="val",
        weights=str(weights), model="r18", dataset="val_set"))
    assert result["test_accuracy"] == 0.5
    assert result["test_top5_accuracy"] == pytest.approx(top5)
    assert result["train_accuracy"] is None and result["n_train"] == 0
    assert result["n_classes"] == 1000 and result["classes_present"] == len(set(labels.tolist()))
    model, _ = load_checkpoint(tmp_path / "model.pt")
    # ImageNet statistics inside the model, not the dataset's own (the weights expect them)
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.allclose(model.normalize.std.flatten(), torch.tensor(IMAGENET_STD))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), logits, atol=1e-4)
    assert json.loads((tmp_path / "train.json").read_text())["normalisation"]["mean"] is None


def make_1000_logit_net(in_channels: int = 3):
    """A 'module:function' model with a fixed 1000-way head (ignores the dataset's class count)."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 1000))


def test_logits_that_do_not_match_the_class_mapping_are_refused_before_any_output(tmp_path):
    _dataset(tmp_path / "ds.h5", 19, list(range(19)))
    weights = tmp_path / "w.pth"
    torch.save(make_1000_logit_net().state_dict(), weights)
    with pytest.raises(ValueError, match=r"model 'photos_net' produces 1000 logits but dataset 'photos' has 19 "
                                         r"classes \(datasets\.photos\.classes\)"):
        train_model(tmp_path / "ds.h5", tmp_path / "model.pt", tmp_path / "train.json", TrainingJob(
            architecture="test_evaluation_only:make_1000_logit_net", params={}, train=EVAL_ONLY, seed=0,
            device="cpu", eval_split="val", weights=str(weights), model="photos_net", dataset="photos"))
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "train.json").exists()


def test_an_evaluation_only_function_model_gets_the_identity_normalisation(tmp_path):
    """'module:function' models that do not take mean/std normalise their input themselves when they
    are not trained here: cambench puts an identity Normalize in front, not the dataset's statistics."""
    _dataset(tmp_path / "ds.h5", 1000, [1, 2, 3])
    weights = tmp_path / "w.pth"
    torch.save(make_1000_logit_net().state_dict(), weights)
    train_model(tmp_path / "ds.h5", tmp_path / "model.pt", tmp_path / "train.json", TrainingJob(
        architecture="test_evaluation_only:make_1000_logit_net", params={}, train=EVAL_ONLY, seed=0,
        device="cpu", eval_split="val", weights=str(weights)))
    model, payload = load_checkpoint(tmp_path / "model.pt")
    assert payload["params"]["mean"] == [0.0] * 3 and payload["params"]["std"] == [1.0] * 3
    # given in the config, the model's params win
    train_model(tmp_path / "ds.h5", tmp_path / "model.pt", tmp_path / "train.json", TrainingJob(
        architecture="test_evaluation_only:make_1000_logit_net", params={"mean": [0.5] * 3, "std": [0.2] * 3},
        train=EVAL_ONLY, seed=0, device="cpu", eval_split="val", weights=str(weights)))
    assert load_checkpoint(tmp_path / "model.pt")[1]["params"]["std"] == [0.2] * 3


def _photo_folder(root: Path, splits=("val",)):
    for split in splits:
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (24, 24), (10, 20, 30)).save(root / split / cls / "a.png")


def _eval_only_config(tmp_path, epochs=0, **dataset):
    cfg = copy.deepcopy(DEFAULT)
    (tmp_path / "w.pth").write_bytes(b"placeholder")
    cfg["datasets"] = {"photos": {"root": "photos", **dataset}}
    cfg["models"] = {"net": {"dataset": "photos", "architecture": "resnet18", "weights": "w.pth",
                             "train": {"epochs": epochs}}}
    cfg["cam"]["split"] = "val"
    cfg["cam"]["methods"] = {"gradcam": {}}
    return cfg


def test_an_evaluation_only_image_folder_needs_no_train_split(tmp_path):
    _photo_folder(tmp_path / "photos")
    validate_config(_eval_only_config(tmp_path), SCHEMA, workdir=tmp_path)
    with pytest.raises(ConfigError, match=r"config key 'datasets\.photos\.root': no 'train' split folder "
                                          r"\(models train on it\)"):
        validate_config(_eval_only_config(tmp_path, epochs=2), SCHEMA, workdir=tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"resize": 224, "crop": 256}, r"config key 'datasets\.photos\.crop': 256 is larger than resize 224"),
    ({"classes": ["cat", "dog", "cat"]},
     r"config key 'datasets\.photos\.classes': duplicate class name\(s\) \['cat'\]"),
    ({"classes": "synsets.txt"}, r"config key 'datasets\.photos\.classes': file not found: synsets\.txt"),
])
def test_bad_preprocessing_keys_name_the_key(tmp_path, change, message):
    _photo_folder(tmp_path / "photos")
    with pytest.raises(ConfigError, match=message):
        validate_config(_eval_only_config(tmp_path, **change), SCHEMA, workdir=tmp_path)


def _imagenet_standin_config(tmp_path):
    cfg = _eval_only_config(tmp_path)
    cfg["datasets"] = {"inet": {"standin": {"kind": "imagenet", "counts": {"val": 2}}, "resize": 72, "crop": 64,
                                "classes": "resources/inet/data/LOC_synset_mapping.txt"}}
    cfg["models"]["net"]["dataset"] = "inet"
    return cfg


def test_an_evaluation_set_has_one_split_and_says_so_by_key(tmp_path):
    validate_config(_imagenet_standin_config(tmp_path), SCHEMA, workdir=tmp_path)
    cfg = _imagenet_standin_config(tmp_path)
    cfg["cam"]["methods"] = {"sycam": {"expression": "search"}}       # searches on cam.sycam.split: train
    with pytest.raises(ConfigError, match=r"config key 'cam\.sycam\.split': dataset 'inet' \(format imagenet\) has "
                                          r"the one split 'val' \(datasets\.inet\.options\.split\), not 'train'"):
        validate_config(cfg, SCHEMA, workdir=tmp_path)
    cfg = _imagenet_standin_config(tmp_path)
    cfg["cam"]["split"] = "test"
    with pytest.raises(ConfigError, match=r"config key 'cam\.split': dataset 'inet' \(format imagenet\) has the one "
                                          r"split 'val'"):
        validate_config(cfg, SCHEMA, workdir=tmp_path)
    cfg = _imagenet_standin_config(tmp_path)
    cfg["models"]["net"]["train"]["epochs"] = 3
    with pytest.raises(ConfigError, match=r"config key 'datasets\.inet': format imagenet is an evaluation set"):
        validate_config(cfg, SCHEMA, workdir=tmp_path)
