"""Every registered source format through the same path a user's real data takes: stand-in files in
the real layout -> config pointing at them (validated before any job) -> prepare -> dataset HDF5.
A broken layout must stop at config validation, naming the missing file and the expected layout."""
import copy
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cambench.config import ConfigError, validate_config
from cambench.data import FORMATS, STANDIN_FORMATS, generate_standin, item_dims, prepare, read_dataset

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"

# Tiny stand-ins: (kind, counts, generator params, reader options).
TINY = {
    "imagefolder": ("shapes", {"train": 3, "test": 2}, {"image_size": 32}, {}),
    "cifar10": ("cifar10", {"train": 2, "test": 1}, {}, {}),
    "cifake": ("cifake", {"train": 3, "test": 2}, {}, {}),
    "mosmed": ("mosmed", {"all": 4}, {"shape": [12, 24, 24], "spacing": [2.5, 1.0, 1.0], "lesion_radius": [2.0, 3.0]},
               {"grid": [8, 16, 16], "test_fraction": 0.5}),
    "dicom_ct": ("dicom_ct", {"all": 4},
                 {"shape": [12, 24, 24], "spacing": [2.5, 1.0, 1.0], "lesion_radius": [2.0, 3.0]},
                 {"grid": [8, 16, 16], "test_fraction": 0.5}),
    "brats": ("brats", {"cases": 4}, {"shape": [24, 24, 10], "tumour_radius": [2.5, 4.0]}, {"test_fraction": 0.5}),
    "street": ("street", {"all": 4}, {"image_size": 48}, {"test_fraction": 0.5}),
    # one image size here (tests/test_data_imagenet.py covers mixed sizes with resize / crop)
    "imagenet": ("imagenet", {"val": 2}, {"min_size": 48, "max_size": 48}, {}),
}

# What to delete from a good layout, and the file name the error must then mention.
BREAK = {
    "imagefolder": ("train", "train"),
    "cifar10": ("test_batch", "test_batch"),
    "cifake": ("test/FAKE", "FAKE"),
    "mosmed": ("studies", "studies"),
    "brats": ("BraTS2021_00001/BraTS2021_00001_flair.nii.gz", "BraTS2021_00001_flair"),
    "street": ("labels.csv", "labels.csv"),
    "imagenet": ("LOC_val_solution.csv", "LOC_val_solution.csv"),
}


def test_every_format_has_a_standin_and_a_tiny_case():
    assert set(TINY) == set(FORMATS.names())
    assert {STANDIN_FORMATS[kind] for kind, *_ in TINY.values()} == set(FORMATS.names())


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    base = tmp_path_factory.mktemp("formats")
    out = {}
    for fmt, (kind, counts, params, _) in TINY.items():
        generate_standin(kind, base / fmt, counts=counts, seed=0, **params)
        out[fmt] = base / fmt
    return out


def user_config(fmt: str, root: Path, mask_root: Path | None, tmp_path: Path) -> dict:
    options = TINY[fmt][3]
    arch = "small_cnn3d" if item_dims(fmt, options) == 3 else "small_cnn"
    model, cam = {"dataset": "real", "architecture": arch}, {"methods": {"gradcam": {}}}
    if fmt == "imagenet":  # an evaluation set: the model comes with its weights, CAMs on 'val'
        (tmp_path / "weights.pt").write_bytes(b"")
        model.update(weights=str(tmp_path / "weights.pt"), train={"epochs": 0})
        cam["split"] = "val"
    return {"datasets": {"real": {"format": fmt, "root": str(root), "options": copy.deepcopy(options),
                                  **({"mask_root": str(mask_root)} if mask_root else {})}},
            "models": {"m": model}, "cam": cam, "perturbations": {},
            "metrics": {"compute": {"deletion_auc": {}}}}


