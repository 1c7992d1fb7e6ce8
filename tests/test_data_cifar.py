"""CIFAR-10 (python batches) and CIFAKE: readers, stand-ins, the restricted unpickler, errors."""
import hashlib
import importlib.util
import os
import pickle
import pickletools
import re
import shlex
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from cambench.data import DataError, check_source, cifake, cifar, generate_standin, prepare, read_dataset, read_source

TRAIN, TEST = 6, 2          # cifar10 stand-in: images per class and split
FAKE_TRAIN, FAKE_TEST = 12, 4


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _foolbox_cifar10() -> list[Path]:
    spec = importlib.util.find_spec("foolbox")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("foolbox (the 20 real CIFAR-10 PNGs) is not installed")
    files = sorted((Path(spec.submodule_search_locations[0]) / "data").glob("cifar10_*_*.png"))
    assert len(files) == 20
    return files


@pytest.fixture(scope="module")
def cifar_standin(tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar_standin")
    generate_standin("cifar10", out, counts={"train": TRAIN, "test": TEST}, seed=3)
    return out


@pytest.fixture(scope="module")
def cifar_prepared(cifar_standin, tmp_path_factory):
    h5 = tmp_path_factory.mktemp("cifar_h5") / "ds.h5"
    summary = prepare("cifar10", cifar_standin / "data", h5, mask_root=cifar_standin / "masks")
    return h5, summary


@pytest.fixture(scope="module")
def cifake_standin(tmp_path_factory):
    out = tmp_path_factory.mktemp("cifake_standin")
    generate_standin("cifake", out, counts={"train": FAKE_TRAIN, "test": FAKE_TEST}, seed=5)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------------
# CIFAR-10: the stand-in through prepare()
# ------------------------------------------------------------------------------------------------

def test_cifar_standin_round_trip(cifar_standin, cifar_prepared):
    h5, summary = cifar_prepared
    assert summary["classes"] == list(cifar.CLASSES)
    assert summary["counts"] == {"test": 10 * TEST, "train": 10 * TRAIN} and summary["shape"] == [3, 32, 32]
    ds = read_dataset(h5)
    data = cifar_standin / "data"
    with h5py.File(h5) as f:
        source, sums = f["source"].asstr()[:], f["sha256"].asstr()[:]
        filenames = f["meta/filename"].asstr()[:]
    assert ds.masks.shape == (len(ds), 32, 32) and ds.masks.dtype == bool
    id_pattern = re.compile(r"^(train|test)/([a-z]+)/(data_batch_[1-5]|test_batch)-(\d{5})$")
    plain = {name: pickle.loads((data / name).read_bytes(), encoding="bytes")
             for name in ["test_batch"] + [f"data_batch_{b}" for b in range(1, 6)]}
    for i, image_id in enumerate(ds.ids):
        m = id_pattern.match(image_id)
        assert m, image_id
        split, cls, name, row = m.group(1), m.group(2), m.group(3), int(m.group(4))
        assert (split == "test") == (name == "test_batch") and source[i] == name
        assert ds.class_names[ds.labels[i]] == cls
        assert sums[i] == _sha(data / name)
        batch = plain[name]
        assert batch[b"labels"][row] == ds.labels[i]
        assert batch[b"filenames"][row].decode() == filenames[i]
        # the CIFAR pixel layout: 1024 R, 1024 G, 1024 B values, each plane row-major
        r, g, b = batch[b"data"][row, 5 * 32 + 7], batch[b"data"][row, 1024 + 5 * 32 + 7], \
            batch[b"data"][row, 2048 + 31 * 32 + 0]
        assert (ds.images[i, 0, 5, 7], ds.images[i, 1, 5, 7], ds.images[i, 2, 31, 0]) == (r, g, b)
        assert np.array_equal(ds.images[i], batch[b"data"][row].reshape(3, 32, 32))
        mask = np.asarray(Image.open(cifar_standin / "masks" / f"{image_id}.png")) > 0
        assert np.array_equal(ds.masks[i], mask)
    # training images are spread over the five batches: class c's image i in data_batch_{i % 5 + 1}
    per_batch = {name: len(batch[b"labels"]) for name, batch in plain.items()}
    assert per_batch == {"data_batch_1": 20, "data_batch_2": 10, "data_batch_3": 10, "data_batch_4": 10,
                         "data_batch_5": 10, "test_batch": 10 * TEST}
    assert len(set(ds.keys.tolist())) == len(ds)


def test_cifar_standin_objects_carry_the_class(cifar_prepared):
    """Planted truth: one object per image, its shape and colour family (warm 0-4, cool 5-9) give the class."""
    ds = read_dataset(cifar_prepared[0])
    assert cifar.standin_class(0) == ("disk", "warm") and cifar.standin_class(9) == ("ring", "cool")
    for img, mask, label in zip(ds.images, ds.masks, ds.labels):
        assert 0.02 < mask.mean() < 0.5
        rgb = img[:, mask].astype(float).mean(axis=1)
        if label < 5:
            assert rgb[0] > rgb[2] + 60, (label, rgb)   # warm: red well above blue
        else:
            assert rgb[2] > rgb[0] + 60, (label, rgb)   # cool: blue well above red
        assert img[:, mask].astype(float).std(axis=1).max() < 20  # one flat colour up to noise
    # disks fill their bounding box more than rings, crosses or triangles do
    fill = {}
    for mask, label in zip(ds.masks, ds.labels):
        ys, xs = np.nonzero(mask)
        fill.setdefault(cifar.standin_class(label)[0], []).append(
            mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
    assert np.mean(fill["disk"]) > 0.7 > max(np.mean(fill["ring"]), np.mean(fill["cross"]), np.mean(fill["triangle"]))


def test_cifar_standin_files_are_python2_pickles(cifar_standin):
    data = cifar_standin / "data"
    assert sorted(p.name for p in data.iterdir()) == sorted(
        ["batches.meta", "test_batch"] + [f"data_batch_{b}" for b in range(1, 6)])
    raw = (data / "data_batch_1").read_bytes()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    names = {name for name, _ in ops}
    assert ops[0] == ("PROTO", 2)
    assert {"SHORT_BINSTRING", "BINSTRING"} <= names                 # Python-2 str opcodes
    assert not names & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}
    globals_ = {arg for name, arg in ops if name == "GLOBAL"}
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    batch = pickle.loads(raw, encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"batch_label"] == b"training batch 1 of 5"
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (20, 3072)
    assert isinstance(batch[b"labels"], list) and all(isinstance(v, int) for v in batch[b"labels"])
    meta = pickle.loads((data / "batches.meta").read_bytes(), encoding="bytes")
    assert meta[b"label_names"] == [c.encode() for c in cifar.CLASSES] and meta[b"num_vis"] == 3072


def test_cifar_standin_is_reproducible(cifar_standin, tmp_path):
    generate_standin("cifar10", tmp_path, counts={"train": TRAIN, "test": TEST}, seed=3)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        assert (tmp_path / "data" / name).read_bytes() == (cifar_standin / "data" / name).read_bytes()
    generate_standin("cifar10", tmp_path / "other", counts={"train": TRAIN, "test": TEST}, seed=4)
    assert (tmp_path / "other/data/test_batch").read_bytes() != (cifar_standin / "data/test_batch").read_bytes()


def test_cifar_options(cifar_standin, cifar_prepared):
    data = cifar_standin / "data"
    full = read_dataset(cifar_prepared[0])
    one = read_source("cifar10", data, {"limit_per_class": 1})
    assert len(one.ids) == 20 and sorted(one.labels[:10].tolist()) == list(range(10))
    for split in ("train", "test"):  # the first image of each class in file order
        for cls in cifar.CLASSES:
            first = next(i for i in full.ids if i.startswith(f"{split}/{cls}/"))
            assert first in one.ids
    only2 = read_source("cifar10", data, {"batches": [2]})
    assert set(only2.source) == {"data_batch_2", "test_batch"} and len(only2.ids) == 10 + 10 * TEST
    gray = read_source("cifar10", data, {"batches": [3]}, channels=1)
    rgb = read_source("cifar10", data, {"batches": [3]})
    assert gray.images.shape == (len(rgb.ids), 1, 32, 32) and gray.ids == rgb.ids
    for k in (0, 7):
        pil_l = np.asarray(Image.fromarray(rgb.images[k].transpose(1, 2, 0), "RGB").convert("L"))
        assert np.array_equal(gray.images[k, 0], pil_l)
    for bad in ({"batches": [6]}, {"batches": [1, 1]}, {"batches": []}, {"limit_per_class": -1},
                {"limit_per_class": 1.5}):
        with pytest.raises(DataError, match="option"):
            read_source("cifar10", data, bad)
    with pytest.raises(ValueError, match="unknown parameter"):
        read_source("cifar10", data, {"batch": [1]})


def test_cifar_missing_file_names_it_and_the_layout(cifar_standin, tmp_path):
    root = _copy(cifar_standin / "data", tmp_path / "cifar")
    (root / "data_batch_3").unlink()
    for call in (lambda: check_source("cifar10", root), lambda: read_source("cifar10", root)):
        with pytest.raises(DataError, match=r"data_batch_3.*expected layout <root>/data_batch_1"):
            call()
    check_source("cifar10", root, {"batches": [1, 2, 4, 5]})  # not needed: fine
    assert len(read_source("cifar10", root, {"batches": [1, 2, 4, 5]}).ids) == 10 * (TRAIN - 1) + 10 * TEST
    (root / "batches.meta").unlink()
    with pytest.raises(DataError, match=r"batches\.meta.*expected layout"):
        check_source("cifar10", root)
    with pytest.raises(DataError, match=r"nowhere.*expected layout"):
        check_source("cifar10", tmp_path / "nowhere")


def test_cifar_nested_batch_folder(cifar_standin, tmp_path):
    _copy(cifar_standin / "data", tmp_path / "root" / "cifar-10-batches-py")
    got = read_source("cifar10", tmp_path / "root", {"batches": [1]})
    assert set(got.source) == {"cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch"}
    assert got.ids[0].endswith("/data_batch_1-00000")


# ------------------------------------------------------------------------------------------------
# CIFAR-10: real images and hostile or broken files
# ------------------------------------------------------------------------------------------------

def test_real_cifar10_images_round_trip(tmp_path):
    files = _foolbox_cifar10()
    images = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in files])
    labels = [int(p.stem.split("_")[2]) for p in files]
    names = [p.name for p in files]
    root = tmp_path / "real"
    root.mkdir()
    cifar.write_batch(root / "data_batch_1", images[:14], labels[:14], names[:14], "training batch 1 of 5")
    cifar.write_batch(root / "test_batch", images[14:], labels[14:], names[14:], "testing batch 1 of 1")
    cifar.write_meta(root / "batches.meta")
    # what the writer produced loads with plain pickle, as the real files do
    plain = pickle.loads((root / "data_batch_1").read_bytes(), encoding="bytes")
    assert set(plain) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert plain[b"labels"] == labels[:14] and plain[b"filenames"] == [n.encode() for n in names[:14]]
    assert np.array_equal(plain[b"data"], images[:14].reshape(14, 3072))
    got = read_source("cifar10", root, {"batches": [1]})
    assert got.split == ["train"] * 14 + ["test"] * 6
    assert got.labels.tolist() == labels
    assert np.array_equal(got.images, images)
    assert got.ids[0] == f"train/{cifar.CLASSES[labels[0]]}/data_batch_1-00000"
    assert got.ids[14] == f"test/{cifar.CLASSES[labels[14]]}/test_batch-00000"
    assert list(got.meta["filename"]) == names
    png = np.asarray(Image.open(files[3]).convert("RGB"))
    assert tuple(got.images[3][:, 10, 20]) == tuple(png[10, 20])  # (R, G, B) at row 10, column 20
    assert cifar.read_meta(root / "batches.meta") == list(cifar.CLASSES)


