"""Procedurally generated "shapes in clutter" images for the demo models.

Every image holds exactly one *class shape* (circle, square, triangle or star) on a cluttered,
textured background with distractor strokes (line segments, dots, rings/arcs, scribbles) that are
not class shapes.  Because the images are synthetic, the exact pixels of the object are known, so
an explanation can be scored against a ground-truth ``mask``.

Optionally a small solid *marker* is painted in the top-left corner; its colour encodes a class.
The "shortcut" dataset pairs every label with its marker colour while the drawn shape agrees with
the label only part of the time, so a model trained on it learns to look at the corner instead of
at the object (a controlled "Clever Hans" model).

*Scenes* (:func:`generate_scene`, :func:`generate_scene_dataset`) hold one to three class shapes
of distinct classes, smaller and never overlapping, on the same background: their per-pixel label
map serves segmentation models and their multi-hot label vector multi-label classifiers.

This module only needs numpy and Pillow, so it imports fast and can be used without TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "CLASS_NAMES",
    "MARKER_COLORS",
    "SEGMENTATION_CLASS_NAMES",
    "SceneSample",
    "ShapeSample",
    "generate_dataset",
    "generate_sample",
    "generate_scene",
    "generate_scene_dataset",
    "marker_box",
]

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star")
"""Class names, indexed by label."""

MARKER_COLORS: tuple[tuple[int, int, int], ...] = (
    (235, 20, 20),  # circle: red
    (20, 205, 40),  # square: green
    (25, 75, 255),  # triangle: blue
    (255, 220, 0),  # star: yellow
)
"""Saturated RGB colour of the corner marker for each class, indexed by label."""

_N_CLASSES = len(CLASS_NAMES)
_MIN_SIZE = 32

# Shape size range as a fraction of the image side (22-44 px for a 96 px image).
_SHAPE_SIZE_RANGE = (0.23, 0.46)
# Colour distance (RGB in [0, 1]) that most pixels under the shape must keep from the shape colour.
_MIN_CONTRAST = 0.45

SEGMENTATION_CLASS_NAMES: tuple[str, ...] = ("background", *CLASS_NAMES)
"""Names of the values of a scene's label map: 0 is the background, ``k + 1`` shape class ``k``."""

# Scene shapes are smaller (15-29 px for a 96 px image), so that three fit without overlapping.
_SCENE_SIZE_RANGE = (0.16, 0.30)
# Default number of shapes per scene (inclusive range).
_SCENE_SHAPES = (1, 3)
# Random positions tried per shape before its size is reduced.
_PLACEMENT_TRIES = 100


