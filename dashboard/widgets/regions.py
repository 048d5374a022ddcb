"""What a page explains when the model is not a one-class classifier: a region of a
segmentation (its class's predicted pixels, a clicked shape, a drawn box, the whole image), any
label of a multi-label model, a regression output towards higher or lower values.

Each picker returns the target's text form (``explainers.targets.SYNTAX``), which crosses to the
worker as plain data and is part of the explanation's cache key. The segmentation picker draws
the predicted mask over the image in a Plotly chart whose selection events give the click (a
point of an invisible grid laid over the image) or the box; the region chosen is previewed
before anything is computed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboard import service, state
from dashboard.service import LoadedImage, ModelSummary, Prediction
from dashboard.state import Page
from explainers import targets
from explainers.errors import ParameterError
from explainers.targets import Region

REGION_MODES = ("predicted", "component", "box", "all")
REGION_LABELS = {
    "predicted": "All its predicted pixels",
    "component": "Click a shape",
    "box": "Draw a box",
    "all": "The whole image",
}
#: Class colours for the predicted mask (background stays uncoloured).
PALETTE = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 190),
    ],
    np.float32,
)
BACKGROUND_NAMES = targets.BACKGROUND_NAMES
#: Clickable points per image side (an invisible grid over the picture).
GRID_POINTS = 64
#: The class picker's "follow the image" option.
MAIN_CLASS = -1
#: What the picker says while a region waits for a click or a box.
REGION_PENDING = (
    "Choose the region in the picture above: click a shape, or drag a box, then the "
    "explanation runs."
)


def _digest(value: object) -> str:
    """A short stable name for ``value`` in widget keys (one widget per model)."""
    return hashlib.sha256(repr(value).encode()).hexdigest()[:12]


def is_background(name: str) -> bool:
    return name.strip().lower() in BACKGROUND_NAMES


def colour_of(index: int) -> np.ndarray:
    return PALETTE[index % len(PALETTE)] if index else PALETTE[0]


def upsample(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) label map to ``shape`` (H, W)."""
    rows = np.minimum((np.arange(shape[0]) * labels.shape[0]) // shape[0], labels.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * labels.shape[1]) // shape[1], labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def mask_overlay(
    pixels: np.ndarray,
    predicted: np.ndarray,
    names: Sequence[str],
    region: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """The image with each non-background predicted class tinted in its colour, uint8 (H, W, 3);
    with ``region`` (bool, the output grid), everything outside it is dimmed."""
    labels = upsample(predicted, pixels.shape[:2])
    image = pixels.astype(np.float32)
    tint = np.stack([colour_of(int(c)) for c in range(len(names))])[labels]
    coloured = np.array([not is_background(n) for n in names])[labels]
    image = np.where(coloured[..., None], (1 - alpha) * image + alpha * tint, image)
    if region is not None:
        inside = upsample(region.astype(np.uint8), pixels.shape[:2]).astype(bool)
        image = np.where(inside[..., None], image, 0.35 * image)
    return np.clip(image, 0, 255).astype(np.uint8)


def region_mask(
    predicted: np.ndarray,
    cls: int,
    mode: str,
    point: tuple[float, float] | None,
    box: tuple[float, float, float, float] | None,
    image_hw: tuple[int, int],
) -> np.ndarray | None:
    """The region the target will read, on the output grid — :func:`explainers.targets.region_mask`,
    the rule the worker applies, for the preview (None: nothing chosen yet)."""
    if (mode == "component" and point is None) or (mode == "box" and box is None):
        return None
    region = Region(mode, point=point, box=box)  # type: ignore[arg-type]
    try:
        return targets.region_mask(region, predicted, cls, image_hw)
    except ParameterError:
        return None


def region_figure(picture: np.ndarray, selectable: str) -> go.Figure:
    """The picture with an invisible grid of clickable points (``selectable`` = "component")
    or ready for a box drag ("box")."""
    height, width = picture.shape[:2]
    figure = go.Figure(go.Image(z=picture, hoverinfo="skip"))
    step = max(1, int(np.ceil(max(height, width) / GRID_POINTS)))
    ys, xs = np.mgrid[step // 2 : height : step, step // 2 : width : step]
    figure.add_trace(
        go.Scatter(
            x=xs.ravel(),
            y=ys.ravel(),
            mode="markers",
            marker={"size": 9, "opacity": 0.01, "color": "white"},
            hovertemplate="x %{x}, y %{y}<extra></extra>",
            showlegend=False,
        )
    )
    figure.update_layout(
        height=340,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        dragmode="select" if selectable == "box" else False,
        clickmode="event+select",
        xaxis={"visible": False, "range": [-0.5, width - 0.5]},
        yaxis={"visible": False, "range": [height - 0.5, -0.5], "scaleanchor": "x"},
    )
    return figure


def _selection(event: Any) -> dict[str, Any]:
    selection = getattr(event, "selection", None) or {}
    return dict(selection) if not isinstance(selection, dict) else selection


def segmentation_target(
    page: Page, model: ModelSummary, image: LoadedImage, predictions: Sequence[Prediction]
) -> str | None:
    """A class and a region of a segmentation model's prediction; returns the target's text,
    or None while the user has not clicked or drawn yet (the page says so)."""
    predicted = service.segmentation(model, image)
    shares = {p.index: p.probability for p in predictions}
    names = model.class_names
    present = [p.index for p in predictions if p.probability > 0]
    main = next((c for c in present if not is_background(names[c])), present[0] if present else 0)
    # Like the classifier's 'top prediction': the main class follows the image, and the widget
    # is new whenever its labels change (the browser kept a selectbox's old label otherwise).
    # A class picked by hand carries over to the next image of the same model.
    options = [MAIN_CLASS, *range(len(names))]
    shown = [(c, f"{shares.get(c, 0.0):.1%}") for c in range(len(names))]
    class_key = state.key(page, f"seg_class_{_digest((model.ref.key, shown))}")
    remembered_key = state.key(page, "seg_class_choice")
    remembered = st.session_state.get(remembered_key)
    carried = remembered[1] if remembered and remembered[0] == model.ref.key else MAIN_CLASS
    mode_key = state.key(page, "seg_region_mode")
    state.default_option(class_key, options, carried)
    state.default_option(mode_key, list(REGION_MODES), "predicted")
    left, right = st.columns([1, 1.1])
    with left:
        choice = st.selectbox(
            "Class to explain",
            options,
            key=class_key,
            format_func=lambda c: (
                f"Main predicted class — {names[main]} ({shares.get(main, 0.0):.1%} of the pixels)"
                if c == MAIN_CLASS
                else f"{names[c]} ({shares.get(c, 0.0):.1%} of the pixels)"
            ),
            help="Seg-Grad-CAM's question: which pixels raise this class's logits, summed over "
            "the region? The main predicted class is the non-background class covering the most "
            "pixels.",
        )
        st.session_state[remembered_key] = (model.ref.key, choice)
        cls = main if choice == MAIN_CLASS else int(choice)
        mode = st.radio(
            "Region",
            list(REGION_MODES),
            key=mode_key,
            format_func=REGION_LABELS.get,
            help="The pixels whose class logits are summed: everything the model calls this "
            "class, one shape (click it in the picture), a box (drag in the picture), or the "
            "whole image.",
        )
        reduce_key = state.key(page, "seg_reduce")
        state.default(reduce_key, False)
        mean = st.toggle(
            "Mean instead of sum",
            key=reduce_key,
            help="Sum (Seg-Grad-CAM) weights a region by its size; the mean does not. "
            "Perturbation methods always read the region's mean class probability.",
        )
    image_hw = image.pixels.shape[:2]
    chart_key = state.key(page, f"seg_chart_{mode}_{image.sha256[:12]}")
    previous = st.session_state.get(chart_key)
    point, box = _chosen(_selection(previous) if previous is not None else {})
    if mode == "component" and point is not None:
        row = int(np.clip(point[1] * predicted.shape[0] / image_hw[0], 0, predicted.shape[0] - 1))
        col = int(np.clip(point[0] * predicted.shape[1] / image_hw[1], 0, predicted.shape[1] - 1))
        clicked = int(predicted[row, col])
    else:
        clicked = None
    shown_class = clicked if clicked is not None else int(cls)
    region = region_mask(predicted, shown_class, mode, point, box, image_hw)
    with right:
        picture = mask_overlay(image.pixels, predicted, names, region)
        st.plotly_chart(
            region_figure(picture, mode),
            key=chart_key,
            on_select="rerun",
            selection_mode=("points", "box"),
            config={"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d"]},
            theme=None,
        )
        legend = " · ".join(
            f":{_colour_name(c)}[■] {names[c]}" for c in present if not is_background(names[c])
        )
        st.caption(f"Predicted: {legend or 'background only'}. " + _hint(mode, region))
    suffix = ":mean" if mean else ""
    if mode == "predicted":
        if not (predicted == cls).any():
            st.info(
                f"The model predicts no '{names[cls]}' pixels in this image: pick a class it "
                "predicts, draw a box, or use the whole image."
            )
            return None
        return f"region:{cls}{suffix}"
    if mode == "all":
        return f"region:{cls}:all{suffix}"
    if mode == "box":
        if box is None:
            st.info(REGION_PENDING)
            return None
        x0, y0, x1, y1 = box
        return f"region:{cls}:box={x0:.1f},{y0:.1f},{x1:.1f},{y1:.1f}{suffix}"
    if point is None:
        st.info(REGION_PENDING)
        return None
    return f"region:{shown_class}:at={point[0]:.1f},{point[1]:.1f}{suffix}"


def _chosen(
    selection: dict[str, Any],
) -> tuple[tuple[float, float] | None, tuple[float, float, float, float] | None]:
    """(clicked point (x, y), drawn box (x0, y0, x1, y1)) from a Plotly selection state."""
    point = box = None
    boxes = selection.get("box") or []
    if boxes:
        last = boxes[-1]
        xs, ys = last.get("x") or [], last.get("y") or []
        if len(xs) >= 2 and len(ys) >= 2:
            box = (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)))
    points = selection.get("points") or []
    if points and not boxes:
        last = points[-1]
        if "x" in last and "y" in last:
            point = (float(last["x"]), float(last["y"]))
    return point, box


