"""The street stand-in's scene renderer: synthetic street scenes in perspective with a planted
warning sign (docs/datasets.md §6, §10). The layout writer is ``generate_street_standin`` in
:mod:`cambench.data.street`, beside the reader of the real layout.

The renderer draws street scenes in perspective (sky, road with lane markings, building façades
with windows, trees, lamp posts, cars). Hotspot images carry one small red/yellow warning sign
(a red-bordered yellow triangle or a red octagon) on a roadside pole; that sign is the planted
ground truth. Both classes may carry blue/green/white distractor signs, the road's yellow centre
line and the cars' red tail lights, so "a sign" or "something red" alone does not decide the class.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SKIES = {  # (top, horizon) colours
    "day": ((62, 120, 196), (178, 206, 232)),
    "overcast": ((142, 148, 160), (204, 206, 210)),
    "dusk": ((58, 66, 122), (226, 152, 104)),
    "haze": ((150, 172, 196), (222, 222, 214)),
}
FACADES = [(152, 152, 150), (192, 176, 150), (138, 100, 82), (212, 210, 204), (100, 118, 138), (84, 84, 90),
           (170, 160, 140), (120, 130, 124)]
CARS = [(232, 232, 230), (180, 182, 186), (30, 30, 34), (80, 82, 88), (36, 66, 140), (40, 84, 60), (200, 188, 160),
        (110, 130, 160)]
DISTRACTORS = ("blue_rect", "green_rect", "blue_disk")


def _jitter(rng: np.random.Generator, colour, amount: float = 14) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)


def _grey(rng: np.random.Generator, colour, amount: float = 14) -> tuple[int, int, int]:
    """``colour`` made lighter or darker as a whole, with only a faint tint (asphalt, concrete)."""
    shift = rng.normal(0, amount)
    return tuple(int(np.clip(c + shift + rng.normal(0, 2), 0, 255)) for c in colour)


class _Scene:
    """A perspective street on a square canvas of side ``s``: depth t in (0, 1] maps the horizon
    (t -> 0) to the bottom edge (t = 1); lateral position u in [0, 1] spans the road."""

    def __init__(self, rng: np.random.Generator, s: int):
        self.rng, self.s = rng, s
        self.horizon = s * rng.uniform(0.36, 0.5)
        self.vx = s * rng.uniform(0.38, 0.62)
        self.left = s * rng.uniform(-0.3, 0.12)     # road edges at the bottom
        self.right = s * rng.uniform(0.88, 1.3)
        self.walk = rng.uniform(0.08, 0.16) * s     # sidewalk width at t = 1

    def y(self, t: float) -> float:
        return self.horizon + (self.s - self.horizon) * t

    def x(self, t: float, u: float) -> float:
        edge = self.left + (self.right - self.left) * u
        return self.vx + (edge - self.vx) * t

    def building_line(self, t: float, side: int) -> float:
        """x of the façades' ground line (outer edge of the sidewalk) on side -1 (left) or +1 (right)."""
        return self.x(t, 0.0 if side < 0 else 1.0) + side * self.walk * t


def _sky(rng: np.random.Generator, s: int, horizon: float) -> tuple[Image.Image, str]:
    """A vertical sky gradient and the kind of sky (a key of SKIES)."""
    kind = str(rng.choice(list(SKIES)))
    top, bottom = SKIES[kind]
    top, bottom = np.array(_jitter(rng, top, 10), float), np.array(_jitter(rng, bottom, 10), float)
    t = np.clip(np.arange(s) / max(horizon, 1.0), 0, 1)[:, None, None]
    column = top * (1 - t) + bottom * t
    return Image.fromarray(np.broadcast_to(column, (s, s, 3)).astype(np.uint8), "RGB"), kind


def _quad(scene: _Scene, t0: float, t1: float, side: int, v0: float, v1: float, height: float,
          a0: float = 0.0, a1: float = 1.0) -> list[tuple[float, float]]:
    """A patch of a façade (depth t0..t1, height ``height``): fraction a0..a1 along it, v0..v1 up it."""
    def point(a: float, v: float) -> tuple[float, float]:
        t = t0 + (t1 - t0) * a
        ground = scene.y(t)
        return scene.building_line(t, side), ground - (ground - (scene.horizon - height * t)) * v
    return [point(a0, v0), point(a1, v0), point(a1, v1), point(a0, v1)]