@dataclass(frozen=True)
class ShapeSample:
    """One generated image with its ground truth.

    Attributes
    ----------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB image in [0, 255].
    mask : np.ndarray
        ``(H, W)`` bool, True exactly on the pixels of the class shape.
    label : int
        Class index (into :data:`CLASS_NAMES`) of the drawn shape.
    marker_mask : np.ndarray
        ``(H, W)`` bool, True on the corner marker's pixels; all False when there is no marker.
    marker_label : int or None
        Class index encoded by the marker colour, or None when there is no marker.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    marker_mask: np.ndarray
    marker_label: int | None = field(default=None)


@dataclass(frozen=True)
class SceneSample:
    """One generated scene with its ground truth.

    Attributes
    ----------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB image in [0, 255].
    label_map : np.ndarray
        ``(H, W)`` uint8: 0 on the background, ``k + 1`` on the pixels of a shape of class ``k``
        (names in :data:`SEGMENTATION_CLASS_NAMES`).
    shape_masks : list of np.ndarray
        One ``(H, W)`` bool mask per shape, in drawing order; pairwise disjoint.
    shape_labels : list of int
        Class index (into :data:`CLASS_NAMES`) of each shape, in the same order; distinct.
    multi_hot : np.ndarray
        ``(n_classes,)`` float32, 1 for the classes present in the scene, 0 for the others.
    """

    image: np.ndarray
    label_map: np.ndarray
    shape_masks: list[np.ndarray]
    shape_labels: list[int]
    multi_hot: np.ndarray


def marker_box(size: int = 96) -> tuple[int, int, int]:
    """Geometry of the corner marker for a ``size`` x ``size`` image.

    Parameters
    ----------
    size : int
        Image side in pixels.

    Returns
    -------
    offset, side, keep_out : tuple of int
        The marker covers rows and columns ``[offset, offset + side)``.  Class shapes never touch
        the top-left ``keep_out`` x ``keep_out`` square, with or without a marker.
    """
    offset = max(2, round(size / 32))
    side = max(4, round(size / 12))
    keep_out = offset + side + max(4, round(size / 10))
    return offset, side, keep_out


def generate_sample(
    rng: np.random.Generator,
    *,
    size: int = 96,
    label: int | None = None,
    marker: bool = False,
    marker_label: int | None = None,
    clutter: float = 1.0,
) -> ShapeSample:
    """Generate one cluttered image containing one class shape.

    Parameters
    ----------
    rng : np.random.Generator
        Source of randomness; the sample is a deterministic function of its state.
    size : int
        Image side in pixels (at least 32).  Sizes scale with it: shapes span roughly 23-46 % of
        the side (22-44 px at the default 96).
    label : int or None
        Class index of the shape to draw; drawn uniformly when None.
    marker : bool
        Paint the solid corner marker (about ``size / 12`` px square, top-left).
    marker_label : int or None
        Class whose colour the marker takes; defaults to ``label``.  Ignored without ``marker``.
    clutter : float
        Amount of clutter in [0, 1]: scales the background texture's contrast and the number of
        distractors.  1 is the standard demo scene (the demo models were trained on it); 0 leaves
        a gently shaded, distractor-free background (an easier variant).

    Returns
    -------
    ShapeSample
        The ``(size, size, 3)`` uint8 image, ``(size, size)`` bool masks and labels.

    Notes
    -----
    Painting the marker consumes no randomness, so the same generator state with and without
    ``marker`` gives the same image except on the marker's pixels.
    """
    if size < _MIN_SIZE:
        raise ValueError(f"expected an image size of at least {_MIN_SIZE} px, got {size}")
    if label is None:
        label = int(rng.integers(_N_CLASSES))
    label = _check_label(label, "label")
    if marker_label is None:
        marker_label = label
    marker_label = _check_label(marker_label, "marker_label")
    _check_clutter(clutter)

    canvas = _background(rng, size, clutter)
    image = Image.fromarray(_to_uint8(canvas))
    _draw_distractors(rng, image, clutter)
    canvas = np.asarray(image, dtype=np.float32) / 255.0

    mask = _shape_mask(rng, size, label)
    colour = _contrasting_colour(rng, canvas[mask])
    canvas[mask] = _shade(rng, colour, mask)

    marker_mask = np.zeros((size, size), dtype=bool)
    if marker:
        offset, side, _ = marker_box(size)
        marker_mask[offset : offset + side, offset : offset + side] = True
        canvas[marker_mask] = np.asarray(MARKER_COLORS[marker_label], dtype=np.float32) / 255.0

    # Mild sensor noise over everything, drawn whether or not there is a marker.
    noise = rng.normal(0.0, rng.uniform(0.005, 0.02), size=canvas.shape).astype(np.float32)
    noise[marker_mask] = 0.0
    return ShapeSample(
        image=_to_uint8(canvas + noise),
        mask=mask,
        label=label,
        marker_mask=marker_mask,
        marker_label=marker_label if marker else None,
    )


def generate_dataset(
    n: int,
    seed: int,
    *,
    size: int = 96,
    variant: Literal["honest", "shortcut"] = "honest",
    shape_agreement: float = 1.0,
    marker: bool | None = None,
    clutter: float = 1.0,
) -> dict[str, np.ndarray]:
    """Generate a class-balanced dataset of cluttered shape images.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int
        Seed; the same arguments always give byte-identical arrays.
    size : int
        Image side in pixels.
    variant : {"honest", "shortcut"}
        ``"honest"``: the shape is the label and there is no marker.  ``"shortcut"``: every image
        carries the corner marker whose colour encodes the label, and the drawn shape agrees with
        the label only with probability ``shape_agreement``.
    shape_agreement : float
        For ``"shortcut"``, probability in [0, 1] that the drawn shape is the label's shape;
        otherwise a uniformly chosen *other* class's shape is drawn.  ``1 / n_classes`` (0.25)
        makes the shape carry no information about the label.  Ignored for ``"honest"``.
    marker : bool or None
        Override whether the marker is painted (default: only for ``"shortcut"``).  The marker
        always encodes ``labels``.  With the same ``seed``, toggling it changes only the marker's
        pixels, which makes "the same images without the marker" easy to build.
    clutter : float
        Amount of background clutter in [0, 1] (see :func:`generate_sample`); 1 is the standard.

    Returns
    -------
    dict of str to np.ndarray
        ``images``: ``(n, size, size, 3)`` uint8 RGB;
        ``masks``: ``(n, size, size)`` bool, True on the drawn shape;
        ``labels``: ``(n,)`` int64 class indices (the target; equals the marker's class);
        ``shape_labels``: ``(n,)`` int64 class of the drawn shape (equals ``labels`` for honest);
        ``marker_masks``: ``(n, size, size)`` bool, True on the marker (all False without one).
    """
    if n < 0:
        raise ValueError(f"expected a non-negative number of images, got {n}")
    if variant not in ("honest", "shortcut"):
        raise ValueError(f"expected variant 'honest' or 'shortcut', got {variant!r}")
    if not 0.0 <= shape_agreement <= 1.0:
        raise ValueError(f"expected shape_agreement in [0, 1], got {shape_agreement}")
    _check_clutter(clutter)
    if marker is None:
        marker = variant == "shortcut"

    seed_sequence = np.random.SeedSequence(seed)
    rng = np.random.default_rng(seed_sequence)
    labels = rng.permutation(np.arange(n) % _N_CLASSES).astype(np.int64)
    shape_labels = labels.copy()
    if variant == "shortcut":
        disagree = rng.random(n) >= shape_agreement
        other = (labels + rng.integers(1, _N_CLASSES, size=n)) % _N_CLASSES
        shape_labels = np.where(disagree, other, labels).astype(np.int64)

    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    marker_masks = np.empty((n, size, size), dtype=bool)
    # One independent stream per image, so image i does not depend on how the others were drawn.
    for i, child in enumerate(seed_sequence.spawn(n)):
        sample = generate_sample(
            np.random.default_rng(child),
            size=size,
            label=int(shape_labels[i]),
            marker=marker,
            marker_label=int(labels[i]),
            clutter=clutter,
        )
        images[i] = sample.image
        masks[i] = sample.mask
        marker_masks[i] = sample.marker_mask
    return {
        "images": images,
        "masks": masks,
        "labels": labels,
        "shape_labels": shape_labels,
        "marker_masks": marker_masks,
    }


def generate_scene(
    rng: np.random.Generator,
    *,
    size: int = 96,
    n_shapes: int | tuple[int, int] | None = None,
    clutter: float = 1.0,
) -> SceneSample:
    """Generate one cluttered scene holding several class shapes of distinct classes.

    Parameters
    ----------
    rng : np.random.Generator
        Source of randomness; the scene is a deterministic function of its state.
    size : int
        Image side in pixels (at least 32).  Shapes span roughly 16-30 % of the side (15-29 px at
        the default 96), smaller than :func:`generate_sample`'s, so that three fit.
    n_shapes : int, tuple of int or None
        Number of shapes: an int, an inclusive ``(low, high)`` range drawn uniformly, or None for
        ``(1, 3)``.  Classes never repeat within a scene, so at most ``len(CLASS_NAMES)`` (4).
    clutter : float
        Amount of background clutter in [0, 1] (see :func:`generate_sample`); 1 is the standard.

    Returns
    -------
    SceneSample
        The ``(size, size, 3)`` uint8 image, its label map, one mask and class per shape and the
        multi-hot vector of the classes present.

    Notes
    -----
    The classes are drawn without replacement, so the multi-hot vector counts the shapes.  The
    shapes' bounding circles keep a gap of at least ``max(2, size / 48)`` px between them, so the
    masks are disjoint and no two shapes touch.  Each shape's position is tried up to 100 times;
    a shape that does not fit is shrunk by 15 % and tried again.  Distractor strokes lie under the
    shapes, never on them.  There is no corner marker.
    """
    if size < _MIN_SIZE:
        raise ValueError(f"expected an image size of at least {_MIN_SIZE} px, got {size}")
    _check_clutter(clutter)
    low, high = _check_n_shapes(n_shapes)
    count = int(rng.integers(low, high + 1))
    labels = [int(label) for label in rng.choice(_N_CLASSES, size=count, replace=False)]

    canvas = _background(rng, size, clutter)
    image = Image.fromarray(_to_uint8(canvas))
    _draw_distractors(rng, image, clutter)
    canvas = np.asarray(image, dtype=np.float32) / 255.0

    gap = max(2.0, size / 48.0)
    placed: list[tuple[float, float, float]] = []  # centre x, centre y, bounding radius
    masks: list[np.ndarray] = []
    label_map = np.zeros((size, size), dtype=np.uint8)
    for label in labels:
        cx, cy, extent, radius = _place(rng, size, label, placed, gap)
        placed.append((cx, cy, radius))
        mask = _rasterise(label, _outline(label, cx, cy, extent, rng), size)
        colour = _contrasting_colour(rng, canvas[mask])
        canvas[mask] = _shade(rng, colour, mask)
        label_map[mask] = label + 1
        masks.append(mask)

    noise = rng.normal(0.0, rng.uniform(0.005, 0.02), size=canvas.shape).astype(np.float32)
    multi_hot = np.zeros(_N_CLASSES, dtype=np.float32)
    multi_hot[labels] = 1.0
    return SceneSample(
        image=_to_uint8(canvas + noise),
        label_map=label_map,
        shape_masks=masks,
        shape_labels=labels,
        multi_hot=multi_hot,
    )


def generate_scene_dataset(
    n: int,
    *,
    seed: int,
    size: int = 96,
    n_shapes: int | tuple[int, int] = _SCENE_SHAPES,
    clutter: float = 1.0,
) -> dict[str, np.ndarray]:
    """Generate ``n`` scenes (see :func:`generate_scene`) with their label maps and label vectors.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int
        Seed; the same arguments always give byte-identical arrays.  Scene ``i`` has its own random
        stream, so it does not depend on ``n``.
    size : int
        Image side in pixels.
    n_shapes : int or tuple of int
        Shapes per scene: a fixed number or an inclusive ``(low, high)`` range, drawn per scene.
    clutter : float
        Amount of background clutter in [0, 1]; 1 is the standard.

    Returns
    -------
    dict of str to np.ndarray
        ``images``: ``(n, size, size, 3)`` uint8 RGB;
        ``label_maps``: ``(n, size, size)`` uint8, 0 = background, ``k + 1`` = shape class ``k``;
        ``multi_hot``: ``(n, n_classes)`` float32, the classes present;
        ``n_shapes``: ``(n,)`` int64, the number of shapes in each scene.
    """
    if n < 0:
        raise ValueError(f"expected a non-negative number of images, got {n}")
    _check_n_shapes(n_shapes)
    _check_clutter(clutter)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    label_maps = np.empty((n, size, size), dtype=np.uint8)
    multi_hot = np.empty((n, _N_CLASSES), dtype=np.float32)
    counts = np.empty(n, dtype=np.int64)
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        scene = generate_scene(
            np.random.default_rng(child), size=size, n_shapes=n_shapes, clutter=clutter
        )
        images[i] = scene.image
        label_maps[i] = scene.label_map
        multi_hot[i] = scene.multi_hot
        counts[i] = len(scene.shape_labels)
    return {"images": images, "label_maps": label_maps, "multi_hot": multi_hot, "n_shapes": counts}


# --------------------------------------------------------------------------- helpers


def _check_label(value: int, name: str) -> int:
    if not 0 <= int(value) < _N_CLASSES:
        raise ValueError(f"expected {name} in [0, {_N_CLASSES - 1}], got {value}")
    return int(value)


def _check_clutter(clutter: float) -> None:
    if not 0.0 <= clutter <= 1.0:
        raise ValueError(f"expected clutter in [0, 1], got {clutter}")


def _check_n_shapes(n_shapes: int | tuple[int, int] | None) -> tuple[int, int]:
    """The inclusive ``(low, high)`` range of shapes per scene that ``n_shapes`` asks for."""
    if n_shapes is None:
        low, high = _SCENE_SHAPES
    elif isinstance(n_shapes, (int, np.integer)):
        low = high = int(n_shapes)
    else:
        low, high = (int(v) for v in n_shapes)
    if not 0 <= low <= high <= _N_CLASSES:
        raise ValueError(
            f"expected a number of shapes (or a range low <= high) in [0, {_N_CLASSES}] "
            f"(shape classes do not repeat within a scene), got {n_shapes}"
        )
    return low, high


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.random(3).astype(np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x, y


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours ``a`` and ``b`` (shape (3,)) by weights ``t`` (H, W) in [0, 1]."""
    return a[None, None, :] * (1.0 - t[..., None]) + b[None, None, :] * t[..., None]


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _grid(size)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    t = x * np.cos(angle) + y * np.sin(angle)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    return _mix(_random_colour(rng), _random_colour(rng), t)


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _grid(size)
    angle = rng.uniform(0.0, np.pi)
    period = rng.uniform(5.0, 20.0)
    phase = 2.0 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 6.3)
    wave = 0.5 + 0.5 * np.sin(phase)
    if rng.random() < 0.5:  # hard-edged bars instead of a smooth sine
        wave = (wave > rng.uniform(0.3, 0.7)).astype(np.float32)
    return _mix(_random_colour(rng), _random_colour(rng), wave)