@pytest.mark.parametrize("fmt", sorted(TINY))
def test_real_layout_validates_and_prepares(fmt, standins, tmp_path):
    root = standins[fmt] / "data"
    masks = standins[fmt] / "masks"
    masks = masks if masks.is_dir() else None
    validate_config(user_config(fmt, root, masks, tmp_path), SCHEMA)
    summary = prepare(fmt, root, tmp_path / "ds.h5", mask_root=masks, options=TINY[fmt][3], seed=0)
    ds = read_dataset(tmp_path / "ds.h5")
    n = len(ds)
    assert n > 0 and summary["format"] == fmt
    assert len(set(ds.ids)) == n and ds.images.dtype == np.uint8
    assert ds.images.ndim == 2 + item_dims(fmt, TINY[fmt][3])
    assert ds.masks is not None and ds.masks.shape == (n, *ds.images.shape[2:])  # every stand-in plants truth
    assert ds.masks.any()
    assert sorted(set(summary["counts"])) == (["val"] if fmt == "imagenet" else ["test", "train"])
    assert all(len(column) == n for column in ds.meta.values())
    expected_meta = {"cifar10": "filename", "cifake": "cifar_class", "mosmed": "spacing_z", "dicom_ct": "series_uid",
                     "brats": "z", "street": "lat", "imagenet": "orig_height"}
    if fmt in expected_meta:
        assert expected_meta[fmt] in ds.meta
    import h5py
    with h5py.File(tmp_path / "ds.h5") as f:
        sources, sums = f["source"].asstr()[:], f["sha256"].asstr()[:]
        assert f.attrs["format"] == fmt
    # The recorded checksum is that of the recorded source file (formats whose item is one file).
    for source, digest in list(zip(sources, sums))[:3]:
        path = root / source
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("fmt", sorted(BREAK))
def test_a_broken_layout_stops_at_validation_naming_the_file(fmt, standins, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(standins[fmt] / "data", root)
    target, named = BREAK[fmt]
    victim = root / target
    shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
    with pytest.raises(ConfigError) as err:
        validate_config(user_config(fmt, root, None, tmp_path), SCHEMA)
    message = str(err.value)
    assert "config key 'datasets.real.root'" in message
    assert named in message and "layout" in message


@pytest.mark.parametrize("fmt", sorted(TINY))
def test_a_missing_root_names_the_key_and_the_layout(fmt, tmp_path):
    with pytest.raises(ConfigError, match=r"datasets\.real\.root.*folder not found.*expected layout"):
        validate_config(user_config(fmt, tmp_path / "nowhere", None, tmp_path), SCHEMA)


def test_an_empty_dicom_series_folder_stops_at_validation(standins, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(standins["dicom_ct"] / "data", root)
    series = sorted(p for p in root.glob("*/*") if p.is_dir())[0]
    for f in series.iterdir():
        f.unlink()
    with pytest.raises(ConfigError) as err:
        validate_config(user_config("dicom_ct", root, None, tmp_path), SCHEMA)
    assert series.name in str(err.value)


@pytest.mark.parametrize("change, message", [
    ({"options": {"gird": [8, 8, 8]}}, r"datasets\.ct\.options.*unknown parameter.*gird"),
    ({"options": {"grid": "big"}}, r"datasets\.ct\.options.*grid.*must be a list"),
    ({"format": "cifar10"}, r"datasets\.ct\.format.*stand-in 'mosmed' is written in format 'mosmed'"),
    ({"mask_root": "x"}, r"datasets\.ct.*not both|mask_root"),
    ({"standin": {"kind": "mosmed", "counts": {"all": 4}, "params": {"shap": [1]}}},
     r"datasets\.ct\.standin\.params.*unknown parameter.*shap"),
])
def test_dataset_mistakes_name_the_key(change, message):
    cfg = {"datasets": {"ct": {"standin": {"kind": "mosmed", "counts": {"all": 4}}, **change}},
           "models": {"m": {"dataset": "ct", "architecture": "small_cnn3d"}},
           "cam": {"methods": {"gradcam": {}}}, "perturbations": {}, "metrics": {"compute": {"deletion_auc": {}}}}
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg, SCHEMA)


def test_a_2d_model_on_volumes_is_refused_before_any_job():
    cfg = {"datasets": {"ct": {"standin": {"kind": "mosmed", "counts": {"all": 4}}}},
           "models": {"m": {"dataset": "ct", "architecture": "small_cnn"}},
           "cam": {"methods": {"gradcam": {}}}, "perturbations": {}, "metrics": {"compute": {"deletion_auc": {}}}}
    with pytest.raises(ConfigError, match=r"models\.m\.architecture.*2D inputs.*3D volumes"):
        validate_config(cfg, SCHEMA)
    cfg["models"]["m"]["architecture"] = "multi_exit_cnn"
    cfg["models"]["m"]["params"] = {"dims": 3}
    validate_config(cfg, SCHEMA)  # the multi-exit CNN in 3D is fine


@pytest.mark.parametrize("model, message", [
    ({"weights": "missing.pt"}, r"models\.m\.weights.*file not found: missing\.pt"),
    ({"weights_exclude": ["fc"]}, r"models\.m\.weights_exclude.*only together"),
    ({"train": {"epochs": 0}}, r"models\.m\.train\.epochs.*needs 'models\.m\.weights'"),
    ({"architecture": "no_such_module_xyz:build"}, r"models\.m\.architecture.*no_such_module_xyz"),
])
def test_model_mistakes_name_the_key(model, message, tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["models"] = {"m": {"dataset": "shapes", **model}}
    cfg["cam"]["methods"] = {"gradcam": {}}
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg, SCHEMA, workdir=tmp_path)


def test_domains_config_is_valid():
    validate_config(yaml.safe_load((ROOT / "config" / "domains.yaml").read_text()), SCHEMA)
