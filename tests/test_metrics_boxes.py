"""Box localisation (Grad-CAM's protocol, docs/papers.md §1) and HD95 (AME-CAM's, docs/papers.md §11): connected
components, largest components and boxes against scipy.ndimage, known box IoUs, and HD95 against a
scipy reference written here from medpy's definition (surfaces by binary erosion, Euclidean distance
transforms, np.percentile of the union of both directed distance sets)."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff

import cambench
from cambench.metrics import METRICS, evaluate_applies, localisation
from cambench.metrics.localisation import (
    binarise,
    bounding_boxes,
    connected_components,
    largest_component,
    surface_hd95,
)

# neighbour count -> rank of scipy's generate_binary_structure
CONNECTIVITY = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}


def run(maps, metric, masks=None, **params):
    """Metric values (N,) of heatmaps (N, *S); NaN where the metric does not apply."""
    n = maps.shape[0]
    fields = {} if masks is None else {"masks": masks}
    return cambench.evaluate(None, torch.zeros(n, 1, *maps.shape[1:]), maps, metric,
                             targets=torch.zeros(n, dtype=torch.long), **fields, **params)


def random_binary(shape, density, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < density


def blobby_maps(shape, seed, sigma=2.0):
    """Smooth random maps in [0, 1] (N, *S): thresholding gives irregular blobs, several per image."""
    rng = np.random.default_rng(seed)
    maps = np.stack([ndimage.gaussian_filter(rng.random(shape[1:]), sigma, mode="constant") for _ in range(shape[0])])
    maps -= maps.min(axis=tuple(range(1, maps.ndim)), keepdims=True)
    maps /= maps.max(axis=tuple(range(1, maps.ndim)), keepdims=True)
    return torch.from_numpy(maps).float()


def box_mask(shape, start, stop):
    """(N, *S) bool, True in the box [start, stop) of the spatial axes of every image."""
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[(slice(None),) + tuple(slice(a, b) for a, b in zip(start, stop))] = True
    return mask


# ------------------------------------------------------------------------------------------------
# Connected components, largest component, boxes vs scipy.ndimage
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(12, 24, 28), (5, 9, 10, 11)])
@pytest.mark.parametrize("density", [0.3, 0.5, 0.6])
def test_connected_components_equal_scipy_label(shape, density):
    """Same partition as scipy.ndimage.label, and even the same numbers (first pixel in C order)."""
    ndim = len(shape) - 1
    binary = random_binary(shape, density, seed=int(density * 10) + ndim)
    for connectivity, rank in CONNECTIVITY[ndim].items():
        labels = connected_components(binary, connectivity)
        assert labels.dtype == torch.long and labels.shape == binary.shape
        structure = ndimage.generate_binary_structure(ndim, rank)
        for i in range(shape[0]):
            ref, count = ndimage.label(binary[i].numpy(), structure)
            assert labels[i].max().item() == count, (connectivity, i)
            np.testing.assert_array_equal(labels[i].numpy(), ref, err_msg=f"connectivity {connectivity}, image {i}")
    # the default is full connectivity
    full = ndimage.generate_binary_structure(ndim, ndim)
    np.testing.assert_array_equal(connected_components(binary)[0].numpy(), ndimage.label(binary[0].numpy(), full)[0])


def test_connectivity_changes_the_partition():
    """Two squares touching at a corner: one component at 8, two at 4."""
    binary = torch.zeros(1, 10, 10, dtype=torch.bool)
    binary[0, 0:4, 0:4] = True
    binary[0, 4:9, 4:9] = True
    assert connected_components(binary, 8).max().item() == 1
    assert connected_components(binary, 4).max().item() == 2


def test_connected_components_follow_long_paths_and_edge_cases():
    """A spiral (one component, a path of ~half the pixels), plus all-empty and all-full images."""
    size = 33
    spiral = np.zeros((size, size), dtype=bool)
    top, left, bottom, right = 0, 0, size - 1, size - 1
    while top <= bottom and left <= right:  # walls two apart: a single winding corridor
        spiral[top, left:right + 1] = True
        spiral[top:bottom + 1, right] = True
        spiral[bottom, left:right + 1] = True
        spiral[top + 2:bottom + 1, left] = True
        if top + 2 <= bottom:
            spiral[top + 2, left:left + 3] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    batch = torch.from_numpy(np.stack([spiral, np.zeros_like(spiral), np.ones_like(spiral), spiral.T[::-1].copy()]))
    for connectivity, rank in CONNECTIVITY[2].items():
        labels = connected_components(batch, connectivity)
        structure = ndimage.generate_binary_structure(2, rank)
        for i in range(4):
            np.testing.assert_array_equal(labels[i].numpy(), ndimage.label(batch[i].numpy(), structure)[0])


def test_chunked_labelling_matches_one_batch(monkeypatch):
    binary = random_binary((9, 16, 16), 0.55, seed=3)
    labels, largest = connected_components(binary), largest_component(binary)
    monkeypatch.setattr(localisation, "CPU_CHUNK_PIXELS", 2 * 256)  # chunks of 2 images
    torch.testing.assert_close(connected_components(binary), labels, rtol=0, atol=0)
    torch.testing.assert_close(largest_component(binary), largest, rtol=0, atol=0)


@pytest.mark.parametrize("shape,connectivity", [((10, 20, 22), 4), ((10, 20, 22), 8), ((4, 8, 9, 10), 6),
                                                ((4, 8, 9, 10), 26)])
def test_largest_component_and_boxes_equal_scipy(shape, connectivity):
    ndim = len(shape) - 1
    binary = random_binary(shape, 0.45, seed=7)
    binary[-1] = False  # an empty image: empty component, zero box
    largest = largest_component(binary, connectivity)
    boxes = bounding_boxes(largest)
    assert boxes.shape == (shape[0], 2 * ndim) and boxes.dtype == torch.long
    structure = ndimage.generate_binary_structure(ndim, CONNECTIVITY[ndim][connectivity])
    for i in range(shape[0]):
        labels, count = ndimage.label(binary[i].numpy(), structure)
        if count == 0:
            assert not largest[i].any() and (boxes[i] == 0).all()
            continue
        sizes = np.bincount(labels.ravel())[1:]
        expected = labels == 1 + int(np.argmax(sizes))  # first of the largest on ties
        np.testing.assert_array_equal(largest[i].numpy(), expected)
        (slices,) = ndimage.find_objects(expected.astype(int))
        assert boxes[i].tolist() == [s.start for s in slices] + [s.stop for s in slices]


# ------------------------------------------------------------------------------------------------
# box_iou: known answers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_map_equal_to_the_mask_gives_one(dims):
    shape = (24,) * dims if dims == 2 else (12, 14, 16)
    grid = np.indices(shape)
    centre = np.array(shape)[:, None] / 2
    disc = ((grid.reshape(dims, -1) - centre) ** 2 / (np.array(shape)[:, None] / 4) ** 2).sum(0) <= 1
    mask = torch.from_numpy(disc.reshape(shape))[None]
    assert run(mask.float(), "box_iou", mask).item() == 1.0
    # a graded map over the same support: any value >= 0.15 x max inside, zero outside
    graded = mask * (0.2 + 0.8 * torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)))
    assert run(graded, "box_iou", mask).item() == 1.0


def test_the_largest_component_wins_over_the_peak():
    """The peak (1.0) sits in a 3x3 blob; a 8x8 blob at 0.5 is the largest component: its box is taken."""
    maps = torch.zeros(1, 32, 32)
    maps[0, 2:5, 2:5] = 1.0
    maps[0, 14:22, 16:24] = 0.5
    big = box_mask((1, 32, 32), (14, 16), (22, 24))
    small = box_mask((1, 32, 32), (2, 2), (5, 5))
    assert run(maps, "box_iou", big).item() == 1.0
    assert run(maps, "box_iou", small).item() == 0.0
    # where the peak's blob is the larger one, it wins
    maps[0, 2:12, 2:12] = 1.0
    assert run(maps, "box_iou", big).item() == 0.0


@pytest.mark.parametrize("dims", [2, 3])
def test_shifted_box_gives_the_analytic_iou(dims):
    shape = (1,) + ((40, 36) if dims == 2 else (20, 22, 24))
    start, shift, side = (4,) * dims, (4, 3, 2)[:dims], (20,) * dims if dims == 2 else (12, 12, 12)
    stop = tuple(a + d + s for a, d, s in zip(start, shift, side))
    assert all(b <= size for b, size in zip(stop, shape[1:]))  # the moved box stays inside the image
    mask = box_mask(shape, start, tuple(a + s for a, s in zip(start, side)))
    moved = box_mask(shape, tuple(a + d for a, d in zip(start, shift)), stop)
    inter = math.prod(s - d for s, d in zip(side, shift))
    volume = math.prod(side)
    assert run(moved.float(), "box_iou", mask).item() == pytest.approx(inter / (2 * volume - inter), rel=1e-6)


def test_threshold_decides_whether_the_halo_joins():
    """A core at 1.0 (10x10) inside a halo at 0.2 (20x20): 0.15 x max keeps the halo's box, 0.5 the core's."""
    maps = torch.zeros(1, 32, 32)
    maps[0, 5:25, 5:25] = 0.2
    maps[0, 10:20, 10:20] = 1.0
    core = box_mask((1, 32, 32), (10, 10), (20, 20))
    assert run(maps, "box_iou", core).item() == pytest.approx(100 / 400)
    assert run(maps, "box_iou", core, threshold=0.5).item() == 1.0


def test_connectivity_decides_whether_diagonal_blobs_merge():
    maps = torch.zeros(1, 12, 12)
    maps[0, 0:4, 0:4] = 1.0
    maps[0, 4:9, 4:9] = 0.8  # touches the first square at a corner only
    mask = box_mask((1, 12, 12), (4, 4), (9, 9))
    assert run(maps, "box_iou", mask).item() == pytest.approx(25 / 81)  # default: 8-connected, one box
    assert run(maps, "box_iou", mask, connectivity=8).item() == pytest.approx(25 / 81)
    assert run(maps, "box_iou", mask, connectivity=4).item() == 1.0


def test_ground_truth_box_spans_the_whole_mask():
    """Two mask objects: the ground-truth box is the bounding box of both (the mask_bbox convention)."""
    mask = box_mask((1, 20, 20), (2, 2), (6, 6)) | box_mask((1, 20, 20), (12, 12), (16, 16))
    maps = box_mask((1, 20, 20), (2, 2), (16, 16)).float()
    assert run(maps, "box_iou", mask).item() == 1.0
    assert run(mask.float(), "box_iou", mask).item() == pytest.approx(16 / 196)  # one object's box only


@pytest.mark.parametrize("value", [0.0, 0.4, 1.0])
def test_constant_maps_score_zero_and_empty_masks_do_not_apply(value):
    masks = box_mask((2, 16, 16), (3, 3), (9, 9))
    masks[1] = False
    values, applies = evaluate_applies(None, torch.zeros(2, 1, 16, 16), torch.full((2, 16, 16), value), "box_iou",
                                       targets=torch.zeros(2, dtype=torch.long), masks=masks)
    assert applies.tolist() == [True, False]
    assert values.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("shape", [(7, 30, 30), (4, 10, 12, 12)])
def test_box_iou_matches_a_scipy_pipeline_and_batch_neighbours_do_not_matter(shape):
    """Threshold at 0.15 x max, scipy's largest component (full connectivity), its box, IoU with the mask's box."""
    ndim = len(shape) - 1
    maps = blobby_maps(shape, seed=11, sigma=1.5)
    masks = torch.from_numpy(blobby_maps(shape, seed=12, sigma=2.5).numpy() > 0.6)
    values = run(maps, "box_iou", masks)
    full = ndimage.generate_binary_structure(ndim, ndim)
    for i in range(shape[0]):
        labels, _ = ndimage.label(maps[i].numpy() >= 0.15 * maps[i].numpy().max(), full)
        biggest = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
        (a,), (b,) = ndimage.find_objects(biggest.astype(int)), ndimage.find_objects(masks[i].numpy().astype(int))
        inter = math.prod(max(0, min(x.stop, y.stop) - max(x.start, y.start)) for x, y in zip(a, b))
        vol_a = math.prod(x.stop - x.start for x in a)
        vol_b = math.prod(y.stop - y.start for y in b)
        assert values[i].item() == pytest.approx(inter / (vol_a + vol_b - inter), rel=1e-6), i
        assert run(maps[i:i + 1], "box_iou", masks[i:i + 1]).item() == values[i].item()
    assert 0 < values.min() and values.max() < 1  # not a degenerate case


# ------------------------------------------------------------------------------------------------
# box_iou against annotated boxes (gt_box "boxes"): label-class boxes, best IoU, float boxes
# ------------------------------------------------------------------------------------------------

def with_boxes(maps, boxes, box_image, box_label, labels, **params):
    """box_iou values and applies (N,) of maps against the annotated boxes of each image's label class."""
    padded, valid = localisation.label_class_boxes(torch.tensor(boxes, dtype=torch.float32), torch.tensor(box_image),
                                                   torch.tensor(box_label), torch.tensor(labels))
    n = maps.shape[0]
    return evaluate_applies(None, torch.zeros(n, 1, *maps.shape[1:]), maps, "box_iou",
                            targets=torch.zeros(n, dtype=torch.long), boxes=padded, box_valid=valid, **params)