def _value_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    cells = int(rng.integers(3, 13))
    coarse = _to_uint8(rng.random((cells, cells, 3)))
    smooth = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(smooth, dtype=np.float32) / 255.0


def _blotches(rng: np.random.Generator, size: int) -> np.ndarray:
    base = _to_uint8(np.broadcast_to(_random_colour(rng), (size, size, 3)))
    image = Image.fromarray(np.ascontiguousarray(base))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 11))):
        cx, cy = rng.uniform(-0.1, 1.1, size=2) * size
        rx, ry = rng.uniform(0.05, 0.25, size=2) * size
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=tuple(rng.integers(0, 256, 3)))
    # Soft edges, so a blotch never looks like a crisp (class) disk.
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(2.5, 6.0)) * size / 96))
    return np.asarray(image, dtype=np.float32) / 255.0


_TEXTURES = (_stripes, _value_noise, _blotches, _gradient)


def _background(rng: np.random.Generator, size: int, clutter: float) -> np.ndarray:
    """Textured background: a colour gradient overlaid with one or two random textures."""
    canvas = _gradient(rng, size)
    for index in rng.choice(len(_TEXTURES), size=int(rng.integers(1, 3)), replace=False):
        texture = _TEXTURES[int(index)](rng, size)
        canvas = canvas + rng.uniform(0.35, 0.85) * (texture - canvas)
    # Keep the texture busy but a notch below the object's contrast.
    mean = canvas.mean(axis=(0, 1), keepdims=True)
    contrast = rng.uniform(0.45, 0.85) * (0.2 + 0.8 * clutter)
    canvas = mean + contrast * (canvas - mean)
    # Fine-grained pixel noise, of random strength.
    canvas = canvas + rng.normal(0.0, rng.uniform(0.0, 0.05), size=canvas.shape)
    return canvas.astype(np.float32)