class _Payload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_batch_is_refused_without_running(cifar_standin, tmp_path, protocol):
    root = _copy(cifar_standin / "data", tmp_path / "cifar")
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"data": _Payload(f"touch {shlex.quote(str(marker))}"), "labels": []}, protocol=protocol)
    # the payload is real: plain pickle would run it
    control = tmp_path / "control"
    pickle.loads(pickle.dumps({"data": _Payload(f"touch {shlex.quote(str(control))}")}, protocol=protocol))
    assert control.exists()
    (root / "data_batch_2").write_bytes(evil)
    check_source("cifar10", root)  # the cheap check only looks at the files' presence
    with pytest.raises(DataError, match=r"data_batch_2.*refused.*(posix|os)\.system"):
        read_source("cifar10", root)
    assert not marker.exists()


def test_other_globals_are_refused(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": Path("x")}, protocol=3))
    with pytest.raises(DataError, match=r"test_batch.*refused.*pathlib"):
        cifar.load_pickle(path)
    path.write_bytes(pickle.dumps({b"labels": [1, 2]}, protocol=3))
    assert cifar.load_pickle(path) == {b"labels": [1, 2]}  # plain containers need no global


def test_a_batch_repickled_by_python3_at_protocol_2_loads(tmp_path):
    # Python 3 writes bytes at protocol <= 2 through _codecs.encode(text, "latin1"): admitted for
    # latin1 only, and only as a bytes constructor.
    batch = {b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251, b"labels": [3, 7],
             b"batch_label": b"testing batch 1 of 1", b"filenames": [b"a.png", b"b.png"]}
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    assert b"_codecs" in path.read_bytes()
    loaded = cifar.load_pickle(path)
    assert loaded[b"filenames"] == [b"a.png", b"b.png"] and np.array_equal(loaded[b"data"], batch[b"data"])
    path.write_bytes(b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DataError, match=r"test_batch"):
        cifar.load_pickle(path)


def _write_raw(path, obj):
    path.write_bytes(cifar.dumps_py2(obj))


@pytest.mark.parametrize("case, pattern", [
    ("shape", r"'data' must be a uint8 array of shape \(n, 3072\)"),
    ("dtype", r"'data' must be a uint8 array"),
    ("labels_length", r"'labels' must be 4 integers"),
    ("label_range", r"label 10 at row 2 is out of range 0\.\.9"),
    ("missing_key", r"key 'filenames' missing"),
    ("not_a_dict", r"expected the dict"),
    ("garbage", r"not a readable CIFAR-10 python pickle"),
])
def test_cifar_broken_batch_names_the_file(cifar_standin, tmp_path, case, pattern):
    root = _copy(cifar_standin / "data", tmp_path / "cifar")
    good = {b"batch_label": b"training batch 4 of 5", b"labels": [0, 1, 2, 3],
            b"data": np.zeros((4, 3072), np.uint8), b"filenames": [b"a", b"b", b"c", b"d"]}
    path = root / "data_batch_4"
    if case == "shape":
        _write_raw(path, {**good, b"data": np.zeros((4, 3000), np.uint8)})
    elif case == "dtype":
        path.write_bytes(pickle.dumps({**good, b"data": np.zeros((4, 3072), np.float32)}, protocol=3))
    elif case == "labels_length":
        _write_raw(path, {**good, b"labels": [0, 1, 2]})
    elif case == "label_range":
        _write_raw(path, {**good, b"labels": [0, 1, 10, 3]})
    elif case == "missing_key":
        _write_raw(path, {k: v for k, v in good.items() if k != b"filenames"})
    elif case == "not_a_dict":
        _write_raw(path, [1, 2, 3])
    else:
        path.write_bytes(b"\x80\x02}q\x00(U\x04data")  # truncated
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + pattern):
        read_source("cifar10", root)


