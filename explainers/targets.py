"""What is explained: one scalar of the model's output, as data.

A :class:`Target` names the scalar every method, metric, sanity check and attack explains:

* a class of a softmax classifier (its logit for gradient and CAM methods, its probability for
  perturbation methods: as before, a class index or name is enough);
* any label of a multi-label sigmoid output, not only the top one
  (:func:`explainers.explanation.explain_each` explains several labels, one map each);
* a regression output, towards higher values (the output itself) or lower ones (its negation);
* a region of a segmentation output: the sum (Seg-Grad-CAM, Vinogradova et al. 2020) or the mean
  of one class's per-pixel logits over a mask — the class's predicted pixels, the connected
  component at a pixel, a box, the whole image, or any mask — with the region's mean class
  probability for perturbation methods;
* one output of a multi-output model (``output=``).

:func:`bind` turns a target into a *targeted bundle* (a view of the model whose class scores are
the target's, see :meth:`explainers.io.models.ModelBundle.targeted`) and a class index, so a new
kind of target never touches a method. The text form (``--target`` on the command line) is
parsed by :meth:`Target.parse`; see :data:`SYNTAX`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from explainers.errors import ParameterError

if TYPE_CHECKING:
    from explainers.io.models import ModelBundle

RegionHow = Literal["predicted", "component", "box", "all", "mask"]
Reduce = Literal["sum", "mean"]
Direction = Literal["increase", "decrease"]

#: The ``--target`` syntax, for help texts and error messages.
SYNTAX = (
    "a class index or name ('3', 'circle'); or KIND:NAME[:OPTION…] with KIND one of class, "
    "label, value (regression) or region (segmentation), and options 'lower' (regression: what "
    "decreases the value), 'mean' (region: mean instead of sum of the logits), 'at=X,Y' "
    "(region: the connected component of the class at pixel X,Y), 'box=X0,Y0,X1,Y1' (region: "
    "a box, in image pixels), 'all' (region: the whole image) and 'output=N' (which output of "
    "a multi-output model). Examples: label:square, value:0:lower, region:circle, "
    "region:star:at=40,52, region:circle:box=10,10,50,50:mean"
)
#: Class names a segmentation model's background usually has; the default region skips them.
BACKGROUND_NAMES = ("background", "bg", "void", "none", "unlabeled", "unlabelled")


@dataclass(frozen=True, eq=False)
class Region:
    """Where on a segmentation output a target reads its class's logits.

    ``point`` is (x, y) and ``box`` (x0, y0, x1, y1), both in pixels of the image being explained
    (any size; they are scaled to the output's grid). ``mask`` is a bool array of any size,
    resized (nearest) to the grid.
    """

    how: RegionHow = "predicted"
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None

    def text(self) -> str:
        if self.how == "component" and self.point is not None:
            return f"the connected component at ({self.point[0]:.0f}, {self.point[1]:.0f})"
        if self.how == "box" and self.box is not None:
            x0, y0, x1, y1 = self.box
            return f"the box ({x0:.0f}, {y0:.0f})–({x1:.0f}, {y1:.0f})"
        return {
            "predicted": "its predicted pixels",
            "all": "the whole image",
            "mask": "the given mask",
        }.get(self.how, self.how)


@dataclass(frozen=True, eq=False)
class Target:
    """The scalar to explain (see the module docstring).

    ``unit`` is a class, label or regression output, by index or name; None picks the model's
    top class or label (regression: output 0; segmentation: the class at ``region.point``, else
    the non-background class with the most predicted pixels).
    """

    unit: int | str | None = None
    region: Region | None = None
    reduce: Reduce = "sum"
    direction: Direction = "increase"
    output: int | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """A target from its text form (:data:`SYNTAX`)."""
        text = str(text).strip()
        if not text:
            raise ParameterError(f"empty target; a target is {SYNTAX}")
        if ":" not in text:
            return cls(unit=_unit(text))
        kind, *rest = text.split(":")
        kind = kind.strip().lower()
        if kind not in ("class", "label", "value", "region") or not rest:
            raise ParameterError(f"cannot read the target {text!r}; a target is {SYNTAX}")
        name, options = rest[0].strip(), [o.strip() for o in rest[1:] if o.strip()]
        unit: int | str | None = _unit(name) if name and name != "*" else None
        region = Region("predicted") if kind == "region" else None
        reduce: Reduce = "sum"
        direction: Direction = "increase"
        output = None
        for option in options:
            key, _, value = option.partition("=")
            key = key.lower()
            if key == "lower" and not value:
                direction = "decrease"
            elif key == "higher" and not value:
                direction = "increase"
            elif key in ("mean", "sum") and not value:
                reduce = key  # type: ignore[assignment]
            elif key == "all" and not value:
                region = Region("all")
            elif key == "at":
                region = Region("component", point=_numbers(value, 2, option))  # type: ignore[arg-type]
            elif key == "box":
                region = Region("box", box=_numbers(value, 4, option))  # type: ignore[arg-type]
            elif key == "output":
                output = int(_numbers(value, 1, option)[0])
            else:
                raise ParameterError(
                    f"unknown target option {option!r} in {text!r}; a target is {SYNTAX}"
                )
        if region is not None and kind != "region":
            raise ParameterError(
                f"{text!r}: 'at=', 'box=' and 'all' choose a region; start the target with "
                "'region:' (segmentation models)"
            )
        if direction == "decrease" and kind != "value":
            raise ParameterError(
                f"{text!r}: 'lower' applies to regression outputs (value:…); for a class, read "
                "the map's negative values or explain another class"
            )
        return cls(unit=unit, region=region, reduce=reduce, direction=direction, output=output)


def _unit(text: str) -> int | str:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _numbers(value: str, count: int, option: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise ParameterError(f"target option {option!r} needs {count} comma-separated numbers")
    return numbers


def as_target(target: Target | int | str | None) -> Target:
    """Anything ``explain(target=…)`` accepts, as a :class:`Target`."""
    if isinstance(target, Target):
        return target
    if target is None:
        return Target()
    if isinstance(target, str):
        return Target.parse(target)
    if isinstance(target, bool) or not isinstance(target, int | np.integer):
        raise ParameterError(f"target must be a class index, a name or a Target, got {target!r}")
    return Target(unit=int(target))


@dataclass(frozen=True, eq=False)
class Bound:
    """A target resolved for one model and image: the bundle to explain (a targeted view, or the
    model itself), the class index in it, and what is explained in words."""

    bundle: ModelBundle
    index: int
    label: str
    text: str
    task: str
    #: The region, bool (h_out, w_out) on the segmentation output's grid; None otherwise.
    region: np.ndarray | None = None
    #: The predicted class map (h_out, w_out) of a segmentation model; None otherwise.
    predicted: np.ndarray | None = None
    reduce: str = "sum"
    direction: str = "increase"

    def describe(self) -> dict[str, Any]:
        """Plain facts for an explanation's extras (JSON-friendly)."""
        facts: dict[str, Any] = {
            "task": self.task,
            "label": self.label,
            "text": self.text,
            "reduce": self.reduce,
            "direction": self.direction,
        }
        if self.region is not None:
            facts["region_pixels"] = int(self.region.sum())
            facts["grid"] = [int(d) for d in self.region.shape]
        return facts


def unit_index(bundle: ModelBundle, unit: int | str, what: str | None = None) -> int:
    """The index of a class, label or output named or numbered ``unit`` in ``bundle``."""
    what = what or {"multilabel": "label", "regression": "output"}.get(bundle.task, "class")
    names = bundle.class_names
    if isinstance(unit, str) and not unit.strip().lstrip("-").isdigit():
        if unit in names:
            return names.index(unit)
        lowered = [n.lower() for n in names]
        if unit.strip().lower() in lowered:
            return lowered.index(unit.strip().lower())
        plural = "classes" if what == "class" else f"{what}s"
        raise ParameterError(
            f"unknown {what} {unit!r}; the model's {plural} are {', '.join(names[:8])}"
            + ("…" if len(names) > 8 else "")
        )
    index = int(unit)
    if not 0 <= index < len(names):
        plural = "classes" if what == "class" else f"{what}s"
        raise ParameterError(
            f"{what} {index} is out of range: the model has {len(names)} {plural} "
            f"(0..{len(names) - 1})"
        )
    return index


def bind(bundle: ModelBundle, image: np.ndarray, target: Target | int | str | None) -> Bound:
    """Resolve ``target`` for ``bundle`` and the uint8 ``image`` (any size).

    Reads the model's prediction where the target depends on it (a top class, a segmentation's
    predicted pixels; memoised per input). Raises :class:`~explainers.errors.ParameterError`
    with what to do instead for a target the model's task does not have (a region of a
    classifier, a label that does not exist, a region with no pixels).
    """
    target = as_target(target)
    if target.output is not None:
        bundle = bundle.for_output(target.output)
    bundle = bundle.root
    task = bundle.task
    if target.region is not None and task != "segmentation":
        raise ParameterError(
            f"a region target needs a segmentation model; {bundle.name!r} is a {task} model. "
            f"Explain a {'label' if task == 'multilabel' else 'class'} instead."
        )
    if target.direction == "decrease" and task != "regression":
        raise ParameterError(
            f"'lower' applies to regression outputs; {bundle.name!r} is a {task} model"
        )
    if task == "segmentation":
        return _bind_region(bundle, image, target)
    if target.unit is None:
        if task == "regression":
            index = 0
        else:
            probs = bundle.predict(image)
            index = int(np.argmax(probs))
    else:
        index = unit_index(bundle, target.unit)
    label = bundle.class_names[index]
    if task == "regression":
        if target.direction == "decrease":
            from explainers.io.models import OutputView

            text = f"what decreases {label}"
            view = OutputView("lower", text=text)
            return Bound(bundle.targeted(view), index, label, text, task, direction="decrease")
        return Bound(bundle, index, label, f"what increases {label}", task)
    what = "label" if task == "multilabel" else "class"
    return Bound(bundle, index, label, f"{what} {label}", task)


def _bind_region(bundle: ModelBundle, image: np.ndarray, target: Target) -> Bound:
    from explainers.io.models import OutputView

    probs = bundle.segment(image)  # (h, w, K)
    predicted = np.argmax(probs, axis=-1)
    grid = predicted.shape
    region = target.region or Region("predicted")
    names = bundle.class_names
    height, width = image.shape[:2]
    point = None
    if region.how == "component":
        if region.point is None:
            raise ParameterError("a component region needs a point (x, y)")
        point = _to_grid(region.point, (height, width), grid)
    if target.unit is not None:
        index = unit_index(bundle, target.unit)
    elif point is not None:
        index = int(predicted[point[1], point[0]])
    else:
        index = default_segment_class(bundle, predicted)
    label = names[index]
    mask = region_mask(region, predicted, index, (height, width), names)
    if not mask.any():
        present = sorted(set(int(c) for c in np.unique(predicted)))
        raise ParameterError(
            f"the region is empty: the model predicts no '{label}' pixels "
            + ("in that box" if region.how == "box" else "in this image")
            + f" (predicted classes: {', '.join(names[c] for c in present)}). Pick a predicted "
            "class, draw a box, or use the whole image ('all')."
        )
    pixels = int(mask.sum())
    how = "sum" if target.reduce == "sum" else "mean"
    text = f"{how} of {label}'s logits over {region.text()} ({pixels} of {mask.size} output pixels)"
    view = OutputView(f"region_{how}", mask=mask.astype(np.float32), text=text)
    return Bound(bundle.targeted(view), index, label, text, "segmentation", mask, predicted, how)


def default_segment_class(bundle: ModelBundle, predicted: np.ndarray) -> int:
    """The class with the most predicted pixels, skipping a background class when any other
    class is predicted."""
    counts = np.bincount(predicted.ravel(), minlength=bundle.n_classes)
    order = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    for c in order:
        if bundle.class_names[c].strip().lower() not in BACKGROUND_NAMES:
            return c
    return order[0]


def region_mask(
    region: Region,
    predicted: np.ndarray,
    index: int,
    image_hw: tuple[int, int],
    names: tuple[str, ...] | None = None,
) -> np.ndarray:
    """The pixels ``region`` selects for class ``index``, bool on the grid of ``predicted``
    (a segmentation's predicted class map) for an image of ``image_hw`` (points and boxes are
    in its pixels). What :func:`bind` reads, and what the dashboard previews (it needs no model).
    Raises ParameterError for a point on another class."""
    grid = predicted.shape
    point = None
    if region.how == "component":
        if region.point is None:
            raise ParameterError("a component region needs a point (x, y)")
        point = _to_grid(region.point, image_hw, grid)
    names = names or tuple(f"class {c}" for c in range(int(predicted.max(initial=0)) + 1))
    return _region_mask(region, predicted, index, point, image_hw, grid, names)


def _to_grid(
    point: tuple[float, float], image_hw: tuple[int, int], grid: tuple[int, int]
) -> tuple[int, int]:
    """(x, y) in image pixels → (column, row) on the output grid, clipped inside it."""
    x, y = point
    column = int(np.clip(np.floor(x * grid[1] / image_hw[1]), 0, grid[1] - 1))
    row = int(np.clip(np.floor(y * grid[0] / image_hw[0]), 0, grid[0] - 1))
    return column, row


def _region_mask(
    region: Region,
    predicted: np.ndarray,
    index: int,
    point: tuple[int, int] | None,
    image_hw: tuple[int, int],
    grid: tuple[int, int],
    names: tuple[str, ...],
) -> np.ndarray:
    if region.how == "predicted":
        return predicted == index
    if region.how == "all":
        return np.ones(grid, bool)
    if region.how == "box":
        if region.box is None:
            raise ParameterError("a box region needs (x0, y0, x1, y1)")
        x0, y0, x1, y1 = region.box
        sx, sy = grid[1] / image_hw[1], grid[0] / image_hw[0]
        c0, c1 = sorted((x0 * sx, x1 * sx))
        r0, r1 = sorted((y0 * sy, y1 * sy))
        mask = np.zeros(grid, bool)
        mask[
            max(0, int(np.floor(r0))) : min(grid[0], int(np.ceil(r1))),
            max(0, int(np.floor(c0))) : min(grid[1], int(np.ceil(c1))),
        ] = True
        return mask
    if region.how == "mask":
        if region.mask is None:
            raise ParameterError("a mask region needs a mask")
        given = np.asarray(region.mask).astype(bool)
        if given.ndim != 2:
            raise ParameterError(f"a region mask must be 2-D (height, width), got {given.shape}")
        return resize_mask(given, grid)
    if region.how == "component":
        assert point is not None
        from scipy import ndimage

        column, row = point
        if predicted[row, column] != index:
            raise ParameterError(
                f"the pixel at ({region.point[0]:.0f}, {region.point[1]:.0f}) is predicted "
                f"'{names[int(predicted[row, column])]}', not '{names[index]}': click inside "
                f"a predicted '{names[index]}' region, or leave the class to the click"
            )
        labelled, _ = ndimage.label(predicted == index, structure=np.ones((3, 3), int))
        return labelled == labelled[row, column]
    raise ParameterError(f"unknown region {region.how!r}")


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask (h, w) resized (nearest) to ``size`` = (H, W)."""
    from PIL import Image

    mask = np.asarray(mask, bool)
    if mask.shape == tuple(size):
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (int(size[1]), int(size[0])), Image.NEAREST
    )
    return np.asarray(resized) > 127


def fixed_target(explanation: Any) -> Target:
    """A target that explains the same scalar as ``explanation`` on another model with the same
    output (the sanity check's randomised copies): the same class and, for a region, the same
    mask rather than the copy's own predicted pixels."""
    facts = explanation.extras.get("target", {})
    region = explanation.extras.get("region")
    return Target(
        unit=int(explanation.target),
        region=None if region is None else Region("mask", mask=np.asarray(region, bool)),
        reduce=facts.get("reduce", "sum"),
        direction=facts.get("direction", "increase"),
    )