def _draw_distractors(rng: np.random.Generator, image: Image.Image, clutter: float) -> None:
    """Draw strokes that are not class shapes: segments, dots, rings/arcs and scribbles."""
    size = image.size[0]
    draw = ImageDraw.Draw(image)
    scale = size / 96.0
    for _ in range(round(int(rng.integers(4, 10)) * clutter)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(4))
        if kind == 0:  # line segment
            start = rng.uniform(0, size, 2)
            length = rng.uniform(10, 50) * scale
            angle = rng.uniform(0.0, 2.0 * np.pi)
            end = start + length * np.array([np.cos(angle), np.sin(angle)])
            width = max(1, round(rng.uniform(1, 3.5) * scale))
            draw.line([tuple(start), tuple(end)], fill=colour, width=width)
        elif kind == 1:  # a few small dots
            centre = rng.uniform(0, size, 2)
            for _ in range(int(rng.integers(1, 6))):
                cx, cy = centre + rng.normal(0.0, 6.0 * scale, 2)
                r = rng.uniform(1.0, 2.5) * scale
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif kind == 2:  # thin ring or arc (hollow, so not a "circle")
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(4.0, 13.0) * scale
            start = rng.uniform(0.0, 360.0)
            extent = 360.0 if rng.random() < 0.4 else rng.uniform(60.0, 300.0)
            width = max(1, round(rng.uniform(1, 2.5) * scale))
            draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + extent, colour, width)
        else:  # scribble: a short random walk
            point = rng.uniform(0, size, 2)
            heading = rng.uniform(0.0, 2.0 * np.pi)
            points = [tuple(point)]
            for _ in range(int(rng.integers(4, 9))):
                heading += rng.normal(0.0, 1.0)
                point = point + rng.uniform(3.0, 9.0) * scale * np.array(
                    [np.cos(heading), np.sin(heading)]
                )
                points.append(tuple(point))
            width = max(1, round(rng.uniform(1, 2.5) * scale))
            draw.line(points, fill=colour, width=width, joint="curve")


