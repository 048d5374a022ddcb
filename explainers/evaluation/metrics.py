"""Scores of an explanation: against ground truth (pointing game, energy in the mask) and against
the model itself (deletion and insertion curves), per sample and aggregated over images.

The per-sample functions score one map on one image; :func:`evaluate_maps` scores several maps of
one image with one protocol and adds a random-map row (the chance level); :func:`aggregate`
averages such tables over images (the per-sample + aggregate split follows xplique's metrics).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from explainers.core.fills import blurred
from explainers.core.maps import resize_map
from explainers.errors import ParameterError
from explainers.io.images import check_image_array

if TYPE_CHECKING:
    from explainers.core.specs import ProgressCallback
    from explainers.io.models import ModelBundle


def _check(attribution: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    attribution = np.asarray(attribution, np.float64)
    mask = np.asarray(mask, bool)
    if attribution.shape != mask.shape:
        raise ValueError(
            f"attribution shape {attribution.shape} does not match mask shape {mask.shape}"
        )
    return attribution, mask


def pointing_game(attribution: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """Whether the map's maximum falls on the object (Zhang et al. 2018, "Top-down neural
    attention by excitation backprop"), optionally within ``tolerance`` pixels of it.

    Ties are broken by the first maximum in row-major order, so a constant map is not rewarded.
    """
    attribution, mask = _check(attribution, mask)
    row, col = np.unravel_index(int(np.argmax(attribution)), attribution.shape)
    if tolerance <= 0:
        return bool(mask[row, col])
    r0, r1 = max(0, row - tolerance), row + tolerance + 1
    c0, c1 = max(0, col - tolerance), col + tolerance + 1
    return bool(mask[r0:r1, c0:c1].any())


def energy_in_mask(attribution: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive attribution that lies on the object, in [0, 1] (the
    "energy-based pointing game" of Score-CAM, Wang et al. 2020). 0 for a map with no positive
    value. A map spread uniformly scores the object's area fraction (chance level)."""
    attribution, mask = _check(attribution, mask)
    positive = np.maximum(attribution, 0.0)
    total = positive.sum()
    return float(positive[mask].sum() / total) if total > 0 else 0.0


# ------------------------------------------------------------------------------------------------
# Deletion and insertion (Petsiuk, Das & Saenko, "RISE: Randomized input sampling for explanation
# of black-box models", BMVC 2018, §4.1)
# ------------------------------------------------------------------------------------------------
CurveKind = Literal["deletion", "insertion"]
Substrate = Literal["blur", "constant"]
SUBSTRATES: tuple[str, ...] = ("blur", "constant")


@dataclass(frozen=True, eq=False)
class Curve:
    """A deletion or insertion curve of one map on one image.

    Attributes
    ----------
    kind
        ``"deletion"`` (pixels replaced by the substrate, most important first; lower AUC is
        better) or ``"insertion"`` (pixels of the image put onto the substrate, most important
        first; higher AUC is better).
    fractions
        float64 (n_points,): share of the model-input pixels removed / inserted, from 0 to 1.
    probabilities
        float64 (n_points,): the target class's probability at each point, in [0, 1].
    auc
        Trapezoid area under ``probabilities`` over ``fractions`` ∈ [0, 1], in [0, 1].
    target
        The class index whose probability is tracked.
    substrate
        ``"blur"`` or ``"constant"``; ``value`` is the constant (model-input space) if used.
    """

    kind: str
    fractions: np.ndarray
    probabilities: np.ndarray
    auc: float
    target: int
    substrate: str
    value: float | None = None


def trapezoid_auc(fractions: np.ndarray, values: np.ndarray) -> float:
    """∫ values d(fraction) by the trapezoid rule (np.trapezoid needs NumPy ≥ 2)."""
    fractions = np.asarray(fractions, np.float64)
    values = np.asarray(values, np.float64)
    return float(np.sum(np.diff(fractions) * (values[1:] + values[:-1]) / 2.0))


