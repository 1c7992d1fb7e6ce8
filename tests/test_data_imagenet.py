"""ILSVRC val for pretrained classifiers: the class mapping, torchvision's evaluation resize / crop (bit
for bit, on real photographs), masks and boxes through that geometry, the imagenet format's two layouts
and two annotation formats, and every bad input naming its file."""
import importlib.util
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
import torchvision.transforms as T
from PIL import Image

from cambench.data import DataError, generate_standin, prepare, read_class_mapping, read_dataset
from cambench.data.preprocess import boxes_mask

PER_CLASS = 3          # stand-in images per class (4 classes present of 1000)
RESIZE, CROP = 80, 64  # small stand-in images (72..160 px): a proportionate "256 / 224"


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    base = tmp_path_factory.mktemp("imagenet")
    generate_standin("imagenet", base / "flat", counts={"val": PER_CLASS}, seed=5)
    generate_standin("imagenet", base / "folders", counts={"val": PER_CLASS}, seed=5, layout="folders",
                     annotations="xml")
    return base


def _copy(standins: Path, layout: str, tmp_path: Path) -> Path:
    root = tmp_path / layout
    shutil.copytree(standins / layout / "data", root)
    return root


def planted(root: Path) -> dict[str, list[tuple[str, int, int, int, int]]]:
    """The stand-in's annotation, read here independently of the reader: stem -> (wnid, x0, y0, x1, y1)."""
    out = {}
    csv = root / "LOC_val_solution.csv"
    if csv.is_file():
        for line in csv.read_text().splitlines()[1:]:
            stem, words = line.split(",")
            words = words.split()
            out[stem] = [(words[k], *map(int, words[k + 1:k + 5])) for k in range(0, len(words), 5)]
    else:
        for xml in (root / "annotations").glob("*.xml"):
            tree = ET.parse(xml).getroot()
            out[xml.stem] = [(o.findtext("name"), *(int(o.find("bndbox").findtext(t))
                                                    for t in ("xmin", "ymin", "xmax", "ymax")))
                             for o in tree.iter("object")]
    return out


def torchvision_eval(path: Path, resize: int, crop: int, mode: str = "RGB",
                     interpolation=T.InterpolationMode.BILINEAR) -> np.ndarray:
    steps = ([T.Resize(resize, interpolation)] if resize else []) + ([T.CenterCrop(crop)] if crop else [])
    with Image.open(path) as im:
        return np.asarray(T.Compose(steps)(im.convert(mode)))


# ------------------------------------------------------------------------------------------------
# Stand-in layout
# ------------------------------------------------------------------------------------------------

def test_standin_writes_the_ilsvrc_layout_with_mixed_sizes(standins):
    flat, folders = standins / "flat" / "data", standins / "folders" / "data"
    images = sorted(flat.glob("*.JPEG"))
    assert [p.name for p in images] == [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 4 * PER_CLASS + 1)]
    sizes = {Image.open(p).size for p in images}
    assert len(sizes) > 3 and all(72 <= s <= 160 for size in sizes for s in size)
    mapping = (flat / "LOC_synset_mapping.txt").read_text().splitlines()
    assert len(mapping) == 1000 and mapping[0] == "n00000000 class 0" and mapping[999] == "n00000999 class 999"
    assert (flat / "LOC_val_solution.csv").read_text().startswith("ImageId,PredictionString\n")
    # folders: <wnid>/<stem>.JPEG, the same images, and one ILSVRC XML per image whose class is its folder
    moved = sorted(folders.glob("n*/*.JPEG"))
    assert sorted(p.name for p in moved) == [p.name for p in images]
    boxes = planted(folders)
    for p in moved:
        xml = ET.parse(folders / "annotations" / f"{p.stem}.xml").getroot()
        assert xml.tag == "annotation" and xml.findtext("filename") == p.stem
        assert (int(xml.findtext("size/width")), int(xml.findtext("size/height"))) == Image.open(p).size
        assert {wnid for wnid, *_ in boxes[p.stem]} == {p.parent.name}
    assert boxes == planted(flat)  # one seed, one data set, two layouts
    assert len({p.parent.name for p in moved}) == 4


