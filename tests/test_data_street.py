"""The "street" format (hotspot / non_hotspot folders + labels CSV) and its street-scene stand-in."""
import csv
import hashlib
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from cambench.data import FORMATS, DataError, check_source, generate_standin, prepare, read_dataset, read_source
from cambench.data.street import LAYOUT, generate_street_standin, render_street

PER_CLASS = 10  # counts {train: 8, test: 2} -> 10 per class (the layout has no splits)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    out = tmp_path_factory.mktemp("street")
    generate_standin("street", out, counts={"train": 8, "test": 2}, seed=3, image_size=96)
    return out


def _csv(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row["filename"]: row for row in csv.DictReader(f)}


def _float(text: str) -> float:
    return float(text) if text else math.nan


def _h5(path: Path) -> dict:
    with h5py.File(path) as f:
        return {"source": list(f["source"].asstr()[:]), "sha256": list(f["sha256"].asstr()[:]),
                "ids": list(f["ids"].asstr()[:]), "split": list(f["split"].asstr()[:]),
                **{f"meta.{k}": f["meta"][k][:] for k in f["meta"]}}


def test_format_is_registered_with_assigned_splits():
    entry = FORMATS.get("street")
    assert entry.meta["splits"] == "assigned" and entry.meta["dims"] == 2
    assert entry.meta["standin"] is generate_street_standin
    assert entry.parameters() == {"csv": "labels.csv", "image_size": 0, "test_fraction": 0.2,
                                  "require_coordinates": False}


def test_standin_is_written_in_the_real_layout(standin):
    data = standin / "data"
    rows = _csv(data / "labels.csv")
    assert sorted(p.name for p in data.iterdir()) == ["hotspot", "labels.csv", "non_hotspot"]
    for cls in ("hotspot", "non_hotspot"):
        files = sorted(p.relative_to(data).as_posix() for p in (data / cls).iterdir())
        assert len(files) == PER_CLASS and all(f.endswith(".jpg") for f in files)
        assert all(rows[f]["label"] == cls for f in files)
        with Image.open(data / files[0]) as im:
            assert im.format == "JPEG" and im.size == (96, 96) and im.mode == "RGB"
    assert len(rows) == 2 * PER_CLASS
    lat = np.array([float(r["lat"]) for r in rows.values()])
    lon = np.array([float(r["lon"]) for r in rows.values()])
    assert np.all(np.abs(lat - 36.35) < 0.1) and np.all(np.abs(lon - 127.38) < 0.1)  # around Daejeon
    headings = [float(r["heading"]) for r in rows.values() if r["heading"]]
    assert headings and all(0 <= h < 360 for h in headings)
    # one mask per image, mirroring its path below the root (the reader assigns the split)
    masks = sorted(p.relative_to(standin / "masks").with_suffix(".jpg").as_posix()
                   for p in (standin / "masks").rglob("*.png"))
    assert masks == sorted(rows)


def test_standin_is_reproducible_and_seeded(standin, tmp_path):
    generate_street_standin(tmp_path / "a", counts={"train": 8, "test": 2}, seed=3, image_size=96)
    assert (tmp_path / "a/data/hotspot/00004.jpg").read_bytes() == (standin / "data/hotspot/00004.jpg").read_bytes()
    assert (tmp_path / "a/data/labels.csv").read_bytes() == (standin / "data/labels.csv").read_bytes()
    generate_street_standin(tmp_path / "b", counts=2, seed=4, image_size=96)
    assert (tmp_path / "b/data/hotspot/00000.jpg").read_bytes() != (standin / "data/hotspot/00000.jpg").read_bytes()


def test_prepare_round_trip_labels_meta_masks_checksums_splits(standin, tmp_path):
    out = tmp_path / "ds.h5"
    summary = prepare("street", standin / "data", out, mask_root=standin / "masks", seed=3)
    assert summary["classes"] == ["hotspot", "non_hotspot"] and summary["shape"] == [3, 96, 96]
    assert summary["counts"] == {"test": 4, "train": 16} and summary["masks"]
    ds, h5 = read_dataset(out), _h5(out)
    rows = _csv(standin / "data/labels.csv")
    assert sorted(h5["source"]) == sorted(rows)
    for i, src in enumerate(h5["source"]):
        row = rows[src]
        cls = ds.class_names[ds.labels[i]]
        assert cls == row["label"]
        assert h5["ids"][i] == f"{h5['split'][i]}/{cls}/{Path(src).stem}"
        for column in ("lat", "lon", "heading"):
            np.testing.assert_equal(h5[f"meta.{column}"][i], _float(row[column]))
        assert h5["sha256"][i] == hashlib.sha256((standin / "data" / src).read_bytes()).hexdigest()
        with Image.open(standin / "data" / src) as im:
            assert np.array_equal(ds.images[i].transpose(1, 2, 0), np.asarray(im.convert("RGB")))
    assert h5["meta.lat"].dtype == np.float64
    # stratified: 2 of the 10 images of each class are test
    for label in (0, 1):
        assert sum(s == "test" for s, y in zip(h5["split"], ds.labels) if y == label) == 2
    # masks: the warning sign in every hotspot image, nothing in non-hotspot images
    area = ds.masks.reshape(len(ds), -1).mean(1)
    assert np.all(area[ds.labels == 1] == 0)
    assert np.all((area[ds.labels == 0] > 0.01) & (area[ds.labels == 0] < 0.07))
    for i in np.flatnonzero(ds.labels == 0):
        rgb = ds.images[i].transpose(1, 2, 0).astype(int)
        warm = rgb[..., 0] - rgb[..., 2] > 70  # red or yellow (a white rim / bar is not)
        inside, outside = warm[ds.masks[i]].mean(), warm[~ds.masks[i]].mean()
        assert inside > 0.4 and inside > 4 * outside, f"{h5['ids'][i]}: mask is not on a red/yellow sign"


