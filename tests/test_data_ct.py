"""CT volume formats: mosmed (NIfTI studies) and dicom_ct (DICOM series), their stand-ins and helpers."""
import gzip
import os
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from nibabel.testing import data_path as NIB_DATA
from pydicom.data import get_testdata_file
from torch import nn

import cambench.data as cd
from cambench.data import DataError, check_source, prepare, read_dataset
from cambench.data.ct import read_series, write_ct_series
from cambench.data.ct_phantom import chest_phantom
from cambench.data.volumes import load_nifti, resample, window

SPACING = (2.5, 0.8, 0.8)  # stand-in default (z, y, x) mm


def save_nifti(path: Path, data_xyz: np.ndarray, affine: np.ndarray, **header) -> Path:
    img = nib.Nifti1Image(data_xyz, affine)
    for key, value in header.items():
        img.header[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def meta(path: Path) -> dict:
    with h5py.File(path) as f:
        return {k: f[f"meta/{k}"][:] for k in f["meta"]}


@pytest.fixture(scope="module")
def mosmed(tmp_path_factory):
    """MosMed stand-in (5 studies per class) and its prepared file at the default grid."""
    root = tmp_path_factory.mktemp("mosmed")
    cd.generate_standin("mosmed", root, counts={"train": 4, "test": 1}, seed=3)
    summary = prepare("mosmed", root / "data", root / "ds.h5", seed=3)
    return root, summary


@pytest.fixture(scope="module")
def dicom(tmp_path_factory):
    """dicom_ct stand-in (4 series per class) and a mosmed stand-in of the same phantoms (CT-1 only)."""
    root = tmp_path_factory.mktemp("dicom")
    cd.generate_standin("dicom_ct", root / "d", counts={"train": 4}, seed=5, shape=[24, 48, 48])
    cd.generate_standin("mosmed", root / "m", counts={"train": 4}, seed=5, shape=[24, 48, 48], classes=["CT-1"])
    grid = {"grid": [24, 48, 48]}  # native: no resampling, so the two formats must agree voxel for voxel
    prepare("dicom_ct", root / "d" / "data", root / "d.h5", options=grid, seed=5)
    prepare("mosmed", root / "m" / "data", root / "m.h5", options=grid, seed=5)
    return root


# ------------------------------------------------------------------------------------------------
# Helpers: windowing, resampling, orientation
# ------------------------------------------------------------------------------------------------

def test_window_maps_known_hu_to_known_bytes():
    hu = np.array([-2000, -1000, -999.9, -300, -299, 400, 401, 3000, -860])
    # floor((hu + 1000) * 255 / 1400 + 0.5), clipped
    assert window(hu, -1000, 400).tolist() == [0, 0, 0, 128, 128, 255, 255, 255, 26]
    assert window(np.array([0.0, 50.0, 100.0]), 0, 100).tolist() == [0, 128, 255]
    with pytest.raises(ValueError):
        window(hu, 400, -1000)


def _source_coord(n_in, n_out):
    """Input coordinate sampled by each output voxel (align_corners=False), clamped at the edges."""
    return np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)


def test_resample_keeps_a_linear_ramp_linear():
    d, h, w = np.meshgrid(np.arange(6), np.arange(10), np.arange(8), indexing="ij")
    ramp = (2.0 * d + 3.0 * h - 1.0 * w).astype(np.float32)
    out = resample(ramp, (12, 5, 8))  # up in D, down in H, unchanged in W
    zd, zh, zw = np.meshgrid(_source_coord(6, 12), _source_coord(10, 5), _source_coord(8, 8), indexing="ij")
    np.testing.assert_allclose(out, 2 * zd + 3 * zh - zw, atol=1e-4)
    assert out.dtype == np.float32
    assert resample(ramp, ramp.shape) is not ramp and np.array_equal(resample(ramp, ramp.shape), ramp)