def _buildings(draw: ImageDraw.ImageDraw, scene: _Scene, side: int, dusk: bool) -> None:
    rng, s = scene.rng, scene.s
    t = rng.uniform(0.03, 0.08)
    while t < 1.8:
        t1 = t * rng.uniform(1.3, 1.9)
        if rng.uniform() < 0.12:  # a gap between blocks
            t = t1
            continue
        height = s * rng.uniform(0.35, 1.4)  # façade height above the horizon at t = 1
        colour = _jitter(rng, FACADES[rng.integers(len(FACADES))])
        draw.polygon(_quad(scene, t, t1, side, 0, 1, height), fill=colour)
        # windows: a grid on the façade
        floors, bays = int(rng.integers(3, 9)), int(rng.integers(2, 6))
        glass = (220, 200, 120) if dusk and rng.uniform() < 0.5 else _jitter(rng, (54, 64, 80), 10)
        for f in range(floors):
            v0 = 0.12 + 0.86 * f / floors
            v1 = v0 + 0.86 / floors * rng.uniform(0.45, 0.7)
            for b in range(bays):
                a0 = (b + 0.2) / bays
                draw.polygon(_quad(scene, t, t1, side, v0, v1, height, a0, a0 + 0.6 / bays), fill=glass)
        # ground-floor band (shops)
        draw.polygon(_quad(scene, t, t1, side, 0, 0.1, height), fill=_grey(rng, (70, 70, 72), 20))
        t = t1


def _road(draw: ImageDraw.ImageDraw, scene: _Scene) -> None:
    rng, s = scene.rng, scene.s
    h = scene.horizon
    draw.polygon([(scene.x(0, 0), h), (scene.x(0, 1), h), (scene.x(1, 1), s), (scene.x(1, 0), s)],
                 fill=_grey(rng, (84, 84, 88), 12))
    # curbs
    for side, u in ((-1, 0.0), (1, 1.0)):
        edge = [(scene.x(0, u), h), (scene.x(1, u), s)]
        draw.polygon([edge[0], edge[1], (edge[1][0] + side * 0.02 * s, s)], fill=_grey(rng, (190, 190, 186), 8))
    white, yellow = (236, 236, 230), _jitter(rng, (230, 190, 40), 8)
    width = 0.012 * s
    lanes = int(rng.integers(2, 5))
    for k in range(1, lanes):
        u = k / lanes
        centre = k == lanes // 2 and lanes % 2 == 0
        colour = yellow if centre else white
        if centre:  # a solid centre line
            for du in (-0.006, 0.006):
                _line(draw, scene, 0.02, 1.0, u + du, width * 0.6, colour)
            continue
        t, step = rng.uniform(0.02, 0.05), rng.uniform(1.35, 1.6)
        while t < 1.2:
            _line(draw, scene, t, t * 1.18, u, width, colour)
            t *= step
    for u in (0.03, 0.97):
        _line(draw, scene, 0.02, 1.0, u, width * 0.8, white)


def _line(draw, scene: _Scene, t0: float, t1: float, u: float, width: float, colour) -> None:
    """A road marking from depth t0 to t1 at lateral position u, ``width`` wide at t = 1."""
    w0, w1 = width * t0 / 2, width * t1 / 2
    x0, x1 = scene.x(t0, u), scene.x(t1, u)
    draw.polygon([(x0 - w0, scene.y(t0)), (x0 + w0, scene.y(t0)), (x1 + w1, scene.y(t1)), (x1 - w1, scene.y(t1))],
                 fill=colour)


def _tree(draw, scene: _Scene, t: float, side: int) -> None:
    rng, s = scene.rng, scene.s
    x = scene.x(t, 0.0 if side < 0 else 1.0) + side * scene.walk * t * rng.uniform(0.3, 0.8)
    ground = scene.y(t)
    trunk, crown = 0.02 * s * t, 0.12 * s * t * rng.uniform(0.7, 1.3)
    top = ground - 0.32 * s * t * rng.uniform(0.8, 1.2)
    draw.rectangle([x - trunk / 2, top, x + trunk / 2, ground], fill=_jitter(rng, (90, 66, 44), 10))
    green = _jitter(rng, (58, 116, 56), 16)
    for _ in range(3):
        dx, dy = rng.normal(0, crown * 0.3, 2)
        r = crown * rng.uniform(0.6, 1.0)
        draw.ellipse([x + dx - r, top + dy - r, x + dx + r, top + dy + r], fill=green)


def _lamp(draw, scene: _Scene, t: float, side: int) -> None:
    rng, s = scene.rng, scene.s
    x = scene.x(t, 0.0 if side < 0 else 1.0) + side * scene.walk * t * 0.2
    ground = scene.y(t)
    top = ground - 0.5 * s * t
    grey = _jitter(rng, (110, 112, 116), 10)
    w = max(1.0, 0.012 * s * t)
    draw.rectangle([x - w / 2, top, x + w / 2, ground], fill=grey)
    arm = -side * 0.08 * s * t
    draw.line([(x, top), (x + arm, top + 0.01 * s * t)], fill=grey, width=max(1, int(round(w))))
    draw.ellipse([x + arm - 2 * w, top - w, x + arm + 2 * w, top + 2 * w], fill=(226, 226, 214))


