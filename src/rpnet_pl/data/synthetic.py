"""A synthetic dataset in the exact PASCAL VOC 2012 layout, hard in the ways RPNet addresses.

```
OUT/VOCdevkit/VOC2012/
  JPEGImages/ID.jpg  Annotations/ID.xml  SegmentationClass/ID.png  SegmentationClassAug/ID.png
  ImageSets/Segmentation/{train,train_aug,val,test}.txt
```

What makes it hard for plain CAMs:

* every object has a small *head* (a class-specific saturated colour, shape and pattern: the
  discriminative part) and a much larger *body* whose muted colour and low-contrast texture are
  shared by a family of classes and only mildly class-specific (but consistent within a class);
* images hold 1-3 classes and possibly several instances, with random shape, pose and scale, and
  later objects occlude earlier ones;
* backgrounds are cluttered (smooth colour fields, noise, stripes, body-like blobs), and each class
  ``k`` has a context texture ``T_k`` drawn with probability ~0.6 when ``k`` is in the image and
  ~0.1 otherwise, so class evidence leaks into the background. By default (``context="class"``)
  every class owns its context, which is then as class-specific as the head and far larger: harder
  than VOC, where a context is shared by several classes (grass beside cows, sheep and horses);
  ``context="family"`` shares one context per family of classes, VOC's way;
* objects are small: the major axis spans ``object_scale`` = 15-45 % of the short side, about 10 %
  foreground. ``object_scale=(0.35, 0.75)`` gives VOC's share (a quarter to a third of the
  labelled pixels). docs/results.md reports the chain on both variants.

Masks follow VOC: class indices 0..20 (only 1..``classes`` used) and 255 for a 1-2 px ignore band
around every object. ``SegmentationClass`` holds train and val masks (as in VOC), ``SegmentationClassAug``
holds train_aug and val masks (as in SBD's augmented set); test images have a JPEG only.

Every image is a pure function of ``(seed, index, size, classes)``; class appearances depend on the
class index and ``classes`` only, so datasets drawn with different seeds share one "world".
"""
from __future__ import annotations

import colorsys
import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rpnet_pl.data.classes import IGNORE_INDEX, VOC_CLASSES, voc_palette
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.utils.io import atomic_path, write_image, write_label_png

log = logging.getLogger(__name__)

ID_PREFIX = "2099"
P_TEXTURE_WITH_CLASS = 0.6
P_TEXTURE_WITHOUT_CLASS = 0.1
OBJECT_SCALE = (0.15, 0.45)
CONTEXTS = ("class", "family")
_SPLIT_SALT = 0x5917
_STYLE_SALT = 0x57E1
_BODY_SHAPES = ("ellipse", "rectangle", "polygon")
_HEAD_SHAPES = ("circle", "square", "triangle", "diamond", "hexagon")
_HEAD_PATTERNS = ("solid", "dot", "ring", "bar")
_BODY_TEXTURES = ("stripes", "spots", "grid", "mottle")
_BG_TEXTURES = ("stripes", "checker", "dots", "waves", "zigzag")