# ------------------------------------------------------------------------------------------------
# Round trip: stand-in -> prepare -> read_dataset
# ------------------------------------------------------------------------------------------------

def _expected_boxes(box, height: int, width: int) -> tuple[float, float, float, float]:
    """torchvision's Resize(RESIZE) + CenterCrop(CROP) geometry, written out for one planted box."""
    _, x0, y0, x1, y1 = box
    if width <= height:
        new_w, new_h = RESIZE, int(RESIZE * height / width)
    else:
        new_h, new_w = RESIZE, int(RESIZE * width / height)
    top, left = int(round((new_h - CROP) / 2)), int(round((new_w - CROP) / 2))
    sy, sx = new_h / height, new_w / width
    return tuple(float(np.clip(v, 0, CROP)) for v in
                 (y0 * sy - top, x0 * sx - left, (y1 + 1) * sy - top, (x1 + 1) * sx - left))


@pytest.mark.parametrize("layout", ["flat", "folders"])
def test_both_layouts_round_trip_labels_boxes_and_masks(standins, tmp_path, layout):
    root = standins / layout / "data"
    out = tmp_path / "ds.h5"
    summary = prepare("imagenet", root, out, classes=root / "LOC_synset_mapping.txt", resize=RESIZE, crop=CROP)
    ds = read_dataset(out, "val")
    truth = planted(root)
    assert summary["counts"] == {"val": 4 * PER_CLASS} and ds.images.shape == (4 * PER_CLASS, 3, CROP, CROP)
    assert ds.class_names == [f"n{k:08d}" for k in range(1000)]
    with h5py.File(out) as f:
        sources = f["source"].asstr()[:]
    for i, (image_id, source) in enumerate(zip(ds.ids, sources)):
        stem = Path(source).stem
        wnid = truth[stem][0][0]
        assert image_id == f"val/{wnid}/{stem}"
        assert ds.labels[i] == int(wnid[1:])  # the index into the 1000-class mapping
        assert np.array_equal(ds.images[i].transpose(1, 2, 0), torchvision_eval(root / source, RESIZE, CROP))
        width, height = Image.open(root / source).size
        assert (ds.meta["orig_height"][i], ds.meta["orig_width"][i]) == (height, width)
        expected = [_expected_boxes(b, height, width) for b in truth[stem]]
        expected = [b for b in expected if b[2] > b[0] and b[3] > b[1]]  # cropped away: dropped
        mine = ds.box_image == i
        np.testing.assert_allclose(ds.boxes[mine], expected, atol=1e-4)
        assert (ds.box_label[mine] == int(wnid[1:])).all()
        # the mask is the union of the boxes, rasterised by pixel centres
        rows, cols = np.arange(CROP)[:, None] + 0.5, np.arange(CROP)[None] + 0.5
        union = np.zeros((CROP, CROP), bool)
        for y0, x0, y1, x1 in expected:
            union |= (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
        assert np.array_equal(ds.masks[i], union) and union.any()
    assert ds.mask_known is None and len(ds.boxes) >= len(ds)


def test_boxes_land_where_torchvision_puts_the_box_pixels(standins, tmp_path):
    """Independent of the geometry arithmetic: each planted box drawn as an image at the original size
    and sent through torchvision's Resize(NEAREST) + CenterCrop covers the pixels of the stored box."""
    root = standins / "flat" / "data"
    prepare("imagenet", root, tmp_path / "ds.h5", resize=RESIZE, crop=CROP)
    ds = read_dataset(tmp_path / "ds.h5")
    truth, checked = planted(root), 0
    for i, image_id in enumerate(ds.ids):
        stem = image_id.rsplit("/", 1)[1]
        width, height = Image.open(root / f"{stem}.JPEG").size
        kept = iter(ds.boxes[ds.box_image == i])
        for _, x0, y0, x1, y1 in truth[stem]:
            drawn = np.zeros((height, width), np.uint8)
            drawn[y0:y1 + 1, x0:x1 + 1] = 255
            steps = T.Compose([T.Resize(RESIZE, T.InterpolationMode.NEAREST), T.CenterCrop(CROP)])
            reference = np.asarray(steps(Image.fromarray(drawn))) > 127
            if not reference.any():
                continue
            box = next(kept)
            ours = boxes_mask(box[None], (CROP, CROP))
            # PIL computes the sampling positions in floats: a pixel centre exactly on an edge may go either way
            centres = np.arange(CROP) + 0.5
            on_edge = np.isclose(centres[:, None], box[[0, 2]]).any(1)[:, None] | \
                np.isclose(centres[None, :, None], box[[1, 3]]).any(-1)
            assert np.array_equal(reference[~on_edge], ours[~on_edge])
            checked += 1
    assert checked >= len(ds)


def test_read_dataset_rows_reindex_the_boxes(standins, tmp_path):
    out = tmp_path / "ds.h5"
    prepare("imagenet", standins / "flat" / "data", out, resize=RESIZE, crop=CROP)
    whole, part = read_dataset(out), read_dataset(out, "val", rows=slice(3, 7))
    assert part.box_image.min() == 0 and part.box_image.max() == 3
    for j in range(4):
        assert np.array_equal(part.boxes[part.box_image == j], whole.boxes[whole.box_image == 3 + j])
        assert np.array_equal(part.box_label[part.box_image == j], whole.box_label[whole.box_image == 3 + j])
    assert read_dataset(out, rows=slice(5, 5)).boxes.shape == (0, 4)


def test_without_a_mapping_classes_are_the_annotated_wnids_and_without_annotations_no_boxes(standins, tmp_path):
    out = tmp_path / "ds.h5"
    prepare("imagenet", standins / "folders" / "data", out, resize=RESIZE, crop=CROP)
    ds = read_dataset(out)
    assert ds.class_names == sorted(p.name for p in (standins / "folders" / "data").glob("n*"))
    assert [ds.class_names[y] for y in ds.labels] == [i.split("/")[1] for i in ds.ids]
    prepare("imagenet", standins / "folders" / "data", out, options={"annotations": "none"}, resize=RESIZE, crop=CROP)
    ds = read_dataset(out)
    assert ds.boxes is None and ds.masks is None


# ------------------------------------------------------------------------------------------------
# torchvision's evaluation transforms on real photographs
# ------------------------------------------------------------------------------------------------

def real_photos(folder: Path) -> list[Path]:
    """The real photographs shipped in installed packages (docs/datasets.md §9), as files."""
    folder.mkdir(parents=True)
    photos = []
    if importlib.util.find_spec("sklearn"):
        from sklearn.datasets import load_sample_image
        for name in ("china.jpg", "flower.jpg"):  # 640 x 427
            Image.fromarray(load_sample_image(name)).save(folder / f"{Path(name).stem}.png")
            photos.append(folder / f"{Path(name).stem}.png")
    if importlib.util.find_spec("skimage"):
        from skimage import data
        for name in ("astronaut", "coffee", "chelsea"):  # 512 x 512, 600 x 400, 451 x 300
            Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
            photos.append(folder / f"{name}.png")
    if importlib.util.find_spec("matplotlib"):
        import matplotlib.cbook
        photos.append(folder / "grace_hopper.jpg")  # 512 x 600: portrait, the long side is the height
        shutil.copy(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), photos[-1])
    spec = importlib.util.find_spec("foolbox")  # its ImageNet JPEGs, read as files (never imported)
    if spec and spec.submodule_search_locations:
        for path in sorted((Path(spec.submodule_search_locations[0]) / "data").glob("imagenet_*.jpg"))[:4]:
            photos.append(folder / path.name)
            shutil.copy(path, photos[-1])
    if not photos:
        pytest.skip("no package with real photographs (scikit-learn, scikit-image, matplotlib, foolbox) is installed")
    return photos