# ------------------------------------------------------------------------------------------------
# CIFAKE
# ------------------------------------------------------------------------------------------------

def test_cifake_names_follow_the_real_scheme(cifake_standin):
    data = cifake_standin / "data"
    assert sorted(p.name for p in data.iterdir()) == ["test", "train"]
    for split, n in (("train", FAKE_TRAIN), ("test", FAKE_TEST)):
        for cls in ("FAKE", "REAL"):
            names = sorted(p.name for p in (data / split / cls).iterdir())
            assert names == sorted(f"{cifake.file_stem(j // 10, j % 10)}.jpg" for j in range(n))
            assert all(re.fullmatch(r"\d+( \(([2-9]|10)\))?\.jpg", name) for name in names)
    assert (data / "train/REAL/0.jpg").exists() and (data / "train/REAL/0 (10).jpg").exists()
    assert (data / "train/FAKE/1 (2).jpg").exists()
    with Image.open(data / "train/FAKE/0 (3).jpg") as im:
        assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"


def test_cifar_class_mapping():
    assert cifake.cifar_class("17") == "airplane"
    assert cifake.cifar_class("17 (2)") == "automobile"
    assert cifake.cifar_class("0 (5)") == "deer"
    assert cifake.cifar_class("3 (10)") == "truck"
    for stem in ("3 (1)", "3 (11)", "img", "3(2)"):
        assert cifake.cifar_class(stem) == "unknown"