def random_map(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A baseline "explanation": i.i.d. uniform values, float32 (H, W) in [0, 1).

    Ordering pixels by it is a uniformly random order, so its deletion/insertion AUCs and its
    pointing-game rate are what chance achieves; a real method should beat it.
    """
    height, width = (int(v) for v in shape)
    if height < 1 or width < 1:
        raise ParameterError(f"random_map needs a shape of at least (1, 1), got {tuple(shape)}")
    return np.random.default_rng(seed).random((height, width), dtype=np.float64).astype(np.float32)


def pixel_order(attribution: np.ndarray, seed: int = 0, *, absolute: bool = False) -> np.ndarray:
    """Flat pixel indices (h·w,) from most to least important, int64.

    Ties are broken by a random permutation drawn from ``seed`` and then a stable sort, so the
    order is deterministic and a constant map (all ties) yields a uniformly random order: it
    scores what chance scores instead of the reading order (which would reward or punish it
    depending on where the object happens to be).
    """
    values = np.asarray(attribution, np.float64).ravel()
    if absolute:
        values = np.abs(values)
    shuffled = np.random.default_rng(seed).permutation(values.size)
    return shuffled[np.argsort(-values[shuffled], kind="stable")]


def _substrate(
    bundle: ModelBundle, pixels: np.ndarray, substrate: str, value: float, blur_sigma: float | None
) -> np.ndarray:
    """The "no information" input, float32 (h, w, C) in model-input space."""
    if substrate == "constant":
        return np.full((*pixels.shape[:2], bundle.channels), value, np.float32)
    sigma = blur_sigma if blur_sigma is not None else default_blur_sigma(pixels.shape[:2])
    return bundle.preprocess(blurred(pixels, sigma)).astype(np.float32)


def _step_counts(n_pixels: int, step: int | float) -> np.ndarray:
    """Cumulative pixel counts 0, s, 2s, …, n for a step in pixels (int) or a fraction (float)."""
    if isinstance(step, bool) or not isinstance(step, int | float | np.integer | np.floating):
        raise ParameterError(f"step must be a pixel count or a fraction in (0, 1], got {step!r}")
    if isinstance(step, int | np.integer):
        if step < 1:
            raise ParameterError(f"step must be at least 1 pixel, got {step}")
        size = int(step)
    else:
        if not 0 < float(step) <= 1:
            raise ParameterError(f"step as a fraction must be in (0, 1], got {step!r}")
        size = max(1, round(float(step) * n_pixels))
    counts = np.arange(0, n_pixels + size, size)
    counts[-1] = min(counts[-1], n_pixels)
    counts = np.unique(np.minimum(counts, n_pixels))
    if len(counts) > MAX_CURVE_POINTS:
        raise ParameterError(
            f"step {step!r} gives {len(counts)} curve points for {n_pixels} pixels; at most "
            f"{MAX_CURVE_POINTS} are allowed (use a larger step)"
        )
    return counts


#: Upper bound on the forward passes one curve may cost.
MAX_CURVE_POINTS = 2_000


def default_blur_sigma(size: tuple[int, int]) -> float:
    """σ of the blur substrate in pixels: 1/16 of the longer input side (6 px at 96, 14 at 224).

    RISE's insertion blur is σ = 5 px at 224 px. On the 96-px demo images that σ (2 px) leaves the
    shapes recognisable, so the blurred start already scores high and the curves have little
    range (random-order insertion AUC 0.84 on 8 fresh images); σ = side/16 removes the shapes
    (0.55) while keeping colours and layout. Pass ``blur_sigma`` for the paper's value.
    """
    return max(int(size[0]), int(size[1])) / 16.0


def perturbation_curve(
    bundle: ModelBundle,
    image: np.ndarray,
    attribution: np.ndarray,
    kind: CurveKind,
    *,
    target: int | str | None = None,
    step: int | float = 0.01,
    substrate: Substrate = "blur",
    value: float = 0.0,
    blur_sigma: float | None = None,
    absolute: bool = False,
    seed: int = 0,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
) -> Curve:
    """Deletion or insertion curve of ``attribution`` for ``image`` (Petsiuk et al. 2018, §4.1).

    Works at the model's input resolution: the image is resized as for :func:`explainers.explain`
    and the map is resized (bilinear) to that size. Pixels are ranked by decreasing attribution
    (ties: see :func:`pixel_order`). At point k the first ``counts[k]`` pixels are replaced by the
    substrate (deletion) or copied from the image onto the substrate (insertion), all channels of
    a pixel at once, and the target's probability is read. Every point goes through
    ``bundle.runner.forward`` in batches of ``batch_size``.

    Parameters
    ----------
    bundle
        From :func:`explainers.load_model`.
    image
        uint8 (H, W, 3) of any size.
    attribution
        float map (h, w) of any size (typically ``Explanation.attribution``); larger = more
        important for the target.
    kind
        ``"deletion"`` or ``"insertion"``.
    target
        Class index or name; None: the top-1 class of ``image``.
    step
        Pixels per point (int ≥ 1) or a fraction of the pixels (float in (0, 1]); 0.01 gives 101
        points. RISE used 224 pixels (one row's worth) per step on 224×224 images.
    substrate
        ``"blur"`` (default): the image blurred with a Gaussian of ``blur_sigma`` pixels (default
        :func:`default_blur_sigma`); ``"constant"``: the model-input value ``value`` (0 is black for
        0–1 preprocessing, the mean colour for caffe/torch, mid-gray for −1–1). RISE deletes to
        black; we default to blur for both curves because a black fill keeps the object's
        silhouette: on the demo data black deletion ranks an oracle map (the true object mask)
        *below* a random map (deletion AUC 0.66 vs 0.25 on 6 fresh images, tests/test_metrics.py),
        since random black specks confuse the model sooner than a black shape does. The default
        blur ranks them correctly (0.45 vs 0.67).
    absolute
        Rank by |attribution| instead of the signed value.
    seed
        Seed of the tie-breaking permutation.

    Returns
    -------
    Curve
    """
    from explainers.explanation import resolve_target
    from explainers.targets import bind

    if kind not in ("deletion", "insertion"):
        raise ParameterError(f"kind must be 'deletion' or 'insertion', got {kind!r}")
    if substrate not in SUBSTRATES:
        raise ParameterError(
            f"unknown substrate {substrate!r}; choose one of {', '.join(SUBSTRATES)}"
        )
    if not math.isfinite(float(value)):
        raise ParameterError(f"value must be a finite number, got {value!r}")
    if blur_sigma is not None and not float(blur_sigma) > 0:
        raise ParameterError(f"blur_sigma must be a positive number of pixels, got {blur_sigma!r}")
    if int(batch_size) < 1:
        raise ParameterError(f"batch_size must be at least 1, got {batch_size!r}")
    attribution = np.asarray(attribution, np.float32)
    if attribution.ndim != 2:
        raise ParameterError(
            f"expected a 2-D attribution map (h, w), got shape {attribution.shape}"
        )
    if not np.all(np.isfinite(attribution)):
        raise ParameterError("the attribution map holds NaN or infinite values")

    image = check_image_array(image)
    resized = bundle.resize(image)
    x = bundle.preprocess(resized).astype(np.float32)  # (h, w, C)
    height, width = x.shape[:2]
    if bundle.view is None:
        bound = bind(bundle, image, target)
        bundle, target_index = bound.bundle, bound.index
    else:
        target_index = resolve_target(bundle, np.zeros(bundle.n_classes), target)
    runner = bundle.runner

    ranking = np.empty(height * width, np.int64)
    order = pixel_order(resize_map(attribution, (height, width)), seed, absolute=absolute)
    ranking[order] = np.arange(order.size)  # ranking[p] = position of pixel p in the order
    counts = _step_counts(order.size, step)
    base = _substrate(bundle, resized, substrate, float(value), blur_sigma)
    # Deletion moves from the image towards the substrate, insertion the other way round.
    start, end = (x, base) if kind == "deletion" else (base, x)

    probabilities = np.empty(len(counts), np.float64)
    chunk = max(1, int(batch_size))
    for first in range(0, len(counts), chunk):
        part = counts[first : first + chunk]
        changed = (ranking[None, :] < part[:, None]).reshape(len(part), height, width, 1)
        inputs = np.where(changed, end[None], start[None]).astype(np.float32)
        _, probs = runner.forward(inputs, batch_size=chunk)
        probabilities[first : first + len(part)] = probs[:, target_index]
        if progress is not None:
            done = first + len(part)
            progress(done / len(counts), f"{kind}: {done}/{len(counts)} points")
    fractions = counts / float(order.size)
    return Curve(
        kind=kind,
        fractions=fractions,
        probabilities=probabilities,
        auc=trapezoid_auc(fractions, probabilities),
        target=target_index,
        substrate=substrate,
        value=float(value) if substrate == "constant" else None,
    )


def deletion_curve(
    bundle: ModelBundle, image: np.ndarray, attribution: np.ndarray, **kwargs: Any
) -> Curve:
    """Deletion curve: remove the most important pixels first; a good map has a LOW AUC.

    See :func:`perturbation_curve` for the parameters (default substrate: blurred image).
    """
    return perturbation_curve(bundle, image, attribution, "deletion", **kwargs)


def insertion_curve(
    bundle: ModelBundle, image: np.ndarray, attribution: np.ndarray, **kwargs: Any
) -> Curve:
    """Insertion curve: insert the most important pixels first; a good map has a HIGH AUC.

    See :func:`perturbation_curve` for the parameters (default substrate: blurred image).
    """
    return perturbation_curve(bundle, image, attribution, "insertion", **kwargs)


# ------------------------------------------------------------------------------------------------
# Several maps on one image (per sample) and over many images (aggregate)
# ------------------------------------------------------------------------------------------------
RANDOM_ROW = "random"


@dataclass(frozen=True, eq=False)
class MapScores:
    """The scores of one map on one image: a row of the comparison table.

    ``pointing`` and ``energy`` are None when no ground-truth mask was given.
    """

    name: str
    deletion: Curve
    insertion: Curve
    pointing: bool | None = None
    energy: float | None = None

    @property
    def deletion_auc(self) -> float:
        return self.deletion.auc

    @property
    def insertion_auc(self) -> float:
        return self.insertion.auc

    def as_row(self) -> dict[str, Any]:
        """Plain values for a table: name, deletion_auc, insertion_auc, pointing, energy."""
        return {
            "name": self.name,
            "deletion_auc": self.deletion_auc,
            "insertion_auc": self.insertion_auc,
            "pointing": self.pointing,
            "energy": self.energy,
        }


def evaluate_maps(
    bundle: ModelBundle,
    image: np.ndarray,
    maps: Mapping[str, Any],
    *,
    target: int | str | None = None,
    mask: np.ndarray | None = None,
    include_random: bool = True,
    step: int | float = 0.02,
    deletion_substrate: Substrate = "blur",
    insertion_substrate: Substrate = "blur",
    value: float = 0.0,
    blur_sigma: float | None = None,
    absolute: bool = False,
    tolerance: int = 0,
    seed: int = 0,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
) -> list[MapScores]:
    """Score several maps of one image with the same protocol (the per-sample form).

    Parameters
    ----------
    maps
        ``{name: map}``; a map is a float (h, w) array or an :class:`~explainers.Explanation`
        (its ``attribution`` is used).
    mask
        Optional ground-truth object mask, bool (H, W) at the image's size: adds the pointing game
        (with ``tolerance`` pixels) and the energy in the mask. Maps of another size are resized
        to the mask's size for these two scores.
    include_random
        Append a ``"random"`` row (:func:`random_map` with ``seed``): the chance level to rank the
        methods against.

    Returns
    -------
    list of MapScores
        One row per map in the order given, then the random row.
    """
    image = check_image_array(image)
    named: dict[str, np.ndarray] = {}
    for name, value_or_explanation in maps.items():
        raw = getattr(value_or_explanation, "attribution", value_or_explanation)
        named[str(name)] = np.asarray(raw, np.float32)
    if include_random:
        if RANDOM_ROW in named:
            raise ParameterError(
                f"a map is named {RANDOM_ROW!r}, the name of the random baseline row; rename it "
                "or pass include_random=False"
            )
        named[RANDOM_ROW] = random_map(image.shape[:2], seed)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != image.shape[:2]:
            raise ParameterError(
                f"the mask has shape {mask.shape} but the image is {image.shape[:2]}"
            )
    if bundle.view is None:
        from explainers.targets import bind, resize_mask

        bound = bind(bundle, image, target)
        bundle, target = bound.bundle, bound.index
        if mask is None and bound.region is not None:
            # A segmentation region is its own ground truth: the pixels the model called the
            # class (or the box, or the component) are where the evidence should be.
            mask = resize_mask(bound.region, image.shape[:2])
    elif target is None:
        _, probs = bundle.runner.predict(bundle.model_input(image))
        target = int(np.argmax(probs[0]))
    common = {
        "target": target,
        "step": step,
        "value": value,
        "blur_sigma": blur_sigma,
        "absolute": absolute,
        "seed": seed,
        "batch_size": batch_size,
    }
    rows = []
    for i, (name, attribution) in enumerate(named.items()):

        def sub(fraction: float, message: str, i: int = i, name: str = name) -> None:
            if progress is not None:
                progress((i + fraction) / len(named), f"{name}: {message}")

        halves = [
            perturbation_curve(
                bundle,
                image,
                attribution,
                kind,
                substrate=substrate,
                progress=lambda f, m, k=k: sub((k + f) / 2, m),
                **common,
            )
            for k, (kind, substrate) in enumerate(
                (("deletion", deletion_substrate), ("insertion", insertion_substrate))
            )
        ]
        pointing = energy = None
        if mask is not None:
            on_mask = resize_map(attribution, mask.shape)
            pointing = pointing_game(on_mask, mask, tolerance=tolerance)
            energy = energy_in_mask(on_mask, mask)
        rows.append(MapScores(name, halves[0], halves[1], pointing, energy))
    return rows


@dataclass(frozen=True)
class AggregateScores:
    """Means of one map's scores over images (the aggregate form), with their standard errors."""

    name: str
    n_images: int
    deletion_auc: float
    deletion_auc_sem: float
    insertion_auc: float
    insertion_auc_sem: float
    pointing: float | None
    energy: float | None


def _mean_sem(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, np.float64)
    sem = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else float("nan")
    return float(array.mean()), sem


def aggregate(per_image: Iterable[Sequence[MapScores]]) -> list[AggregateScores]:
    """Average :func:`evaluate_maps` results over images, per map name (first-seen order).

    Pointing and energy are averaged over the images that had a mask (None if none had).
    """
    grouped: dict[str, list[MapScores]] = {}
    for rows in per_image:
        for row in rows:
            grouped.setdefault(row.name, []).append(row)
    if not grouped:
        raise ParameterError("aggregate() needs the scores of at least one image")
    out = []
    for name, rows in grouped.items():
        deletion, deletion_sem = _mean_sem([r.deletion_auc for r in rows])
        insertion, insertion_sem = _mean_sem([r.insertion_auc for r in rows])
        pointing = [float(r.pointing) for r in rows if r.pointing is not None]
        energy = [r.energy for r in rows if r.energy is not None]
        out.append(
            AggregateScores(
                name=name,
                n_images=len(rows),
                deletion_auc=deletion,
                deletion_auc_sem=deletion_sem,
                insertion_auc=insertion,
                insertion_auc_sem=insertion_sem,
                pointing=float(np.mean(pointing)) if pointing else None,
                energy=float(np.mean(energy)) if energy else None,
            )
        )
    return out
