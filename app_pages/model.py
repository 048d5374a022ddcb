"""Model: the architecture as a readable table and the feature maps of any spatial layer."""

from __future__ import annotations

import streamlit as st

from dashboard import components, service, state, visuals
from dashboard.service import ServiceError
from explainers import render

PAGE = "model"


def page() -> None:
    components.page_title("Model", "What the network is made of, and what its layers see.")
    model = components.require_model()
    if model is None:
        return
    components.model_summary(model)
    components.security_note()

    st.subheader("Layers")
    components.layer_table(model)

    st.subheader("Feature maps")
    image = state.active_image()
    if image is None:
        st.info("Load an image in the sidebar to see the feature maps it produces.")
        return
    if not model.spatial_layers:
        st.info("This model has no layer with a spatial (height × width × channels) output.")
        return
    layer_col, count_col, order_col, cmap_col = st.columns([2, 1, 1, 1])
    layer_key = state.key(PAGE, "layer")
    fallback = model.default_layer or model.spatial_layers[-1]
    state.default_option(layer_key, list(model.spatial_layers), fallback)
    shapes = {info.path: info.output_shape for info in model.layers}
    with layer_col:
        layer = st.selectbox(
            "Layer",
            model.spatial_layers,
            key=layer_key,
            format_func=lambda p: f"{p} · {' × '.join(map(str, shapes.get(p, ())))}",
            persist_state="session",
        )
    count_key, order_key, cmap_key = (state.key(PAGE, n) for n in ("count", "order", "cmap"))
    state.default(count_key, 32)
    state.default(order_key, "most active")
    state.default(cmap_key, "Viridis")
    count = count_col.slider(
        "Channels shown", 4, 128, step=4, key=count_key, persist_state="session"
    )
    order = order_col.selectbox(
        "Order", ("most active", "index"), key=order_key, persist_state="session"
    )
    colormap = cmap_col.selectbox(
        "Colormap", render.SEQUENTIAL_COLORMAPS, key=cmap_key, persist_state="session"
    )
    try:
        activations = service.feature_maps(model, image, layer)
    except ServiceError as err:
        failure = components.Failure(str(err), err.retry_key if err.retryable else None)
        components.show_failure(failure, "model_features")
        return
    channels = visuals.channel_order(activations, order)[:count]
    height, width, total = activations.shape
    st.caption(
        f"{layer}: {total} channels of {height}×{width} for **{image.name}**; showing "
        f"{len(channels)}, each scaled to its own range (dark = low, bright = high)."
    )
    components.feature_map_grid(activations, channels, colormap)


page()
