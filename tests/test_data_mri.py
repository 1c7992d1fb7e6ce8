"""The BraTS 2021 reader ("brats") and its stand-in: slicing rule, normalisation, masks, splits,
modes, resizing, a real NIfTI file, and the errors that name the offending file or option."""
import hashlib
import os
import shutil

import h5py
import nibabel as nib
import nibabel.testing
import numpy as np
import pytest
from PIL import Image

import cambench.data as data
from cambench.data import DataError, check_source, mri, prepare, read_dataset

SHAPE = (32, 32, 16)
N_CASES = 6
ANATOMICAL = os.path.join(nibabel.testing.data_path, "anatomical.nii")


def load(path):
    return np.asanyarray(nib.load(str(path)).dataobj)


def case_file(root, case, kind):
    for suffix in (".nii.gz", ".nii"):
        path = root / case / f"{case}_{kind}{suffix}"
        if path.exists():
            return path
    raise AssertionError(f"no {kind} file for {case}")


def expected_uint8(volume):
    """The documented normalisation: rint(255 * (v - min) / (max - min)) over the whole volume."""
    v = volume.astype(np.float64)
    return np.rint((v - v.min()) / (v.max() - v.min()) * 255).astype(np.uint8)


def read_all(path):
    """Dataset plus the meta columns (read_dataset does not load them)."""
    ds = read_dataset(path)
    with h5py.File(path, "r") as f:
        meta = {k: (f["meta"][k].asstr()[:] if f["meta"][k].dtype.kind == "O" else f["meta"][k][:])
                for k in f["meta"]}
        split = f["split"].asstr()[:]
        source = f["source"].asstr()[:]
        sha = f["sha256"].asstr()[:]
    return ds, meta, split, source, sha


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    out = tmp_path_factory.mktemp("brats_standin")
    data.generate_standin("brats", out, counts={"train": N_CASES - 1, "test": 1}, seed=3, shape=list(SHAPE),
                         tumour_radius=[2.5, 4.5])
    return out / "data"


@pytest.fixture(scope="module")
def prepared(standin, tmp_path_factory):
    """Prepare once per option set within the module."""
    cache = {}
    folder = tmp_path_factory.mktemp("brats_h5")

    def get(**options):
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
        if key not in cache:
            path = folder / f"ds{len(cache)}.h5"
            prepare("brats", standin, path, options=options, seed=0)
            cache[key] = read_all(path)
        return cache[key]
    return get


def cases_of(root):
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def nonblank_z(root, case, modalities, zs):
    seg = load(case_file(root, case, "seg"))
    keep = (seg[:, :, zs] > 0).any(axis=(0, 1))
    for m in modalities:
        v = load(case_file(root, case, m))
        keep |= (v[:, :, zs] > v.min()).any(axis=(0, 1))
    return [int(z) for z in np.asarray(zs)[keep]]


# ------------------------------------------------------------------------------------------------
# Registration and the stand-in files
# ------------------------------------------------------------------------------------------------

def test_registered_with_its_standin():
    entry = data.FORMATS.get("brats")
    assert entry.meta["splits"] == "assigned" and entry.meta["id_masks"] is False
    assert entry.meta["standin"] is mri.generate_brats_standin
    assert "<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz" in entry.meta["layout"]
    assert mri.brats_dims({}) == 2 and mri.brats_dims({"mode": "volumes"}) == 3
    assert entry.parameters() == {"modalities": ("flair",), "mode": "slices", "tumour_fraction": 0.01,
                                  "slice_step": 1, "drop_blank": True, "image_size": 0, "test_fraction": 0.1}
    assert not data.standin_writes_masks("brats")


