"""Plotly figures of the Evaluate page: deletion / insertion curves and the sanity check's
correlations. Pure functions from the service's plain results to figures; nothing here computes
a model call, so redrawing a figure is always cheap."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from dashboard.protocol import MapEvaluation, SanityOutcome
from explainers.evaluation.metrics import RANDOM_ROW

RANDOM_LABEL = "Random (chance)"
RANDOM_COLOUR = "#8a939e"
#: One colour per method, in the order the methods are listed (Plotly's default palette minus
#: its grey-ish entries, so that no method is mistaken for the random baseline).
PALETTE = (
    "#2563eb",
    "#dc2626",
    "#059669",
    "#9333ea",
    "#ea580c",
    "#0891b2",
    "#db2777",
    "#65a30d",
    "#b45309",
    "#4f46e5",
)
CURVE_TITLES = {
    "deletion": "Deletion: most important pixels removed first · lower area is better",
    "insertion": "Insertion: most important pixels restored first · higher area is better",
}
CURVE_AXES = {"deletion": "Share of pixels removed", "insertion": "Share of pixels restored"}


def method_colours(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per map name (the random row always grey)."""
    colours: dict[str, str] = {}
    for i, name in enumerate(n for n in names if n != RANDOM_ROW):
        colours[name] = PALETTE[i % len(PALETTE)]
    colours[RANDOM_ROW] = RANDOM_COLOUR
    return colours


def _layout(figure: go.Figure, *, title: str, height: int) -> go.Figure:
    figure.update_layout(
        title={"text": title, "font": {"size": 14}, "x": 0.0, "xanchor": "left"},
        height=height,
        margin={"l": 56, "r": 12, "t": 44, "b": 44},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.22, "x": 0.0, "font": {"size": 12}},
        hovermode="x unified",
    )
    return figure


def curves_figure(
    rows: Sequence[MapEvaluation],
    kind: str,
    labels: Mapping[str, str],
    *,
    class_name: str,
    height: int = 400,
) -> go.Figure:
    """Every row's ``kind`` ("deletion" or "insertion") curve: the target class's probability
    against the share of pixels removed / restored; the random row dashed grey. The legend gives
    each curve's area under the curve (AUC)."""
    if kind not in CURVE_TITLES:
        raise ValueError(f"kind must be 'deletion' or 'insertion', got {kind!r}")
    colours = method_colours([row.name for row in rows])
    figure = go.Figure()
    for row in rows:
        curve = row.deletion if kind == "deletion" else row.insertion
        is_random = row.name == RANDOM_ROW
        label = RANDOM_LABEL if is_random else labels.get(row.name, row.name)
        figure.add_trace(
            go.Scatter(
                x=curve.fractions,
                y=curve.probabilities,
                mode="lines",
                name=f"{label} · AUC {curve.auc:.3f}",
                line={
                    "color": colours[row.name],
                    "width": 2 if is_random else 2.5,
                    "dash": "dash" if is_random else "solid",
                },
                hovertemplate=f"{label}: %{{y:.3f}}<extra></extra>",
            )
        )
    figure.update_xaxes(title_text=CURVE_AXES[kind], tickformat=".0%", range=[0, 1])
    figure.update_yaxes(title_text=f"p({class_name})", range=[-0.02, 1.02])
    return _layout(figure, title=CURVE_TITLES[kind], height=height)


def sanity_figure(
    outcome: SanityOutcome, labels: Mapping[str, str], *, height: int = 400
) -> go.Figure:
    """Spearman ρ of each method's absolute map with its original, after each randomisation step
    (the original model is the first point, ρ = 1); flagged methods are marked in the legend and
    the verdict's threshold is a dotted line."""
    cascading = outcome.mode == "cascading"
    steps = ["original model"] + [
        (f"… + {name}" if cascading and i else name) for i, name in enumerate(outcome.step_names)
    ]
    colours = method_colours(list(outcome.methods))
    figure = go.Figure()
    for method in outcome.methods:
        label = labels.get(method, method)
        if outcome.flagged.get(method):
            label = f"⚑ {label} (flagged)"
        values = [1.0, *(None if math.isnan(v) else v for v in outcome.correlations[method])]
        figure.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=label,
                line={"color": colours[method], "width": 2.5},
                marker={"size": 8},
                hovertemplate=f"{label}: ρ = %{{y:.2f}}<extra></extra>",
            )
        )
    figure.add_hline(
        y=outcome.threshold,
        line={"color": RANDOM_COLOUR, "dash": "dot", "width": 1.5},
        annotation_text=f"similar above ρ = {outcome.threshold:g}",
        annotation_position="top right",
        annotation_font={"size": 11, "color": "#5b6470"},
    )
    figure.update_xaxes(
        title_text="Weights randomised (output side first)"
        if cascading
        else "Block randomised alone",
    )
    figure.update_yaxes(title_text="Spearman ρ with the original map", range=[-1.05, 1.05])
    title = (
        "Cascading randomisation: a trustworthy map drifts away from the original"
        if cascading
        else "Independent randomisation: each block re-initialised on its own"
    )
    return _layout(figure, title=title, height=height)
