"""Corrupt or missing inputs: every one gives a clear error naming the file, and nothing is left behind.

Each case of :data:`CASES` writes a small input in the real format with the project's own writers
(stand-ins, ``write_dataset`` through ``prepare``, ``save_checkpoint``, ``HeatmapWriter``), breaks it
the way real data breaks (truncated, garbage, wrong shape, missing piece, value out of range), and
hands it to the entry point a Snakemake rule calls: ``pipeline.prepare_dataset``,
``data.read_dataset``, ``models.load_checkpoint`` / ``models.load_weights`` or
``store.read_heatmaps``. The error must be the project's own (DataError, ValueError or
FileNotFoundError; never a bare OSError, KeyError or RuntimeError from PIL, h5py or torch), name the
offending file and match what was expected; a failed prepare leaves its output folder empty (no
output file and no temporary file).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from cambench.data import DataError, generate_shapes, generate_standin, read_dataset
from cambench.data.cifar import dumps_py2, write_batch
from cambench.engine import CamResult
from cambench.models import build_model, load_checkpoint, load_weights, save_checkpoint
from cambench.pipeline import prepare_dataset
from cambench.store import HeatmapWriter, read_heatmaps


@dataclass
class Built:
    """What a builder made: the input handed to the entry point and the file the error must name."""
    source: Path                  # source folder (prepare) or the file itself (dataset, checkpoint, heatmaps)
    bad: Path                     # the offending file or folder
    fmt: str = ""                 # prepare: the source format
    options: dict = field(default_factory=dict)   # prepare: the format's options
    out: Path | None = None       # prepare: the dataset file that must not appear


def _out(tmp: Path) -> Path:
    folder = tmp / "out"
    folder.mkdir()
    return folder / "ds.h5"


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ------------------------------------------------------------------------------------------------
# Builders: the real format, then the damage
# ------------------------------------------------------------------------------------------------

def _shapes(tmp: Path) -> Path:
    root = tmp / "shapes"
    generate_shapes(root / "data", root / "masks", {"train": 2, "test": 1}, classes=["disk", "cross"],
                    image_size=24, seed=1)
    return root / "data"


def png_truncated(tmp):
    root = _shapes(tmp)
    return Built(root, _truncate(root / "train/disk/disk_00001.png", 0.4), "imagefolder", {}, _out(tmp))


def png_garbage(tmp):
    root = _shapes(tmp)
    bad = root / "train/cross/cross_00000.png"
    bad.write_bytes(b"\x00\x01this is not a PNG file" * 8)
    return Built(root, bad, "imagefolder", {}, _out(tmp))


def folder_empty_class(tmp):
    root = _shapes(tmp)
    bad = root / "train/disk"
    for p in bad.iterdir():
        p.unlink()
    return Built(root, bad, "imagefolder", {}, _out(tmp))


def folder_mixed_sizes(tmp):
    root = _shapes(tmp)
    bad = root / "test/disk/disk_00000.png"
    Image.open(bad).resize((20, 28)).save(bad)
    return Built(root, bad, "imagefolder", {}, _out(tmp))


def folder_missing_root(tmp):
    return Built(tmp / "no_such_folder", tmp / "no_such_folder", "imagefolder", {}, _out(tmp))


def _cifake(tmp: Path) -> Path:
    generate_standin("cifake", tmp / "cifake", counts={"train": 2, "test": 1}, seed=0)
    return tmp / "cifake" / "data"


def jpeg_truncated(tmp):
    root = _cifake(tmp)
    return Built(root, _truncate(root / "train/FAKE/0.jpg", 0.5), "cifake", {}, _out(tmp))


def jpeg_wrong_size(tmp):
    root = _cifake(tmp)
    bad = root / "test/REAL/0.jpg"
    Image.open(bad).resize((40, 40)).save(bad, "JPEG")
    return Built(root, bad, "cifake", {}, _out(tmp))


def _cifar(tmp: Path) -> Path:
    generate_standin("cifar10", tmp / "cifar", counts={"train": 1, "test": 1}, seed=0)
    return tmp / "cifar" / "data"


def cifar_row_length(tmp):
    root = _cifar(tmp)
    bad = root / "data_batch_1"
    bad.write_bytes(dumps_py2({b"batch_label": b"training batch 1 of 5", b"labels": [0, 1],
                               b"data": np.zeros((2, 3000), np.uint8), b"filenames": [b"a.png", b"b.png"]}))
    return Built(root, bad, "cifar10", {}, _out(tmp))


def cifar_label_range(tmp):
    root = _cifar(tmp)
    bad = root / "test_batch"
    write_batch(bad, np.zeros((2, 3, 32, 32), np.uint8), [3, 10], [b"a.png", b"b.png"], "testing batch 1 of 1")
    return Built(root, bad, "cifar10", {}, _out(tmp))


def cifar_truncated(tmp):
    root = _cifar(tmp)
    return Built(root, _truncate(root / "data_batch_1", 0.5), "cifar10", {}, _out(tmp))


def cifar_missing_batch(tmp):
    root = _cifar(tmp)
    bad = root / "test_batch"
    bad.unlink()
    return Built(root, bad, "cifar10", {}, _out(tmp))


MOSMED_PARAMS = {"shape": [8, 16, 16], "spacing": [2.5, 1.0, 1.0], "lesion_radius": [2.0, 3.0]}
CT_OPTIONS = {"grid": [8, 16, 16], "test_fraction": 0.5}


def _mosmed(tmp: Path) -> tuple[Path, Path]:
    generate_standin("mosmed", tmp / "mosmed", counts={"all": 1}, seed=0, **MOSMED_PARAMS)
    root = tmp / "mosmed" / "data"
    return root, next((root / "studies" / "CT-1").glob("*.nii.gz"))


def _replace_nifti(path: Path, data: np.ndarray) -> Path:
    affine = nib.load(str(path)).affine
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def nifti_2d(tmp):
    root, study = _mosmed(tmp)
    return Built(root, _replace_nifti(study, np.zeros((16, 16), np.int16)), "mosmed", CT_OPTIONS, _out(tmp))


def nifti_4d(tmp):
    root, study = _mosmed(tmp)
    return Built(root, _replace_nifti(study, np.zeros((16, 16, 8, 2), np.int16)), "mosmed", CT_OPTIONS, _out(tmp))


def nifti_truncated(tmp):
    root, study = _mosmed(tmp)
    return Built(root, _truncate(study, 0.5), "mosmed", CT_OPTIONS, _out(tmp))


def _dicom(tmp: Path) -> tuple[Path, Path]:
    generate_standin("dicom_ct", tmp / "dicom", counts={"all": 1}, seed=0, **MOSMED_PARAMS)
    root = tmp / "dicom" / "data"
    return root, sorted((root / "covid").glob("series_*/*.dcm"))[3]


def dicom_no_pixels(tmp):
    root, bad = _dicom(tmp)
    ds = pydicom.dcmread(bad)
    del ds.PixelData
    ds.save_as(bad)
    return Built(root, bad, "dicom_ct", CT_OPTIONS, _out(tmp))


def dicom_garbage(tmp):
    root, bad = _dicom(tmp)
    bad.write_bytes(b"definitely not DICOM\n" * 20)
    return Built(root, bad, "dicom_ct", CT_OPTIONS, _out(tmp))


def _brats(tmp: Path) -> Path:
    generate_standin("brats", tmp / "brats", counts={"cases": 2}, seed=0, shape=[16, 16, 8], tumour_radius=[2.0, 3.0])
    return tmp / "brats" / "data"


def brats_seg_labels(tmp):
    root = _brats(tmp)
    bad = root / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"
    seg = np.asarray(nib.load(str(bad)).dataobj).copy()
    seg[8, 8, 4] = 3  # BraTS 2021 has no label 3
    _replace_nifti(bad, seg)
    return Built(root, bad, "brats", {"test_fraction": 0.5}, _out(tmp))


def brats_missing_seg(tmp):
    root = _brats(tmp)
    bad = root / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    bad.unlink()
    return Built(root, bad, "brats", {"test_fraction": 0.5}, _out(tmp))


def brats_flair_4d(tmp):
    root = _brats(tmp)
    bad = root / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz"
    _replace_nifti(bad, np.ones((16, 16, 8, 3), np.int16))
    return Built(root, bad, "brats", {"test_fraction": 0.5}, _out(tmp))


def _street(tmp: Path) -> Path:
    generate_standin("street", tmp / "street", counts={"all": 2}, seed=0, image_size=32)
    return tmp / "street" / "data"


def street_missing_image(tmp):
    root = _street(tmp)
    bad = root / "hotspot" / "00001.jpg"
    bad.unlink()
    return Built(root, bad, "street", {"test_fraction": 0.5}, _out(tmp))


def street_bad_label(tmp):
    root = _street(tmp)
    bad = root / "labels.csv"
    bad.write_text(bad.read_text().replace(",non_hotspot\n", ",maybe\n", 1))
    return Built(root, bad, "street", {"test_fraction": 0.5}, _out(tmp))


def street_row_leaves_root(tmp, name="../../outside.jpg"):
    root = _street(tmp)
    (tmp / "outside.jpg").write_bytes((root / "hotspot" / "00000.jpg").read_bytes())
    bad = root / "labels.csv"
    bad.write_text(bad.read_text().replace("hotspot/00001.jpg,", f"{name},", 1))
    return Built(root, bad, "street", {"test_fraction": 0.5}, _out(tmp))


def street_row_absolute(tmp):
    return street_row_leaves_root(tmp, str(tmp / "outside.jpg"))


def street_mixed_sizes(tmp):
    root = _street(tmp)
    bad = root / "non_hotspot" / "00001.jpg"
    Image.open(bad).resize((48, 32)).save(bad, "JPEG")
    return Built(root, bad, "street", {"test_fraction": 0.5}, _out(tmp))


def _dataset(tmp: Path) -> Path:
    path = tmp / "ds.h5"
    prepare_dataset("imagefolder", _shapes(tmp), path)
    return path


def dataset_truncated(tmp):
    path = _dataset(tmp)
    return Built(path, _truncate(path, 0.5))


def dataset_garbage(tmp):
    path = tmp / "ds.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\xff" * 300)
    return Built(path, path)


def _delete(path: Path, name: str) -> Path:
    with h5py.File(path, "a") as f:
        del f[name]
    return path


def dataset_no_images(tmp):
    path = _dataset(tmp)
    return Built(path, _delete(path, "images"))


def dataset_no_labels(tmp):
    path = _dataset(tmp)
    return Built(path, _delete(path, "labels"))


def dataset_label_range(tmp):
    path = _dataset(tmp)
    with h5py.File(path, "a") as f:
        f["labels"][3] = 5  # two classes: 0 and 1
    return Built(path, path)


def dataset_short_labels(tmp):
    path = _dataset(tmp)
    with h5py.File(path, "a") as f:
        labels = f["labels"][:-1]
        del f["labels"]
        f["labels"] = labels
    return Built(path, path)


def dataset_corrupt_chunk(tmp):
    path = _dataset(tmp)
    with h5py.File(path, "r") as f:
        info = f["images"].id.get_chunk_info(2)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\x00\xff" * (info.size // 2))
    return Built(path, path)


def dataset_missing(tmp):
    return Built(tmp / "ds.h5", tmp / "ds.h5")


def _model(n_classes: int = 3):
    torch.manual_seed(0)
    return build_model("small_cnn", n_classes=n_classes, widths=[4, 4, 8, 8])


def _checkpoint(tmp: Path, edit: Callable[[dict], None] | None = None) -> Path:
    path = tmp / "model.pt"
    save_checkpoint(path, _model(), "small_cnn", {"n_classes": 3, "widths": [4, 4, 8, 8]})
    if edit is not None:
        payload = torch.load(path, weights_only=True)
        edit(payload)
        torch.save(payload, path)
    return path


def ckpt_shapes(tmp):
    def edit(payload):
        payload["state_dict"]["fc.weight"] = torch.zeros(5, 8)
        payload["state_dict"]["fc.bias"] = torch.zeros(5)
    path = _checkpoint(tmp, edit)
    return Built(path, path)


def ckpt_keys(tmp):
    def edit(payload):
        state = payload["state_dict"]
        state["head.weight"] = state.pop("fc.weight")
    path = _checkpoint(tmp, edit)
    return Built(path, path)


def ckpt_architecture(tmp):
    def edit(payload):
        payload["architecture"] = "no_such_net"
    path = _checkpoint(tmp, edit)
    return Built(path, path)


def ckpt_no_state_dict(tmp):
    path = _checkpoint(tmp, lambda payload: payload.pop("state_dict"))
    return Built(path, path)


def ckpt_plain_state_dict(tmp):
    path = tmp / "model.pt"
    torch.save(_model().state_dict(), path)
    return Built(path, path)


def ckpt_garbage(tmp):
    path = tmp / "model.pt"
    path.write_bytes(b"PK\x03\x04 not a torch zip" * 10)
    return Built(path, path)


def ckpt_truncated(tmp):
    path = _checkpoint(tmp)
    return Built(path, _truncate(path, 0.6))


def ckpt_missing(tmp):
    return Built(tmp / "model.pt", tmp / "model.pt")


def weights_shapes(tmp):
    path = tmp / "weights.pt"
    save_checkpoint(path, _model(5), "small_cnn", {"n_classes": 5, "widths": [4, 4, 8, 8]})
    return Built(path, path)


def _heatmaps(tmp: Path) -> Path:
    path = tmp / "heatmaps.h5"
    n = 4
    torch.manual_seed(0)
    result = CamResult(maps={"gradcam": torch.rand(n, 16, 16)}, raw={"gradcam": torch.randn(n, 4, 4)},
                       flags={"gradcam": torch.zeros(n, dtype=torch.uint8)}, logits=torch.randn(n, 3),
                       targets=torch.zeros(n, dtype=torch.int64), scores=torch.randn(n))
    ids = np.array([f"test/a/{i}" for i in range(n)], dtype=object)
    with HeatmapWriter(path, ids, np.zeros(n, np.int64), {"gradcam": {}}) as writer:
        writer.write(0, result)
    return path


def heatmaps_truncated(tmp):
    path = _heatmaps(tmp)
    return Built(path, _truncate(path, 0.5))


def heatmaps_no_flags(tmp):
    path = _heatmaps(tmp)
    return Built(path, _delete(path, "flags/gradcam"))


def heatmaps_no_labels(tmp):
    path = _heatmaps(tmp)
    return Built(path, _delete(path, "labels"))


def heatmaps_missing(tmp):
    return Built(tmp / "heatmaps.h5", tmp / "heatmaps.h5")


# ------------------------------------------------------------------------------------------------
# Entry points (what the Snakemake rules call)
# ------------------------------------------------------------------------------------------------

def prepare(b: Built):
    return prepare_dataset(b.fmt, b.source, b.out, options=b.options, seed=0)


def dataset(b: Built):
    return read_dataset(b.source, "train")


def checkpoint(b: Built):
    return load_checkpoint(b.source)


def weights(b: Built):
    return load_weights(_model(3), b.source)


def heatmaps(b: Built):
    return read_heatmaps(b.source, ["gradcam"])


# (id, one-line description, builder, entry point, error type, message regex)
CASES = [
    ("png_truncated", "class-folder PNG cut to 40 % of its bytes", png_truncated, prepare, DataError,
     r"cannot decode image"),
    ("png_garbage", "garbage bytes under a .png name", png_garbage, prepare, DataError, r"cannot decode image"),
    ("folder_empty_class", "a class folder with no images in train", folder_empty_class, prepare, DataError,
     r"class 'disk' has no images in split 'train' \(expected layout"),
    ("folder_mixed_sizes", "one class-folder image 20x28 among 24x24", folder_mixed_sizes, prepare, DataError,
     r"image size 20x28 differs from 24x24 .*all images must have one size"),
    ("folder_missing_root", "the source folder does not exist", folder_missing_root, prepare, DataError,
     r"image folder not found: .*\(expected layout"),
    ("jpeg_truncated", "CIFAKE JPEG cut to half its bytes", jpeg_truncated, prepare, DataError,
     r"cannot decode image"),
    ("jpeg_wrong_size", "a 40x40 JPEG in CIFAKE (32x32 expected)", jpeg_wrong_size, prepare, DataError,
     r"image is 40x40, expected 32x32"),
    ("cifar_row_length", "CIFAR batch whose rows have 3000 values, not 3072", cifar_row_length, prepare, DataError,
     r"'data' must be a uint8 array of shape \(n, 3072\).*got uint8 array \(2, 3000\)"),
    ("cifar_label_range", "CIFAR test batch with label 10 (10 classes)", cifar_label_range, prepare, DataError,
     r"label 10 at row 1 is out of range 0\.\.9"),
    ("cifar_truncated", "CIFAR batch pickle cut to half", cifar_truncated, prepare, DataError,
     r"not a readable CIFAR-10 python pickle"),
    ("cifar_missing_batch", "CIFAR test_batch deleted", cifar_missing_batch, prepare, DataError,
     r"CIFAR-10 file missing \(expected layout"),
    ("nifti_2d", "MosMed study holding a 2D image", nifti_2d, prepare, DataError,
     r"expected a 3D volume, got shape \(16, 16\)"),
    ("nifti_4d", "MosMed study holding two volumes (4D)", nifti_4d, prepare, DataError,
     r"expected a 3D volume, got shape \(16, 16, 8, 2\)"),
    ("nifti_truncated", "MosMed .nii.gz cut to half", nifti_truncated, prepare, DataError,
     r"cannot read NIfTI volume .*\(expected layout"),
    ("dicom_no_pixels", "DICOM CT slice with PixelData deleted", dicom_no_pixels, prepare, DataError,
     r"DICOM file without pixel data \(not an image slice\)"),
    ("dicom_garbage", "text file in a DICOM series folder", dicom_garbage, prepare, DataError,
     r"not a DICOM file; every file in a series folder must be a slice"),
    ("brats_seg_labels", "BraTS seg with label 3 (allowed 0, 1, 2, 4)", brats_seg_labels, prepare, DataError,
     r"seg values \[3\] outside the BraTS labels \[0, 1, 2, 4\]"),
    ("brats_missing_seg", "BraTS case without its seg file", brats_missing_seg, prepare, DataError,
     r"seg file of case 'BraTS2021_00000' not found .*\(expected layout"),
    ("brats_flair_4d", "BraTS FLAIR holding three volumes", brats_flair_4d, prepare, DataError,
     r"expected a 3D volume, got shape \(16, 16, 8, 3\)"),
    ("street_missing_image", "street CSV row whose image is deleted", street_missing_image, prepare, DataError,
     r"image named in .*labels\.csv row \d+ .*not found"),
    ("street_bad_label", "street CSV label 'maybe'", street_bad_label, prepare, DataError,
     r"label 'maybe' is not one of hotspot, non_hotspot"),
    ("street_row_leaves_root", "street CSV row naming ../../outside.jpg (a file that exists)", street_row_leaves_root,
     prepare, DataError, r"filename '\.\./\.\./outside\.jpg' must be a path relative to the root"),
    ("street_row_absolute", "street CSV row naming an absolute path (a file that exists)", street_row_absolute,
     prepare, DataError, r"filename '/.*outside\.jpg' must be a path relative to the root"),
    ("street_mixed_sizes", "street JPEG 48x32 among 32x32", street_mixed_sizes, prepare, DataError,
     r"image size 48x32 differs from 32x32 .*set the option image_size"),
    ("dataset_truncated", "dataset HDF5 cut to half", dataset_truncated, dataset, ValueError,
     r"not a readable HDF5 dataset file"),
    ("dataset_garbage", "HDF5 signature followed by garbage", dataset_garbage, dataset, ValueError,
     r"not a readable HDF5 dataset file"),
    ("dataset_no_images", "dataset HDF5 without /images", dataset_no_images, dataset, ValueError,
     r"not a cambench dataset file, missing \['images'\]"),
    ("dataset_no_labels", "dataset HDF5 without /labels", dataset_no_labels, dataset, ValueError,
     r"not a cambench dataset file, missing \['labels'\]"),
    ("dataset_label_range", "dataset label 5 with 2 classes", dataset_label_range, dataset, ValueError,
     r"label 5 at index 3 is out of range 0\.\.1 \(expected a class index"),
    ("dataset_short_labels", "dataset with one label fewer than images", dataset_short_labels, dataset,
     ValueError, r"'images' has 6 entries but 'labels' has 5 \(expected one per item\)"),
    ("dataset_corrupt_chunk", "dataset with one image chunk overwritten", dataset_corrupt_chunk, dataset,
     ValueError, r"cannot read the dataset file"),
    ("dataset_missing", "the dataset file does not exist", dataset_missing, dataset, FileNotFoundError,
     r"dataset file not found"),
    ("ckpt_shapes", "checkpoint with a 5-class head for a 3-class model", ckpt_shapes, checkpoint, ValueError,
     r"weights do not match architecture 'small_cnn': shape mismatch 'fc\.weight' file \(5, 8\) vs model \(3, 8\)"),
    ("ckpt_keys", "checkpoint whose fc.weight is renamed head.weight", ckpt_keys, checkpoint, ValueError,
     r"weights do not match architecture 'small_cnn': missing \['fc\.weight'\], unexpected \['head\.weight'\]"),
    ("ckpt_architecture", "checkpoint naming an unknown architecture", ckpt_architecture, checkpoint, ValueError,
     r"cannot build architecture 'no_such_net'.*unknown architecture 'no_such_net'"),
    ("ckpt_no_state_dict", "cambench checkpoint without its state_dict", ckpt_no_state_dict, checkpoint,
     ValueError, r"not a cambench checkpoint, missing \['state_dict'\]"),
    ("ckpt_plain_state_dict", "a bare state_dict, not a cambench checkpoint", ckpt_plain_state_dict, checkpoint,
     ValueError, r"not a cambench checkpoint \(expected a dict with format 'cambench-checkpoint-1'\)"),
    ("ckpt_garbage", "bytes that are no torch file at all", ckpt_garbage, checkpoint, ValueError,
     r"cannot load checkpoint with weights_only=True"),
    ("ckpt_truncated", "checkpoint cut to 60 % of its bytes", ckpt_truncated, checkpoint, ValueError,
     r"cannot load checkpoint with weights_only=True"),
    ("ckpt_missing", "the checkpoint file does not exist", ckpt_missing, checkpoint, FileNotFoundError,
     r"checkpoint not found"),
    ("weights_shapes", "5-class weights loaded into a 3-class model", weights_shapes, weights, ValueError,
     r"do not fit the model: shape mismatch 'fc\.weight' file \(5, 8\) vs model \(3, 8\)"),
    ("heatmaps_truncated", "heatmap HDF5 cut to half", heatmaps_truncated, heatmaps, ValueError,
     r"not a readable heatmap file"),
    ("heatmaps_no_flags", "heatmap HDF5 without /flags/gradcam", heatmaps_no_flags, heatmaps, ValueError,
     r"not a cambench heatmap file, missing \['flags/gradcam'\]"),
    ("heatmaps_no_labels", "heatmap HDF5 without /labels", heatmaps_no_labels, heatmaps, ValueError,
     r"not a cambench heatmap file, missing \['labels'\]"),
    ("heatmaps_missing", "the heatmap file does not exist", heatmaps_missing, heatmaps, FileNotFoundError,
     r"heatmap file not found"),
]


def test_cases_are_named_once_and_described():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) >= 18
    assert all(re.fullmatch(r"[a-z0-9_]+", i) for i in ids)
    assert all(c[1] and "\n" not in c[1] for c in CASES)


@pytest.mark.parametrize("build, call, error, expected", [pytest.param(*c[2:], id=c[0]) for c in CASES])
def test_corrupt_or_missing_input_is_named_and_leaves_nothing(tmp_path, build, call, error, expected):
    built = build(tmp_path)
    with pytest.raises(Exception) as info:
        call(built)
    err = info.value
    message = str(err)
    assert type(err) is error, f"{type(err).__name__}: {message}"   # the project's error, not a library's
    assert str(built.bad) in message, message                         # names the offending file
    assert re.search(expected, message), message                      # and says what was wrong / expected
    if built.out is not None:                                          # prepare: no output, no temporary file
        assert not built.out.exists()
        assert list(built.out.parent.iterdir()) == []


# The same inputs undamaged go through the same entry points: each error above comes from the damage.
INTACT = [
    ("imagefolder", lambda tmp: Built(_shapes(tmp), tmp, "imagefolder", {}, _out(tmp)), prepare),
    ("cifake", lambda tmp: Built(_cifake(tmp), tmp, "cifake", {}, _out(tmp)), prepare),
    ("cifar10", lambda tmp: Built(_cifar(tmp), tmp, "cifar10", {}, _out(tmp)), prepare),
    ("mosmed", lambda tmp: Built(_mosmed(tmp)[0], tmp, "mosmed", CT_OPTIONS, _out(tmp)), prepare),
    ("dicom_ct", lambda tmp: Built(_dicom(tmp)[0], tmp, "dicom_ct", CT_OPTIONS, _out(tmp)), prepare),
    ("brats", lambda tmp: Built(_brats(tmp), tmp, "brats", {"test_fraction": 0.5}, _out(tmp)), prepare),
    ("street", lambda tmp: Built(_street(tmp), tmp, "street", {"test_fraction": 0.5}, _out(tmp)), prepare),
    ("dataset", lambda tmp: Built(_dataset(tmp), tmp), dataset),
    ("checkpoint", lambda tmp: Built(_checkpoint(tmp), tmp), checkpoint),
    ("heatmaps", lambda tmp: Built(_heatmaps(tmp), tmp), heatmaps),
]


@pytest.mark.parametrize("build, call", [pytest.param(b, c, id=i) for i, b, c in INTACT])
def test_the_undamaged_input_loads(tmp_path, build, call):
    built = build(tmp_path)
    call(built)
    if built.out is not None:
        assert built.out.is_file() and [p.name for p in built.out.parent.iterdir()] == [built.out.name]
        assert len(read_dataset(built.out)) > 0