def test_standin_files_like_brats(tmp_path):
    data.generate_standin("brats", tmp_path / "a", counts={"train": 1, "test": 1}, seed=5)
    root = tmp_path / "a" / "data"
    assert cases_of(root) == ["BraTS2021_00000", "BraTS2021_00001"]
    assert not (tmp_path / "a" / "masks").exists()
    for case in cases_of(root):
        names = sorted(p.name for p in (root / case).iterdir())
        assert names == sorted(f"{case}_{k}.nii.gz" for k in ("t1", "t1ce", "t2", "flair", "seg"))
        imgs = {k: nib.load(str(root / case / f"{case}_{k}.nii.gz")) for k in ("t1", "t1ce", "t2", "flair", "seg")}
        vol = {k: np.asanyarray(im.dataobj) for k, im in imgs.items()}
        for k, im in imgs.items():
            assert im.shape == (48, 48, 20)
            assert np.allclose(im.header.get_zooms(), 1.0)
            assert np.allclose(np.abs(np.diag(im.affine)[:3]), 1.0)
            assert vol[k].dtype == (np.uint8 if k == "seg" else np.int16)
        seg = vol["seg"]
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
        brain = vol["flair"] > 0
        assert (brain[seg > 0]).all() and (brain == (vol["t1"] > 0)).all()
        # Nested sub-labels: core innermost, enhancing rim, oedema outer shell.
        centre = np.argwhere(seg == 1).mean(0)
        dist = {lab: np.linalg.norm(np.argwhere(seg == lab) - centre, axis=1).mean() for lab in (1, 4, 2)}
        assert dist[1] < dist[4] < dist[2]
        healthy = brain & (seg == 0)

        def mean(k, region):
            return vol[k][region].astype(float).mean()
        assert mean("flair", seg == 2) > 1.4 * mean("flair", healthy)          # oedema bright
        assert mean("t1ce", seg == 4) > 1.3 * mean("t1ce", healthy)           # enhancing rim bright
        assert mean("t1ce", seg == 1) < min(mean("t1ce", healthy), 0.6 * mean("t1ce", seg == 4))  # core dark
        assert mean("t2", seg == 2) > 1.2 * mean("t2", healthy) and mean("t2", seg == 1) > 1.2 * mean("t2", healthy)
        assert mean("t1", seg > 0) < mean("t1", healthy)                      # tumour slightly dark
    # Deterministic per (seed, case); another seed gives other volumes.
    data.generate_standin("brats", tmp_path / "b", counts={"cases": 1}, seed=5)
    data.generate_standin("brats", tmp_path / "c", counts={"cases": 1}, seed=6)
    first = root / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz"
    same = tmp_path / "b" / "data" / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz"
    other = tmp_path / "c" / "data" / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz"
    assert first.read_bytes() == same.read_bytes() != other.read_bytes()


# ------------------------------------------------------------------------------------------------
# Slices: the 1 % rule, masks, normalisation, ids, checksums, splits
# ------------------------------------------------------------------------------------------------

def test_slices_follow_the_one_percent_rule(standin, prepared):
    ds, meta, split, source, sha = prepared()
    assert ds.class_names == ["normal", "tumor"]
    assert ds.images.shape[1:] == (1, 32, 32) and ds.images.dtype == np.uint8
    assert ds.masks.shape == (len(ds), 32, 32) and ds.mask_known is None
    counts = np.bincount(ds.labels, minlength=2)
    assert counts.min() >= 0.2 * len(ds), counts  # both classes in useful numbers
    volumes = {}
    for i in range(len(ds)):
        case, z = meta["case"][i], int(meta["z"][i])
        if case not in volumes:
            volumes[case] = (load(case_file(standin, case, "seg")),
                             expected_uint8(load(case_file(standin, case, "flair"))))
        seg, flair = volumes[case]
        label = int((seg[:, :, z] > 0).mean() > 0.01)
        assert ds.labels[i] == label
        assert np.array_equal(ds.masks[i], seg[:, :, z] > 0)
        assert np.array_equal(ds.images[i, 0], flair[:, :, z])
        assert ds.ids[i] == f"{split[i]}/{ds.class_names[label]}/{case}-{z}"
        assert source[i] == case
        assert meta["ncr_voxels"][i] == (seg[:, :, z] == 1).sum() and meta["et_voxels"][i] == (seg[:, :, z] == 4).sum()
        assert np.isclose(meta["tumour_fraction"][i], (seg[:, :, z] > 0).mean())
    # Every non-blank slice of every case, and no other.
    cases = cases_of(standin)
    assert sorted(set(meta["case"])) == cases
    for case in cases:
        got = sorted(int(z) for c, z in zip(meta["case"], meta["z"]) if c == case)
        want = nonblank_z(standin, case, ["flair"], np.arange(SHAPE[2]))
        assert got == want and len(want) < SHAPE[2]  # the stand-in has blank end slices
        digests = "".join(hashlib.sha256(case_file(standin, case, k).read_bytes()).hexdigest()
                          for k in ("flair", "seg"))
        assert set(sha[meta["case"] == case]) == {hashlib.sha256(digests.encode()).hexdigest()}