def test_resample_moves_a_blob_centre_where_the_grid_says():
    shape, centre, grid = (40, 80, 80), np.array([10.0, 20.0, 57.0]), (32, 64, 48)
    coords = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    dist2 = (((coords - centre) / np.array([1.5, 4.0, 4.0])) ** 2).sum(-1)
    blob = np.exp(-dist2 / 2).astype(np.float32)
    expected = (centre + 0.5) * np.array(grid) / np.array(shape) - 0.5
    out = resample(blob, grid)
    got = (np.stack(np.meshgrid(*[np.arange(s) for s in grid], indexing="ij"), -1) * out[..., None]).sum((0, 1, 2))
    np.testing.assert_allclose(got / out.sum(), expected, atol=0.05)
    # the mask of the blob's core keeps its place and (scaled) volume
    mask = resample(dist2 <= 4, grid, mask=True)
    assert mask.dtype == bool
    np.testing.assert_allclose(np.argwhere(mask).mean(0), expected, atol=0.3)
    ratio = mask.sum() / (dist2 <= 4).sum()
    assert 0.8 < ratio / np.prod(np.array(grid) / np.array(shape)) < 1.2


def _marker_volume():
    """(D, H, W) = (4, 6, 8) with asymmetric markers; the layout index runs toward (S, P, L)."""
    a = np.full((4, 6, 8), -1000, np.int16)
    a[1, 2, 5] = 300    # one marker voxel
    a[3, 0, 0] = 100    # a second one, so a transposition also shows
    a[:, 5, :] = 0      # a posterior slab
    return a


def _affines(spacing=(3.0, 2.0, 1.0)):
    """The same patient volume stored three ways; each yields (data_xyz, affine)."""
    sz, sy, sx = spacing
    a = _marker_volume()
    D, H, W = a.shape
    # world (RAS, mm) of layout voxel (d, h, w): x = -w·sx, y = -h·sy, z = d·sz (toward L, P, S)
    lps = np.diag([-sx, -sy, sz, 1.0]), a.transpose(2, 1, 0)                   # i→L, j→P, k→S
    ras_aff = np.diag([sx, sy, sz, 1.0])
    ras_aff[:3, 3] = [-(W - 1) * sx, -(H - 1) * sy, 0]
    ras = ras_aff, a[:, ::-1, ::-1].transpose(2, 1, 0)                          # i→R, j→A, k→S
    perm_aff = np.zeros((4, 4))
    perm_aff[:3, 0], perm_aff[:3, 1], perm_aff[:3, 2] = [0, 0, sz], [-sx, 0, 0], [0, sy, 0]
    perm_aff[:3, 3], perm_aff[3, 3] = [0, -(H - 1) * sy, 0], 1
    perm = perm_aff, a[:, ::-1, :].transpose(0, 2, 1)                           # i→S, j→L, k→A
    return a, [lps, ras, perm]


def test_orientation_flipped_and_permuted_affines_give_the_same_canonical_array(tmp_path):
    a, stored = _affines()
    marker = np.array([1, 2, 5])
    worlds = []
    for n, (affine, data) in enumerate(stored):
        path = save_nifti(tmp_path / f"v{n}.nii.gz", np.ascontiguousarray(data), affine)
        vol, spacing = load_nifti(path)
        assert vol.shape == a.shape and np.array_equal(vol, a), nib.aff2axcodes(affine)
        assert spacing == (3.0, 2.0, 1.0)
        # the marker is at one physical place in all three files (the test's files are consistent)
        ijk = np.argwhere(np.asarray(nib.load(path).dataobj) == 300)[0]
        worlds.append(nib.affines.apply_affine(affine, ijk))
        # as stored (no reorientation): the raw array
        raw, _ = load_nifti(path, canonical=False)
        assert np.array_equal(raw, data)
    np.testing.assert_allclose(worlds, [worlds[0]] * 3)
    np.testing.assert_allclose(worlds[0], [-marker[2] * 1.0, -marker[1] * 2.0, marker[0] * 3.0])


