"""Robustness: an adversarial example of the current image, and what the explanations make of it."""

from __future__ import annotations

import streamlit as st

from dashboard import components

PAGE = "robustness"
#: Explanations shown by default: one CAM map and one gradient map (both cheap).
DEFAULT_METHODS = ("grad_cam", "vanilla_gradients")
PAIRS_PER_ROW = 2


def page() -> None:
    header = components.page_header(
        "Robustness", "A change too small to see that changes the decision."
    )
    if header is None:
        return
    model, image, _ = header
    st.markdown(
        "An **adversarial example** adds a tiny, carefully chosen change to every pixel — often "
        "invisible — and the model changes its mind with high confidence. The explanations of "
        "both images show whether the evidence a map points at is what the decision rests on."
    )

    settings = components.attack_controls(PAGE, model)
    attacked = components.run_attack(model, image, settings, st.empty())
    if isinstance(attacked, components.Failure):
        components.show_failure(attacked, f"{PAGE}_attack")
        return
    outcome, adversarial = attacked

    components.attack_verdict(outcome, model)
    pictures_col, numbers_col = st.columns([3, 1.1])
    with pictures_col:
        components.attack_pictures(image, adversarial, outcome)
    with numbers_col:
        st.markdown("**Top predictions**")
        components.attack_predictions_table(outcome)
        components.adversarial_download(PAGE, image, outcome)
    components.attack_numbers(outcome)

    st.subheader("What the explanations see")
    methods_col, target_col = st.columns([1.5, 1.5])
    with methods_col:
        methods = components.methods_multiselect(
            PAGE, model, "Explanation methods", DEFAULT_METHODS
        )
    with target_col:
        choice = components.explanation_target_picker(PAGE)
    if not methods:
        st.info("Pick at least one method above.")
        return
    display = components.display_controls(PAGE)
    targets = components.explained_targets(outcome, choice)
    st.caption("Each method runs with its default parameters (tune them on the Explain page).")
    for start in range(0, len(methods), PAIRS_PER_ROW):
        row = methods[start : start + PAIRS_PER_ROW]
        for column, method in zip(st.columns(PAIRS_PER_ROW), row, strict=False):
            with column:
                components.explanation_pair(
                    PAGE, model, method, (image, adversarial), targets, display
                )


page()