@pytest.mark.parametrize("resize, crop, channels", [(256, 224, 3), (100, 100, 3), (0, 300, 3), (57, 80, 3),
                                                    (97, 64, 1)])
def test_resize_and_crop_equal_torchvision_on_real_photos(tmp_path, resize, crop, channels):
    root = tmp_path / "set"
    photos = real_photos(root / "val" / "photo")
    assert len({Image.open(p).size for p in photos}) > 2  # mixed sizes: accepted with resize or crop
    prepare("imagefolder", root, tmp_path / "ds.h5", resize=resize, crop=crop, channels=channels)
    ds = read_dataset(tmp_path / "ds.h5")
    mode = "RGB" if channels == 3 else "L"
    for i, image_id in enumerate(ds.ids):
        path = next(p for p in photos if p.stem == image_id.rsplit("/", 1)[1])
        expected = torchvision_eval(path, resize, crop, mode)
        assert np.array_equal(ds.images[i].transpose(1, 2, 0).squeeze(-1) if channels == 1 else
                              ds.images[i].transpose(1, 2, 0), expected), path.name
        assert (ds.meta["orig_width"][i], ds.meta["orig_height"][i]) == Image.open(path).size


def test_real_imagenet_jpegs_in_the_folders_layout_take_the_mapping_index(tmp_path):
    """foolbox's ImageNet samples (label in the name) as <wnid>/<name>.JPEG with a 1000-line mapping."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("foolbox (20 real ImageNet JPEGs) is not installed")
    files = sorted((Path(spec.submodule_search_locations[0]) / "data").glob("imagenet_*.jpg"))[:6]
    root = tmp_path / "val"
    for f in files:
        label = int(re.match(r"imagenet_\d+_(\d+)", f.stem).group(1))
        (root / f"n{label:08d}").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / f"n{label:08d}" / f"{f.stem}.JPEG")
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("".join(f"n{k:08d} class {k}, a description\n\n" for k in range(1000)))
    prepare("imagenet", root, tmp_path / "ds.h5", classes=mapping, resize=256, crop=224)
    ds = read_dataset(tmp_path / "ds.h5")
    assert ds.images.shape[1:] == (3, 224, 224) and ds.boxes is None and len(ds.class_names) == 1000
    for i, image_id in enumerate(ds.ids):
        wnid, stem = image_id.split("/")[1:]
        assert ds.labels[i] == int(stem.rsplit("_", 1)[1]) == int(wnid[1:])
        assert np.array_equal(ds.images[i].transpose(1, 2, 0), torchvision_eval(root / wnid / f"{stem}.JPEG", 256, 224))


# ------------------------------------------------------------------------------------------------
# Sizes, masks given by mask_root, evaluation-only sets, other formats
# ------------------------------------------------------------------------------------------------

def _mixed_folder(root: Path, masks: Path | None = None) -> list[Path]:
    """A 'val'-only class-folder set of mixed sizes (+ masks at the original size): no train split."""
    rng = np.random.default_rng(0)
    files = []
    for k, (w, h) in enumerate([(50, 40), (37, 61), (64, 64), (45, 30)]):
        path = root / "val" / ("a" if k % 2 else "b") / f"im{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        files.append(path)
        if masks:
            m = masks / path.relative_to(root)
            m.parent.mkdir(parents=True, exist_ok=True)
            mask = np.zeros((h, w), np.uint8)
            mask[h // 5: h // 2, w // 3: w - 3] = 255
            mask[rng.random((h, w)) < 0.05] = 255  # speckle: nearest-neighbour detail
            Image.fromarray(mask).save(m)
    return files


def test_mixed_sizes_without_resize_are_refused_naming_the_file(standins, tmp_path):
    files = _mixed_folder(tmp_path / "set")
    with pytest.raises(DataError) as err:
        prepare("imagefolder", tmp_path / "set", tmp_path / "ds.h5")
    assert str(files[1]) in str(err.value) and "datasets.<name>.resize / crop" in str(err.value)
    with pytest.raises(DataError) as err:
        prepare("imagenet", standins / "flat" / "data", tmp_path / "ds.h5")
    second = standins / "flat" / "data" / "ILSVRC2012_val_00000002.JPEG"  # the first differs from the first
    assert str(second) in str(err.value) and "resize" in str(err.value)
    assert not (tmp_path / "ds.h5").exists()
    with pytest.raises(DataError, match=re.escape(str(files[1])) + r".*aspect ratio: set datasets.<name>.crop"):
        prepare("imagefolder", tmp_path / "set", tmp_path / "ds.h5", resize=32)  # aspect ratios differ
    prepare("imagefolder", tmp_path / "set", tmp_path / "ds.h5", crop=32)  # a crop alone brings them to one size
    assert read_dataset(tmp_path / "ds.h5").images.shape == (4, 3, 32, 32)


def test_masks_from_mask_root_follow_the_transform_by_nearest_neighbour(tmp_path):
    files = _mixed_folder(tmp_path / "set", tmp_path / "masks")
    prepare("imagefolder", tmp_path / "set", tmp_path / "ds.h5", mask_root=tmp_path / "masks", resize=48, crop=40)
    ds = read_dataset(tmp_path / "ds.h5")  # an evaluation-only set: split 'val', no 'train'
    with h5py.File(tmp_path / "ds.h5") as f:
        assert list(f["split"].asstr()[:]) == ["val"] * 4
        all_pixels = ds.images.astype(np.float64).mean(axis=(0, 2, 3)) / 255
        np.testing.assert_allclose(f.attrs["mean"], all_pixels, atol=1e-9)  # stats of all images
    for i, image_id in enumerate(ds.ids):
        path = next(p for p in files if p.stem == image_id.rsplit("/", 1)[1])
        expected = torchvision_eval(tmp_path / "masks" / path.relative_to(tmp_path / "set"), 48, 40, "L",
                                    T.InterpolationMode.NEAREST) > 127
        assert np.array_equal(ds.masks[i], expected) and expected.any()
    # a mask given at the prepared size instead of the original one is refused, naming it
    victim = tmp_path / "masks" / files[0].relative_to(tmp_path / "set")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(victim)
    with pytest.raises(DataError, match=re.escape(str(victim)) + ".*original"):
        prepare("imagefolder", tmp_path / "set", tmp_path / "ds2.h5", mask_root=tmp_path / "masks", resize=48, crop=40)


def test_formats_read_at_one_size_are_resized_afterwards_with_their_masks(tmp_path):
    """cifake (32x32 JPEGs, masks by id) takes resize / crop after reading: the same torchvision result."""
    generate_standin("cifake", tmp_path / "c", counts={"train": 1, "test": 1}, seed=0)
    prepare("cifake", tmp_path / "c" / "data", tmp_path / "ds.h5", mask_root=tmp_path / "c" / "masks",
            resize=45, crop=40)
    ds = read_dataset(tmp_path / "ds.h5")
    with h5py.File(tmp_path / "ds.h5") as f:
        sources = f["source"].asstr()[:]
    for i, source in enumerate(sources):
        assert np.array_equal(ds.images[i].transpose(1, 2, 0), torchvision_eval(tmp_path / "c/data" / source, 45, 40))
        mask = tmp_path / "c/masks" / Path(source).with_suffix(".png")
        assert np.array_equal(ds.masks[i], torchvision_eval(mask, 45, 40, "L", T.InterpolationMode.NEAREST) > 127)
    assert set(ds.meta["orig_height"]) == {32}


# ------------------------------------------------------------------------------------------------
# The class mapping
# ------------------------------------------------------------------------------------------------

def test_read_class_mapping_reads_first_words_and_names_bad_files(tmp_path):
    mapping = tmp_path / "map.txt"
    mapping.write_text("n01440764 tench, Tinca tinca\n\n  n01443537 goldfish\nn01484850\n")
    assert read_class_mapping(mapping) == ["n01440764", "n01443537", "n01484850"]
    assert read_class_mapping(["b", "a"]) == ["b", "a"] and read_class_mapping([]) == [] == read_class_mapping("")
    mapping.write_text("a x\nb y\n\na z\n")
    with pytest.raises(DataError, match=re.escape(f"{mapping}:4: class 'a' repeats line 1 (datasets.x.classes")):
        read_class_mapping(mapping, where="datasets.x.classes")
    with pytest.raises(DataError, match=r"'a' appears twice \(entries 0 and 2\)"):
        read_class_mapping(["a", "b", "a"])
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "none.txt")) + ": class mapping file not found"):
        read_class_mapping(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "empty.txt")) + ": no class names"):
        read_class_mapping(tmp_path / "empty.txt")


def test_a_mapping_makes_labels_indices_into_it_and_a_missing_class_names_a_file(tmp_path):
    files = _mixed_folder(tmp_path / "set")
    prepare("imagefolder", tmp_path / "set", tmp_path / "ds.h5", classes=["z", "b", "y", "a"], crop=16)
    ds = read_dataset(tmp_path / "ds.h5")
    assert ds.class_names == ["z", "b", "y", "a"]
    assert [ds.class_names[y] for y in ds.labels] == [i.split("/")[1] for i in ds.ids] and set(ds.labels) == {1, 3}
    mapping = tmp_path / "map.txt"
    mapping.write_text("z\nb\n")
    with pytest.raises(DataError) as err:
        prepare("imagefolder", tmp_path / "set", tmp_path / "ds2.h5", classes=mapping, crop=16)
    assert f"{files[1]}: class 'a' is not in the class mapping {mapping}" in str(err.value)
    assert not (tmp_path / "ds2.h5").exists()


# ------------------------------------------------------------------------------------------------
# Bad ImageNet inputs: each names the file (and line)
# ------------------------------------------------------------------------------------------------

def _edit_csv_line(root: Path, number: int, edit) -> str:
    """Apply ``edit`` to line ``number`` (1 = the header) of the CSV; returns 'path:number'."""
    csv = root / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines(keepends=True)
    lines[number - 1] = edit(lines[number - 1])
    csv.write_text("".join(lines))
    return f"{csv}:{number}"


def test_a_box_outside_its_image_names_the_csv_line_and_the_image(standins, tmp_path):
    root = _copy(standins, "flat", tmp_path)
    width = Image.open(root / "ILSVRC2012_val_00000003.JPEG").width
    # the 3rd image's row: x_max = width is one past the last column (indices count from 0)
    where = _edit_csv_line(root, 4, lambda line: re.sub(r"^(\S+ \d+ \d+ )\d+", rf"\g<1>{width}", line))
    with pytest.raises(DataError) as err:
        prepare("imagenet", root, tmp_path / "ds.h5", resize=RESIZE, crop=CROP)
    assert str(err.value).startswith(f"{where}: box of")
    assert str(root / "ILSVRC2012_val_00000003.JPEG") in str(err.value)
    prepare("imagenet", root, tmp_path / "ds.h5", options={"box_origin": 1}, resize=RESIZE, crop=CROP)  # 1-based: fits


def test_a_box_outside_its_image_names_the_xml(standins, tmp_path):
    root = _copy(standins, "folders", tmp_path)
    xml = root / "annotations" / "ILSVRC2012_val_00000002.xml"
    tree = ET.parse(xml)
    tree.getroot().find("object/bndbox/ymax").text = "400"
    tree.write(xml)
    with pytest.raises(DataError, match=re.escape(f"{xml}: box of") + r".*outside its image"):
        prepare("imagenet", root, tmp_path / "ds.h5", resize=RESIZE, crop=CROP)


def test_a_missing_annotation_names_the_image_unless_boxes_are_optional(standins, tmp_path):
    root = _copy(standins, "folders", tmp_path)
    (root / "annotations" / "ILSVRC2012_val_00000005.xml").unlink()
    image = next(root.glob("n*/ILSVRC2012_val_00000005.JPEG"))
    with pytest.raises(DataError, match=re.escape(f"{image}: no annotation")):
        prepare("imagenet", root, tmp_path / "ds.h5", resize=RESIZE, crop=CROP)
    prepare("imagenet", root, tmp_path / "ds.h5", options={"boxes": "optional"}, resize=RESIZE, crop=CROP)
    ds = read_dataset(tmp_path / "ds.h5")
    row = [i.endswith("_00000005") for i in ds.ids].index(True)
    assert ds.mask_known.tolist() == [i != row for i in range(len(ds))]
    assert row not in ds.box_image and not ds.masks[row].any()
    flat = _copy(standins, "flat", tmp_path)  # flat: the annotation is the label, so it is always needed
    _edit_csv_line(flat, 6, lambda line: "")
    with pytest.raises(DataError, match=re.escape(f"{flat / 'ILSVRC2012_val_00000005.JPEG'}: no annotation")):
        prepare("imagenet", flat, tmp_path / "ds.h5", options={"boxes": "optional"}, resize=RESIZE, crop=CROP)


def test_an_annotated_class_outside_the_mapping_or_the_folders_names_the_file(standins, tmp_path):
    flat = _copy(standins, "flat", tmp_path)
    where = _edit_csv_line(flat, 3, lambda line: re.sub(r",n\d+", ",n99999999", line))
    with pytest.raises(DataError, match=re.escape(f"{where}: annotated class 'n99999999' is not in the class mapping")):
        prepare("imagenet", flat, tmp_path / "ds.h5", classes=flat / "LOC_synset_mapping.txt", resize=RESIZE, crop=CROP)
    folders = _copy(standins, "folders", tmp_path)
    xml = folders / "annotations" / "ILSVRC2012_val_00000007.xml"
    xml.write_text(xml.read_text().replace("<name>n", "<name>m", 1))
    with pytest.raises(DataError, match=re.escape(f"{xml}: annotated class 'm") + r".*class folders"):
        prepare("imagenet", folders, tmp_path / "ds.h5", resize=RESIZE, crop=CROP)


def test_a_mapping_missing_a_folders_class_names_the_class_a_file_and_the_mapping(standins, tmp_path):
    root = standins / "folders" / "data"
    first = sorted(root.glob("n*"))[0]
    mapping = tmp_path / "map.txt"
    mapping.write_text("".join(line + "\n" for line in (root / "LOC_synset_mapping.txt").read_text().splitlines()
                               if not line.startswith(first.name)))
    with pytest.raises(DataError) as err:
        prepare("imagenet", root, tmp_path / "ds.h5", classes=mapping, options={"annotations": "none"}, crop=CROP)
    assert f"{sorted(first.glob('*.JPEG'))[0]}: class '{first.name}' is not in the class mapping {mapping}" \
        in str(err.value)


@pytest.mark.parametrize("case", ["xml", "csv_words", "csv_header", "csv_number"])
def test_unparsable_annotations_name_the_file(standins, tmp_path, case):
    if case == "xml":
        root = _copy(standins, "folders", tmp_path)
        xml = root / "annotations" / "ILSVRC2012_val_00000004.xml"
        xml.write_text(xml.read_text()[:150])
        where = f"{xml}: cannot parse"
    else:
        root = _copy(standins, "flat", tmp_path)
        edit = {"csv_words": (5, lambda line: line.replace(" ", " 7 ", 1)),
                "csv_header": (1, lambda line: "ImageId;PredictionString\n"),
                "csv_number": (3, lambda line: re.sub(r"(,n\d+ )\d+", r"\g<1>1e", line))}[case]
        where = _edit_csv_line(root, *edit) + ":"
    with pytest.raises(DataError, match=re.escape(where)):
        prepare("imagenet", root, tmp_path / "ds.h5", resize=RESIZE, crop=CROP)


def test_the_layout_check_is_cheap_and_names_what_is_missing(standins, tmp_path):
    from cambench.data import check_source
    root = _copy(standins, "flat", tmp_path)
    (root / "LOC_val_solution.csv").unlink()
    with pytest.raises(DataError, match=re.escape(f"{root}: images lie directly") + r".*no annotations"):
        check_source("imagenet", root)
    with pytest.raises(DataError, match=re.escape(str(root / "boxes.csv")) + ": annotations not found"):
        check_source("imagenet", root, {"annotations": "boxes.csv"})
    folders = _copy(standins, "folders", tmp_path)
    for image in folders.glob("n*/*.JPEG"):
        image.write_bytes(b"not decoded by the check")
    check_source("imagenet", folders)  # layout and annotation presence only
    with pytest.raises(DataError, match="cannot decode image"):
        prepare("imagenet", folders, tmp_path / "ds.h5", crop=CROP)


def test_the_pipeline_passes_classes_resize_and_crop_with_a_path_relative_to_the_working_directory(
        standins, tmp_path, monkeypatch):
    from cambench.pipeline import prepare_dataset
    shutil.copy(standins / "flat" / "data" / "LOC_synset_mapping.txt", tmp_path / "synsets.txt")
    monkeypatch.chdir(tmp_path)
    summary = prepare_dataset("imagenet", standins / "flat" / "data", tmp_path / "ds.h5", classes="synsets.txt",
                              resize=RESIZE, crop=CROP, seed=0)
    assert len(summary["classes"]) == 1000 and summary["shape"] == [3, CROP, CROP]
    ds = read_dataset(tmp_path / "ds.h5")
    assert [ds.class_names[y] for y in ds.labels] == [i.split("/")[1] for i in ds.ids]