def test_mosmed_reader_reorients_scales_and_windows(tmp_path):
    root = tmp_path / "m"
    a, stored = _affines()
    for n, (affine, data) in enumerate(stored):
        # stored values s with scl_slope 2, scl_inter -1000 → HU = 2 s − 1000 (get_fdata applies them)
        s = ((data.astype(np.float64) + 1000) / 2).astype(np.int16)
        save_nifti(root / "studies" / ("CT-0" if n < 2 else "CT-2") / f"study_{n + 1:04d}.nii", s, affine,
                   scl_slope=2.0, scl_inter=-1000.0)
    out = tmp_path / "ds.h5"
    prepare("mosmed", root, out, options={"grid": [4, 6, 8], "test_fraction": 0.5})
    ds = read_dataset(out)
    assert ds.images.shape == (3, 1, 4, 6, 8)
    expected = window(a, -1000, 400)
    assert expected[1, 2, 5] == 237 and expected[3, 0, 0] == 200 and expected[0, 5, 0] == 182
    for img in ds.images:
        assert np.array_equal(img[0], expected)
    assert ds.labels.tolist() == [0, 0, 1] and ds.class_names == ["normal", "covid"]
    assert ds.masks is None
    m = meta(out)
    assert m["spacing_z"].tolist() == [3.0] * 3 and m["spacing_x"].tolist() == [1.0] * 3
    assert m["shape_h"].tolist() == [6] * 3 and [c.decode() for c in m["category"]] == ["CT-0", "CT-0", "CT-2"]


# ------------------------------------------------------------------------------------------------
# mosmed: the stand-in through the reader
# ------------------------------------------------------------------------------------------------

def test_mosmed_standin_layout_and_files(mosmed):
    root, _ = mosmed
    data = root / "data"
    studies = sorted(p.relative_to(data).as_posix() for p in (data / "studies").rglob("*.nii.gz"))
    assert studies[0] == "studies/CT-0/study_0001.nii.gz" and studies[-1] == "studies/CT-1/study_0010.nii.gz"
    assert len(studies) == 10 and len(list((data / "masks").glob("study_*_mask.nii.gz"))) == 10
    img = nib.load(str(data / "studies/CT-1/study_0006.nii.gz"))
    assert img.get_data_dtype() == np.int16 and img.shape == (80, 80, 40)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    np.testing.assert_allclose(img.header.get_zooms(), (0.8, 0.8, 2.5))
    hu = np.asarray(img.dataobj)
    assert hu.min() >= -1024 and (hu < -900).mean() > 0.3 and (np.abs(hu - 40) < 60).mean() > 0.2
    assert not cd.standin_writes_masks("mosmed") and not cd.standin_writes_masks("dicom_ct")


def test_mosmed_standin_round_trip(mosmed):
    root, summary = mosmed
    assert summary == {"format": "mosmed", "classes": ["normal", "covid"], "counts": {"test": 2, "train": 8},
                       "shape": [1, 32, 64, 64], "masks": True}
    ds = read_dataset(root / "ds.h5")
    assert ds.images.shape == (10, 1, 32, 64, 64) and ds.images.dtype == np.uint8
    assert ds.masks.shape == (10, 32, 64, 64) and ds.mask_known.tolist() == [True] * 10
    assert ds.labels.tolist() == [0] * 5 + [1] * 5
    with h5py.File(root / "ds.h5") as f:
        split = f["split"].asstr()[:]
        source = f["source"].asstr()[:]
    stems = [i.rsplit("/", 1)[1] for i in ds.ids]
    assert stems == [f"study_{k:04d}" for k in range(1, 11)]
    assert [i.split("/")[:2] for i in ds.ids] == [[s, "normal" if k < 5 else "covid"] for k, s in enumerate(split)]
    assert source[5] == "studies/CT-1/study_0006.nii.gz"
    assert sorted(split[:5]).count("test") == 1 and sorted(split[5:]).count("test") == 1
    m = meta(root / "ds.h5")
    assert m["spacing_z"].tolist() == [2.5] * 10 and np.allclose(m["spacing_y"], 0.8)
    assert (m["shape_d"].tolist(), m["shape_h"].tolist(), m["shape_w"].tolist()) == ([40] * 10, [80] * 10, [80] * 10)
    # lesions: none in CT-0, some in every CT-1 study, and the masks sit on ground glass in the lungs
    lesion = ds.masks.reshape(10, -1).sum(1)
    assert lesion[:5].tolist() == [0] * 5 and (lesion[5:] > 50).all()
    lo, hi = window(np.array([-500, -50]), -1000, 400)
    lung = window(np.array(-700), -1000, 400)
    for img, mask in zip(ds.images[5:, 0], ds.masks[5:]):
        inside = img[mask].astype(float)
        assert lo < inside.mean() < hi
        # around a lesion (a 2-voxel shell) most voxels are dark lung
        shell = np.zeros_like(mask)
        for axis in range(3):
            for shift in (-2, 2):
                shell |= np.roll(mask, shift, axis)
        shell &= ~mask
        assert (img[shell] < lung).mean() > 0.5


