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


def predictions_table(predictions: Sequence[Prediction], target: int, k: int = 5) -> None:
    rows = [
        {
            "Class": ("▶ " if p.index == target else "") + p.name,
            "Probability": p.probability,
        }
        for p in predictions[:k]
    ]
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        column_config={
            "Probability": st.column_config.ProgressColumn(
                "Probability", min_value=0.0, max_value=1.0, format="percent"
            )
        },
    )


def result_facts(result: ExplanationResult, method: MethodSummary) -> None:
    facts = [
        # From the result itself, not the widgets: what was computed, for which class.
        f"**Method:** {result.method_label} (`{result.method}`)",
        f"**Target:** {result.target_label} (class {result.target}, p = {result.score:.3f})",
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