# --------------------------------------------------------------------------------------------
# class styles (seed-independent)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassStyle:
    """How objects of one class and its co-occurring background texture look."""

    head_rgb: tuple[float, float, float]
    head_shape: str
    head_pattern: str
    body_hsv: tuple[float, float, float]
    body_texture: str
    body_period: float
    body_angle: float
    bg_texture: str
    bg_rgb: tuple[tuple[float, float, float], tuple[float, float, float]]
    bg_period: float
    bg_angle: float


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    """HSV in [0, 1] to an RGB tuple in [0, 255]."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return (255.0 * r, 255.0 * g, 255.0 * b)


def class_styles(classes: int, context: str = "class") -> dict[int, ClassStyle]:
    """Styles of classes 1..``classes``: distinct heads, family-shared bodies, and a context texture
    shared by the family (``context="family"``) or the class's own (``"class"``)."""
    if context not in CONTEXTS:
        raise ConfigError(f"context must be one of {CONTEXTS}, got {context!r}")
    n_fam = max(1, round(classes / 3))
    fam_rng = np.random.default_rng([_STYLE_SALT, classes])
    fam_hues = (np.arange(n_fam) / n_fam + fam_rng.uniform(0, 1)) % 1.0
    styles: dict[int, ClassStyle] = {}
    for k in range(1, classes + 1):
        rng = np.random.default_rng([_STYLE_SALT, classes, k])
        fam = (k - 1) % n_fam
        member = (k - 1) // n_fam  # position inside the family: a small, consistent tint
        head_hue = ((k - 1) / classes + 0.07) % 1.0
        body_hsv = (float(fam_hues[fam] + 0.035 * (member - 1)), 0.22 + 0.04 * (member % 2),
                    0.55 + 0.05 * ((member + 1) % 3 - 1))
        ctx = k - 1 if context == "class" else fam
        ctx_rng = rng if context == "class" else np.random.default_rng([_STYLE_SALT, classes, 1000 + fam])
        own_hue = float(rng.uniform(0, 1))  # always drawn: bodies look the same under either context
        bg_hue = own_hue if context == "class" else float(ctx_rng.uniform(0, 1))
        body_period, body_angle = float(rng.uniform(3.0, 6.0)), float(rng.uniform(0, np.pi))
        styles[k] = ClassStyle(
            head_rgb=_hsv(head_hue, 0.95, 0.95),
            head_shape=_HEAD_SHAPES[(k - 1) % len(_HEAD_SHAPES)],
            head_pattern=_HEAD_PATTERNS[((k - 1) // len(_HEAD_SHAPES) + k) % len(_HEAD_PATTERNS)],
            body_hsv=body_hsv,
            body_texture=_BODY_TEXTURES[(k - 1) % len(_BODY_TEXTURES)],
            body_period=body_period,
            body_angle=body_angle,
            bg_texture=_BG_TEXTURES[ctx % len(_BG_TEXTURES)],
            bg_rgb=(_hsv(bg_hue, ctx_rng.uniform(0.3, 0.6), ctx_rng.uniform(0.25, 0.45)),
                    _hsv(bg_hue + ctx_rng.uniform(0.1, 0.4), ctx_rng.uniform(0.3, 0.6), ctx_rng.uniform(0.65, 0.9))),
            bg_period=float(ctx_rng.uniform(4.0, 9.0)),
            bg_angle=float(ctx_rng.uniform(0, np.pi)),
        )
    return styles


# --------------------------------------------------------------------------------------------
# geometry helpers (pure, vectorised over the pixel grid)
# --------------------------------------------------------------------------------------------
def _frame(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in a frame centred at (cy, cx) and rotated by ``theta``: (u along, v across)."""
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(theta), np.sin(theta)
    return c * dx + s * dy, -s * dx + c * dy


def _convex_polygon(u: np.ndarray, v: np.ndarray, angles: np.ndarray, a: float, b: float) -> np.ndarray:
    """Inside test for the convex polygon with vertices (a cos t, b sin t), t = sorted ``angles``."""
    px, py = a * np.cos(angles), b * np.sin(angles)
    inside = np.ones(u.shape, dtype=bool)
    for i in range(len(angles)):
        j = (i + 1) % len(angles)
        ex, ey = px[j] - px[i], py[j] - py[i]
        inside &= ex * (v - py[i]) - ey * (u - px[i]) >= 0
    return inside


def shape_mask(kind: str, u: np.ndarray, v: np.ndarray, a: float, b: float,
               angles: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of a shape of half-extents (a, b) in frame coordinates (u, v)."""
    if kind in ("ellipse", "circle"):
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind in ("rectangle", "square"):
        return (np.abs(u) <= 0.85 * a) & (np.abs(v) <= 0.85 * b)
    if kind == "diamond":
        return np.abs(u) / a + np.abs(v) / b <= 1.0
    if kind == "triangle":
        return _convex_polygon(u, v, np.array([0.0, 2.0944, 4.1888]), 1.15 * a, 1.15 * b)
    if kind == "hexagon":
        return _convex_polygon(u, v, np.arange(6) * np.pi / 3, a, b)
    if kind == "polygon":
        if angles is None:
            raise ValueError("polygon needs vertex angles")
        return _convex_polygon(u, v, np.sort(angles), 1.1 * a, 1.1 * b)
    raise ValueError(f"unknown shape {kind!r}")


def half_plane(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, theta: float) -> np.ndarray:
    """Pixels on the positive side of the line through (cy, cx) with normal angle ``theta``."""
    return np.cos(theta) * (xx - cx) + np.sin(theta) * (yy - cy) >= 0


def smooth_field(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 3) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random (cells+1)^2 grid bilinearly upsampled to (h, w, channels)."""
    grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1, channels))
    ys, xs = np.linspace(0, cells, h), np.linspace(0, cells, w)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (1 - wy) * ((1 - wx) * g00 + wx * g01) + wy * ((1 - wx) * g10 + wx * g11)


def texture_pattern(kind: str, yy: np.ndarray, xx: np.ndarray, period: float, angle: float) -> np.ndarray:
    """A periodic pattern in [0, 1] over the grid (``kind`` from the background/body textures)."""
    u, v = _frame(yy, xx, 0.0, 0.0, angle)
    f = 2.0 * np.pi / period
    if kind == "stripes":
        return (np.sin(f * u) > 0).astype(np.float64)
    if kind == "checker":
        return ((np.sin(f * u) > 0) ^ (np.sin(f * v) > 0)).astype(np.float64)
    if kind in ("dots", "spots"):
        return ((np.cos(f * u) * np.cos(f * v)) > 0.45).astype(np.float64)
    if kind == "waves":
        return 0.5 + 0.5 * np.sin(f * u + 2.0 * np.sin(0.5 * f * v))
    if kind == "zigzag":
        return (np.sin(f * u + 3.0 * np.abs(((v / period) % 2.0) - 1.0)) > 0).astype(np.float64)
    if kind == "grid":
        return ((np.abs(np.sin(f * u)) > 0.9) | (np.abs(np.sin(f * v)) > 0.9)).astype(np.float64)
    if kind == "mottle":
        return 0.5 + 0.25 * (np.sin(f * u) + np.sin(0.77 * f * v + 1.3))
    raise ValueError(f"unknown texture {kind!r}")


def ignore_band(inst: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` (Chebyshev) of a pixel of a later-drawn (in front) instance.

    ``inst`` holds 0 for background and 1..n in drawing order; the band lies just outside each
    object, over the background or over the objects it occludes.
    """
    h, w = inst.shape
    pad = np.pad(inst, width, mode="edge")
    band = np.zeros(inst.shape, dtype=bool)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            if dy or dx:
                band |= pad[width + dy:width + dy + h, width + dx:width + dx + w] > inst
    return band


# --------------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------------
@dataclass
class _Object:
    cls: int
    shape: str
    cy: float
    cx: float
    theta: float
    a: float
    b: float
    body: np.ndarray
    head: np.ndarray
    head_centre: tuple[float, float]
    head_radius: float


@dataclass
class SyntheticImage:
    """One generated image, its label mask and what was drawn."""

    image: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _image_shape(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(H, W): short side ``size``, long side up to 1.25 * size; a quarter of images are portrait."""
    long_side = int(rng.integers(size, int(round(1.25 * size)) + 1))
    return (long_side, size) if rng.uniform() < 0.25 else (size, long_side)


def _place_objects(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, classes: int,
                   styles: dict[int, ClassStyle], object_scale: tuple[float, float] = OBJECT_SCALE) -> list[_Object]:
    """Choose 1-3 classes and 1-3 instances each (major axis ``object_scale`` of the short side);
    return the objects in drawing order."""
    h, w = yy.shape
    side = min(h, w)
    n_cls = min(classes, int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])))
    chosen = rng.choice(np.arange(1, classes + 1), size=n_cls, replace=False)
    labels: list[int] = []
    for c in chosen:
        labels += [int(c)] * int(rng.choice([1, 2, 3], p=[0.7, 0.24, 0.06]))
    labels = [labels[i] for i in rng.permutation(len(labels))]
    objects: list[_Object] = []
    for n, c in enumerate(labels):
        front = n == len(labels) - 1
        scale = rng.uniform(*object_scale)
        a = 0.5 * scale * side
        b = a * rng.uniform(0.5, 0.9)
        lo, hi = (0.3, 0.7) if front else (0.1, 0.9)  # the front object always lies fully inside
        cy, cx = rng.uniform(lo, hi) * h, rng.uniform(lo, hi) * w
        theta = rng.uniform(0, 2 * np.pi)
        shape = _BODY_SHAPES[int(rng.integers(len(_BODY_SHAPES)))]
        angles = rng.uniform(0, 2 * np.pi, int(rng.integers(5, 8)))
        angles = np.sort(np.concatenate([angles, [0.0, np.pi / 2, np.pi, 1.5 * np.pi]]))
        u, v = _frame(yy, xx, cy, cx, theta)
        body = shape_mask(shape, u, v, a, b, angles)
        r_head = max(1.6, b * rng.uniform(0.32, 0.42))
        reach = 0.95 * a if shape != "rectangle" else 0.85 * a
        hy, hx = cy + reach * np.sin(theta), cx + reach * np.cos(theta)
        hu, hv = _frame(yy, xx, hy, hx, theta)
        head = shape_mask(styles[c].head_shape, hu, hv, r_head, r_head)
        objects.append(_Object(c, shape, cy, cx, theta, a, b, body, head, (hy, hx), r_head))
    return objects


def _resolve_occlusion(objects: list[_Object], shape: tuple[int, int], border: int,
                       min_px: int) -> tuple[list[_Object], np.ndarray, np.ndarray]:
    """Drop hidden objects (fewer than ``min_px`` labelled pixels or < 25% visible; never the front one).

    Returns the kept objects, the instance map (0 background, 1..n in drawing order) and the ignore band.
    """
    kept = list(objects)
    while True:
        inst = np.zeros(shape, dtype=np.int32)
        for j, ob in enumerate(kept, start=1):
            inst[ob.body | ob.head] = j
        band = ignore_band(inst, border)
        visible = np.bincount(inst[~band].ravel(), minlength=len(kept) + 1)
        drawn = [int((ob.body | ob.head).sum()) for ob in kept]
        hidden = [j for j in range(len(kept) - 1)
                  if visible[j + 1] < min_px or visible[j + 1] < 0.25 * drawn[j]]
        if not hidden:
            return kept, inst, band
        kept = [ob for j, ob in enumerate(kept) if j not in hidden]


def _paint_background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A cluttered background: smooth colour field, stripes, body-like blobs, small distractors."""
    h, w = yy.shape
    side = min(h, w)
    base = np.array(_hsv(rng.uniform(), rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.8)))
    img = base + 35.0 * smooth_field(rng, h, w, int(rng.integers(2, 6)))
    if rng.uniform() < 0.4:  # generic stripes over part of the image
        region = half_plane(yy, xx, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, 2 * np.pi))
        pat = texture_pattern("stripes", yy, xx, rng.uniform(3, 14), rng.uniform(0, np.pi))
        colour = np.array(_hsv(rng.uniform(), rng.uniform(0, 0.4), rng.uniform(0.2, 0.9)))
        alpha = rng.uniform(0.25, 0.6) * (region * pat)[..., None]
        img = (1 - alpha) * img + alpha * colour
    for _ in range(int(rng.integers(1, 5))):  # muted blobs that look like bodies of no class
        u, v = _frame(yy, xx, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, 2 * np.pi))
        a = rng.uniform(0.05, 0.25) * side
        kind = _BODY_SHAPES[int(rng.integers(2))]
        m = shape_mask(kind, u, v, a, a * rng.uniform(0.4, 1.0))
        colour = np.array(_hsv(rng.uniform(), rng.uniform(0.1, 0.4), rng.uniform(0.3, 0.8)))
        img[m] = colour + 10.0 * texture_pattern("mottle", yy, xx, rng.uniform(3, 8), rng.uniform(0, np.pi))[m, None]
    if rng.uniform() < 0.3:  # a few tiny saturated specks of random hue
        for _ in range(int(rng.integers(1, 3))):
            d = (yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2
            img[d <= rng.uniform(0.6, 1.5) ** 2] = _hsv(rng.uniform(), 0.9, 0.9)
    return img


def _paint_texture(img: np.ndarray, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
                   style: ClassStyle) -> tuple[np.ndarray, np.ndarray]:
    """Paint a class's background texture on a random region (a half-plane band or a large blob).

    Returns the new image and the region painted.
    """
    h, w = yy.shape
    if rng.uniform() < 0.6:
        theta = rng.uniform(0, 2 * np.pi)
        # a line through a point well inside: the region covers roughly 20-60% of the image
        region = half_plane(yy, xx, h * rng.uniform(0.3, 0.7), w * rng.uniform(0.3, 0.7), theta)
    else:
        u, v = _frame(yy, xx, rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0, np.pi))
        a = rng.uniform(0.3, 0.5) * min(h, w)
        region = shape_mask("ellipse", u, v, a, a * rng.uniform(0.6, 1.0))
    pat = texture_pattern(style.bg_texture, yy, xx, style.bg_period * rng.uniform(0.9, 1.1),
                          style.bg_angle + rng.uniform(-0.15, 0.15))
    c0, c1 = np.array(style.bg_rgb[0]), np.array(style.bg_rgb[1])
    tex = c0 + pat[..., None] * (c1 - c0)
    out = img.copy()
    out[region] = tex[region]
    return out, region


def _paint_object(img: np.ndarray, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
                  ob: _Object, style: ClassStyle) -> None:
    """Paint a body (muted, family colour, low-contrast class texture, shading) then its head."""
    hue, sat, val = style.body_hsv
    colour = np.array(_hsv(hue + rng.uniform(-0.015, 0.015), sat + rng.uniform(-0.04, 0.04),
                           val + rng.uniform(-0.08, 0.08)))
    u, v = _frame(yy, xx, ob.cy, ob.cx, ob.theta)
    pat = texture_pattern(style.body_texture, u, v, style.body_period, style.body_angle)  # moves with the body
    shade = 1.0 + 0.18 * np.clip(v / ob.b, -1, 1)
    body = (colour * shade[..., None]) + 16.0 * (pat[..., None] - 0.5)
    img[ob.body] = body[ob.body]
    hy, hx = ob.head_centre
    hu, hv = _frame(yy, xx, hy, hx, ob.theta)
    head = np.broadcast_to(np.array(style.head_rgb), img.shape).copy()
    dark = np.array(style.head_rgb) * 0.25
    r = ob.head_radius
    if style.head_pattern == "dot":
        head[hu ** 2 + hv ** 2 <= (0.45 * r) ** 2] = dark
    elif style.head_pattern == "ring":
        d = np.sqrt(hu ** 2 + hv ** 2)
        head[(d >= 0.45 * r) & (d <= 0.75 * r)] = dark
    elif style.head_pattern == "bar":
        head[np.abs(hv) <= 0.25 * r] = dark
    img[ob.head] = head[ob.head]


def render_image(seed: int, index: int, size: int, classes: int,
                 styles: dict[int, ClassStyle] | None = None,
                 object_scale: tuple[float, float] = OBJECT_SCALE) -> SyntheticImage:
    """Render image ``index`` of the dataset for ``seed``; a pure function of its arguments."""
    styles = styles or class_styles(classes)
    rng = np.random.default_rng([seed, index])
    h, w = _image_shape(rng, size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    border = int(rng.integers(1, 3))
    objects = _place_objects(rng, yy, xx, classes, styles, object_scale)
    objects, inst, band = _resolve_occlusion(objects, (h, w), border, min_px=max(6, int(0.002 * h * w)))
    present = sorted({ob.cls for ob in objects})

    img = _paint_background(rng, yy, xx)
    drawn_tex = [k for k in range(1, classes + 1)
                 if rng.uniform() < (P_TEXTURE_WITH_CLASS if k in present else P_TEXTURE_WITHOUT_CLASS)]
    owner = np.zeros((h, w), dtype=np.int32)  # which class texture is on top at each pixel
    for k in (drawn_tex[i] for i in rng.permutation(len(drawn_tex))):
        img, region = _paint_texture(img, rng, yy, xx, styles[k])
        owner[region] = k
    for ob in objects:
        _paint_object(img, rng, yy, xx, ob, styles[ob.cls])
    img = img + rng.normal(0.0, rng.uniform(3.0, 10.0), img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    mask = np.zeros((h, w), dtype=np.uint8)
    classes_of = np.array([0] + [ob.cls for ob in objects], dtype=np.uint8)
    mask[:] = classes_of[inst]
    mask[band] = IGNORE_INDEX

    labelled = ~band
    obj_meta = []
    for j, ob in enumerate(objects, start=1):
        full = ob.body | ob.head
        ys, xs = np.nonzero(full)
        vis = (inst == j) & labelled
        head_px = int((vis & ob.head).sum())
        body_px = int((vis & ob.body & ~ob.head).sum())
        drawn = int(full.sum())
        obj_meta.append({
            "class": ob.cls, "name": VOC_CLASSES[ob.cls], "shape": ob.shape,
            "bbox": [int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1],
            "head_px": head_px, "body_px": body_px, "drawn_px": drawn,
            "occluded": int(head_px + body_px < drawn), "truncated": int(
                ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1),
        })
    background = inst == 0
    textures = {k: int(((owner == k) & background).sum()) for k in sorted(drawn_tex)}
    meta = {"width": w, "height": h, "classes": present, "objects": obj_meta, "border": border,
            "textures": {str(k): v for k, v in textures.items()}}
    return SyntheticImage(image=image, mask=mask, meta=meta)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def voc_xml(image_id: str, meta: dict[str, Any]) -> bytes:
    """A VOC-style annotation XML for one image (bounding boxes are 1-based and inclusive)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "rpnet-pl synthetic VOC"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(meta["width"])
    ET.SubElement(size, "height").text = str(meta["height"])
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1"
    for ob in meta["objects"]:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = ob["name"]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(ob["truncated"])
        ET.SubElement(node, "occluded").text = str(ob["occluded"])
        box = ET.SubElement(node, "bndbox")
        for key, val in zip(("xmin", "ymin", "xmax", "ymax"), ob["bbox"]):
            ET.SubElement(box, key).text = str(val)
        ET.SubElement(node, "difficult").text = "0"
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def make_splits(n: int, seed: int, val_fraction: float) -> dict[str, list[int]]:
    """Indices of train_aug (all training), train (about a third of it) and val (disjoint)."""
    rng = np.random.default_rng([seed, _SPLIT_SALT])
    n_val = int(np.clip(round(n * val_fraction), 1, n - 1))
    perm = rng.permutation(n)
    val, train_aug = sorted(perm[:n_val].tolist()), sorted(perm[n_val:].tolist())
    n_train = max(1, round(len(train_aug) / 3))
    train = sorted(rng.choice(train_aug, size=n_train, replace=False).tolist())
    return {"train": train, "train_aug": train_aug, "val": val}


def _texture_rate(metas: dict[str, dict[str, Any]], ids: list[str], k: int) -> float:
    """Fraction of ``ids`` whose background got class ``k``'s texture (0 when ``ids`` is empty)."""
    return float(np.mean([str(k) in metas[i]["textures"] for i in ids])) if ids else 0.0


def _summarise(metas: dict[str, dict[str, Any]], splits: dict[str, list[str]], classes: int) -> dict[str, Any]:
    """Per-split counts, images per class, multi-label counts, texture co-occurrence and part areas."""
    names = [VOC_CLASSES[k] for k in range(1, classes + 1)]
    per_class = {s: {nm: 0 for nm in names} for s in ("train", "train_aug", "val")}
    multi = {}
    for s in per_class:
        for i in splits[s]:
            for k in metas[i]["classes"]:
                per_class[s][VOC_CLASSES[k]] += 1
        multi[s] = sum(len(metas[i]["classes"]) > 1 for i in splits[s])
    labelled = splits["train_aug"] + splits["val"]
    cooc: dict[str, dict[str, float]] = {}
    parts: dict[str, dict[str, float]] = {}
    head_all: list[float] = []
    body_all: list[float] = []
    for k, nm in zip(range(1, classes + 1), names):
        with_k = [i for i in labelled if k in metas[i]["classes"]]
        without = [i for i in labelled if k not in metas[i]["classes"]]
        cooc[nm] = {"with_class": _texture_rate(metas, with_k, k), "without_class": _texture_rate(metas, without, k),
                    "images_with_class": len(with_k), "images_without_class": len(without)}
        head, body = [], []
        for i in with_k:
            for ob in metas[i]["objects"]:
                tot = ob["head_px"] + ob["body_px"]
                if ob["class"] == k and tot:
                    head.append(ob["head_px"] / tot)
                    body.append(ob["body_px"] / tot)
        head_all += head
        body_all += body
        parts[nm] = {"head_fraction": float(np.mean(head)) if head else 0.0,
                     "body_fraction": float(np.mean(body)) if body else 0.0, "instances": len(head)}
    return {
        "splits": {s: len(ids) for s, ids in splits.items()},
        "images_per_class": per_class,
        "multi_label_images": multi,
        "instances": sum(len(metas[i]["objects"]) for i in labelled),
        "texture_cooccurrence": cooc,
        "part_fraction": parts,
        "head_fraction_mean": float(np.mean(head_all)) if head_all else 0.0,
        "body_fraction_mean": float(np.mean(body_all)) if body_all else 0.0,
    }


def _check_args(images: int, size: int, classes: int, val_fraction: float, test_images: int,
                object_scale: tuple[float, float] = OBJECT_SCALE, context: str = "class") -> None:
    if images < 2:
        raise ConfigError(f"images must be at least 2 (train_aug and val), got {images}")
    if size < 32:
        raise ConfigError(f"size must be at least 32 pixels, got {size}")
    if not 1 <= classes <= len(VOC_CLASSES) - 1:
        raise ConfigError(f"classes must be between 1 and {len(VOC_CLASSES) - 1}, got {classes}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if test_images < 1:
        raise ConfigError(f"test_images must be at least 1 (VOC has a test list), got {test_images}")
    lo, hi = object_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"object_scale must be 0 < low <= high <= 1 (fractions of the short side), got {object_scale}")
    if context not in CONTEXTS:
        raise ConfigError(f"context must be one of {CONTEXTS}, got {context!r}")


def generate_synthetic_voc(out: str | Path, images: int = 240, size: int = 96, classes: int = 6, seed: int = 0,
                           val_fraction: float = 0.25, test_images: int = 16,
                           object_scale: tuple[float, float] = OBJECT_SCALE, context: str = "class") -> dict[str, Any]:
    """Write a synthetic VOC 2012 tree under ``out`` and return its summary.

    ``images`` are split into train_aug and val (``val_fraction``); train is about a third of
    train_aug; ``test_images`` more images get a JPEG only. The summary holds the VOC2012 path, the
    arguments, split sizes, images per class, multi-label counts, per-class background-texture
    co-occurrence rates, per-class head/body fractions of the labelled object pixels, the time taken,
    and ``images_meta`` (id -> what was drawn).
    """
    object_scale = (float(object_scale[0]), float(object_scale[1]))
    _check_args(images, size, classes, val_fraction, test_images, object_scale, context)
    start = time.perf_counter()
    voc = Path(out).expanduser() / "VOCdevkit" / "VOC2012"
    styles = class_styles(classes, context)
    palette = voc_palette()
    ids = [f"{ID_PREFIX}_{i:06d}" for i in range(images + test_images)]
    split_idx = make_splits(images, seed, val_fraction)
    splits = {s: [ids[i] for i in idx] for s, idx in split_idx.items()}
    splits["test"] = ids[images:]
    in_train, in_val = set(splits["train"]), set(splits["val"])

    metas: dict[str, dict[str, Any]] = {}
    fg_px = labelled_px = 0  # over train_aug and val (VOC: about 0.25-0.3)
    for index, image_id in enumerate(ids):
        sample = render_image(seed, index, size, classes, styles, object_scale)
        write_image(voc / "JPEGImages" / f"{image_id}.jpg", sample.image, quality=92)
        split = "test" if index >= images else ("val" if image_id in in_val else "train_aug")
        sample.meta["split"] = split
        metas[image_id] = sample.meta
        if split == "test":
            continue
        labelled = sample.mask != IGNORE_INDEX
        fg_px += int((labelled & (sample.mask > 0)).sum())
        labelled_px += int(labelled.sum())
        _write_bytes(voc / "Annotations" / f"{image_id}.xml", voc_xml(image_id, sample.meta))
        write_label_png(voc / "SegmentationClassAug" / f"{image_id}.png", sample.mask, palette)
        if image_id in in_train or image_id in in_val:
            write_label_png(voc / "SegmentationClass" / f"{image_id}.png", sample.mask, palette)
    for split in ("train", "train_aug", "val", "test"):
        _write_bytes(voc / "ImageSets" / "Segmentation" / f"{split}.txt",
                     ("\n".join(splits[split]) + "\n").encode())

    summary: dict[str, Any] = {"root": str(voc), "images": images, "size": size, "classes": classes,
                               "seed": seed, "val_fraction": val_fraction, "test_images": test_images,
                               "object_scale": list(object_scale), "context": context,
                               "foreground_fraction": round(fg_px / max(1, labelled_px), 4),
                               "class_names": [VOC_CLASSES[k] for k in range(1, classes + 1)]}
    summary.update(_summarise(metas, splits, classes))
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["images_meta"] = metas
    log.info("wrote %d synthetic VOC images (%s) to %s in %.1fs", len(ids),
             ", ".join(f"{s} {n}" for s, n in summary["splits"].items()), voc, summary["seconds"])
    return summary


def synthesise(out: str | Path, as_json: bool = False, **settings: Any) -> str:
    """`rpnet data synth`: :func:`generate_synthetic_voc` with ``settings``; returns its summary as JSON
    (``as_json``) or, once written to ``OUT/synth_summary.json``, one line about it."""
    import json

    summary = generate_synthetic_voc(out, **settings)
    text = json.dumps({k: v for k, v in summary.items() if k != "images_meta"}, indent=1, default=str)
    if as_json:
        return text
    path = Path(out) / "synth_summary.json"
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return (f"{summary['classes']} classes, foreground {100 * summary['foreground_fraction']:.1f}% of the labelled "
            f"pixels; full summary (per-class counts, texture co-occurrence) in {path}")


__all__ = ["synthesise", "ClassStyle", "SyntheticImage", "class_styles", "generate_synthetic_voc", "make_splits",
           "render_image", "voc_xml"]