def test_mosmed_mask_matches_the_file_and_severity_labels(mosmed, tmp_path):
    root, _ = mosmed
    out = tmp_path / "sev.h5"
    summary = prepare("mosmed", root / "data", out, options={"labels": "severity", "grid": [16, 32, 32]}, seed=3)
    assert summary["classes"] == ["CT-0", "CT-1"] and summary["shape"] == [1, 16, 32, 32]
    ds = read_dataset(out)
    assert [i.split("/")[1] for i in ds.ids] == ["CT-0"] * 5 + ["CT-1"] * 5
    mask, _ = load_nifti(root / "data/masks/study_0007_mask.nii.gz")
    assert mask.max() == 1 and np.array_equal(ds.masks[6], resample(mask, (16, 32, 32), mask=True))
    # the same seed assigns the same splits whatever the grid or labels
    assert [i.split("/")[0] for i in ds.ids] == [i.split("/")[0] for i in read_dataset(root / "ds.h5").ids]


def test_mosmed_partial_masks_are_marked_known(mosmed, tmp_path):
    root, _ = mosmed
    data = tmp_path / "data"
    shutil.copytree(root / "data" / "studies", data / "studies")
    (data / "masks").mkdir()
    shutil.copy(root / "data/masks/study_0008_mask.nii.gz", data / "masks")
    prepare("mosmed", data, tmp_path / "ds.h5", options={"grid": [16, 32, 32]})
    ds = read_dataset(tmp_path / "ds.h5")
    assert ds.mask_known.tolist() == [k == 7 for k in range(10)]
    assert ds.masks[7].any() and not ds.masks[np.arange(10) != 7].any()


def test_mosmed_real_nifti_file_reads_and_resamples(tmp_path):
    src = os.path.join(NIB_DATA, "anatomical.nii")
    img = nib.load(src)
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S") and img.shape == (33, 41, 25)
    root = tmp_path / "m"
    (root / "studies/CT-0").mkdir(parents=True)
    with open(src, "rb") as f:  # the real file's bytes, gzip-compressed
        (root / "studies/CT-0/study_0001.nii.gz").write_bytes(gzip.compress(f.read()))
    raw = np.asarray(img.get_fdata())
    grid = [20, 32, 24]
    prepare("mosmed", root, tmp_path / "ds.h5", options={"grid": grid, "window": [0.0, float(raw.max())]})
    ds = read_dataset(tmp_path / "ds.h5")
    vol = ds.images[0, 0].astype(float)
    assert ds.images.shape == (1, 1, *grid) and ds.mask_known is None
    m = meta(tmp_path / "ds.h5")
    assert (m["shape_d"][0], m["shape_h"][0], m["shape_w"][0]) == (25, 41, 33)
    assert (m["spacing_z"][0], m["spacing_y"][0], m["spacing_x"][0]) == (2.0, 2.0, 2.0)
    # the brightness-weighted centre, in fractions of the extent, is preserved and reoriented:
    # stored x runs toward L (as the layout's W does), stored y toward A (the layout's H is reversed)
    def centre(v):
        idx = np.stack(np.meshgrid(*[np.arange(s) for s in v.shape], indexing="ij"), -1)
        return ((idx * v[..., None]).sum((0, 1, 2)) / v.sum() + 0.5) / np.array(v.shape)
    cx, cy, cz = centre(raw)
    np.testing.assert_allclose(centre(vol), [cz, 1 - cy, cx], atol=0.02)
    assert abs(vol.mean() / 255 - raw.mean() / raw.max()) < 0.02