def _hint(mode: str, region: np.ndarray | None) -> str:
    if mode == "component":
        return (
            "Click a shape to explain it (its class is the one predicted where you click)."
            if region is None
            else "Click another shape to explain it instead (the class follows the click)."
        )
    if mode == "box":
        return "Drag a box over the picture." if region is None else "Drag again to redraw."
    return ""


def _colour_name(index: int) -> str:
    names = ("gray", "red", "green", "blue", "orange", "violet", "blue", "violet", "green", "red")
    return names[index % len(names)]


def label_picker(page: Page, model: ModelSummary, predictions: Sequence[Prediction]) -> int:
    """Any label of a multi-label model, each shown with its own probability (not one softmax:
    several labels can be near 1 at once)."""
    probability = {p.index: p.probability for p in predictions}
    key = state.key(page, f"label_{_digest(model.ref.key)}")
    options = list(range(model.n_classes))
    state.default_option(key, options, predictions[0].index)
    return int(
        st.selectbox(
            "Label to explain",
            options,
            key=key,
            format_func=lambda i: (
                f"{model.class_names[i]} (p = {probability.get(i, 0.0):.1%}"
                + (", present)" if probability.get(i, 0.0) >= 0.5 else ", absent)")
            ),
            help="Each label has its own sigmoid: explain any of them, present or absent.",
        )
    )


def regression_target(page: Page, model: ModelSummary, predictions: Sequence[Prediction]) -> str:
    """A regression output and the direction: what increases or what decreases it."""
    values = {p.index: p.probability for p in predictions}
    output = 0
    if model.n_classes > 1:
        key = state.key(page, f"output_{_digest(model.ref.key)}")
        state.default_option(key, list(range(model.n_classes)), 0)
        output = int(
            st.selectbox(
                "Output to explain",
                list(range(model.n_classes)),
                key=key,
                format_func=lambda i: f"{model.class_names[i]} = {values.get(i, 0.0):.4g}",
            )
        )
    direction_key = state.key(page, "regression_direction")
    state.default_option(direction_key, ["increase", "decrease"], "increase")
    direction = st.radio(
        f"{model.class_names[output]} = {values.get(output, 0.0):.4g}: show what",
        ["increase", "decrease"],
        key=direction_key,
        horizontal=True,
        format_func=lambda d: "increases it" if d == "increase" else "decreases it",
        help="Positive map values raise the value ('increases') or lower it ('decreases').",
    )
    return f"value:{output}" + (":lower" if direction == "decrease" else "")
