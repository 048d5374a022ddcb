"""Explain: one method in depth for the current model and image."""

from __future__ import annotations

import streamlit as st

from dashboard import components
from dashboard.report import ReportEntry

PAGE = "explain"


def page() -> None:
    header = components.page_header(
        "Explain", "One method in depth: where it looks, the raw values, and what it depends on."
    )
    if header is None:
        return
    model, image, predictions = header

    method_col, target_col, layer_col, engine_col = st.columns([1.2, 1.2, 1.2, 0.8])
    with method_col:
        method = components.method_picker(PAGE, model)
    with target_col:
        target = components.target_picker(PAGE, model, predictions)
    with layer_col:
        layer = components.layer_picker(PAGE, model, method, placeholder=True)
    with engine_col:
        engine = components.engine_picker(PAGE, method)
    with st.container(border=True, key=f"{PAGE}_parameters"):
        st.markdown(f"**{method.label} parameters**")
        params = components.param_controls(PAGE, method, columns=4)
    settings = components.display_controls(PAGE)

    request = components.build_request(
        model, image, method, params, target=target, layer=layer, engine=engine
    )
    if isinstance(request, str):
        st.warning(request)
        return
    outcome = components.compute(request, image, st.empty(), method.label)
    if isinstance(outcome, components.Failure):
        components.show_failure(outcome, PAGE)
        return

    pictures = components.pictures(outcome, image, settings)
    left, middle, right = st.columns([1, 1, 1.25])
    with left:
        st.markdown("**Input image**")
        components.input_image(image, settings, caption=image.name)
    with middle:
        st.markdown(f"**{method.label} overlay**")
        components.show_image(pictures.overlay, components.result_caption(outcome))
        components.map_warnings(outcome)
    with right:
        st.markdown("**Raw map** · hover for values")
        st.plotly_chart(
            components.raw_map_figure(outcome, settings, height=430),
            theme=None,
            key=f"{PAGE}_figure",
            config={"displaylogo": False},
        )

    facts_col, predictions_col = st.columns([1.4, 1])
    with facts_col:
        st.markdown("**Result**")
        components.result_facts(outcome, method)
        cells = st.columns(3)
        components.card_downloads(PAGE, image, outcome, settings, cells[:2])
        components.report_downloads(
            PAGE,
            model,
            image,
            predictions,
            [ReportEntry(method, outcome, pictures.overlay, pictures.heatmap)],
            settings,
            grid=False,
            cells=cells[2:],
        )
    with predictions_col:
        st.markdown("**Top predictions**")
        components.predictions_table(predictions, outcome.target)


page()
