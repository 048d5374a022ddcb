"""The Guide page's own widgets: the overview table of the methods and each method's guide
(description, formula, caveats, parameters, paper)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from dashboard.service import MethodSummary
from dashboard.widgets.pickers import ENGINE_LABELS
from explainers import ParamSpec

FAMILY_LABELS = {"gradient": "Gradient", "perturbation": "Perturbation", "cam": "CAM"}


def methods_overview(methods: Sequence[MethodSummary], with_model: bool) -> None:
    rows = []
    for m in methods:
        row = {
            "Method": m.label,
            "Family": FAMILY_LABELS.get(m.family, m.family),
            "Cost": m.cost,
            "Uses a layer": "yes" if m.uses_layer else "",
            "Engines": ", ".join(ENGINE_LABELS.get(e, e) for e in m.engines),
        }
        if with_model:
            row["Applies to this model"] = "yes" if m.applicable else f"no — {m.reason}"
        rows.append(row)
    # A plain column, not the index: st.table draws an index as a greyed header column.
    st.table(pd.DataFrame(rows).style.hide(axis="index"))


def _range_text(spec: ParamSpec) -> str:
    if spec.kind == "int":
        return f"{int(spec.low or 0):,} – {int(spec.high or 0):,}"
    return f"{spec.low:g} – {spec.high:g}"


def method_guide(method: MethodSummary, with_model: bool) -> None:
    family = FAMILY_LABELS.get(method.family, method.family)
    st.subheader(method.label, anchor=method.name)
    st.caption(f"{family} method · `{method.name}` · cost: {method.cost}")
    st.markdown(method.description)
    if method.formula:
        st.latex(method.formula)
    if method.caveats:
        st.markdown(f"**Caveats.** {method.caveats}")
    if method.params:
        rows = [
            {
                "Parameter": p.name,
                "Default": str(p.default),
                "Range / choices": (
                    "on / off"
                    if p.kind == "bool"
                    else ", ".join(map(str, p.choices))
                    if p.choices
                    else _range_text(p)
                    if p.low is not None and p.high is not None
                    else ""
                ),
                "Meaning": p.help + (" (advanced)" if p.advanced else ""),
            }
            for p in method.params
        ]
        st.table(pd.DataFrame(rows).set_index("Parameter"))
    if with_model and not method.applicable:
        st.warning(f"Not available for the loaded model: {method.reason}")
    st.markdown(f"**Paper:** [{method.reference}]({method.reference_url})")
