"""Guide: what each method computes, its cost and caveats, with the paper to read."""

from __future__ import annotations

import streamlit as st

from dashboard import components, service, state
from dashboard.service import ServiceError


def page() -> None:
    components.page_title(
        "Guide", "What every method computes, what it costs, and where it misleads."
    )
    model = state.active_model()
    try:
        methods = model.methods if model is not None else service.method_catalogue()
    except ServiceError as err:
        st.error(str(err))
        return
    with_model = model is not None
    st.markdown(
        "All maps are **raw and signed**: positive values are evidence *for* the class being "
        "explained. The display controls (sign, colormap, clipping, blur) change only how a map "
        "is drawn. Two sanity checks to keep in mind: an explanation should change when the "
        "model's weights are randomised, and it should not merely redraw the image's edges."
    )
    families = list(dict.fromkeys(m.family for m in methods))
    tabs = st.tabs(["Overview", *(components.FAMILY_LABELS.get(f, f) for f in families)])
    with tabs[0]:
        components.methods_overview(methods, with_model=with_model)
    for tab, family in zip(tabs[1:], families, strict=True):
        with tab:
            for i, method in enumerate(m for m in methods if m.family == family):
                if i:
                    st.divider()
                components.method_guide(method, with_model=with_model)


page()
