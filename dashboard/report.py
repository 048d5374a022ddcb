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

from dashboard.service import (
    ExplanationResult,
    LoadedImage,
    MethodSummary,
    ModelSummary,
    Prediction,
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


def result_caption(result: ExplanationResult) -> str:
    where = f" · layer {result.layer}" if result.layer else ""
    return f"{result.target_label} (p={result.score:.3f}){where} · {result.seconds:.2f} s"


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
"""


def html_report(
    *,
    model: ModelSummary,
    image: LoadedImage,
    predictions: Sequence[Prediction],
    entries: Sequence[ReportEntry],
    settings: DisplaySettings,
    versions: Mapping[str, str],
    generated: dt.datetime | None = None,
) -> str:
    """A self-contained HTML review report of the explanations of one image by one model."""
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
                ("Target class", f"{result.target} · {result.target_label}"),
                ("Probability", f"{result.score:.4f}"),
                ("Layer", result.layer or "—"),
                ("Engine", result.engine),
                ("Time", f"{result.seconds:.2f} s"),
            ]
            params = sorted(result.params.items())
            extras = sorted(result.extras.items())
            body = (
                "<div class='pics'>"
                f"<figure>{_img(image.pixels, 'input image')}"
                "<figcaption>input</figcaption></figure>"
                f"<figure>{_img(entry.overlay, method.label + ' overlay')}"
                "<figcaption>overlay</figcaption></figure>"
                f"<figure>{_img(entry.heatmap, method.label + ' heatmap')}"
                "<figcaption>heatmap</figcaption></figure></div>"
                + _table(facts)
                + "<p><b>Parameters (resolved)</b></p>"
                + (_table(params, "params") if params else "<p class='muted'>none</p>")
                + ("<p><b>Extras</b></p>" + _table(extras) if extras else "")
            )
        method_blocks.append(f"<section class='method'>{head}{body}</section>")
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
<h2>Display</h2><p>{esc(settings.describe())}. Display settings change only the pictures, never
the raw attributions.</p>
<h2>Methods</h2>{"".join(method_blocks)}
<h2>Versions</h2>{_table(version_rows)}
</body></html>
"""