def test_masks_are_found_whatever_split_the_reader_assigns(standin, tmp_path):
    # another seed and test fraction move images between splits; the masks follow their ids
    out = tmp_path / "ds.h5"
    summary = prepare("street", standin / "data", out, mask_root=standin / "masks", seed=11,
                      options={"test_fraction": 0.5})
    assert summary["counts"] == {"test": 10, "train": 10}
    ds = read_dataset(out)
    assert np.array_equal(ds.masks.any(axis=(1, 2)), ds.labels == 0)


def test_rendered_cue_is_specific_to_the_hotspot_class():
    for k in range(6):
        _, mask = render_street(np.random.default_rng([0, k]), hotspot=True, size=64)
        assert 0.01 < mask.mean() < 0.07
        _, mask = render_street(np.random.default_rng([1, k]), hotspot=False, size=64)
        assert not mask.any()


# ------------------------------------------------------------------------------------------------
# Real photographs in the layout
# ------------------------------------------------------------------------------------------------

def _write_csv(root: Path, rows: list[list[str]], header=("filename", "lat", "lon", "heading", "label")):
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for cls, name in (("hotspot", "china.jpg"), ("non_hotspot", "flower.jpg")):
        (root / cls).mkdir(parents=True)
        Image.fromarray(load_sample_image(name)).save(root / cls / name, quality=92)
    _write_csv(root, [["non_hotspot/flower.jpg", "", "", "", "non_hotspot"],
                      ["hotspot/china.jpg", "36.351234", "127.384567", "90.5", "hotspot"]])
    return root


def test_real_photos_read_at_native_size_like_pil(photos):
    data = read_source("street", photos)
    assert data.images.shape == (2, 3, 427, 640) and data.images.dtype == np.uint8
    assert data.ids == ["train/hotspot/china", "train/non_hotspot/flower"]
    assert data.labels.tolist() == [0, 1] and data.source == ["hotspot/china.jpg", "non_hotspot/flower.jpg"]
    for i, src in enumerate(data.source):
        with Image.open(photos / src) as im:
            assert np.array_equal(data.images[i].transpose(1, 2, 0), np.asarray(im.convert("RGB")))
    np.testing.assert_equal(data.meta["lat"], [36.351234, np.nan])
    np.testing.assert_equal(data.meta["lon"], [127.384567, np.nan])
    np.testing.assert_equal(data.meta["heading"], [90.5, np.nan])


def test_real_photos_resized_and_grayscale_like_pil(photos):
    data = read_source("street", photos, {"image_size": 64}, channels=1)
    assert data.images.shape == (2, 1, 64, 64)
    for i, src in enumerate(data.source):
        with Image.open(photos / src) as im:
            expected = np.asarray(im.convert("L").resize((64, 64), Image.Resampling.BILINEAR))
        assert np.array_equal(data.images[i, 0], expected)


def test_mixed_sizes_need_image_size(photos, tmp_path):
    Image.fromarray(load_sample_image("flower.jpg")[:300, :500]).save(photos / "non_hotspot/flower.jpg")
    with pytest.raises(DataError, match=r"non_hotspot/flower\.jpg: image size 500x300 differs from 640x427"):
        read_source("street", photos)
    out = tmp_path / "ds.h5"
    assert prepare("street", photos, out, options={"image_size": 48})["shape"] == [3, 48, 48]


def test_options_are_validated(photos):
    with pytest.raises(ValueError, match="image_size"):
        read_source("street", photos, {"image_size": "big"})
    with pytest.raises(DataError, match="image_size"):
        read_source("street", photos, {"image_size": 1.5})
    with pytest.raises(ValueError, match="unknown parameter"):
        read_source("street", photos, {"splits": 2})
    with pytest.raises(DataError, match="test_fraction"):
        read_source("street", photos, {"test_fraction": 1.0})
    with pytest.raises(DataError, match=r"row 1 .*flower\.jpg: lat/lon missing, and require_coordinates"):
        read_source("street", photos, {"require_coordinates": True})
    (photos / "labels.csv").rename(photos / "meta.csv")
    assert read_source("street", photos, {"csv": "meta.csv"}).labels.tolist() == [0, 1]