def _car(draw, scene: _Scene, t: float, u: float, lanes: int) -> None:
    rng = scene.rng
    lane = (scene.x(t, 1) - scene.x(t, 0)) / lanes
    w = lane * rng.uniform(0.6, 0.8)
    h = w * rng.uniform(0.62, 0.85)
    x, ground = scene.x(t, u), scene.y(t)
    body = _jitter(rng, CARS[rng.integers(len(CARS))], 10)
    draw.rectangle([x - w / 2, ground - h * 0.62, x + w / 2, ground - h * 0.08], fill=body)
    draw.polygon([(x - w * 0.4, ground - h * 0.62), (x + w * 0.4, ground - h * 0.62), (x + w * 0.32, ground - h),
                  (x - w * 0.32, ground - h)], fill=body)
    draw.polygon([(x - w * 0.34, ground - h * 0.64), (x + w * 0.34, ground - h * 0.64),
                  (x + w * 0.28, ground - h * 0.94), (x - w * 0.28, ground - h * 0.94)], fill=(40, 48, 58))
    for sx in (-1, 1):  # wheels and (small, red) tail lights
        draw.rectangle([x + sx * w * 0.42 - w * 0.07, ground - h * 0.12, x + sx * w * 0.42 + w * 0.07, ground],
                       fill=(20, 20, 22))
        draw.rectangle([x + sx * w * 0.4 - w * 0.06, ground - h * 0.5, x + sx * w * 0.4 + w * 0.06, ground - h * 0.42],
                       fill=(190, 30, 30))


