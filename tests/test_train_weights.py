"""The train_model stage with local weights: torchvision models and module:function models take a
weights file (never a download), 'epochs: 0' evaluates it as is, and the checkpoint reproduces it."""
import json
import sys

import numpy as np
import pytest
import torch
import torchvision

from cambench.data import Prepared, write_dataset
from cambench.jobs import TrainingJob
from cambench.models import load_checkpoint
from cambench.pipeline import train_model

TRAIN = {"epochs": 0, "batch_size": 8, "lr": 0.001, "weight_decay": 0.0}


@pytest.fixture()
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    ids = [f"{'train' if i < 8 else 'test'}/c{i % 3}/x{i}" for i in range(n)]
    write_dataset(tmp_path / "ds.h5", Prepared(images, np.arange(n) % 3, ["c0", "c1", "c2"], ids,
                                               [i.split("/")[0] for i in ids], ids, ["0"] * n), {})
    return tmp_path / "ds.h5", torch.from_numpy(images[8:]).float() / 255


def test_torchvision_weights_are_used_as_they_are_with_zero_epochs(dataset, tmp_path):
    path, test_images = dataset
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pt")   # a plain torchvision state dict
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    result = train_model(path, tmp_path / "m.pt", tmp_path / "t.json", TrainingJob(
        architecture="resnet18", params={"mean": mean, "std": std}, train=TRAIN, seed=0, device="cpu",
        weights=str(tmp_path / "resnet18.pt")))
    assert result["history"] == [] and result["weights_loaded"]["loaded"] > 0
    recorded = json.loads((tmp_path / "t.json").read_text())
    assert recorded["epochs"] == 0 and str(tmp_path / "resnet18.pt") in recorded["provenance"]["inputs"]
    model, _ = load_checkpoint(tmp_path / "m.pt")
    normalised = (test_images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(test_images), reference(normalised), rtol=1e-5, atol=1e-5)
    expected = float((reference(normalised).argmax(1) == torch.arange(8, 12) % 3).float().mean())
    assert result["test_accuracy"] == pytest.approx(expected)


def test_a_new_head_is_trained_on_loaded_weights(dataset, tmp_path):
    path, _ = dataset
    torch.manual_seed(11)
    imagenet = torchvision.models.resnet18(weights=None, num_classes=1000).state_dict()
    torch.save(imagenet, tmp_path / "imagenet.pt")
    with pytest.raises(ValueError, match=r"imagenet\.pt.*fc\.weight.*weights_exclude"):
        train_model(path, tmp_path / "m.pt", tmp_path / "t.json", TrainingJob(
            architecture="resnet18", params={}, train={**TRAIN, "epochs": 1}, seed=0, device="cpu",
            weights=str(tmp_path / "imagenet.pt")))
    result = train_model(path, tmp_path / "m.pt", tmp_path / "t.json", TrainingJob(
        architecture="resnet18", params={}, train={**TRAIN, "epochs": 1}, seed=0, device="cpu",
        weights=str(tmp_path / "imagenet.pt"), weights_exclude=["net.fc"]))
    assert result["weights_loaded"]["excluded"] == 2 and len(result["history"]) == 1
    # every trunk tensor came from the file (the head's two did not): one epoch moves the loaded
    # weights a little, far less than the distance to a fresh initialisation
    assert result["weights_loaded"]["loaded"] == len(imagenet) - 2
    model, _ = load_checkpoint(tmp_path / "m.pt")
    trained = model.net.conv1.weight.detach()
    fresh = torchvision.models.resnet18(weights=None).conv1.weight.detach()
    assert (trained - imagenet["conv1.weight"]).norm() < 0.1 * (fresh - imagenet["conv1.weight"]).norm()
    assert not (tmp_path / "m.pt.tmp").exists()


def test_a_module_function_model_trains_from_config_names(dataset, tmp_path, monkeypatch):
    path, test_images = dataset
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(n_classes, in_channels=3, width=4):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, n_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = train_model(path, tmp_path / "m.pt", tmp_path / "t.json", TrainingJob(
        architecture="my_models:tiny", params={"width": 6}, train={**TRAIN, "epochs": 2}, seed=0, device="cpu"))
    assert len(result["history"]) == 2
    model, payload = load_checkpoint(tmp_path / "m.pt")
    assert payload["architecture"] == "my_models:tiny" and model.net[0].out_channels == 6
    sys.modules.pop("my_models", None)