def test_splits_group_slices_by_case(standin, prepared):
    _, meta, split, _, _ = prepared()
    by_case = {}
    for case, s in zip(meta["case"], split):
        by_case.setdefault(case, set()).add(s)
    assert all(len(s) == 1 for s in by_case.values())
    assert sum(s == {"test"} for s in by_case.values()) == 1          # round(0.1 * 6) -> at least 1
    _, meta_half, split_half, _, _ = prepared(test_fraction=0.5)
    assert len({c for c, s in zip(meta_half["case"], split_half) if s == "test"}) == 3
    # A case lands in the same split in volume mode.
    _, meta_vol, split_vol, _, _ = prepared(mode="volumes")
    assert {c: s for c, s in zip(meta_vol["case"], split_vol)} == {c: s.pop() for c, s in by_case.items()}


def test_modalities_become_channels_in_order(standin, prepared):
    order = ["t2", "flair", "t1ce"]
    ds, meta, _, _, sha = prepared(modalities=order)
    assert ds.images.shape[1] == 3
    for i in range(0, len(ds), 7):
        case, z = meta["case"][i], int(meta["z"][i])
        for c, m in enumerate(order):
            assert np.array_equal(ds.images[i, c], expected_uint8(load(case_file(standin, case, m)))[:, :, z])
    case = meta["case"][0]
    digests = "".join(hashlib.sha256(case_file(standin, case, k).read_bytes()).hexdigest() for k in [*order, "seg"])
    assert sha[0] == hashlib.sha256(digests.encode()).hexdigest()
    # Blank means blank in every configured modality: the same slices as flair alone here.
    assert len(ds) == len(prepared()[0])


def test_slice_step_and_drop_blank(standin, prepared):
    _, meta, _, _, _ = prepared(slice_step=3)
    for case in cases_of(standin):
        got = sorted(int(z) for c, z in zip(meta["case"], meta["z"]) if c == case)
        assert got == nonblank_z(standin, case, ["flair"], np.arange(0, SHAPE[2], 3))
    ds, meta, _, _, _ = prepared(drop_blank=False)
    assert len(ds) == N_CASES * SHAPE[2]
    blank = ds.images.reshape(len(ds), -1).max(1) == 0
    assert blank.any() and (ds.labels[blank] == 0).all() and not ds.masks[blank].any()


def test_image_size_resizes_in_plane(standin, prepared):
    native, meta_n, _, _, _ = prepared()
    ds, meta, _, _, _ = prepared(image_size=20)
    assert ds.images.shape[1:] == (1, 20, 20) and ds.masks.shape[1:] == (20, 20)
    assert list(ds.ids) == list(native.ids)                 # labels from the native slices
    assert np.array_equal(ds.labels, native.labels)
    checked_mask = 0
    for i in range(0, len(ds), 5):
        case, z = meta["case"][i], int(meta["z"][i])
        flair = load(case_file(standin, case, "flair")).astype(np.float64)
        norm = ((flair - flair.min()) / (flair.max() - flair.min()))[:, :, z].astype(np.float32)
        # PIL's bilinear resize (antialiased when reducing) as an independent reference.
        ref = np.asarray(Image.fromarray(norm, mode="F").resize((20, 20), Image.BILINEAR))
        assert np.abs(ds.images[i, 0].astype(int) - np.rint(ref * 255)).max() <= 1
        seg = load(case_file(standin, case, "seg"))[:, :, z]
        ref_mask = np.asarray(Image.fromarray((seg > 0).astype(np.float32), mode="F").resize((20, 20), Image.BILINEAR))
        clear = np.abs(ref_mask - 0.5) > 1e-3
        assert np.array_equal(ds.masks[i][clear], (ref_mask >= 0.5)[clear])
        checked_mask += int(ds.masks[i].any())
    assert checked_mask > 0


# ------------------------------------------------------------------------------------------------
# Volumes
# ------------------------------------------------------------------------------------------------

