"""The display controls: sign, colormap, opacity, clipping and blur. They change only the rendering
of cached raw maps; nothing is recomputed."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.state import Page
from dashboard.visuals import DisplaySettings
from dashboard.widgets.sidebar import outline_flags
from explainers import render

SIGN_LABELS = {
    "positive": "Positive (evidence for)",
    "negative": "Negative (evidence against)",
    "absolute": "Absolute value",
    "signed": "Signed (both)",
}


def display_controls(page: Page) -> DisplaySettings:
    """One row of display controls. They change only the rendering of cached raw maps."""
    k = lambda name: state.key(page, name)  # noqa: E731
    state.default(k("sign"), "positive")
    state.default(k("colormap_sequential"), render.default_colormap("positive"))
    state.default(k("colormap_diverging"), render.default_colormap("signed"))
    state.default(k("alpha"), 0.5)
    state.default(k("clip"), 99.0)
    state.default(k("blur"), 0.0)
    with st.container(border=True, key=k("display")):
        st.markdown(
            "**Display** <span style='color:#5b6470'>· changes the picture only; nothing is "
            "recomputed</span>",
            unsafe_allow_html=True,
        )
        c_sign, c_map, c_alpha, c_clip, c_blur = st.columns([1.5, 1, 1.1, 1.1, 1.1])
        sign = c_sign.selectbox(
            "Sign",
            render.SIGNS,
            key=k("sign"),
            format_func=SIGN_LABELS.get,
            persist_state="session",
            help="Which part of the signed map to show. Positive: pixels that raise the class "
            "score. Signed uses a diverging colormap (red for, blue against).",
        )
        if sign == "signed":
            diverging = c_map.selectbox(
                "Colormap (diverging)",
                render.DIVERGING_COLORMAPS,
                key=k("colormap_diverging"),
                persist_state="session",
            )
            sequential = st.session_state.get(k("colormap_sequential"), "Jet")
        else:
            sequential = c_map.selectbox(
                "Colormap",
                render.SEQUENTIAL_COLORMAPS,
                key=k("colormap_sequential"),
                persist_state="session",
            )
            diverging = st.session_state.get(k("colormap_diverging"), "RdBu_r")
        alpha = c_alpha.slider(
            "Overlay opacity", 0.0, 1.0, step=0.05, key=k("alpha"), persist_state="session"
        )
        clip = c_clip.slider(
            "Clip at percentile",
            50.0,
            100.0,
            step=0.5,
            key=k("clip"),
            persist_state="session",
            help="Values above this percentile of the map get the top colour, so that a few "
            "extreme pixels do not wash out the rest.",
        )
        blur = c_blur.slider(
            "Blur σ (pixels)",
            0.0,
            8.0,
            step=0.5,
            key=k("blur"),
            persist_state="session",
            help="Gaussian smoothing of the displayed map (the raw map is unchanged).",
        )
    outline_mask, outline_marker = outline_flags()
    return DisplaySettings(
        sign=sign,
        sequential_colormap=sequential,
        diverging_colormap=diverging,
        alpha=float(alpha),
        clip_percentile=float(clip),
        blur=float(blur),
        outline_mask=outline_mask,
        outline_marker=outline_marker,
    )
