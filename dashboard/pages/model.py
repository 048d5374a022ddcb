"""The Model page's own widgets: the model's summary and security notes, the layer table, and the
feature-map controls and grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import streamlit as st

from dashboard import service, state, visuals
from dashboard.service import ModelSummary
from dashboard.state import Page
from explainers import render


def _shape(shape: Sequence[int]) -> str:
    return " × ".join(str(s) for s in shape)


TASK_TEXT = {
    "classification": "classification — explains one class (its logit; perturbation methods "
    "its probability)",
    "multilabel": "multi-label — one sigmoid per label; any label can be explained",
    "regression": "regression — explains what increases or decreases an output value",
    "segmentation": "segmentation — a class per pixel; explains a class over a region "
    "(Seg-Grad-CAM)",
}


def model_summary(model: ModelSummary) -> None:
    cols = st.columns(4)
    cols[0].metric("Parameters", f"{model.n_params:,}")
    cols[1].metric("Layers", model.n_layers)
    cols[2].metric("Input", f"{model.input_size[0]}×{model.input_size[1]}×{model.channels}")
    word = {"class": "Classes", "label": "Labels", "output": "Outputs"}[model.unit_word]
    cols[3].metric(word, model.n_classes)
    st.markdown(
        f"**File:** {model.ref.file_name}"
        + (f" · **SHA-256:** `{model.sha256}`" if model.sha256 else "")
        + f"  \n**Preprocessing:** {model.preprocessing} — {model.preprocessing_reason}"
        + f"  \n**Task:** {TASK_TEXT.get(model.task, model.task)}"
        + f" · output shape {'×'.join(str(d) for d in model.output_shape) or '?'}"
        + f"  \n**Output:** {model.output_kind} from `{model.output_layer or '?'}`"
        + (
            f" · **CAM head:** `{model.cam_head}` → global average pooling → dense"
            if model.cam_head
            else " · no GAP → dense head (CAM does not apply; Grad-CAM does)"
        )
    )


SECURITY_NOTE = """
A model file is code-like input: a crafted file can try to run code when it is loaded.

- Files are loaded with Keras **safe mode** on and **without custom objects**: `Lambda` layers
  holding Python code and unknown custom layers are refused rather than executed.
- The Keras version in use ({keras}) includes the published fixes for earlier safe-mode bypasses
  (such as the `TFSMLayer` one) and for path traversal when a `.keras` archive is unpacked.
- Legacy `.h5` files are read by Keras' legacy loader with safe mode requested as well; prefer
  `.keras` files.
- Uploads are stored under a name made of their SHA-256 in the system's temporary folder, and the
  model's SHA-256 is printed above and in every report, so a result can be traced to its file.
- Still: on a shared server, only load models from people you trust, and keep Keras up to date.
"""


def security_note() -> None:
    with st.expander("Security notes on uploaded models", icon=":material/shield:"):
        st.markdown(SECURITY_NOTE.format(keras=service.package_version("keras")))


def _layer_rows(layers: Sequence[Any], base_depth: int = 0) -> list[dict[str, Any]]:
    rows = []
    for info in layers:
        indent = "\u2003" * max(0, info.depth - base_depth)
        kind = f"{info.class_name} (sub-model)" if info.is_model else info.class_name
        rows.append(
            {
                "Layer": indent + info.name,
                "Type": kind,
                "Output shape": _shape(info.output_shape),
                "Parameters": info.n_params,
                "Feature maps": "yes" if info.is_spatial and not info.is_model else "",
            }
        )
    return rows


def layer_table(model: ModelSummary) -> None:
    """The architecture as a table; nested sub-models get an expander each."""
    if not model.layers:
        st.info(
            "This model's layers cannot be listed (a subclassed model); only methods that need "
            "no inner layer apply."
        )
        return
    top = [info for info in model.layers if "/" not in info.path]
    height, width = model.input_size
    input_row = {
        "Layer": "input",
        "Type": "Input",
        "Output shape": _shape((height or "any", width or "any", model.channels)),
        "Parameters": 0,
        "Feature maps": "",
    }
    st.dataframe(
        [input_row, *_layer_rows(top)],
        hide_index=True,
        width="stretch",
        height=min(40 + 35 * (len(top) + 1), 720),
        column_config={"Parameters": st.column_config.NumberColumn(format="localized")},
    )
    for info in top:
        if not info.is_model:
            continue
        inner = [i for i in model.layers if i.path.startswith(info.path + "/")]
        label = f"Inside {info.name} · {len(inner)} layers · {info.n_params:,} parameters"
        with st.expander(label):
            st.dataframe(
                _layer_rows(inner, base_depth=info.depth + 1),
                hide_index=True,
                width="stretch",
                height=min(38 + 35 * len(inner), 480),
                column_config={"Parameters": st.column_config.NumberColumn(format="localized")},
            )


def feature_map_controls(page: Page, model: ModelSummary) -> tuple[str, int, str, str]:
    """One row of controls for the feature maps: the layer, how many channels, in which order,
    and the colormap."""
    layer_col, count_col, order_col, cmap_col = st.columns([2, 1, 1, 1])
    layer_key = state.key(page, "layer")
    fallback = model.default_layer or model.spatial_layers[-1]
    state.default_option(layer_key, list(model.spatial_layers), fallback)
    shapes = {info.path: info.output_shape for info in model.layers}
    with layer_col:
        layer = st.selectbox(
            "Layer",
            model.spatial_layers,
            key=layer_key,
            format_func=lambda p: f"{p} · {_shape(shapes.get(p, ()))}",
            persist_state="session",
        )
    count_key, order_key, cmap_key = (state.key(page, n) for n in ("count", "order", "cmap"))
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
    return layer, count, order, colormap


def feature_map_grid(
    activations: np.ndarray, channels: Sequence[int], colormap: str, columns: int = 8
) -> None:
    tiles = visuals.channel_tiles(activations, channels, colormap)
    means = activations.mean(axis=(0, 1))
    for start in range(0, len(tiles), columns):
        cells = st.columns(columns)
        for cell, index, tile in zip(
            cells, channels[start : start + columns], tiles[start : start + columns], strict=False
        ):
            cell.image(
                visuals.enlarge(tile, 128),
                caption=f"#{index} · mean {means[index]:.2f}",
                width="stretch",
            )