def test_annotated_boxes_known_answers():
    """Image 0 (label 1): its map's box (4, 4, 12, 12) against two boxes of class 1 (IoU 0.5 and
    36/92) and an exact box of class 2 that must be ignored: 0.5. Image 1 (label 0): a float box
    from a resize, IoU in float64. Image 2 has a box of another class only, image 3 none: not applicable."""
    maps = torch.zeros(4, 32, 32)
    maps[0, 4:12, 4:12] = 1.0
    maps[1, 10:20, 8:22] = 1.0
    maps[2:, 0:8, 0:8] = 1.0
    labels = [1, 0, 1, 2]
    # listed out of image order: the boxes are gathered per image, whatever the file's order
    boxes = [(12.5, 10.0, 20.0, 22.5), (6, 6, 14, 14), (4, 4, 12, 12), (0, 0, 8, 8), (4, 4, 12, 8)]
    box_image = [1, 0, 0, 2, 0]
    box_label = [0, 1, 2, 0, 1]
    values, applies = with_boxes(maps, boxes, box_image, box_label, labels, gt_box="boxes")
    assert applies.tolist() == [True, True, False, False]
    float_iou = (7.5 * 12) / (140 + 7.5 * 12.5 - 7.5 * 12)  # map box (10, 8, 20, 22)
    assert values[:2].tolist() == pytest.approx([0.5, float_iou], rel=1e-7)
    assert values[0].item() == 0.5
    # sub-pixel float boxes: the IoU is not clamped to whole pixels
    quarter, eighth = torch.tensor([0.0, 0.0, 0.5, 0.5]), torch.tensor([0.0, 0.0, 0.5, 0.25])
    assert localisation.box_overlap(quarter, eighth).item() == 0.5
    # "auto" takes the boxes when there are any; mask_bbox needs masks
    auto, _ = with_boxes(maps, boxes, box_image, box_label, labels)
    torch.testing.assert_close(auto, values, rtol=0, atol=0)
    with pytest.raises(ValueError, match="box_iou.*masks"):
        with_boxes(maps, boxes, box_image, box_label, labels, gt_box="mask_bbox")