def test_volume_mode(standin, prepared):
    ds, meta, split, source, _ = prepared(mode="volumes", modalities=["flair", "t1"])
    n = N_CASES
    assert ds.images.shape == (n, 2, SHAPE[2], SHAPE[0], SHAPE[1])
    assert ds.masks.shape == (n, SHAPE[2], SHAPE[0], SHAPE[1])
    assert "z" not in meta and list(source) == cases_of(standin) == list(meta["case"])
    for i, case in enumerate(cases_of(standin)):
        seg = load(case_file(standin, case, "seg"))
        assert np.array_equal(ds.masks[i], seg.transpose(2, 0, 1) > 0)
        for c, m in enumerate(["flair", "t1"]):
            assert np.array_equal(ds.images[i, c], expected_uint8(load(case_file(standin, case, m))).transpose(2, 0, 1))
        assert ds.labels[i] == 1 and ds.ids[i] == f"{split[i]}/tumor/{case}"
        assert meta["ed_voxels"][i] == (seg == 2).sum()
    small, _, _, _, _ = prepared(mode="volumes", image_size=16)
    assert small.images.shape == (n, 1, SHAPE[2], 16, 16) and small.masks.shape == (n, SHAPE[2], 16, 16)
    assert small.masks.any(axis=(1, 2, 3)).all()


def test_healthy_standin_case_is_normal(tmp_path):
    data.generate_standin("brats", tmp_path, counts={"cases": 1}, seed=0, shape=[24, 24, 10], healthy_fraction=1.0)
    assert not load(case_file(tmp_path / "data", "BraTS2021_00000", "seg")).any()
    prepare("brats", tmp_path / "data", tmp_path / "v.h5", options={"mode": "volumes"})
    vol = read_dataset(tmp_path / "v.h5")
    assert vol.labels.tolist() == [0] and vol.ids.tolist() == ["train/normal/BraTS2021_00000"]
    prepare("brats", tmp_path / "data", tmp_path / "s.h5")
    assert not read_dataset(tmp_path / "s.h5").labels.any()


# ------------------------------------------------------------------------------------------------
# A real MRI volume (nibabel's anatomical.nii) with a constructed seg
# ------------------------------------------------------------------------------------------------

def real_case(root, case="BraTS2021_00042", seg=None, kinds=("t1", "t1ce", "t2", "flair")):
    """anatomical.nii as every modality of one case (.nii), plus ``seg`` (default: a known tumour)."""
    folder = root / case
    folder.mkdir(parents=True, exist_ok=True)
    img = nib.load(ANATOMICAL)
    for kind in kinds:
        shutil.copyfile(ANATOMICAL, folder / f"{case}_{kind}.nii")
    if seg is None:
        seg = np.zeros(img.shape, np.uint8)
        seg[10:16, 12:18, 10:15] = 2          # 36 px of 1353 (2.7 %) in z 10..14
        seg[11:15, 13:17, 11:14] = 4
        seg[12:14, 14:16, 12:13] = 1
        seg[10:13, 12:16, 9] = 2              # 12 px = 0.89 %: normal, mask not empty
        seg[10:12, 12:19, 15] = 2             # 14 px = 1.03 %: tumour
    nib.save(nib.Nifti1Image(seg, img.affine), str(folder / f"{case}_seg.nii"))
    return folder