# ------------------------------------------------------------------------------------------------
# dicom_ct
# ------------------------------------------------------------------------------------------------

def test_dicom_standin_files_are_valid_ct_series(dicom):
    series = dicom / "d/data/covid/series_0001"
    files = sorted(series.iterdir())
    assert len(files) == 24 and all(f.suffix == ".dcm" for f in files)
    ds = pydicom.dcmread(files[0])
    pydicom.dataset.validate_file_meta(ds.file_meta, enforce_standard=True)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert ds.RescaleIntercept == -1024 and ds.RescaleSlope == 1 and ds.pixel_array.dtype == np.uint16
    assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.8] and float(ds.SliceThickness) == 2.5
    uids = {pydicom.dcmread(f).SeriesInstanceUID for f in files}
    other = pydicom.dcmread(next((dicom / "d/data/normal/series_0005").iterdir()))
    assert len(uids) == 1 and other.SeriesInstanceUID not in uids and other.PatientID != ds.PatientID
    # the files are not in slice order, so the reader has to sort
    numbers = [int(pydicom.dcmread(f).InstanceNumber) for f in files]
    assert numbers != sorted(numbers) and sorted(numbers) == list(range(1, 25))
    mask = nib.load(str(dicom / "d/data/masks/covid/series_0001.nii.gz"))
    assert mask.shape == (24, 48, 48) and np.asarray(mask.dataobj).any()
    # the mask's affine puts voxel (d, h, w) where the DICOM puts row h, column w of slice d
    by_number = {int(pydicom.dcmread(f).InstanceNumber): pydicom.dcmread(f) for f in files}
    sl = by_number[7]  # slice index 6
    lps = (np.array(sl.ImagePositionPatient, float) + 11 * 0.8 * np.array(sl.ImageOrientationPatient[:3], float)
           + 30 * 0.8 * np.array(sl.ImageOrientationPatient[3:], float))
    np.testing.assert_allclose(nib.affines.apply_affine(mask.affine, [6, 30, 11]), lps * [-1, -1, 1], atol=1e-4)


def test_dicom_standin_round_trip_matches_the_mosmed_layout(dicom):
    d, m = read_dataset(dicom / "d.h5"), read_dataset(dicom / "m.h5")
    assert d.class_names == ["covid", "normal"] and d.labels.tolist() == [0] * 4 + [1] * 4
    assert d.images.shape == (8, 1, 24, 48, 48) and d.mask_known.tolist() == [True] * 8
    assert [i.split("/", 1)[1] for i in d.ids][:2] == ["covid/series_0001", "covid/series_0002"]
    lesion = d.masks.reshape(8, -1).sum(1)
    assert (lesion[:4] > 20).all() and lesion[4:].tolist() == [0] * 4
    # same phantoms (same seed, class 0 with lesions): DICOM sorted by position == NIfTI reoriented
    assert np.array_equal(d.images[:4], m.images) and np.array_equal(d.masks[:4], m.masks)
    md = meta(dicom / "d.h5")
    assert md["spacing_z"].tolist() == [2.5] * 8 and np.allclose(md["spacing_x"], 0.8)
    assert len({p for p in md["patient_id"]}) == 8


