"""Pickers shared by the pages: methods, the class to explain, the layer a CAM-family method
reads, and the engine."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import streamlit as st

from dashboard import state
from dashboard.service import LoadedImage, MethodSummary, ModelSummary, Prediction
from dashboard.state import Page
from dashboard.widgets import regions

ENGINE_LABELS = {"native": "Native", "tf_explain": "tf-explain"}


def method_label(model: ModelSummary) -> Callable[[str], str]:
    """A ``format_func`` for method names: the label, and whether the model can use it."""

    def label(name: str) -> str:
        method = model.method(name)
        return method.label if method.applicable else f"{method.label} (not available)"

    return label


def methods_multiselect(
    page: Page,
    model: ModelSummary,
    label: str,
    defaults: Sequence[str],
    name: str = "methods",
    *,
    applicable_only: bool = True,
) -> list[MethodSummary]:
    """A multiselect of the model's methods with page-specific defaults (the applicable ones
    only, unless ``applicable_only`` is False)."""
    names = [m.name for m in model.methods]
    key = state.key(page, name)
    offered = {m.name for m in model.methods if m.applicable or not applicable_only}
    state.default_option(key, names, [n for n in defaults if n in offered])
    chosen = st.multiselect(
        label,
        names,
        key=key,
        format_func=method_label(model),
        persist_state="session",
        placeholder="Pick one or more methods",
    )
    return [model.method(n) for n in chosen]


AUTO_TARGET = -1


def is_wide(model: ModelSummary) -> bool:
    """Whether the model's target picker needs the page's full width (a segmentation's class,
    region and picture) rather than a column."""
    return model.task == "segmentation"


def wide_target_picker(
    page: Page, model: ModelSummary, predictions: Sequence[Prediction], image: LoadedImage
) -> int | str | None:
    """:func:`target_picker` in a bordered full-width box for models that need it; None (and
    nothing drawn) for the others, whose pages put the picker in a column."""
    if not is_wide(model):
        return None
    with st.container(border=True, key=f"{page}_target_box"):
        st.markdown("**What to explain**")
        return target_picker(page, model, predictions, image)


def target_key(page: Page, model: ModelSummary, predictions: Sequence[Prediction]) -> str:
    """The widget key of ``page``'s class picker: one per model and per set of labels shown.

    The browser kept showing a selectbox's old label when only its labels changed (options and
    value the same): after a new model or image, "Top prediction — circle (100.0%)" stayed on
    screen for the new model's class 0 at 20%. A new key draws a new widget."""
    shown = [(p.index, f"{p.probability:.1%}") for p in predictions]
    digest = hashlib.sha256(repr((model.ref.key, shown)).encode()).hexdigest()[:12]
    return state.key(page, f"target_{digest}")


def target_picker(
    page: Page,
    model: ModelSummary,
    predictions: Sequence[Prediction],
    image: LoadedImage | None = None,
) -> int | str | None:
    """What to explain. A classifier: the class ('top prediction' follows the image), as an
    index; the choice carries over to the next image for the same model, and a new model
    starts at 'top prediction' (an index means nothing for another model). Other tasks return
    a target's text (:mod:`dashboard.widgets.regions`): a multi-label model's label (an index),
    a regression output and direction, a segmentation class and region — None while the user
    has still to click or draw the region."""
    if model.task == "multilabel":
        return regions.label_picker(page, model, predictions)
    if model.task == "regression":
        return regions.regression_target(page, model, predictions)
    if model.task == "segmentation":
        if image is None:
            raise ValueError("a segmentation target needs the image")
        return regions.segmentation_target(page, model, image, predictions)
    probability = {p.index: p.probability for p in predictions}
    top = predictions[0]
    options = [AUTO_TARGET, *range(model.n_classes)]
    key = target_key(page, model, predictions)
    remembered_key = state.key(page, "target_choice")
    remembered = st.session_state.get(remembered_key)
    carried = remembered[1] if remembered and remembered[0] == model.ref.key else AUTO_TARGET
    state.default_option(key, options, carried)

    def label(index: int) -> str:
        if index == AUTO_TARGET:
            return f"Top prediction — {top.name} ({top.probability:.1%})"
        return f"{model.class_names[index]} ({probability.get(index, 0.0):.1%})"

    chosen = st.selectbox(
        "Class to explain",
        options,
        key=key,
        format_func=label,
        help="Explanations answer: which pixels raise the score of this class?",
    )
    st.session_state[remembered_key] = (model.ref.key, chosen)
    return top.index if chosen == AUTO_TARGET else int(chosen)


def _compact_shape(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


def layer_picker(
    page: Page,
    model: ModelSummary,
    method: MethodSummary,
    *,
    label: str = "Layer",
    placeholder: bool = False,
) -> str | None:
    """The layer a CAM-family method reads (defaults to the automatic choice), else None.

    With ``placeholder``, a method that reads no layer gets a disabled picker saying so (keeps a
    row of controls from jumping when the method changes)."""
    if not method.uses_layer or not model.spatial_layers:
        if placeholder and not method.uses_layer:
            st.selectbox(
                label,
                ["not used by this method"],
                key=state.key(page, f"{method.name}_layer_unused"),
                disabled=True,
                help="Only CAM-family methods read an inner layer.",
            )
        return model.default_layer if method.uses_layer else None
    options = list(model.spatial_layers)
    shapes = {info.path: info.output_shape for info in model.layers}
    key = state.key(page, f"{method.name}_layer")
    fallback = model.default_layer if model.default_layer in options else options[-1]
    state.default_option(key, options, fallback)

    def describe(path: str) -> str:
        auto = " (auto)" if path == model.default_layer else ""
        return f"{path}{auto} · {_compact_shape(shapes.get(path, ()))}"

    return st.selectbox(
        label,
        options,
        key=key,
        format_func=describe,
        persist_state="session",
        help="The feature maps the method weights. The automatic choice is the last spatial "
        "layer before the classifier head.",
    )


def engine_picker(page: Page, method: MethodSummary) -> str:
    """The engine to run ``method`` with; engines that refuse this model are not offered, and
    say why."""
    engines = method.usable_engines or ("native",)
    for engine, reason in method.refused_engines:
        st.caption(f"{ENGINE_LABELS.get(engine, engine)} engine not available: {reason}.")
    if len(engines) < 2:
        return engines[0]
    key = state.key(page, f"{method.name}_engine")
    state.default_option(key, engines, engines[0])
    return st.radio(
        "Engine",
        engines,
        key=key,
        format_func=lambda e: ENGINE_LABELS.get(e, e),
        horizontal=True,
        persist_state="session",
        help="Native: this project's implementation. tf-explain: the same method computed by "
        "the tf-explain library, for cross-checking.",
    )