def test_real_volume_slices_equal_normalised_data(tmp_path):
    real_case(tmp_path / "root")
    prepare("brats", tmp_path / "root", tmp_path / "ds.h5", options={"modalities": ["t1", "t1ce", "t2", "flair"]})
    ds, meta, split, source, _ = read_all(tmp_path / "ds.h5")
    raw = np.asanyarray(nib.load(ANATOMICAL).dataobj)
    assert raw.shape == (33, 41, 25) and raw.min() < 0          # big-endian int16, negative minimum
    want = expected_uint8(raw)
    assert ds.images.shape == (25, 4, 33, 41)                    # no blank slice in this volume
    assert meta["z"].tolist() == list(range(25)) and set(split) == {"train"} and set(source) == {"BraTS2021_00042"}
    for i in range(25):
        for c in range(4):
            assert np.array_equal(ds.images[i, c], want[:, :, i])
    assert [z for z in range(25) if ds.labels[z]] == [10, 11, 12, 13, 14, 15]
    assert ds.masks[9].sum() == 12 and ds.labels[9] == 0 and ds.ids[9] == "train/normal/BraTS2021_00042-9"
    assert ds.masks[15].sum() == 14 and ds.ids[15] == "train/tumor/BraTS2021_00042-15"
    assert (meta["ncr_voxels"][12], meta["et_voxels"][12], meta["ed_voxels"][12]) == (4, 12, 20)
    assert not ds.masks[:9].any() and not ds.masks[16:].any()
    # The threshold is an option: 1.05 % moves z 15 (1.03 %) to normal; 0 makes every tumour pixel count.
    prepare("brats", tmp_path / "root", tmp_path / "b.h5", options={"tumour_fraction": 0.0105})
    assert [z for z, y in enumerate(read_dataset(tmp_path / "b.h5").labels) if y] == [10, 11, 12, 13, 14]
    prepare("brats", tmp_path / "root", tmp_path / "c.h5", options={"tumour_fraction": 0.0})
    assert [z for z, y in enumerate(read_dataset(tmp_path / "c.h5").labels) if y] == list(range(9, 16))


def test_blank_slices_are_those_without_brain_or_tumour(tmp_path):
    """Skull-stripped background is the volume minimum; one brain voxel (any configured modality)
    or one tumour voxel keeps a slice."""
    img = nib.load(ANATOMICAL)
    raw = np.asanyarray(img.dataobj).astype(np.int16)
    flair = np.zeros(raw.shape, np.int16)
    flair[:, :, 5:20] = raw[:, :, 5:20] - raw.min() + 1
    flair[7, 9, 3] = 1                                   # a single faint brain voxel
    t2 = flair.copy()
    t2[0, 0, 1] = 1                                      # brain in t2 only
    seg = np.zeros(raw.shape, np.uint8)
    seg[4, 4, 22] = 2                                    # a tumour voxel on an otherwise blank slice
    folder = tmp_path / "root" / "BraTS2021_00007"
    folder.mkdir(parents=True)
    for kind, vol in (("flair", flair), ("t2", t2), ("seg", seg)):
        nib.save(nib.Nifti1Image(vol, img.affine), str(folder / f"BraTS2021_00007_{kind}.nii.gz"))
    for options, want in (({}, [3, *range(5, 20), 22]), ({"modalities": ["flair", "t2"]}, [1, 3, *range(5, 20), 22]),
                          ({"drop_blank": False}, list(range(25)))):
        prepare("brats", tmp_path / "root", tmp_path / "ds.h5", options=options)
        ds, meta, _, _, _ = read_all(tmp_path / "ds.h5")
        assert meta["z"].tolist() == want
        assert ds.labels.sum() == 0 and ds.masks.sum() == 1


# ------------------------------------------------------------------------------------------------
# Errors name the file or option and the expected layout
# ------------------------------------------------------------------------------------------------

def test_missing_modality_file(tmp_path):
    folder = real_case(tmp_path, kinds=("t1", "flair"))
    check_source("brats", tmp_path, {"modalities": ["flair"]})           # only configured files needed
    for options in ({"modalities": ["flair", "t2"]}, {"modalities": ["t2"], "mode": "volumes"}):
        with pytest.raises(DataError, match=r"BraTS2021_00042_t2\.nii\.gz.*expected layout <root>/<case>/"):
            check_source("brats", tmp_path, options)
        with pytest.raises(DataError, match=r"BraTS2021_00042_t2\.nii\.gz"):
            prepare("brats", tmp_path, tmp_path / "x.h5", options=options)
    (folder / "BraTS2021_00042_seg.nii").unlink()
    with pytest.raises(DataError, match=r"BraTS2021_00042_seg\.nii\.gz.*not found"):
        check_source("brats", tmp_path)
    assert not (tmp_path / "x.h5").exists()


def test_root_without_cases(tmp_path):
    with pytest.raises(DataError, match="not found.*expected layout"):
        check_source("brats", tmp_path / "nowhere")
    (tmp_path / "notes.csv").write_text("x")
    with pytest.raises(DataError, match="no case folders.*expected layout"):
        check_source("brats", tmp_path)


