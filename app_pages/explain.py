"""Explain: one method in depth for the current model and image."""

from __future__ import annotations

import streamlit as st

from dashboard.computation import Failure, build_request
from dashboard.pages import explain as explain_page
from dashboard.pictures import pictures, raw_map_figure
from dashboard.report import ReportEntry, result_caption
from dashboard.service import (
    ExplanationRequest,
    LoadedImage,
    MethodSummary,
    ModelSummary,
    Prediction,
)
from dashboard.widgets import display, downloads, frame, parameters, pickers, results, running

PAGE = "explain"


def page() -> None:
    header = frame.page_header(
        "Explain", "One method in depth: where it looks, the raw values, and what it depends on."
    )
    if header is None:
        return
    model, image, predictions = header

    target = pickers.wide_target_picker(PAGE, model, predictions, image)
    method_col, target_col, layer_col, engine_col = st.columns([1.2, 1.2, 1.2, 0.8])
    with method_col:
        method = explain_page.method_picker(PAGE, model)
    with target_col:
        if not pickers.is_wide(model):
            target = pickers.target_picker(PAGE, model, predictions, image)
    with layer_col:
        layer = pickers.layer_picker(PAGE, model, method, placeholder=True)
    with engine_col:
        engine = pickers.engine_picker(PAGE, method)
    with st.container(border=True, key=f"{PAGE}_parameters"):
        st.markdown(f"**{method.label} parameters**")
        params = parameters.param_controls(PAGE, method, columns=4)
    if target is None:
        return  # a segmentation region still to choose: its picker says how
    request = build_request(model, image, method, params, target=target, layer=layer, engine=engine)
    result(model, image, predictions, method, request)


# Why only the result is a fragment: a widget inside a fragment asks for a rerun of that fragment,
# which Streamlit queues behind a running script instead of interrupting it. A method, target or
# parameter change must interrupt a long computation (the request is abandoned and the worker
# cancels it), so those widgets stay outside; the display controls change only the picture of a
# result already computed, so a fragment rerun (cache hit, no model call) is what they need.
@st.fragment
def result(
    model: ModelSummary,
    image: LoadedImage,
    predictions: list[Prediction],
    method: MethodSummary,
    request: ExplanationRequest | str,
) -> None:
    """The display controls and the result, as a fragment: a display change reruns only this
    part, which re-renders the cached raw map (no model call)."""
    settings = display.display_controls(PAGE)
    if isinstance(request, str):
        st.warning(request)
        return
    outcome = running.compute(request, image, st.empty(), method)
    if isinstance(outcome, Failure):
        running.show_failure(outcome, PAGE)
        return

    pics = pictures(outcome, image, settings)
    left, middle, right = st.columns([1, 1, 1.25])
    with left:
        st.markdown("**Input image**")
        results.input_image(image, settings, caption=image.name)
    with middle:
        st.markdown(f"**{method.label} overlay**")
        results.show_image(pics.overlay, result_caption(outcome))
        results.map_warnings(outcome)
    with right:
        st.markdown("**Raw map** · hover for values")
        st.plotly_chart(
            raw_map_figure(outcome, settings, height=430),
            theme=None,
            key=f"{PAGE}_figure",
            config={"displaylogo": False},
        )

    facts_col, predictions_col = st.columns([1.4, 1])
    with facts_col:
        st.markdown("**Result**")
        explain_page.result_facts(outcome, method)
        cells = st.columns(3)
        downloads.card_downloads(PAGE, image, outcome, settings, cells[:2])
        downloads.report_downloads(
            PAGE,
            model,
            image,
            predictions,
            [ReportEntry(method, outcome, pics.overlay, pics.heatmap)],
            settings,
            grid=False,
            cells=cells[2:],
        )
    with predictions_col:
        st.markdown(f"**{explain_page.predictions_title(model)}**")
        explain_page.predictions_table(predictions, outcome.target, model)


page()
