"""Evaluate: how faithful and how well-placed each method's map is, and whether it depends on the
model at all."""

from __future__ import annotations

import streamlit as st

from dashboard.computation import Failure
from dashboard.pages import evaluate as evaluate_page
from dashboard.report import method_labels
from dashboard.service import ModelSummary
from dashboard.widgets import frame, pickers, running

PAGE = "evaluate"

METRICS = """
- **Deletion** ([Petsiuk et al. 2018](https://arxiv.org/abs/1806.07421)): remove the pixels the
  map ranks highest first and watch the class probability — a faithful map makes it collapse
  quickly, so a **lower** area under the curve (AUC) is better.
- **Insertion** (same paper): restore the pixels the map ranks highest first onto a blurred copy —
  the probability should climb quickly, so a **higher** AUC is better.
- **Pointing game** ([Zhang et al. 2018](https://arxiv.org/abs/1608.00507)): does the map's single
  highest pixel fall on the object?
- **Energy in mask** ([Wang et al. 2020](https://arxiv.org/abs/1910.01279)): the share of the map's
  positive mass that lies on the object (a map spread evenly scores the object's area).
- **Random (chance)**: the same protocol with a random map. A method that does not beat it tells
  you nothing about the model.
"""

SANITY = """
A map that explains the *model* must change when the model's learnt weights are replaced by random
ones ([Adebayo et al. 2018](https://arxiv.org/abs/1810.03292), model-parameter randomisation). The
test re-initialises the weights block by block from the output, recomputes each map, and measures
its rank correlation (Spearman ρ) with the original map. The whole cascade is judged, not its last
step (where even the first layer is random and every map decorrelates): a method whose map stays
similar (ρ above 0.5) while the **top half** of the blocks is randomised is **flagged** as
insensitive to those layers — it reflects the image (its edges and colours) more than what the
network learnt there, which is what the paper found for guided backprop on deep networks. Each
verdict says through how many blocks the map stayed similar. It runs each method once per block
on copies of the model, so it takes a few seconds — press the button.
"""


def page() -> None:
    header = frame.page_header(
        "Evaluate", "Measure the maps: do they find what the model uses, and the object?"
    )
    if header is None:
        return
    model, image, predictions = header
    labels = method_labels(model)

    target = pickers.wide_target_picker(PAGE, model, predictions, image)
    methods_col, target_col = st.columns([3, 1])
    with methods_col:
        chosen = pickers.methods_multiselect(
            PAGE, model, "Methods to evaluate", evaluate_page.DEFAULT_EVALUATION
        )
    with target_col:
        if not pickers.is_wide(model):
            target = pickers.target_picker(PAGE, model, predictions, image)
    if target is None:
        return  # a segmentation region still to choose: its picker says how
    methods = evaluate_page.skipped_methods(chosen)

    protocol_col, truth_col = st.columns([1.6, 1])
    with protocol_col, st.container(border=True, key=f"{PAGE}_protocol_box"):
        st.markdown("**Deletion and insertion protocol**")
        protocol = evaluate_page.curve_controls(PAGE)
        st.markdown(METRICS)
    with truth_col, st.container(border=True, key=f"{PAGE}_truth_box"):
        st.markdown("**Ground truth**")
        mask = evaluate_page.ground_truth(PAGE, image)
        if mask is None and model.task == "segmentation":
            st.caption(
                "No object mask chosen: the region being explained is the ground truth (the "
                "pixels the model gives the class, the clicked shape or the box)."
            )

    st.subheader("Faithfulness and localisation")
    if not methods:
        st.info("Pick at least one method above.")
    else:
        slot = st.empty()
        maps = evaluate_page.explanation_maps(PAGE, model, image, methods, target, slot)
        if maps:
            outcome = evaluate_page.run_evaluation(model, image, maps, target, mask, protocol, slot)
            if isinstance(outcome, Failure):
                running.show_failure(outcome, f"{PAGE}_curves")
            else:
                evaluate_page.curve_figures(PAGE, outcome, labels, target_name(model, target))
                evaluate_page.ranking_table(outcome, labels)

    st.subheader("Sanity check: does the map depend on the model?")
    st.markdown(SANITY)
    tested, mode = evaluate_page.sanity_controls(PAGE, model)
    names = tuple(m.name for m in evaluate_page.skipped_methods(tested))
    if evaluate_page.sanity_requested(PAGE, model, image, names, target, mode):
        outcome = evaluate_page.run_sanity(model, image, names, target, mode, st.empty())
        if isinstance(outcome, Failure):
            running.show_failure(outcome, f"{PAGE}_sanity")
        else:
            chart_col, verdict_col = st.columns([1.5, 1])
            with chart_col:
                evaluate_page.sanity_figure(PAGE, outcome, labels)
            with verdict_col:
                evaluate_page.sanity_verdicts(outcome, labels)
            evaluate_page.sanity_map_grid(PAGE, outcome, labels)

    st.subheader("Export")
    st.caption(
        "The scores, curves and sanity verdicts computed above for this model and image. The "
        "Compare and Explain pages' HTML reports include them too."
    )
    evaluate_page.evaluation_downloads(PAGE, model, image, predictions, labels)


def target_name(model: ModelSummary, target: int | str) -> str:
    """The class or label a target reads, for the curves' titles."""
    if isinstance(target, int):
        return model.class_names[target]
    unit = target.split(":")[1] if ":" in target else target
    if unit.isdigit() and int(unit) < model.n_classes:
        return model.class_names[int(unit)]
    return unit


page()
