"""Model: the architecture as a readable table and the feature maps of any spatial layer."""

from __future__ import annotations

import streamlit as st

from dashboard import service, state, visuals
from dashboard.computation import Failure
from dashboard.pages import model as model_page
from dashboard.service import ServiceError
from dashboard.widgets import frame, running

PAGE = "model"


def page() -> None:
    frame.page_title("Model", "What the network is made of, and what its layers see.")
    model = frame.require_model()
    if model is None:
        return
    model_page.model_summary(model)
    model_page.security_note()

    st.subheader("Layers")
    model_page.layer_table(model)

    st.subheader("Feature maps")
    image = state.active_image()
    if image is None:
        st.info("Load an image in the sidebar to see the feature maps it produces.")
        return
    if not model.spatial_layers:
        st.info("This model has no layer with a spatial (height × width × channels) output.")
        return
    layer, count, order, colormap = model_page.feature_map_controls(PAGE, model)
    try:
        activations = service.feature_maps(model, image, layer)
    except ServiceError as err:
        running.show_failure(Failure.from_error(err), "model_features")
        return
    channels = visuals.channel_order(activations, order)[:count]
    height, width, total = activations.shape
    st.caption(
        f"{layer}: {total} channels of {height}×{width} for **{image.name}**; showing "
        f"{len(channels)}, each scaled to its own range (dark = low, bright = high)."
    )
    model_page.feature_map_grid(activations, channels, colormap)


page()