def _sign_shape(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Outline of a sign plate of 'radius' r: triangle (apex up), octagon, or rectangle."""
    if kind == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if kind == "octagon":
        return [(cx + r * math.cos(math.pi / 8 + k * math.pi / 4), cy + r * math.sin(math.pi / 8 + k * math.pi / 4))
                for k in range(8)]
    return [(cx - r * 1.25, cy - r * 0.8), (cx + r * 1.25, cy - r * 0.8), (cx + r * 1.25, cy + r * 0.8),
            (cx - r * 1.25, cy + r * 0.8)]


def _shrink(points, cx: float, cy: float, k: float) -> list[tuple[float, float]]:
    return [(cx + (x - cx) * k, cy + (y - cy) * k) for x, y in points]


# Area of each outline as a multiple of r².
_AREA = {"triangle": 3 * math.sqrt(3) / 4, "octagon": 2 * math.sqrt(2), "blue_rect": 4.0, "green_rect": 4.0,
         "blue_disk": math.pi}


def _draw_sign(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float,
               rng: np.random.Generator) -> list[tuple[float, float]] | None:
    """Draw one sign plate; returns its outline (None for a disk, drawn as an ellipse)."""
    if kind == "triangle":  # a warning sign: red border, yellow field, black exclamation mark
        outline = _sign_shape("triangle", cx, cy, r)
        draw.polygon(outline, fill=_jitter(rng, (214, 30, 34), 8))
        draw.polygon(_shrink(outline, cx, cy, 0.62), fill=_jitter(rng, (246, 204, 30), 8))
        draw.rectangle([cx - r * 0.06, cy - r * 0.28, cx + r * 0.06, cy + r * 0.1], fill=(20, 20, 20))
        draw.rectangle([cx - r * 0.06, cy + r * 0.16, cx + r * 0.06, cy + r * 0.26], fill=(20, 20, 20))
        return outline
    if kind == "octagon":  # a stop sign: red with a white rim and a white bar
        outline = _sign_shape("octagon", cx, cy, r)
        draw.polygon(outline, fill=(240, 240, 240))
        draw.polygon(_shrink(outline, cx, cy, 0.86), fill=_jitter(rng, (206, 24, 30), 8))
        draw.rectangle([cx - r * 0.55, cy - r * 0.13, cx + r * 0.55, cy + r * 0.13], fill=(240, 240, 240))
        return outline
    if kind == "blue_disk":  # a mandatory sign: blue disk, white rim, white arrow
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(236, 236, 236))
        draw.ellipse([cx - r * 0.86, cy - r * 0.86, cx + r * 0.86, cy + r * 0.86], fill=_jitter(rng, (30, 84, 180), 8))
        draw.polygon([(cx, cy - r * 0.55), (cx + r * 0.35, cy), (cx - r * 0.35, cy)], fill=(236, 236, 236))
        draw.rectangle([cx - r * 0.12, cy, cx + r * 0.12, cy + r * 0.5], fill=(236, 236, 236))
        return None
    # an information / direction sign: blue or green rectangle, white rim and "text" lines
    field = (30, 80, 176) if kind == "blue_rect" else (22, 118, 64)
    outline = _sign_shape("rect", cx, cy, r)
    draw.polygon(outline, fill=(236, 236, 236))
    draw.polygon(_shrink(outline, cx, cy, 0.88), fill=_jitter(rng, field, 8))
    for k in range(2):
        y = cy - r * 0.35 + k * r * 0.45
        draw.rectangle([cx - r * 0.85, y, cx + r * rng.uniform(0.1, 0.85), y + r * 0.16], fill=(236, 236, 236))
    return outline


def _place_sign(scene: _Scene, r: float, side: int, taken: list[tuple[float, float, float, float]]):
    """A roadside pole position (pole foot, plate centre) for a plate of radius r, clear of ``taken``."""
    rng, s = scene.rng, scene.s
    for _ in range(30):
        t = rng.uniform(0.35, 0.95)
        foot_x = scene.x(t, 0.0 if side < 0 else 1.0) + side * scene.walk * t * rng.uniform(0.2, 0.6)
        foot_y = scene.y(t)
        cx = float(np.clip(foot_x, r * 1.3 + 2, s - r * 1.3 - 2))
        cy = float(np.clip(foot_y - r - 0.3 * s * t, r + 2, s - r - 2))
        box = (cx - 1.3 * r, cy - r, cx + 1.3 * r, cy + r)
        if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken):
            return (cx, foot_y), (cx, cy), box
    return None


def render_street(rng: np.random.Generator, hotspot: bool, size: int = 128,
                  sign_area: tuple[float, float] = (0.02, 0.045), distractor_rate: float = 0.6,
                  supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) uint8 street scene and its (size, size) bool mask of the warning sign
    (all False for a non-hotspot scene). ``sign_area``: the sign's share of the image area."""
    s = size * supersample
    scene = _Scene(rng, s)
    img, sky = _sky(rng, s, scene.horizon)
    dusk = sky == "dusk"
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, scene.horizon, s, s], fill=_grey(rng, (150, 148, 140), 12))  # sidewalks / ground
    for side in (-1, 1):
        _buildings(draw, scene, side, dusk)
    _road(draw, scene)
    lanes = int(rng.integers(2, 4))
    objects = []  # (depth, draw call)
    for side in (-1, 1):
        for t in np.sort(rng.uniform(0.1, 1.1, rng.integers(0, 4))):
            objects.append((t, lambda t=t, side=side: _tree(draw, scene, t, side)))
        for t in rng.uniform(0.15, 1.0, rng.integers(0, 3)):
            objects.append((t, lambda t=t, side=side: _lamp(draw, scene, t, side)))
    for _ in range(rng.integers(0, 5)):
        t, u = rng.uniform(0.08, 0.9), (rng.integers(lanes) + 0.5) / lanes
        objects.append((t, lambda t=t, u=u: _car(draw, scene, t, u, lanes)))
    for _, fn in sorted(objects, key=lambda o: o[0]):
        fn()

    # Signs on poles: the cue (hotspot only) and distractors, drawn last so nothing hides them.
    plates = []
    if hotspot:
        plates.append(str(rng.choice(["triangle", "octagon"])))
    n_distractors = int(rng.uniform() < distractor_rate) + int(rng.uniform() < distractor_rate * 0.3)
    plates += [str(rng.choice(DISTRACTORS)) for _ in range(n_distractors)]
    taken: list = []
    mask_img = Image.new("L", (s, s), 0)
    for i, kind in enumerate(plates):
        area = rng.uniform(*sign_area) * s * s
        r = math.sqrt(area / _AREA[kind])
        placed = _place_sign(scene, r, int(rng.choice([-1, 1])), taken)
        if placed is None:
            continue
        (fx, fy), (cx, cy), box = placed
        taken.append(box)
        w = max(2.0, r * 0.12)
        draw.rectangle([cx - w / 2, cy, cx + w / 2, max(fy, cy)], fill=_jitter(rng, (120, 122, 126), 8))
        outline = _draw_sign(draw, kind, cx, cy, r, rng)
        if hotspot and i == 0:
            ImageDraw.Draw(mask_img).polygon(outline, fill=255)

    img = img.resize((size, size), Image.Resampling.LANCZOS)
    mask = np.asarray(mask_img.resize((size, size), Image.Resampling.BOX)) >= 128
    # Lighting: overall exposure, a colour cast, a soft vignette and sensor noise.
    arr = np.asarray(img, dtype=np.float32)
    gain = rng.uniform(0.72, 1.12) * (1 + rng.normal(0, 0.04, 3))
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    vignette = 1 - rng.uniform(0, 0.35) * (xx ** 2 + yy ** 2)
    arr = arr * gain[None, None] * vignette[..., None] + rng.normal(0, 2.5, arr.shape)
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8), mask
