"""Exports: overlay PNGs, raw ``.npy`` maps, one PNG of a comparison grid, and a self-contained
HTML review report (every picture base64-embedded, no external resource).

Plain Python (no Streamlit), so a script or a test can build the same files.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dashboard.charts import RANDOM_LABEL, RANDOM_ROW
from dashboard.service import (
    EvaluationOutcome,
    ExplanationResult,
    LoadedImage,
    MethodSummary,
    ModelSummary,
    Prediction,
    SanityOutcome,
)
from dashboard.visuals import DisplaySettings, compose_grid, enlarge
from explainers import render


@dataclass(frozen=True)
class ReportEntry:
    """One method in a report: its result and pictures, or why there is none."""

    method: MethodSummary
    result: ExplanationResult | None = None
    overlay: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    problem: str | None = None


def png_bytes(rgb: np.ndarray) -> bytes:
    return render.to_png(rgb)


def npy_bytes(attribution: np.ndarray) -> bytes:
    """The raw float32 map as a ``.npy`` file (``numpy.load`` reads it back)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(attribution, np.float32), allow_pickle=False)
    return buffer.getvalue()


def file_stem(*parts: str) -> str:
    """A safe file name stem from parts (``shapes_circle_1-grad_cam``)."""
    text = "-".join(p for p in parts if p)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120] or "export"


#: Result extras shown in their own place (warnings as boxes, the magnitude as one line).
EXTRAS_SHOWN_APART = frozenset({"warnings", "magnitude", "target"})


def magnitude(result: ExplanationResult) -> dict[str, Any] | None:
    """The library's ``extras["magnitude"]`` (raw range, sum, units, explained score), if any."""
    value = result.extras.get("magnitude")
    return value if isinstance(value, dict) and "max_abs" in value else None


def magnitude_text(result: ExplanationResult) -> str | None:
    """The map's range and sum in its own units, and the score it explains, as one line."""
    found = magnitude(result)
    if found is None:
        return None
    units = found.get("units") or "attribution units"
    text = f"min {found['min']:.3g}, max {found['max']:.3g}, sum {found['sum']:.3g} ({units})"
    if found.get("score_text"):
        text += f"; explained score: {found['score_text']}"
    return text


def map_units(result: ExplanationResult) -> str:
    found = magnitude(result)
    return str((found or {}).get("units") or "attribution")


def method_labels(model: ModelSummary) -> dict[str, str]:
    """Each method's label by registry name: what the reports, tables and charts call it."""
    return {m.name: m.label for m in model.methods}


def target_summary(result: ExplanationResult) -> str:
    """What a result explains and its score, short: "star (p = 0.981)", "square, 153 px region
    (mean p = 0.950)", "what decreases value (value = 3.2)"."""
    task = result.task
    if task == "regression":
        return f"{result.target_text} (value = {result.score:.4g})"
    if task == "segmentation":
        pixels = (result.extras.get("target") or {}).get("region_pixels")
        region = f", {pixels} px region" if pixels else ""
        return f"{result.target_label}{region} (mean p = {result.score:.3f})"
    return f"{result.target_label} (p = {result.score:.3f})"


def result_caption(result: ExplanationResult) -> str:
    where = f" · layer {result.layer}" if result.layer else ""
    return f"{target_summary(result)}{where} · {result.seconds:.2f} s"


def grid_png(
    entries: Sequence[ReportEntry],
    title: str | None = None,
    image: np.ndarray | None = None,
    image_caption: str = "",
    max_columns: int = 5,
) -> bytes:
    """One PNG of every computed overlay in ``entries`` with its method and target, after the
    input ``image`` when given."""
    panels = [
        (entry.method.label, result_caption(entry.result), entry.overlay)
        for entry in entries
        if entry.result is not None and entry.overlay is not None
    ]
    if not panels:
        raise ValueError("no computed explanation to export")
    if image is not None:
        panels.insert(0, ("Input", image_caption, image))
    columns = len(panels) if len(panels) <= max_columns else 4
    return png_bytes(compose_grid(panels, columns=columns, title=title))