def test_label_class_boxes_gather_each_images_own_class():
    padded, valid = localisation.label_class_boxes(
        torch.arange(20, dtype=torch.float32).view(5, 4), torch.tensor([2, 0, 2, 2, 1]),
        torch.tensor([1, 0, 1, 1, 0]), torch.tensor([0, 1, 1, 0]))
    # image 0 (label 0): box 1; image 1 (label 1): its box is class 0, none;
    # image 2: boxes 0, 2, 3 in their order; image 3: none
    assert valid.tolist() == [[True, False, False], [False] * 3, [True] * 3, [False] * 3]
    assert padded[0, 0].tolist() == [4, 5, 6, 7]
    assert padded[2].tolist() == [[0, 1, 2, 3], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert padded[~valid].eq(0).all()
    # box_valid decides, not the padding's values: a matching box in a padding slot does not count
    maps = torch.zeros(4, 32, 32)
    maps[:, 0:4, 0:4] = 1.0
    padded[~valid] = torch.tensor([0.0, 0.0, 4.0, 4.0])
    values, applies = evaluate_applies(None, torch.zeros(4, 1, 32, 32), maps, "box_iou",
                                       targets=torch.zeros(4, dtype=torch.long), boxes=padded, box_valid=valid)
    assert applies.tolist() == [True, False, True, False] and values[0].item() == 0.0
    # no box of any label class: one padded column, nothing valid (box_iou: nothing applies)
    padded, valid = localisation.label_class_boxes(torch.zeros(1, 4), torch.tensor([0]), torch.tensor([1]),
                                                   torch.tensor([0, 0]))
    assert padded.shape == (2, 1, 4) and not valid.any()
    values, applies = evaluate_applies(None, torch.zeros(2, 1, 8, 8), torch.rand(2, 8, 8), "box_iou",
                                       targets=torch.zeros(2, dtype=torch.long), boxes=padded, box_valid=valid)
    assert not applies.any()


def test_boxes_equal_to_the_mask_agree_with_mask_bbox():
    """One annotated box per image that is exactly its (rectangular) mask: both ground truths agree bit for bit."""
    maps = blobby_maps((9, 30, 30), seed=21, sigma=1.5)
    rng = np.random.default_rng(22)
    starts = rng.integers(0, 14, size=(9, 2))
    stops = starts + rng.integers(3, 16, size=(9, 2))
    masks = torch.stack([box_mask((1, 30, 30), a, b)[0] for a, b in zip(starts, stops)])
    boxes = np.concatenate([starts, stops], axis=1)
    values, applies = with_boxes(maps, boxes, np.arange(9), np.zeros(9, np.int64), np.zeros(9, np.int64))
    expected = run(maps, "box_iou", masks, gt_box="mask_bbox")
    assert applies.all()
    torch.testing.assert_close(values, expected, rtol=0, atol=0)
    assert 0 < values.min() and values.max() < 1  # not a degenerate case


def test_gt_box_boxes_without_boxes_is_an_error_and_auto_resolves():
    masks = box_mask((1, 8, 8), (2, 2), (5, 5))
    with pytest.raises(ValueError, match="gt_box 'boxes' needs annotated ground-truth boxes"):
        run(masks.float(), "box_iou", masks, gt_box="boxes")
    assert run(masks.float(), "box_iou", masks).item() == 1.0  # auto: the mask's box
    assert localisation.resolve_gt_box("auto", True) == "boxes"
    assert localisation.resolve_gt_box("auto", False) == "mask_bbox"
    assert localisation.resolve_gt_box("mask_bbox", True) == "mask_bbox"
    # boxes that do not fit the maps: 2D boxes for 3D maps, a box count per image that box_valid lacks
    for maps, boxes, valid in ((torch.rand(1, 4, 8, 8), torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.bool)),
                               (torch.rand(1, 8, 8), torch.zeros(1, 2, 4), torch.ones(1, 1, dtype=torch.bool))):
        with pytest.raises(ValueError, match=r"box_iou: boxes .* do not fit"):
            evaluate_applies(None, torch.zeros(1, 1, *maps.shape[1:]), maps, "box_iou",
                             targets=torch.zeros(1, dtype=torch.long), boxes=boxes, box_valid=valid)