def test_cifake_standin_round_trip(cifake_standin, tmp_path):
    data = cifake_standin / "data"
    summary = prepare("cifake", data, tmp_path / "ds.h5", mask_root=cifake_standin / "masks")
    assert summary["classes"] == ["FAKE", "REAL"]
    assert summary["counts"] == {"test": 2 * FAKE_TEST, "train": 2 * FAKE_TRAIN}
    ds = read_dataset(tmp_path / "ds.h5")
    with h5py.File(tmp_path / "ds.h5") as f:
        source, sums = f["source"].asstr()[:], f["sha256"].asstr()[:]
        cifar_classes = f["meta/cifar_class"].asstr()[:]
    assert ds.masks.shape == (len(ds), 32, 32)
    assert "train/FAKE/0 (2)" in ds.ids and "test/REAL/0" in ds.ids
    corners = np.zeros((32, 32), bool)
    corners[:8, :8] = corners[:8, -8:] = corners[-8:, :8] = corners[-8:, -8:] = True
    for i, image_id in enumerate(ds.ids):
        split, cls, stem = image_id.split("/")
        assert source[i] == f"{split}/{cls}/{stem}.jpg" and sums[i] == _sha(data / source[i])
        assert ds.labels[i] == ["FAKE", "REAL"].index(cls)
        assert cifar_classes[i] == cifake.cifar_class(stem) != "unknown"
        assert np.array_equal(ds.images[i], np.asarray(Image.open(data / source[i])).transpose(2, 0, 1))
        if cls == "REAL":
            assert not ds.masks[i].any()
        else:
            assert ds.masks[i].sum() >= 16 and not (ds.masks[i] & ~corners).any()


