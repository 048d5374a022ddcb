"""The Explain page's own widgets: the method picker, the facts of a result and the top
predictions."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from dashboard import report, state
from dashboard.service import ExplanationResult, MethodSummary, ModelSummary, Prediction
from dashboard.state import Page
from dashboard.widgets.pickers import ENGINE_LABELS, method_label

#: The method the Explain page opens with.
DEFAULT_METHOD = "grad_cam"


def method_picker(page: Page, model: ModelSummary, default: str = DEFAULT_METHOD) -> MethodSummary:
    names = [m.name for m in model.methods]
    key = state.key(page, "method")
    state.default_option(key, names, default if default in names else names[0])
    name = st.selectbox(
        "Method",
        names,
        key=key,
        format_func=method_label(model),
        persist_state="session",
        help="See the Guide page for what each method computes.",
    )
    return model.method(name)


def predictions_title(model: ModelSummary) -> str:
    return {
        "multilabel": "Labels",
        "regression": "Outputs",
        "segmentation": "Predicted pixels per class",
    }.get(model.task, "Top predictions")


def predictions_table(
    predictions: Sequence[Prediction],
    target: int,
    model: ModelSummary | None = None,
    k: int = 5,
) -> None:
    """The model's top classes (a multi-label model: every label; a segmentation: each class's
    share of the predicted pixels; a regression: the values), the explained one marked."""
    task = model.task if model is not None else "classification"
    word = {"multilabel": "Label", "regression": "Output"}.get(task, "Class")
    column = {"segmentation": "Pixels", "regression": "Value"}.get(task, "Probability")
    shown = predictions if task in ("multilabel", "segmentation") else predictions[:k]
    rows = [
        {word: ("▶ " if p.index == target else "") + p.name, column: p.probability} for p in shown
    ]
    config = (
        {column: st.column_config.NumberColumn(column, format="%.4g")}
        if task == "regression"
        else {
            column: st.column_config.ProgressColumn(
                column, min_value=0.0, max_value=1.0, format="percent"
            )
        }
    )
    st.dataframe(rows, hide_index=True, width="stretch", column_config=config)


def _target_fact(result: ExplanationResult) -> str:
    """What was explained and its score, in the task's words."""
    task = result.task
    if task == "segmentation":
        return f"**Target:** {result.target_text} · region's mean p = {result.score:.3f}"
    if task == "regression":
        return f"**Target:** {result.target_text} (value = {result.score:.4g})"
    if task == "multilabel":
        return f"**Target:** label {result.target_label} (p = {result.score:.3f})"
    return f"**Target:** {result.target_label} (class {result.target}, p = {result.score:.3f})"


def result_facts(result: ExplanationResult, method: MethodSummary) -> None:
    facts = [
        # From the result itself, not the widgets: what was computed, for which class.
        f"**Method:** {result.method_label} (`{result.method}`)",
        _target_fact(result),
        f"**Time:** {result.seconds:.2f} s · **engine:** {ENGINE_LABELS.get(result.engine)}",
    ]
    if result.layer:
        facts.append(f"**Layer:** `{result.layer}`")
    params = ", ".join(f"{k} = {v}" for k, v in sorted(result.params.items()))
    facts.append(f"**Parameters:** {params or 'none'}")
    magnitude = report.magnitude_text(result)
    if magnitude:
        facts.append(f"**Raw values:** {magnitude}")
    for name, value in sorted(result.extras.items()):
        if name in report.EXTRAS_SHOWN_APART:
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        facts.append(f"**{name.replace('_', ' ')}:** {shown}")
    st.markdown("  \n".join(facts))
    st.caption(f"{method.description} See the Guide page for the formula and caveats.")