# ------------------------------------------------------------------------------------------------
# Errors: the offending file / row and the expected layout, and nothing written
# ------------------------------------------------------------------------------------------------

ROWS = [["hotspot/china.jpg", "36.35", "127.38", "10", "hotspot"],
        ["non_hotspot/flower.jpg", "36.36", "127.39", "", "non_hotspot"]]


def _edit(root: Path, case: str) -> str:
    """Break the photo set in one way; returns a regex the error must match."""
    rows = [list(r) for r in ROWS]
    if case == "missing_csv":
        (root / "labels.csv").unlink()
        return r"labels\.csv: labels CSV not found"
    if case == "missing_column":
        _write_csv(root, [[r[0], r[1], r[2], r[3]] for r in rows], header=("filename", "lat", "lon", "heading"))
        return r"labels\.csv: labels CSV lacks the column\(s\) \['label'\]"
    if case == "missing_file":
        rows.append(["hotspot/gone.jpg", "", "", "", "hotspot"])
        _write_csv(root, rows)
        return r"hotspot/gone\.jpg: image named in .*labels\.csv row 3 \(line 4\) not found"
    if case == "label_folder":
        rows[1][4] = "hotspot"
        _write_csv(root, rows)
        return r"row 2 \(line 3\), non_hotspot/flower\.jpg: label 'hotspot' disagrees with the image's folder"
    if case == "unknown_label":
        rows[0][4] = "accident"
        _write_csv(root, rows)
        return r"row 1 \(line 2\), hotspot/china\.jpg: label 'accident' is not one of"
    if case == "not_in_csv":
        shutil.copy(root / "hotspot/china.jpg", root / "hotspot/extra.jpg")
        _write_csv(root, rows)
        return r"have no row in .*labels\.csv: hotspot/extra\.jpg"
    if case == "duplicate":
        rows.append(["./hotspot/china.jpg", "", "", "", "hotspot"])
        _write_csv(root, rows)
        return r"row 3 \(line 4\), hotspot/china\.jpg: duplicate filename, already listed in row 1"
    if case == "bad_latitude":
        rows[1][1] = "95.2"
        _write_csv(root, rows)
        return r"row 2 \(line 3\), non_hotspot/flower\.jpg: lat 95\.2 outside \[-90, 90\]"
    if case == "bad_heading":
        rows[0][3] = "360"
        _write_csv(root, rows)
        return r"row 1 \(line 2\), hotspot/china\.jpg: heading 360 outside \[0, 360\)"
    if case == "not_a_number":
        rows[0][2] = "east"
        _write_csv(root, rows)
        return r"row 1 \(line 2\), hotspot/china\.jpg: lon 'east' is not a number"
    if case == "outside_class_folder":
        shutil.copy(root / "hotspot/china.jpg", root / "loose.jpg")
        rows.append(["loose.jpg", "", "", "", "hotspot"])
        _write_csv(root, rows)
        return r"row 3 \(line 4\), loose\.jpg: the image must sit directly in a class folder"
    if case == "corrupt":
        (root / "non_hotspot/flower.jpg").write_bytes(b"not a jpeg")
        _write_csv(root, rows)
        return r"non_hotspot/flower\.jpg: cannot decode image"
    if case == "one_class":
        (root / "non_hotspot/flower.jpg").unlink()
        _write_csv(root, rows[:1])
        return r"no images of class 'non_hotspot'"
    raise AssertionError(case)


CASES = ["missing_csv", "missing_column", "missing_file", "label_folder", "unknown_label", "not_in_csv",
         "duplicate", "bad_latitude", "bad_heading", "not_a_number", "outside_class_folder", "corrupt", "one_class"]


@pytest.mark.parametrize("case", CASES)
def test_bad_layouts_name_the_file_or_row_and_write_nothing(photos, tmp_path, case):
    pattern = _edit(photos, case)
    out = tmp_path / "ds.h5"
    with pytest.raises(DataError, match=pattern) as err:
        prepare("street", photos, out)
    if case != "corrupt":  # load_image's own message names the file only
        assert f"(expected layout {LAYOUT})" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob("*.h5*"))


@pytest.mark.parametrize("case", ["missing_csv", "missing_column", "missing_file"])
def test_cheap_check_finds_missing_csv_columns_and_files(photos, case):
    pattern = _edit(photos, case)
    with pytest.raises(DataError, match=pattern) as err:
        check_source("street", photos)
    assert f"(expected layout {LAYOUT})" in str(err.value)


def test_cheap_check_does_not_decode(photos):
    (photos / "non_hotspot/flower.jpg").write_bytes(b"not a jpeg")
    check_source("street", photos)  # the file exists; decoding is the reader's job
    with pytest.raises(DataError, match="cannot decode"):
        read_source("street", photos)