def _ct_small_series(folder: Path, positions, uid=None, suffix="") -> list[np.ndarray]:
    """A 3-slice series from pydicom's real CT_small.dcm: slice k is the real image, flipped
    according to k, at z = positions[k]; slice 2 gets RescaleSlope 2 / Intercept −2048.
    Files are named in reverse slice order and carry no suffix. Returns the expected HU per slice."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = base.pixel_array
    series_uid = uid or pydicom.uid.generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    expected = []
    for k, z in enumerate(positions):
        ds = base.copy()
        arr = [pixels, pixels[:, ::-1], pixels[::-1, :]][k]
        ds.PixelData = np.ascontiguousarray(arr).astype(np.int16).tobytes()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.ImagePositionPatient = [-158.135803, -179.035797, z]
        ds.InstanceNumber = 3 - k           # deliberately disagrees with the position order
        slope, intercept = (2, -2048) if k == 2 else (base.RescaleSlope, base.RescaleIntercept)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.save_as(folder / f"IM{3 - k:04d}{suffix}")
        expected.append(arr.astype(np.float64) * float(slope) + float(intercept))
    return expected


def test_dicom_real_ct_small_series_sorted_with_hu(tmp_path):
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert (base.RescaleSlope, base.RescaleIntercept, base.Rows) == (1, -1024, 128)
    root = tmp_path / "dicom"
    expected = _ct_small_series(root / "ct" / "s1", [-65.7, -75.7, -70.7])
    vol, spacing, info = read_series(root / "ct" / "s1")
    order = [1, 2, 0]  # by position along the normal (0, 0, 1): -75.7, -70.7, -65.7
    assert vol.shape == (3, 128, 128) and vol.dtype == np.float32
    for d, k in enumerate(order):
        np.testing.assert_array_equal(vol[d], expected[k])
    assert vol[0, 0, 0] == base.pixel_array[0, ::-1][0] * 1 - 1024 and vol[1].max() == 2 * base.pixel_array.max() - 2048
    np.testing.assert_allclose(spacing, (5.0, 0.661468, 0.661468), atol=1e-6)
    assert [p.name for p in info["files"]] == ["IM0002", "IM0001", "IM0003"] and info["patient_id"] == "1CT1"
    # a file as older writers store it (no preamble, no file meta) reads too
    bare = pydicom.dcmread(root / "ct/s1/IM0001")
    bare.preamble = None
    del bare.file_meta
    pydicom.dcmwrite(root / "ct/s1/IM0001", bare, implicit_vr=True, little_endian=True)
    assert (root / "ct/s1/IM0001").read_bytes()[128:132] != b"DICM"
    assert np.array_equal(read_series(root / "ct" / "s1")[0], vol)
    # through the reader at the native size: HU → window exactly
    out = tmp_path / "ds.h5"
    summary = prepare("dicom_ct", root, out, options={"grid": [3, 128, 128], "window": [-1100, 3000]})
    assert summary["classes"] == ["ct"] and summary["counts"] == {"train": 1}
    ds = read_dataset(out)
    assert np.array_equal(ds.images[0, 0], window(np.stack([expected[k] for k in order]), -1100, 3000))
    assert ds.ids.tolist() == ["train/ct/s1"] and ds.masks is None


def test_dicom_splits_grouped_by_patient(tmp_path):
    root = tmp_path / "dicom"
    rng = np.random.default_rng(0)
    patients = {}
    for cls in ("a", "b"):
        for s in range(6):
            hu, _ = chest_phantom(rng, (3, 16, 16), (5.0, 4.0, 4.0), n_vessels=1)
            pid = f"{cls}{s // 3}"  # three series per patient
            write_ct_series(root / cls / f"s{s}", hu, (5.0, 4.0, 4.0), patient_id=pid, key=f"{cls}{s}")
            patients[f"{cls}/s{s}"] = pid
    prepare("dicom_ct", root, tmp_path / "ds.h5", options={"grid": [3, 16, 16], "test_fraction": 0.34}, seed=1)
    ds = read_dataset(tmp_path / "ds.h5")
    split_of = {}
    for item in ds.ids:
        split, cls, series = item.split("/")
        split_of.setdefault(patients[f"{cls}/{series}"], set()).add(split)
    # per class two patients: one goes to test (round(0.34 · 2) = 1), with all three of its series;
    # grouping by series instead would put two series of six in test and split a patient
    assert all(len(s) == 1 for s in split_of.values()) and len(split_of) == 4
    assert sorted(next(iter(s)) for s in split_of.values()) == ["test", "test", "train", "train"]
    assert [i.split("/")[0] for i in ds.ids].count("test") == 6


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------

def test_layout_errors_name_the_missing_folder_and_layout(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*studies/CT-\{0,1,2,3,4\}"):
        check_source("mosmed", tmp_path / "nowhere")
    (tmp_path / "m").mkdir()
    with pytest.raises(DataError, match=r"m/studies: studies folder not found \(expected layout <root>/studies"):
        check_source("mosmed", tmp_path / "m")
    (tmp_path / "m/studies/CT-3").mkdir(parents=True)
    with pytest.raises(DataError, match=r"CT-3: no study_XXXX.nii.gz files .*expected layout"):
        check_source("mosmed", tmp_path / "m")
    with pytest.raises(DataError, match=r"nowhere.*<root>/<class>/<series folder>"):
        check_source("dicom_ct", tmp_path / "nowhere")
    (tmp_path / "d/covid").mkdir(parents=True)
    with pytest.raises(DataError, match=r"covid: class 'covid' has no series folders"):
        check_source("dicom_ct", tmp_path / "d")
    (tmp_path / "d/covid/s1").mkdir()
    with pytest.raises(DataError, match=r"s1: series folder has no slice files"):
        check_source("dicom_ct", tmp_path / "d")


def test_option_errors(tmp_path, mosmed):
    root, _ = mosmed
    with pytest.raises(DataError, match="'grid' must be three positive integers"):
        check_source("mosmed", root / "data", {"grid": [32, 64]})
    with pytest.raises(DataError, match="'window'"):
        check_source("dicom_ct", root / "data", {"window": [400, -1000]})
    with pytest.raises(DataError, match="'labels'"):
        check_source("mosmed", root / "data", {"labels": "ternary"})
    with pytest.raises(ValueError, match="unknown parameter"):
        prepare("mosmed", root / "data", tmp_path / "x.h5", options={"grids": [8, 8, 8]})
    with pytest.raises(DataError, match="test_fraction"):
        prepare("mosmed", root / "data", tmp_path / "x.h5", options={"test_fraction": 1.0})


def _one_study(root: Path, mosmed_root: Path) -> Path:
    (root / "studies/CT-0").mkdir(parents=True)
    shutil.copy(mosmed_root / "data/studies/CT-0/study_0001.nii.gz", root / "studies/CT-0")
    return root / "studies/CT-0"


@pytest.mark.parametrize("problem", ["garbage", "truncated", "4d", "nan"])
def test_bad_nifti_is_named_and_nothing_is_written(tmp_path, mosmed, problem):
    folder = _one_study(tmp_path / "m", mosmed[0])
    bad = folder / "study_0002.nii.gz"
    good = (folder / "study_0001.nii.gz").read_bytes()
    if problem == "garbage":
        bad.write_bytes(b"this is not a NIfTI file" * 20)
    elif problem == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif problem == "4d":
        shutil.copy(os.path.join(NIB_DATA, "example4d.nii.gz"), bad)
    else:
        save_nifti(bad, np.full((4, 4, 4), np.nan, np.float32), np.eye(4))
    message = {"4d": "expected a 3D volume", "nan": "the volume has no finite value"}.get(problem, "cannot read NIfTI")
    out = tmp_path / "ds.h5"
    with pytest.raises(DataError, match=rf"study_0002.nii.gz: {message}.*expected layout <root>/studies"):
        prepare("mosmed", tmp_path / "m", out)
    assert not out.exists()


def test_mask_shape_mismatch_is_named(tmp_path, mosmed):
    _one_study(tmp_path / "m", mosmed[0])
    save_nifti(tmp_path / "m/masks/study_0001_mask.nii.gz", np.zeros((80, 80, 39), np.uint8), np.eye(4))
    with pytest.raises(DataError, match=r"study_0001_mask.nii.gz: mask shape \(39, 80, 80\) differs"):
        prepare("mosmed", tmp_path / "m", tmp_path / "ds.h5")


def test_duplicate_study_names_are_an_error(tmp_path, mosmed):
    folder = _one_study(tmp_path / "m", mosmed[0])
    (folder.parent / "CT-1").mkdir()
    shutil.copy(folder / "study_0001.nii.gz", folder.parent / "CT-1" / "study_0001.nii")
    with pytest.raises(DataError, match="CT-1/study_0001.nii: study 'study_0001' also present"):
        check_source("mosmed", tmp_path / "m")


@pytest.mark.parametrize("problem", ["mixed_series", "mixed_size", "not_dicom", "no_pixels", "duplicate"])
def test_bad_dicom_series_is_named(tmp_path, problem):
    root = tmp_path / "d"
    folder = root / "covid" / "s1"
    _ct_small_series(folder, [0.0, 5.0, 10.0], suffix=".dcm")
    target = folder / "IM0003.dcm"  # read last; in position order (z = 0) between the others
    ds = pydicom.dcmread(target)
    if problem == "mixed_series":
        _ct_small_series(tmp_path / "other", [20.0, 25.0, 30.0])
        target = folder / "IM9999"
        shutil.copy(tmp_path / "other" / "IM0003", target)
        message = "SeriesInstanceUID .* differs .*one series"
    elif problem == "mixed_size":
        ds.PixelData = np.zeros((64, 128), np.int16).tobytes()
        ds.Rows = 64
        ds.save_as(target)
        message = r"64x128 \(Rows x Columns\) differs from 128x128"
    elif problem == "not_dicom":
        target = folder / "notes.txt"
        target.write_text("scan notes")
        message = "not a DICOM file"
    elif problem == "no_pixels":
        del ds.PixelData
        ds.save_as(target)
        message = "DICOM file without pixel data"
    else:
        ds.ImagePositionPatient = [-158.135803, -179.035797, 5.0]  # same as IM0002's slice
        ds.save_as(target)
        message = "duplicate slice position"
    out = tmp_path / "ds.h5"
    with pytest.raises(DataError, match=rf"{target.name}: {message}.*expected layout <root>/<class>"):
        prepare("dicom_ct", root, out)
    assert not out.exists()


def test_instance_number_fallback_and_its_errors(tmp_path):
    folder = tmp_path / "d" / "c" / "s"
    expected = _ct_small_series(folder, [0.0, 5.0, 10.0])
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.save_as(f)
    vol, spacing, _ = read_series(folder)
    # InstanceNumber = 3 − k: slice 2 first
    for d, k in enumerate([2, 1, 0]):
        np.testing.assert_array_equal(vol[d], expected[k])
    assert spacing[0] == 5.0  # SpacingBetweenSlices of the file
    ds = pydicom.dcmread(folder / "IM0001")
    ds.InstanceNumber = 2
    ds.save_as(folder / "IM0001")
    with pytest.raises(DataError, match="duplicate InstanceNumber 2"):
        read_series(folder)


# ------------------------------------------------------------------------------------------------
# Learnability: a tiny 3D GAP CNN separates the stand-in's classes
# ------------------------------------------------------------------------------------------------

class Tiny3d(nn.Module):
    def __init__(self, widths=(8, 16, 32)):
        super().__init__()
        layers, c = [], 1
        for k, w in enumerate(widths):
            layers += [nn.Conv3d(c, w, 3, padding=1), nn.BatchNorm3d(w), nn.ReLU()]
            layers += [nn.MaxPool3d(2)] if k < len(widths) - 1 else []
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, 2)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3, 4)))


@pytest.fixture
def one_thread():
    """Small 3D convolutions run several times slower on two threads when the CPUs are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_3d_cnn_learns_the_mosmed_standin(tmp_path, one_thread):
    torch.manual_seed(0)
    cd.generate_standin("mosmed", tmp_path, counts={"train": 32}, seed=11, shape=[20, 40, 40],
                        spacing=[5.0, 1.6, 1.6])  # the default physical size at half the voxels
    prepare("mosmed", tmp_path / "data", tmp_path / "ds.h5", options={"grid": [16, 32, 32], "test_fraction": 0.25},
            seed=11)
    train, test = read_dataset(tmp_path / "ds.h5", "train"), read_dataset(tmp_path / "ds.h5", "test")
    mean, std = train.mean[0], train.std[0]
    x, y = (train.pixels(slice(None)) - mean) / std, torch.from_numpy(train.labels)
    xt, yt = (test.pixels(slice(None)) - mean) / std, torch.from_numpy(test.labels)
    model = Tiny3d()
    epochs, batch = 25, 8
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * -(-len(x) // batch))
    for _ in range(epochs):
        model.train()
        for b in torch.randperm(len(x)).split(batch):
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert len(test) == 16 and acc >= 0.8, acc
