"""A method's parameter controls, one per ``ParamSpec`` of the method (advanced ones in an
expander). Changing one recomputes the explanation."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard import state
from dashboard.service import MethodSummary
from dashboard.state import Page
from explainers import ParamSpec


def param_label(spec: ParamSpec) -> str:
    return spec.label


def _param_widget(page: Page, method: MethodSummary, spec: ParamSpec) -> Any:
    key = state.key(page, f"{method.name}_{spec.name}")
    common: dict[str, Any] = {"key": key, "help": spec.help, "persist_state": "session"}
    if spec.kind == "bool":
        state.default(key, bool(spec.default))
        return st.checkbox(param_label(spec), **common)
    if spec.kind == "choice":
        options = list(spec.choices or ())
        state.default_option(key, options, spec.default)
        return st.selectbox(param_label(spec), options, **common)
    bounded = spec.low is not None and spec.high is not None
    if spec.kind == "int":
        state.default(key, int(spec.default))
        return int(
            st.number_input(
                param_label(spec),
                min_value=int(spec.low) if spec.low is not None else None,
                max_value=int(spec.high) if spec.high is not None else None,
                step=int(spec.step or 1),
                **common,
            )
        )
    state.default(key, float(spec.default))
    if bounded:
        assert spec.low is not None and spec.high is not None
        return float(
            st.slider(
                param_label(spec),
                float(spec.low),
                float(spec.high),
                step=float(spec.step or (spec.high - spec.low) / 100),
                **common,
            )
        )
    return float(st.number_input(param_label(spec), step=float(spec.step or 0.01), **common))


def param_controls(page: Page, method: MethodSummary, columns: int = 1) -> dict[str, Any]:
    """Widgets for every parameter of ``method`` (advanced ones in an expander); returns their
    values by parameter name."""
    values: dict[str, Any] = {}
    basic = [p for p in method.params if not p.advanced]
    advanced = [p for p in method.params if p.advanced]

    def lay_out(specs: list[ParamSpec]) -> None:
        if not specs:
            return
        n = max(1, min(columns, len(specs)))
        cells = st.columns(n) if n > 1 else None
        for i, spec in enumerate(specs):
            if cells is None:
                values[spec.name] = _param_widget(page, method, spec)
            else:
                with cells[i % n]:
                    values[spec.name] = _param_widget(page, method, spec)

    lay_out(basic)
    if advanced:
        with st.expander("Advanced parameters"):
            lay_out(advanced)
    if not method.params:
        st.caption("This method has no parameters.")
    return values