def _regular_polygon(
    cx: float, cy: float, radius: float, n_vertices: int, rotation: float
) -> np.ndarray:
    angles = rotation + 2.0 * np.pi * np.arange(n_vertices) / n_vertices
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _outline(label: int, cx: float, cy: float, extent: float, rng: np.random.Generator):
    """Vertices (or ellipse box for a circle) of shape ``label`` of nominal size ``extent``."""
    rotation = rng.uniform(0.0, 2.0 * np.pi)
    name = CLASS_NAMES[label]
    if name == "circle":
        r = 0.45 * extent
        return [cx - r, cy - r, cx + r, cy + r]
    if name == "square":  # side 0.8 * extent
        return _regular_polygon(cx, cy, 0.8 * extent / np.sqrt(2.0), 4, rotation)
    if name == "triangle":  # equilateral, side about 0.95 * extent
        return _regular_polygon(cx, cy, 0.55 * extent, 3, rotation)
    # star: five points alternating between the outer and a random inner radius
    outer = _regular_polygon(cx, cy, 0.55 * extent, 5, rotation)
    inner_radius = 0.55 * extent * rng.uniform(0.38, 0.5)
    inner = _regular_polygon(cx, cy, inner_radius, 5, rotation + np.pi / 5.0)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


def _bounding_radius(label: int, extent: float) -> float:
    return {"circle": 0.45, "square": 0.8 / np.sqrt(2.0)}.get(CLASS_NAMES[label], 0.55) * extent