def test_shape_mismatch_names_the_file(tmp_path):
    img = nib.load(ANATOMICAL)
    folder = real_case(tmp_path, seg=np.zeros((33, 41, 24), np.uint8))
    with pytest.raises(DataError, match=r"BraTS2021_00042_seg\.nii: shape \(33, 41, 24\) differs from \(33, 41, 25\)"):
        prepare("brats", tmp_path, tmp_path / "x.h5")
    real_case(tmp_path)                                     # good seg again; now a modality differs
    small = np.asanyarray(img.dataobj)[:, :40]
    nib.save(nib.Nifti1Image(small, img.affine), str(folder / "BraTS2021_00042_t2.nii"))
    prepare("brats", tmp_path, tmp_path / "ok.h5", options={"modalities": ["flair"]})
    with pytest.raises(DataError, match=r"BraTS2021_00042_t2\.nii: shape \(33, 40, 25\) differs"):
        prepare("brats", tmp_path, tmp_path / "x.h5", options={"modalities": ["flair", "t2"]})
    assert not (tmp_path / "x.h5").exists()


def test_cases_of_different_size(tmp_path):
    real_case(tmp_path, "BraTS2021_00001")
    folder = tmp_path / "BraTS2021_00002"
    folder.mkdir()
    img = nib.load(ANATOMICAL)
    crop = np.asanyarray(img.dataobj)[:, :36]
    nib.save(nib.Nifti1Image(crop, img.affine), str(folder / "BraTS2021_00002_flair.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(crop.shape, np.uint8), img.affine), str(folder / "BraTS2021_00002_seg.nii.gz"))
    with pytest.raises(DataError,
                       match=r"BraTS2021_00002_seg\.nii\.gz: volume shape \(33, 36, 25\) differs.*image_size"):
        prepare("brats", tmp_path, tmp_path / "x.h5")
    prepare("brats", tmp_path, tmp_path / "ok.h5", options={"image_size": 24, "mode": "volumes"})
    assert read_dataset(tmp_path / "ok.h5").images.shape == (2, 1, 25, 24, 24)


def test_bad_seg_labels(tmp_path):
    seg = np.zeros((33, 41, 25), np.uint8)
    seg[5:8, 5:8, 5] = 3
    seg[1, 1, 1] = 7
    real_case(tmp_path, seg=seg)
    with pytest.raises(DataError, match=r"BraTS2021_00042_seg\.nii: seg values \[3, 7\] outside the BraTS labels"):
        prepare("brats", tmp_path, tmp_path / "x.h5")


def test_undecodable_file(tmp_path):
    folder = real_case(tmp_path)
    (folder / "BraTS2021_00042_flair.nii").write_bytes(b"not a nifti file at all" * 30)
    with pytest.raises(DataError, match=r"BraTS2021_00042_flair\.nii: cannot read as NIfTI"):
        prepare("brats", tmp_path, tmp_path / "x.h5")


@pytest.mark.parametrize("options, pattern", [
    ({"modalities": ["flair", "dwi"]},
     r"option 'modalities': unknown modality \['dwi'\]; choose from \['t1', 't1ce', 't2', 'flair'\]"),
    ({"modalities": []}, r"option 'modalities'"),
    ({"modalities": ["t1", "t1"]}, r"names a modality twice"),
    ({"mode": "cube"}, r"option 'mode': must be one of \['slices', 'volumes'\]"),
    ({"tumour_fraction": 1.5}, r"option 'tumour_fraction'"),
    ({"slice_step": 0}, r"option 'slice_step'"),
    ({"image_size": -4}, r"option 'image_size'"),
    ({"test_fraction": 1.0}, r"option 'test_fraction'"),
])
def test_bad_options(tmp_path, options, pattern):
    real_case(tmp_path)
    with pytest.raises(DataError, match=pattern):
        check_source("brats", tmp_path, options)
    with pytest.raises(DataError, match=pattern):
        prepare("brats", tmp_path, tmp_path / "x.h5", options=options)


def test_option_types_checked_by_the_registry(tmp_path):
    real_case(tmp_path)
    with pytest.raises(ValueError, match="'modalities' of format 'brats' must be a list"):
        prepare("brats", tmp_path, tmp_path / "x.h5", options={"modalities": "flair"})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['channels'\]"):
        prepare("brats", tmp_path, tmp_path / "x.h5", options={"channels": 4})
