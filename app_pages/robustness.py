"""Robustness: an adversarial example of the current image, and what the explanations make of it."""

from __future__ import annotations

import streamlit as st

from dashboard.attacks import explained_targets
from dashboard.computation import Failure
from dashboard.pages import robustness as robustness_page
from dashboard.widgets import display, frame, pickers, running

PAGE = "robustness"
PAIRS_PER_ROW = 2


def page() -> None:
    header = frame.page_header("Robustness", "A change too small to see that changes the decision.")
    if header is None:
        return
    model, image, predictions = header
    st.markdown(
        "An **adversarial example** adds a tiny, carefully chosen change to every pixel — often "
        "invisible — and the model changes its mind with high confidence. The explanations of "
        "both images show whether the evidence a map points at is what the decision rests on."
    )

    if model.task == "regression":
        st.info(
            "An attack changes a decision: a class, a label, a region's class. A regression "
            "output has none, so there is nothing to flip. Explain what increases or decreases "
            "the value on the Explain page instead."
        )
        return
    # A segmentation model: the attack pushes one region's class (its summed logits) and
    # succeeds when the region's mean class probability changes its top class.
    subject = pickers.wide_target_picker(PAGE, model, predictions, image)
    if pickers.is_wide(model) and subject is None:
        return  # a region still to choose: its picker says how
    settings = robustness_page.attack_controls(PAGE, model)
    attacked = robustness_page.run_attack(
        model, image, settings, st.empty(), subject=subject if isinstance(subject, str) else None
    )
    if isinstance(attacked, Failure):
        running.show_failure(attacked, f"{PAGE}_attack")
        return
    outcome, adversarial = attacked

    robustness_page.attack_verdict(outcome, model)
    pictures_col, numbers_col = st.columns([3, 1.1])
    with pictures_col:
        robustness_page.attack_pictures(image, adversarial, outcome)
    with numbers_col:
        st.markdown("**Top predictions**")
        robustness_page.attack_predictions_table(outcome)
        robustness_page.adversarial_download(PAGE, image, outcome)
    robustness_page.attack_numbers(outcome)

    st.subheader("What the explanations see")
    methods_col, target_col = st.columns([1.5, 1.5])
    with methods_col:
        methods = pickers.methods_multiselect(
            PAGE, model, "Explanation methods", robustness_page.DEFAULT_METHODS
        )
    with target_col:
        choice = robustness_page.explanation_target_picker(PAGE)
    if not methods:
        st.info("Pick at least one method above.")
        return
    display_settings = display.display_controls(PAGE)
    targets = explained_targets(outcome, choice, subject if isinstance(subject, str) else None)
    st.caption("Each method runs with its default parameters (tune them on the Explain page).")
    for start in range(0, len(methods), PAIRS_PER_ROW):
        row = methods[start : start + PAIRS_PER_ROW]
        for column, method in zip(st.columns(PAIRS_PER_ROW), row, strict=False):
            with column:
                robustness_page.explanation_pair(
                    PAGE, model, method, (image, adversarial), targets, display_settings
                )


page()
