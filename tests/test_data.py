import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from cambench.data import DataError, generate_shapes, prepare_image_folder, read_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root / "images", root / "masks", {"train": 4, "test": 2}, classes=["disk", "cross", "ring"],
                    image_size=32, seed=7)
    return root


def test_standin_is_a_class_folder_set_with_masks_on_the_objects(shapes):
    files = sorted((shapes / "images").rglob("*.png"))
    assert len(files) == 3 * 6
    assert sorted(p.name for p in (shapes / "images" / "train").iterdir()) == ["cross", "disk", "ring"]
    for f in files:
        mask = np.asarray(Image.open(shapes / "masks" / f.relative_to(shapes / "images"))) > 0
        img = np.asarray(Image.open(f)).astype(float)
        assert 0.01 < mask.mean() < 0.5
        # the object is one flat colour (up to pixel noise): low spread inside the mask
        assert img[mask].std(axis=0).max() < 25


def test_standin_is_reproducible(tmp_path, shapes):
    generate_shapes(tmp_path / "i", tmp_path / "m", {"train": 4, "test": 2}, classes=["disk", "cross", "ring"],
                    image_size=32, seed=7)
    a = (shapes / "images/train/ring/ring_00003.png").read_bytes()
    assert a == (tmp_path / "i/train/ring/ring_00003.png").read_bytes()


def test_prepare_round_trip(shapes, tmp_path):
    out = tmp_path / "ds.h5"
    summary = prepare_image_folder(shapes / "images", out, shapes / "masks")
    assert summary["counts"] == {"test": 6, "train": 12} and summary["classes"] == ["cross", "disk", "ring"]
    test = read_dataset(out, "test")
    assert test.images.shape == (6, 3, 32, 32) and test.images.dtype == np.uint8
    assert test.masks.shape == (6, 32, 32) and test.masks.dtype == bool
    assert list(test.ids[:2]) == ["test/cross/cross_00000", "test/cross/cross_00001"]
    assert test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    with h5py.File(out) as f:
        src, sums = f["source"].asstr()[:], f["sha256"].asstr()[:]
    for rel, digest in zip(src, sums):
        assert hashlib.sha256((shapes / "images" / rel).read_bytes()).hexdigest() == digest
    img = np.asarray(Image.open(shapes / "images/test/ring/ring_00001.png"))
    assert np.array_equal(test.images[5].transpose(1, 2, 0), img)


def _copy_tree(src: Path, dst: Path):
    for p in src.rglob("*.png"):
        q = dst / p.relative_to(src)
        q.parent.mkdir(parents=True, exist_ok=True)
        q.write_bytes(p.read_bytes())


@pytest.mark.parametrize("case", ["missing_root", "corrupt", "truncated", "mixed_size", "missing_mask",
                                  "empty_class", "no_split"])
def test_bad_folders_name_the_file_and_write_nothing(shapes, tmp_path, case):
    root, masks = tmp_path / "images", tmp_path / "masks"
    _copy_tree(shapes / "images", root)
    _copy_tree(shapes / "masks", masks)
    victim = root / "train/disk/disk_00001.png"
    expected = str(victim)
    if case == "missing_root":
        root, expected = tmp_path / "nope", "nope"
    elif case == "corrupt":
        victim.write_bytes(b"not a png at all")
    elif case == "truncated":
        victim.write_bytes(victim.read_bytes()[:200])
    elif case == "mixed_size":
        Image.new("RGB", (20, 20)).save(victim)
    elif case == "missing_mask":
        (masks / "train/disk/disk_00001.png").unlink()
        expected = "disk_00001.png: mask missing"
    elif case == "empty_class":
        for p in (root / "train/disk").iterdir():
            p.unlink()
        expected = "train/disk: class 'disk' has no images"
    elif case == "no_split":
        expected = "split folder"
    out = tmp_path / "ds.h5"
    with pytest.raises(DataError) as err:
        prepare_image_folder(root, out, masks, splits=["train", "val"] if case == "no_split" else None)
    assert expected in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".ds.h5*"))


def test_read_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset file not found"):
        read_dataset(tmp_path / "x.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        read_dataset(bad)
    with h5py.File(tmp_path / "partial.h5", "w") as f:
        f["labels"] = [1, 2]
    with pytest.raises(ValueError, match="missing"):
        read_dataset(tmp_path / "partial.h5")