# ------------------------------------------------------------------------------------------------
# hd95: against scipy, known answers, AME-CAM's empty-mask conventions
# ------------------------------------------------------------------------------------------------

def scipy_hd(pred: np.ndarray, truth: np.ndarray, rank: int, percentile: float = 95.0) -> float:
    """medpy's hd95 written with scipy: object surfaces = object minus its erosion (structure of the
    given rank), distances from each surface to the other's by the Euclidean distance transform."""
    structure = ndimage.generate_binary_structure(pred.ndim, rank)
    surface_p = pred & ~ndimage.binary_erosion(pred, structure=structure, iterations=1)
    surface_t = truth & ~ndimage.binary_erosion(truth, structure=structure, iterations=1)
    to_truth = ndimage.distance_transform_edt(~surface_t)[surface_p]
    to_pred = ndimage.distance_transform_edt(~surface_p)[surface_t]
    return float(np.percentile(np.hstack([to_truth, to_pred]), percentile))


@pytest.mark.parametrize("shape", [(8, 40, 44), (4, 12, 14, 16)])
@pytest.mark.parametrize("params", [{}, {"fraction": 0.3}, {"threshold": "percentile", "top_percent": 25.0},
                                    {"threshold": "otsu"}])
def test_hd95_equals_the_scipy_reference(shape, params):
    ndim = len(shape) - 1
    maps = blobby_maps(shape, seed=21, sigma=1.5)
    masks = torch.from_numpy(blobby_maps(shape, seed=22, sigma=2.5).numpy() > 0.55)
    masks[0] = True       # a mask filling the image: its surface is the image border
    masks[1, ...] = False
    masks[1, (0,) * ndim] = True  # one pixel in the corner
    selected = binarise(maps, **params).numpy()
    for connectivity, rank in [(None, 1), *CONNECTIVITY[ndim].items()]:
        values = run(maps, "hd95", masks, **params, **({} if connectivity is None else {"connectivity": connectivity}))
        expected = [scipy_hd(selected[i], masks[i].numpy(), rank) for i in range(shape[0])]
        np.testing.assert_allclose(values.double().numpy(), expected, rtol=1e-6, atol=1e-6,
                                   err_msg=f"connectivity {connectivity}")
    assert len(set(np.round(expected, 3))) > shape[0] // 2  # varied values, not a degenerate case


