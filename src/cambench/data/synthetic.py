"""Synthetic shapes with planted ground truth, written as an ordinary class-folder image set.

Each image holds one object whose *shape* defines the class (colour, position and scale are random),
on a cluttered background: a colour gradient, pixel noise, and line/dot distractors in the same
colour range as the objects. The object's pixels are saved as a mask, so localisation metrics have a
known answer. Layout written::

    <images_root>/<split>/<class>/<class>_<index>.png      RGB
    <masks_root>/<split>/<class>/<class>_<index>.png       L, 255 = object

Every image is generated from its own seed (seed, split, class, index), so changing the number of
images in one split never changes the images of another.
"""
from __future__ import annotations

import colorsys
import math
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disk", "square", "triangle", "cross", "ring", "diamond")


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        k, offset = 3, angle
    elif shape == "diamond":
        k, offset = 4, angle
    else:  # square: axis-aligned up to a small rotation
        k, offset = 4, math.pi / 4 + angle * 0.15
    return [(cx + r * math.cos(offset + 2 * math.pi * i / k), cy + r * math.sin(offset + 2 * math.pi * i / k))
            for i in range(k)]


def draw_object(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                angle: float, fill) -> None:
    """Draw one planted object of ``SHAPES`` centred at (cx, cy) with radius r (also the ImageNet stand-in's)."""
    if shape == "disk":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        w = max(2.0, r * 0.38)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=int(round(w)))
    elif shape == "cross":
        w = max(2.0, r * 0.42)
        draw.rectangle([cx - r, cy - w / 2, cx + r, cy + w / 2], fill=fill)
        draw.rectangle([cx - w / 2, cy - r, cx + w / 2, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)


def saturated_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A random saturated, bright RGB colour (objects and clutter stand out from the background)."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.65, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def render(shape: str, rng: np.random.Generator, size: int = 64, scale: tuple[float, float] = (0.12, 0.24),
           clutter: int = 10, noise: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) bool mask."""
    # Background: a muted two-colour gradient at a random angle.
    c0, c1 = rng.uniform(0.15, 0.75, size=(2, 3))
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    t = (np.cos(theta) * xx + np.sin(theta) * yy)
    t = (t - t.min()) / (np.ptp(t) + 1e-9)
    bg = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]) * 255
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    # Distractors: line segments and small dots in object-like colours.
    for _ in range(clutter):
        x0, y0 = rng.uniform(0, size, 2)
        if rng.uniform() < 0.6:
            length, phi = rng.uniform(0.15, 0.45) * size, rng.uniform(0, 2 * math.pi)
            draw.line([x0, y0, x0 + length * math.cos(phi), y0 + length * math.sin(phi)],
                      fill=saturated_colour(rng), width=int(rng.integers(1, 3)))
        else:
            rad = rng.uniform(1.0, 2.2)
            draw.ellipse([x0 - rad, y0 - rad, x0 + rad, y0 + rad], fill=saturated_colour(rng))
    # The object, fully inside the image.
    r = rng.uniform(*scale) * size  # radius as a fraction of the image side
    r = min(r, size / 2 - 2)
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    angle = rng.uniform(0, 2 * math.pi)
    colour = saturated_colour(rng)
    draw_object(draw, shape, cx, cy, r, angle, colour)
    mask_img = Image.new("L", (size, size), 0)
    draw_object(ImageDraw.Draw(mask_img), shape, cx, cy, r, angle, 255)
    arr = np.asarray(img, dtype=np.float32) / 255
    arr = arr + rng.normal(0, noise, arr.shape)
    arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    return arr, np.asarray(mask_img) > 127


def generate_shapes(images_root: str | Path, masks_root: str | Path, counts: dict[str, int],
                    classes: list[str] | tuple[str, ...] = SHAPES[:4], image_size: int = 64,
                    scale: tuple[float, float] = (0.12, 0.24), clutter: int = 10, noise: float = 0.04,
                    seed: int = 0) -> int:
    """Write ``counts[split]`` images per class for each split; returns the number written."""
    unknown = sorted(set(classes) - set(SHAPES))
    if unknown:
        raise ValueError(f"unknown shape class(es) {unknown}; available: {', '.join(SHAPES)}")
    images_root, masks_root = Path(images_root), Path(masks_root)
    written = 0
    for split, count in counts.items():
        for label, shape in enumerate(classes):
            (images_root / split / shape).mkdir(parents=True, exist_ok=True)
            (masks_root / split / shape).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                rng = np.random.default_rng([seed, zlib.crc32(split.encode()), label, index])
                image, mask = render(shape, rng, image_size, scale, clutter, noise)
                name = f"{shape}_{index:05d}.png"
                Image.fromarray(image, "RGB").save(images_root / split / shape / name)
                Image.fromarray(mask.astype(np.uint8) * 255, "L").save(masks_root / split / shape / name)
                written += 1
    return written