def _shape_mask(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask of one randomly sized, placed and rotated class shape."""
    _, _, keep_out = marker_box(size)
    extent = rng.uniform(*_SHAPE_SIZE_RANGE) * size
    radius = _bounding_radius(label, extent)
    low, high = radius + 1.0, size - radius - 2.0
    while True:  # the bounding circle must stay clear of the marker corner
        cx, cy = rng.uniform(low, high, 2)
        dx, dy = max(cx - keep_out, 0.0), max(cy - keep_out, 0.0)
        if dx * dx + dy * dy > (radius + 1.0) ** 2:
            break
    return _rasterise(label, _outline(label, cx, cy, extent, rng), size)


def _rasterise(label: int, outline, size: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask of a shape ``outline`` (from :func:`_outline`)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if CLASS_NAMES[label] == "circle":
        draw.ellipse(outline, fill=255)
    else:
        draw.polygon([tuple(p) for p in outline], fill=255)
    return np.asarray(canvas) > 0


def _place(
    rng: np.random.Generator,
    size: int,
    label: int,
    placed: list[tuple[float, float, float]],
    gap: float,
) -> tuple[float, float, float, float]:
    """Centre, extent and bounding radius for a new scene shape whose bounding circle keeps
    ``gap`` px from the ``placed`` ones (centre x, centre y, radius); shrinks it if it must."""
    extent = rng.uniform(*_SCENE_SIZE_RANGE) * size
    while True:
        radius = _bounding_radius(label, extent)
        low, high = radius + 1.0, size - radius - 2.0
        for _ in range(_PLACEMENT_TRIES):
            cx, cy = rng.uniform(low, high, 2)
            if all((cx - x) ** 2 + (cy - y) ** 2 >= (radius + r + gap) ** 2 for x, y, r in placed):
                return float(cx), float(cy), float(extent), float(radius)
        extent *= 0.85


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour that stands out from most of the ``(N, 3)`` background pixels ``under``."""
    best, best_score = _random_colour(rng), -1.0
    for _ in range(32):
        candidate = _random_colour(rng)
        distance = np.linalg.norm(under - candidate[None, :], axis=1)
        score = float(np.percentile(distance, 10)) if distance.size else 1.0
        if score > best_score:
            best, best_score = candidate, score
        if score >= _MIN_CONTRAST:
            break
    return best


def _shade(rng: np.random.Generator, colour: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Colour of each masked pixel: ``colour`` with a gentle linear shading ramp, shape (N, 3)."""
    x, y = _grid(mask.shape[0])
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = x[mask] * np.cos(angle) + y[mask] * np.sin(angle)
    ramp = (ramp - ramp.mean()) / max(float(np.ptp(ramp)), 1.0)  # in [-1, 1] / 2
    return colour[None, :] * (1.0 + rng.uniform(0.0, 0.25) * ramp[:, None])