def _img(rgb: np.ndarray, alt: str, width: int = 240) -> str:
    data = base64.b64encode(png_bytes(enlarge(rgb, 2 * width))).decode("ascii")
    return (
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
        f'width="{width}" height="{width}" style="object-fit:contain">'
    )


def _table(rows: Sequence[tuple[str, Any]], cls: str = "kv") -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows
    )
    return f'<table class="{cls}">{cells}</table>'


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str)
    return str(value)


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1b1f24;line-height:1.45;padding:0 1rem}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{font-size:1.3rem;border-bottom:2px solid #e3e6ea;
padding-bottom:.3rem;margin-top:2rem}h3{font-size:1.1rem;margin:.2rem 0}
.muted{color:#5b6470;font-size:.92rem}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:.88rem;word-break:break-all}
table{border-collapse:collapse;margin:.5rem 0}th,td{text-align:left;padding:.25rem .8rem .25rem 0;
vertical-align:top;border-bottom:1px solid #eef0f2}th{color:#5b6470;font-weight:600}
.method{border:1px solid #e3e6ea;border-radius:10px;padding:1rem;margin:1rem 0;break-inside:avoid}
.pics{display:flex;gap:1rem;flex-wrap:wrap;align-items:flex-start}.pics figure{margin:0}
figcaption{font-size:.85rem;color:#5b6470;text-align:center}
.problem{color:#8a4b00;background:#fff6e5;border-radius:6px;padding:.5rem .8rem}
.flag{color:#8a4b00}.pass{color:#1d6b35}svg{background:#fafbfc;border:1px solid #eef0f2}
"""

#: Line colours of the curve charts (the random row is grey and dashed).
_COLOURS = ("#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626")


def beats_random(
    deletion: float, insertion: float, random_deletion: float, random_insertion: float
) -> str:
    """Whether a map beats the random map: lower deletion AUC and/or higher insertion AUC."""
    lower, higher = deletion < random_deletion, insertion > random_insertion
    if lower and higher:
        return "yes, on both"
    if lower:
        return "deletion only"
    if higher:
        return "insertion only"
    return "no"


def evaluation_rows(outcome: EvaluationOutcome, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """The Evaluate page's ranking as plain rows, best first (insertion AUC − deletion AUC)."""
    random = next(r for r in outcome.rows if r.name == RANDOM_ROW)
    rows = []
    for row in outcome.rows:
        is_random = row.name == RANDOM_ROW
        rows.append(
            {
                "method": row.name,
                "label": RANDOM_LABEL if is_random else labels.get(row.name, row.name),
                "deletion_auc": float(row.deletion.auc),
                "insertion_auc": float(row.insertion.auc),
                "pointing_game": None
                if row.pointing is None
                else ("hit" if row.pointing else "miss"),
                "energy_in_mask": row.energy,
                "beats_random": "—"
                if is_random
                else beats_random(
                    row.deletion.auc, row.insertion.auc, random.deletion.auc, random.insertion.auc
                ),
            }
        )
    rows.sort(key=lambda r: r["insertion_auc"] - r["deletion_auc"], reverse=True)
    return rows


def evaluation_json(
    evaluation: EvaluationOutcome | None,
    sanity: SanityOutcome | None,
    labels: Mapping[str, str],
    context: Mapping[str, Any],
) -> str:
    """Everything the Evaluate page computed, as JSON: scores, full curves, sanity ρ and
    verdicts, with ``context`` (model and image SHA-256, target, protocol)."""
    payload: dict[str, Any] = {"context": dict(context)}
    if evaluation is not None:
        payload["evaluation"] = {
            "target": evaluation.target,
            "step": evaluation.step,
            "deletion_substrate": evaluation.deletion_substrate,
            "insertion_substrate": evaluation.insertion_substrate,
            "ranking": evaluation_rows(evaluation, labels),
            "curves": {
                row.name: {
                    kind: {
                        "fractions": [float(v) for v in getattr(row, kind).fractions],
                        "probabilities": [float(v) for v in getattr(row, kind).probabilities],
                    }
                    for kind in ("deletion", "insertion")
                }
                for row in evaluation.rows
            },
        }
    if sanity is not None:
        payload["sanity"] = {
            "mode": sanity.mode,
            "target": sanity.target,
            "rule": sanity.rule,
            "threshold": sanity.threshold,
            "steps": list(sanity.step_names),
            "methods": {
                m: {
                    "label": labels.get(m, m),
                    "flagged": sanity.flagged[m],
                    "verdict": sanity.verdicts[m],
                    "spearman_abs": [_finite(v) for v in sanity.correlations[m]],
                    "spearman_signed": [_finite(v) for v in sanity.signed_correlations[m]],
                }
                for m in sanity.methods
            },
        }
    return json.dumps(payload, indent=2)


def _finite(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def _curves_svg(outcome: EvaluationOutcome, kind: str, labels: Mapping[str, str]) -> str:
    """One deletion or insertion chart as inline SVG (no script, no external resource)."""
    width, height, pad = 420, 260, 36
    lines, legend = [], []
    for i, row in enumerate(outcome.rows):
        curve = getattr(row, kind)
        is_random = row.name == RANDOM_ROW
        colour = "#8b95a1" if is_random else _COLOURS[i % len(_COLOURS)]
        points = " ".join(
            f"{pad + f * (width - 2 * pad):.1f},{height - pad - p * (height - 2 * pad):.1f}"
            for f, p in zip(curve.fractions, np.clip(curve.probabilities, 0, 1), strict=True)
        )
        dash = ' stroke-dasharray="5,4"' if is_random else ""
        lines.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{points}"/>'
        )
        name = RANDOM_LABEL if is_random else labels.get(row.name, row.name)
        legend.append(
            f'<span style="color:{colour}">■</span> {html.escape(name)} (AUC {curve.auc:.3f})'
        )
    axes = (
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#5b6470"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#5b6470"/>'
        f'<text x="{width / 2}" y="{height - 8}" font-size="11" text-anchor="middle">fraction of '
        f"pixels {'removed' if kind == 'deletion' else 'restored'}</text>"
        f'<text x="{pad - 4}" y="{pad}" font-size="10" text-anchor="end">1</text>'
        f'<text x="{pad - 4}" y="{height - pad}" font-size="10" text-anchor="end">0</text>'
    )
    title = (
        "Deletion (lower AUC is better)" if kind == "deletion" else "Insertion (higher is better)"
    )
    return (
        f"<figure><svg width='{width}' height='{height}' role='img' aria-label='{title}'>"
        f"{axes}{''.join(lines)}</svg><figcaption>{title}<br>{'<br>'.join(legend)}"
        "</figcaption></figure>"
    )


def evaluation_section(
    outcome: EvaluationOutcome, labels: Mapping[str, str], class_name: str
) -> str:
    """HTML: the ranking table and both curve charts."""
    esc = html.escape
    rows = evaluation_rows(outcome, labels)
    with_mask = any(r["pointing_game"] is not None for r in rows)
    head = "<tr><th>Method</th><th>Deletion AUC ↓</th><th>Insertion AUC ↑</th>"
    head += "<th>Pointing game</th><th>Energy in mask</th>" if with_mask else ""
    head += "<th>Beats random</th></tr>"
    body = ""
    for r in rows:
        body += f"<tr><td>{esc(r['label'])}</td><td>{r['deletion_auc']:.3f}</td>"
        body += f"<td>{r['insertion_auc']:.3f}</td>"
        if with_mask:
            energy = "—" if r["energy_in_mask"] is None else f"{r['energy_in_mask']:.1%}"
            body += f"<td>{esc(r['pointing_game'] or '—')}</td><td>{energy}</td>"
        body += f"<td>{esc(r['beats_random'])}</td></tr>"
    protocol = (
        f"Target class: {esc(class_name)} ({outcome.target}). "
        f"{len(outcome.rows[0].deletion.fractions)} points per curve (step {outcome.step:g}); "
        f"deletion onto the {esc(outcome.deletion_substrate)} substrate, insertion from the "
        f"{esc(outcome.insertion_substrate)} substrate (Petsiuk et al. 2018). Sorted by "
        "insertion AUC − deletion AUC."
    )
    charts = "".join(_curves_svg(outcome, kind, labels) for kind in ("deletion", "insertion"))
    return (
        f"<p class='muted'>{protocol}</p><table>{head}{body}</table>"
        f"<div class='pics'>{charts}</div>"
    )


def sanity_section(outcome: SanityOutcome, labels: Mapping[str, str]) -> str:
    """HTML: the randomisation test's ρ per step and each method's verdict with the rule."""
    esc = html.escape
    cascading = outcome.mode == "cascading"
    steps = "".join(
        f"<th>{'+ ' if cascading and i else ''}{esc(name)}</th>"
        for i, name in enumerate(outcome.step_names)
    )
    body = ""
    for m in outcome.methods:
        cells = "".join(
            "<td>—</td>" if not np.isfinite(v) else f"<td>{v:.2f}</td>"
            for v in outcome.correlations[m]
        )
        body += f"<tr><td>{esc(labels.get(m, m))}</td>{cells}</tr>"

    def sentence(method: str) -> str:
        # The library's verdict starts with the registry name ("guided_backprop: passes — …").
        verdict = outcome.verdicts[method]
        return verdict.split(": ", 1)[1] if verdict.startswith(f"{method}: ") else verdict

    verdicts = "".join(
        f"<li class='{'flag' if outcome.flagged[m] else 'pass'}'><b>{esc(labels.get(m, m))}</b>: "
        f"{esc(sentence(m))}</li>"
        for m in outcome.methods
    )
    return (
        "<p class='muted'>Model-parameter randomisation (Adebayo et al. 2018), "
        f"{esc(outcome.mode)} mode, target class {outcome.target}: Spearman ρ of the absolute "
        "maps with the original map after each step (output side first).</p>"
        f"<table><tr><th>Method</th>{steps}</tr>{body}</table><ul>{verdicts}</ul>"
        f"<p class='muted'>Rule: {esc(outcome.rule)}.</p>"
    )


def html_report(
    *,
    model: ModelSummary,
    image: LoadedImage,
    predictions: Sequence[Prediction],
    entries: Sequence[ReportEntry],
    settings: DisplaySettings,
    versions: Mapping[str, str],
    generated: dt.datetime | None = None,
    evaluation: EvaluationOutcome | None = None,
    sanity: SanityOutcome | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """A self-contained HTML review report of the explanations of one image by one model, with
    the Evaluate page's faithfulness scores and curves (``evaluation``) and the randomisation
    sanity check (``sanity``) when given: they must be for this model and image."""
    generated = generated or dt.datetime.now(dt.UTC)
    esc = html.escape
    width, height = image.size
    model_rows = [
        ("File", model.ref.file_name),
        ("SHA-256", model.sha256 or "n/a (keras.applications, ImageNet weights)"),
        ("Layers", model.n_layers),
        ("Parameters", f"{model.n_params:,}"),
        ("Input", f"{model.input_size[0]}×{model.input_size[1]}×{model.channels}"),
        ("Preprocessing", f"{model.preprocessing} ({model.preprocessing_reason})"),
        ("Classes", model.n_classes),
        ("Output", model.output_kind),
    ]
    if model.ref.labels_name:
        model_rows.append(("Labels file", model.ref.labels_name))
    image_rows = [
        ("Name", image.name),
        ("SHA-256", image.sha256),
        ("Size", f"{width}×{height} px"),
        ("Source", image.source),
    ]
    prediction_rows = "".join(
        f"<tr><td>{p.index}</td><td>{esc(p.name)}</td><td>{p.probability:.4f}</td></tr>"
        for p in predictions
    )
    method_blocks = []
    for entry in entries:
        method = entry.method
        head = (
            f"<h3>{esc(method.label)} <span class='muted mono'>{esc(method.name)}</span></h3>"
            f"<p class='muted'>{esc(method.description)} "
            f"<a href='{esc(method.reference_url)}'>{esc(method.reference)}</a></p>"
        )
        result = entry.result
        if result is None or entry.overlay is None or entry.heatmap is None:
            body = f"<p class='problem'>Not computed: {esc(entry.problem or 'no result')}</p>"
        else:
            facts = [
                ("Target", f"{result.target} · {result.target_text}"),
                ("Probability", f"{result.score:.4f}"),
                ("Layer", result.layer or "—"),
                ("Engine", result.engine),
                ("Time", f"{result.seconds:.2f} s"),
            ]
            found = magnitude(result)
            if found is not None:
                units = found.get("units") or "attribution units"
                facts += [
                    ("Explained score", found.get("score_text") or f"{result.score:.6g}"),
                    (
                        "Raw map",
                        f"min {found['min']:.4g} · max {found['max']:.4g} · "
                        f"sum {found['sum']:.4g} · max |value| {found['max_abs']:.4g} "
                        f"({units})",
                    ),
                ]
            params = sorted(result.params.items())
            extras = sorted((k, v) for k, v in result.extras.items() if k not in EXTRAS_SHOWN_APART)
            warnings = "".join(
                f"<p class='problem'>⚠ {esc(str(w))}</p>"
                for w in result.extras.get("warnings") or ()
            )
            body = (
                "<div class='pics'>"
                f"<figure>{_img(image.pixels, 'input image')}"
                "<figcaption>input</figcaption></figure>"
                f"<figure>{_img(entry.overlay, method.label + ' overlay')}"
                "<figcaption>overlay</figcaption></figure>"
                f"<figure>{_img(entry.heatmap, method.label + ' heatmap')}"
                "<figcaption>heatmap</figcaption></figure></div>"
                + warnings
                + _table(facts)
                + "<p><b>Parameters (resolved)</b></p>"
                + (_table(params, "params") if params else "<p class='muted'>none</p>")
                + ("<p><b>Extras</b></p>" + _table(extras) if extras else "")
            )
        method_blocks.append(f"<section class='method'>{head}{body}</section>")
    labels = dict(labels or {m.method.name: m.method.label for m in entries})
    evaluation_html = ""
    if evaluation is not None:
        class_name = model.class_names[evaluation.target]
        evaluation_html = "<h2>Faithfulness and localisation</h2>" + evaluation_section(
            evaluation, labels, class_name
        )
    if sanity is not None:
        evaluation_html += "<h2>Sanity check</h2>" + sanity_section(sanity, labels)
    methods_html = f"<h2>Methods</h2>{''.join(method_blocks)}" if method_blocks else ""
    display_html = (
        f"<h2>Display</h2><p>{esc(settings.describe())}. Display settings change only the "
        "pictures, never the raw attributions.</p>"
        if method_blocks
        else ""
    )
    version_rows = list(versions.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Explanation report: {esc(image.name)} · {esc(model.ref.file_name)}</title>
<style>{_CSS}</style></head>
<body>
<h1>Explanation review report</h1>
<p class="muted">Generated {esc(generated.strftime("%Y-%m-%d %H:%M:%S %Z"))} by the CNN explainer
dashboard (explainers {esc(versions.get("explainers", "?"))}).</p>
<h2>Model</h2>{_table(model_rows)}
<h2>Image</h2><div class="pics"><figure>{_img(image.pixels, "input image")}</figure>
{_table(image_rows)}</div>
<h2>Predictions</h2>
<table><tr><th>Index</th><th>Class</th><th>Probability</th></tr>{prediction_rows}</table>
{display_html}
{methods_html}
{evaluation_html}
<h2>Versions</h2>{_table(version_rows)}
</body></html>
"""
