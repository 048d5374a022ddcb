"""Guide: what each method computes, its cost and caveats, with the paper to read."""

from __future__ import annotations

import streamlit as st

from dashboard import service, state
from dashboard.pages import guide as guide_page
from dashboard.service import ServiceError
from dashboard.widgets import frame

READING = """
**Scale.** Every overlay stretches its map over the whole colour range, so a map whose values are
tiny looks as confident as a strong one. The raw-map chart on Explain is in the map's own units
(its colour bar spans the raw values; hover for any pixel), the result facts give the map's min,
max and sum with the score it explains (e.g. *logit of star = 10.59*), and on Compare *One scale
for all cards* gives every card the same top value, so a weak map looks weak (compare magnitudes
within a family: gradients, probability changes and CAM activations are different units).

**Warnings.** The library checks every map: all zero, constant, negligible against the explained
score (e.g. Integrated Gradients summing to 1e-10 logit units on an untrained network), a
probability saturated at 1 that float32 cannot resolve (occlusion: use Score = *logit*), a model
at chance, or a target class the model gives p < 0.01. Each warning, shown beside the picture and
in the report, says why and what to try.

**Score-CAM's baseline.** Score-CAM covers the image with each feature map of the chosen layer in
turn and asks the model how strongly the masked image still looks like the class; that
probability is the feature map's weight, and the weighted maps are added up. By default the
masked image's probability is used as it is, as in the authors' published code and in
tf-keras-vis. The paper's formula (Wang et al. 2020, Eq. 5) subtracts the probability of a blank,
all-zero image (black for most models) from every weight — the *Subtract the baseline score*
option. The same amount comes off every channel, so when a blank image already looks like the
class (the demo model calls a black image "circle" at p ≈ 0.998) every weight turns negative and
the ReLU leaves an empty map; the dashboard then says so. Use the option to reproduce the paper's
exact formula; otherwise keep the default.
"""


def page() -> None:
    frame.page_title("Guide", "What every method computes, what it costs, and where it misleads.")
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
    with st.expander("Reading the numbers: scale, warnings and Score-CAM's baseline"):
        st.markdown(READING)
    families = list(dict.fromkeys(m.family for m in methods))
    tabs = st.tabs(["Overview", *(guide_page.FAMILY_LABELS.get(f, f) for f in families)])
    with tabs[0]:
        guide_page.methods_overview(methods, with_model=with_model)
    for tab, family in zip(tabs[1:], families, strict=True):
        with tab:
            for i, method in enumerate(m for m in methods if m.family == family):
                if i:
                    st.divider()
                guide_page.method_guide(method, with_model=with_model)


page()