def test_cifake_artefact_survives_jpeg(cifake_standin):
    """A fixed checkerboard detector on the decoded JPEGs tells FAKE from REAL on every stand-in image."""
    data, masks = cifake_standin / "data", cifake_standin / "masks"
    yy, xx = np.mgrid[0:32, 0:32]
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0)
    blocks = [(slice(0, 8), slice(0, 8)), (slice(0, 8), slice(24, 32)),
              (slice(24, 32), slice(0, 8)), (slice(24, 32), slice(24, 32))]
    scores = {"FAKE": [], "REAL": []}
    for path in sorted(data.rglob("*.jpg")):
        gray = np.asarray(Image.open(path).convert("L")).astype(float)
        cls = path.parent.name
        mask = np.asarray(Image.open(masks / path.relative_to(data).with_suffix(".png"))) > 0
        response = gray * checker
        if cls == "FAKE":
            scores[cls].append(abs(response[mask].mean()))
        else:
            scores[cls].append(max(abs(response[b].mean()) for b in blocks))
    assert len(scores["FAKE"]) == len(scores["REAL"]) == FAKE_TRAIN + FAKE_TEST
    assert min(scores["FAKE"]) > 4.0 > max(scores["REAL"]), scores


def test_cifake_errors_name_the_file_and_layout(cifake_standin, tmp_path):
    root = _copy(cifake_standin / "data", tmp_path / "cifake")
    read_source("cifake", root)  # the copy is valid
    with pytest.raises(DataError, match=r"expected 30x30 .*option image_size"):
        read_source("cifake", root, {"image_size": 30})
    small = root / "train/REAL/99 (4).jpg"
    Image.new("RGB", (30, 32), (9, 9, 9)).save(small)
    with pytest.raises(DataError, match=re.escape(str(small)) + r": image is 30x32, expected 32x32"):
        read_source("cifake", root)
    small.unlink()
    (root / "train/OTHER").mkdir()
    (root / "train/OTHER/1.jpg").write_bytes((root / "train/REAL/0.jpg").read_bytes())
    with pytest.raises(DataError, match=r"unexpected class folder.*OTHER"):
        read_source("cifake", root)
    shutil.rmtree(root / "train/OTHER")
    (root / "test/FAKE/0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"test/FAKE/0\.jpg: cannot decode"):
        read_source("cifake", root)
    shutil.rmtree(root / "test/FAKE")
    for call in (lambda: check_source("cifake", root), lambda: read_source("cifake", root)):
        with pytest.raises(DataError, match=r"test/FAKE.*missing.*expected layout <root>/\{train,test\}/\{REAL,FAKE\}"):
            call()


def test_cifake_limit_and_grayscale(cifake_standin):
    data = cifake_standin / "data"
    got = read_source("cifake", data, {"limit_per_class": 3}, channels=1)
    assert len(got.ids) == 12 and got.images.shape == (12, 1, 32, 32)
    first = sorted((data / "train/FAKE").iterdir())[:3]
    assert got.ids[:3] == [f"train/FAKE/{p.stem}" for p in first]
    assert np.array_equal(got.images[0, 0], np.asarray(Image.open(first[0]).convert("L")))
    with pytest.raises(DataError, match="limit_per_class"):
        read_source("cifake", data, {"limit_per_class": -2})


def test_cifake_standin_is_reproducible(cifake_standin, tmp_path):
    generate_standin("cifake", tmp_path, counts={"train": FAKE_TRAIN, "test": FAKE_TEST}, seed=5)
    for rel in ("train/FAKE/0 (7).jpg", "test/REAL/0 (4).jpg"):
        assert (tmp_path / "data" / rel).read_bytes() == (cifake_standin / "data" / rel).read_bytes()
    with pytest.raises(ValueError, match="'train' and 'test' only"):
        generate_standin("cifake", tmp_path / "x", counts={"val": 2}, seed=0)
    with pytest.raises(ValueError, match="'test' \\(test_batch\\) only"):
        generate_standin("cifar10", tmp_path / "y", counts={"val": 2}, seed=0)