@pytest.mark.parametrize("shape", [(6, 30, 30), (3, 10, 11, 12)])
def test_classic_hausdorff_at_percentile_100_equals_scipy_directed_hausdorff(shape):
    ndim = len(shape) - 1
    pred = blobby_maps(shape, seed=31).numpy() > 0.5
    truth = blobby_maps(shape, seed=32, sigma=3.0).numpy() > 0.5
    ours = surface_hd95(torch.from_numpy(pred), torch.from_numpy(truth), percentile=100.0)
    cross = ndimage.generate_binary_structure(ndim, 1)
    for i in range(shape[0]):
        a = np.argwhere(pred[i] & ~ndimage.binary_erosion(pred[i], cross))
        b = np.argwhere(truth[i] & ~ndimage.binary_erosion(truth[i], cross))
        expected = max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])
        assert ours[i].item() == pytest.approx(expected, rel=1e-12)


def test_hd95_known_answers():
    """Single pixels 3 and 4 apart along two axes: 5. Identical objects: 0. Symmetric in its arguments."""
    a = torch.zeros(2, 16, 16, dtype=torch.bool)
    b = torch.zeros(2, 16, 16, dtype=torch.bool)
    a[0, 2, 2], b[0, 5, 6] = True, True
    a[1, 3:9, 4:12], b[1, 3:9, 4:12] = True, True
    torch.testing.assert_close(surface_hd95(a, b), torch.tensor([5.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(surface_hd95(b, a), surface_hd95(a, b))
    # a 10x10 square against the same square grown by 3 on every side: every distance is 3 or more
    c, d = torch.zeros(1, 24, 24, dtype=torch.bool), torch.zeros(1, 24, 24, dtype=torch.bool)
    c[0, 7:17, 7:17], d[0, 4:20, 4:20] = True, True
    value = surface_hd95(c, d).item()
    assert 3.0 <= value <= math.hypot(3, 3)
    assert value == pytest.approx(scipy_hd(c[0].numpy(), d[0].numpy(), 1))


def test_empty_conventions():
    """AME-CAM: 0 when both are empty, 373.12866 (``one_empty``) when exactly one is."""
    empty = torch.zeros(1, 8, 8, dtype=torch.bool)
    blob = box_mask((1, 8, 8), (2, 2), (5, 5))
    assert surface_hd95(empty, empty).item() == 0.0
    assert surface_hd95(blob, empty).item() == pytest.approx(373.12866)
    assert surface_hd95(empty, blob).item() == pytest.approx(373.12866)
    assert surface_hd95(empty, blob, one_empty=100.0).item() == 100.0
    # the metric: AME-CAM scores tumour slices only, so by default an empty mask does not apply;
    # empty_masks="score" applies the constant (the thresholded map is never empty)
    masks = torch.cat([blob, empty])
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = dict(targets=torch.zeros(2, dtype=torch.long), masks=masks)
    values, applies = evaluate_applies(None, torch.zeros(2, 1, 8, 8), maps, "hd95", **kwargs)
    assert applies.tolist() == [True, False]
    values, applies = evaluate_applies(None, torch.zeros(2, 1, 8, 8), maps, "hd95", empty_masks="score", **kwargs)
    assert applies.tolist() == [True, True]
    assert values[1].item() == pytest.approx(373.12866)
    assert values[0].item() == pytest.approx(scipy_hd(binarise(maps)[0].numpy(), blob[0].numpy(), 1))
    assert run(maps, "hd95", masks, one_empty=50.0, empty_masks="score")[1].item() == 50.0
    with pytest.raises(ValueError, match="parameter 'empty_masks' of metric 'hd95' must be one of 'skip', 'score'"):
        run(maps, "hd95", masks, empty_masks="maybe")


def test_hd95_chunks_and_groups_do_not_change_values():
    """Images with very different surface sizes (several padding groups), in small or large chunks, or alone."""
    maps = torch.cat([blobby_maps((6, 48, 48), seed=41, sigma=s) for s in (0.8, 3.0)])
    masks = torch.from_numpy(blobby_maps((12, 48, 48), seed=42, sigma=2.0).numpy() > 0.5)
    pred = binarise(maps)
    big = surface_hd95(pred, masks, memory_mb=256.0)
    tiny = surface_hd95(pred, masks, memory_mb=0.02)  # one image per chunk, about a dozen points per cdist block
    alone = torch.cat([surface_hd95(pred[i:i + 1], masks[i:i + 1]) for i in range(12)])
    torch.testing.assert_close(big, tiny, rtol=0, atol=0)
    torch.testing.assert_close(big, alone, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Contract: parameters, masks, registration
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric,params,name", [
    ("box_iou", {"threshold": 0.0}, "threshold"), ("box_iou", {"threshold": 1.5}, "threshold"),
    ("box_iou", {"threshold": float("nan")}, "threshold"), ("box_iou", {"threshold": "frac"}, "threshold"),
    ("box_iou", {"connectivity": 6}, "connectivity"), ("box_iou", {"connectivity": 5}, "connectivity"),
    ("box_iou", {"connectivity": "8"}, "connectivity"), ("box_iou", {"gt_box": "boxes"}, "gt_box"),
    ("box_iou", {"gt_box": "box"}, "gt_box"),
    ("hd95", {"threshold": "mean"}, "threshold"), ("hd95", {"fraction": 0.0}, "fraction"),
    ("hd95", {"top_percent": 101.0}, "top_percent"), ("hd95", {"bins": 1}, "bins"),
    ("hd95", {"connectivity": 26}, "connectivity"), ("hd95", {"one_empty": -1.0}, "one_empty"),
    ("hd95", {"one_empty": float("inf")}, "one_empty"), ("hd95", {"one_empty": "far"}, "one_empty"),
])
def test_bad_parameters_name_the_metric_and_the_parameter(metric, params, name):
    masks = box_mask((1, 8, 8), (2, 2), (5, 5))
    with pytest.raises(ValueError, match=rf"(?s)(?=.*{metric})(?=.*{name})"):
        run(torch.rand(1, 8, 8), metric, masks, **params)


def test_3d_connectivities_are_accepted_and_2d_ones_refused():
    masks = box_mask((1, 6, 6, 6), (1, 1, 1), (4, 4, 4))
    maps = masks.float()
    for connectivity in (6, 18, 26):
        assert run(maps, "box_iou", masks, connectivity=connectivity).item() == 1.0
        assert run(maps, "hd95", masks, connectivity=connectivity).item() == 0.0
    for metric in ("box_iou", "hd95"):
        with pytest.raises(ValueError, match=f"{metric}.*connectivity"):
            run(maps, metric, masks, connectivity=8)


def test_helpers_refuse_bad_shapes():
    with pytest.raises(ValueError, match="connected_components"):
        connected_components(torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="bounding_boxes"):
        bounding_boxes(torch.ones(1, 2, 3, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="surface_hd95"):
        surface_hd95(torch.ones(1, 8, 8, dtype=torch.bool), torch.ones(1, 8, 9, dtype=torch.bool))


@pytest.mark.parametrize("metric", ["box_iou", "hd95"])
def test_masks_are_required_and_must_match(metric):
    with pytest.raises(ValueError, match=f"{metric}.*masks"):
        run(torch.rand(1, 8, 8), metric)
    with pytest.raises(ValueError, match=f"{metric}.*masks"):
        run(torch.rand(1, 8, 8), metric, torch.ones(1, 8, 4, dtype=torch.bool))


def test_registration():
    for name, higher in [("box_iou", True), ("hd95", False)]:
        meta = METRICS.get(name).meta
        assert (meta["family"], meta["higher_is_better"], tuple(meta["needs"])) == ("localisation", higher, ("masks",))
        assert meta["summary"] and "\n" not in meta["summary"]
    assert METRICS.get("box_iou").parameters() == {"threshold": 0.15, "connectivity": None, "gt_box": "auto"}
    assert METRICS.get("hd95").parameters() == {"threshold": "frac", "fraction": 0.5, "top_percent": 20.0, "bins": 256,
                                                "connectivity": None, "one_empty": 373.12866, "empty_masks": "skip"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", [(6, 32, 32), (3, 10, 12, 12)])
def test_cuda_matches_cpu(shape):
    maps = blobby_maps(shape, seed=51, sigma=1.5)
    masks = torch.from_numpy(blobby_maps(shape, seed=52, sigma=2.5).numpy() > 0.6)
    binary = binarise(maps, fraction=0.3)
    torch.testing.assert_close(connected_components(binary.cuda()).cpu(), connected_components(binary))
    for metric in ("box_iou", "hd95"):
        n = shape[0]
        gpu = cambench.evaluate(None, torch.zeros(n, 1, *shape[1:], device="cuda"), maps.cuda(), metric,
                                targets=torch.zeros(n, dtype=torch.long, device="cuda"), masks=masks.cuda())
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), run(maps, metric, masks), msg=metric)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_boxes_match_cpu():
    maps = blobby_maps((6, 32, 32), seed=61, sigma=1.5)
    g = torch.Generator().manual_seed(62)
    starts = torch.randint(0, 16, (10, 2), generator=g).float() + 0.25
    boxes = torch.cat([starts, starts + torch.randint(4, 16, (10, 2), generator=g)], dim=1)
    box_image, box_label, labels = torch.randint(0, 6, (10,), generator=g), torch.arange(10) % 2, torch.arange(6) % 2
    cpu = localisation.label_class_boxes(boxes, box_image, box_label, labels)
    gpu = localisation.label_class_boxes(boxes.cuda(), box_image.cuda(), box_label.cuda(), labels.cuda())
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0)
    targets = torch.zeros(6, dtype=torch.long)
    on_cpu = evaluate_applies(None, torch.zeros(6, 1, 32, 32), maps, "box_iou", targets=targets,
                              boxes=cpu[0], box_valid=cpu[1])
    on_gpu = evaluate_applies(None, torch.zeros(6, 1, 32, 32, device="cuda"), maps.cuda(), "box_iou",
                              targets=targets.cuda(), boxes=gpu[0], box_valid=gpu[1])
    for a, b in zip(on_gpu, on_cpu):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0)
