"""Evaluation preprocessing of 2D images: torchvision's ``Resize(resize)`` then ``CenterCrop(crop)`` on
the PIL image, bit for bit, and the same geometry applied to masks (nearest neighbour) and boxes.

Pretrained ImageNet classifiers expect the images they were evaluated on (resize 256, crop 224); the
masks and boxes of the ground truth must land on the same pixels (docs/datasets.md §1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Geometry:
    """Where an image of ``height`` x ``width`` lands: scaled to ``scaled`` (h, w), then the window
    ``size`` (h, w) at (``top``, ``left``) of the scaled image is kept (negative = zero padding)."""
    height: int
    width: int
    scaled: tuple[int, int]
    top: int
    left: int
    size: tuple[int, int]

    @property
    def identity(self) -> bool:
        return (self.height, self.width) == self.scaled == self.size and self.top == self.left == 0


def _crop_offset(length: int, crop: int) -> int:
    # torchvision's center_crop: zero padding ((crop - length) // 2 before) where the crop is larger,
    # else int(round((length - crop) / 2)) (Python's round: half to even)
    return -((crop - length) // 2) if crop > length else int(round((length - crop) / 2.0))


def geometry(height: int, width: int, resize: int = 0, crop: int = 0) -> Geometry:
    """The geometry of ``Resize(resize)`` (shorter side; 0 = none) then ``CenterCrop(crop)`` (0 = none)."""
    h, w = height, width
    if resize:
        # torchvision's _compute_resized_output_size for one int: the longer side is truncated
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(resize * long / short)
        h, w = (new_long, resize) if w <= h else (resize, new_long)
    if not crop:
        return Geometry(height, width, (h, w), 0, 0, (h, w))
    return Geometry(height, width, (h, w), _crop_offset(h, crop), _crop_offset(w, crop), (crop, crop))


def transform_pil(image: Image.Image, geo: Geometry, resample: int = Image.Resampling.BILINEAR) -> Image.Image:
    """Apply ``geo`` to a PIL image (PIL's bilinear is antialiased, like torchvision's on PIL)."""
    if (image.height, image.width) != geo.scaled:  # torchvision returns the image untouched at its size
        image = image.resize((geo.scaled[1], geo.scaled[0]), resample)
    if (geo.top, geo.left, geo.size) != (0, 0, geo.scaled):
        # PIL fills the part of the window outside the image with 0, as torchvision's padding does
        image = image.crop((geo.left, geo.top, geo.left + geo.size[1], geo.top + geo.size[0]))
    return image


def transform_array(arr: np.ndarray, geo: Geometry) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> the prepared array, each channel bilinear like an 'L' image."""
    if geo.identity:
        return arr
    if arr.ndim == 2:
        return np.asarray(transform_pil(Image.fromarray(arr, "L"), geo))
    return np.stack([transform_array(arr[..., c], geo) for c in range(arr.shape[2])], axis=-1)


def transform_mask(mask: np.ndarray, geo: Geometry) -> np.ndarray:
    """A bool (H, W) mask at the original size -> the prepared size (nearest neighbour)."""
    if geo.identity:
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    return np.asarray(transform_pil(image, geo, Image.Resampling.NEAREST)) > 127


def transform_boxes(boxes: np.ndarray, geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(M, 4) (y0, x0, y1, x1) pixel edges at the original size -> the prepared image: scaled per axis,
    shifted by the crop offset, clipped to the image. Returns the boxes and which are kept (area > 0)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([geo.scaled[0] / geo.height, geo.scaled[1] / geo.width] * 2)
    shift = np.array([geo.top, geo.left] * 2)
    out = boxes * scale - shift
    out = np.clip(out, 0, np.array([geo.size[0], geo.size[1]] * 2))
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[keep].astype(np.float32), keep


def boxes_mask(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool (H, W): the pixels whose centre lies inside any of the (y0, x0, y1, x1) boxes."""
    rows, cols = np.arange(size[0]) + 0.5, np.arange(size[1]) + 0.5
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    inside_y = (rows[None] >= boxes[:, :1]) & (rows[None] < boxes[:, 2:3])   # (M, H)
    inside_x = (cols[None] >= boxes[:, 1:2]) & (cols[None] < boxes[:, 3:4])  # (M, W)
    return (inside_y[:, :, None] & inside_x[:, None, :]).any(axis=0)
