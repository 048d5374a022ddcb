"""The Compare page's own widgets and defaults: the methods compared at first, the colour-scale
switch and the card of one method in the grid."""

from __future__ import annotations

import streamlit as st

from dashboard import report, state
from dashboard.pictures import Pictures, pictures
from dashboard.service import ExplanationResult, LoadedImage, MethodSummary
from dashboard.state import Page
from dashboard.visuals import DisplaySettings
from dashboard.widgets.downloads import card_downloads
from dashboard.widgets.results import map_warnings, show_image

#: The default selection of the Compare page.
DEFAULT_COMPARISON = ("vanilla_gradients", "occlusion", "cam", "grad_cam")
SCALE_MODES = {
    "own": "Each map on its own scale",
    "shared": "One scale for all cards",
}


def scale_mode_control(page: Page) -> bool:
    """Whether the cards share one colour scale (True) or each map is scaled on its own."""
    key = state.key(page, "scale_mode")
    state.default(key, "own")
    mode = st.segmented_control(
        "Colour scale",
        list(SCALE_MODES),
        key=key,
        format_func=SCALE_MODES.get,
        required=True,
        help="Each map on its own: every card uses its full colour range, whatever its "
        "magnitude (good for where each method looks). One scale: the top colour is the same raw "
        "value on every card, so a weak map looks weak. Maps of different families are in "
        "different units (gradients, probability changes, CAM activations): compare magnitudes "
        "within a family.",
    )
    return mode == "shared"


def heatmap_card(
    page: Page,
    method: MethodSummary,
    result: ExplanationResult,
    image: LoadedImage,
    settings: DisplaySettings,
) -> Pictures:
    """One method's overlay, caption, warnings and downloads; returns the pictures (for the
    report)."""
    pics = pictures(result, image, settings)
    show_image(pics.overlay)
    layer = f" · {result.layer}" if result.layer else ""
    magnitude = report.magnitude(result)
    peak = f"  \nmax |value| {magnitude['max_abs']:.3g}" if magnitude else ""
    st.caption(
        f"{report.target_summary(result)}  \n{result.seconds:.2f} s{layer}{peak}",
        help=report.magnitude_text(result),
    )
    map_warnings(result)
    card_downloads(page, image, result, settings, compact=True)
    return pics
