"""Training: how the explanations of a few fixed images changed while a model trained — the maps
at each logged epoch beside the loss, accuracy and attention curves, with a play button."""

from __future__ import annotations

import streamlit as st

from dashboard.pages import training as training_page
from dashboard.widgets import frame

INTRO = """
A training run is what `explainers.callbacks.ExplanationCallback` records while a model trains:
every few epochs it explains the same **fixed images** and keeps the maps, the share of each map
on the object and on the corner marker, and the loss and accuracy. Press **Play** to watch the
explanations form. The bundled run is the *shortcut* demo model's: find its shortcut (**Audit**),
see it on one image (**Explain**), and watch it form here. To compare two runs, put their folders
under the data root and pick one under **Compare with**.
"""


def page() -> None:
    frame.page_title("Training", "Watch a model's explanations form, epoch by epoch.")
    st.markdown(INTRO)
    choices, problem = training_page.available_runs()
    if not choices:
        st.info(
            "No training run is bundled (assets/runs/ is empty) and none was found under the "
            f"data root. {problem or ''}"
        )
    shown = training_page.choose(choices)
    if not shown:
        return  # the reason is on the page
    training_page.describe(shown, choices)
    methods = list(dict.fromkeys(m for _, view in shown for m in view.methods))
    has_masks = any(view.masks for _, view in shown)
    method, look = training_page.display_options(methods, has_masks)
    seconds = training_page.play_controls(training_page.epochs_of(shown))
    training_page.epoch_view(shown, method, look, seconds)
    st.subheader("One image through training")
    training_page.film_strip(shown, method, look)


page()
