"""One self-contained HTML page that reports an audit run: what was run, how the model did per
class, what it looks at per class (mean maps), the SpRAy clusters with example images, and the
flags with their evidence.

The page has no external resource: inline CSS, pictures as ``data:image/png;base64`` thumbnails,
the SpRAy scatter as inline SVG, every text escaped. It is built from the run folder alone
(:func:`explainers.audit.open_run`) plus the images, which the folder does not store: they are read
again through the dataset its manifest records — a demo dataset is regenerated from its
``generator`` entry (and checked against the recorded fingerprint), a folder's or manifest's image
from the path in its table row. An image that cannot be read any more is shown as its stored map
alone, with a note. Nothing is recomputed: no model, no TensorFlow.

::

    from explainers import audit
    page = audit.audit_report("runs/shortcut", "grad_cam", examples=6)
    Path("runs/shortcut/report.html").write_text(page, encoding="utf-8")

or ``python -m explainers audit --report runs/shortcut``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from explainers import __version__, render
from explainers.audit.analysis import AuditAnalysis, Flag, analyse_run, normalise_maps
from explainers.audit.datasets import RunImages
from explainers.audit.store import AuditRun, open_run
from explainers.core.maps import resize_map
from explainers.errors import ExplainerError, ParameterError

__all__ = [
    "FLAG_MEANINGS",
    "ClassAccuracy",
    "audit_report",
    "class_accuracy",
    "confusion_matrix",
    "png",
    "write_report",
]

#: Side (px) of the example thumbnails and of the map pictures.
THUMBNAIL = 96
#: How many failed images are listed with their error message.
ERRORS_LISTED = 5
#: At most this many thumbnails per flag (fewer when ``examples`` is smaller).
FLAG_EXAMPLES = 4
#: Colours of a picture's PNG palette (0: full colour).
PALETTE = 256
#: Colormap of every map picture (positive evidence only).
COLORMAP = "Jet"
#: Opacity of a map over its image.
ALPHA = 0.5
#: What each flag kind means, for the page's reading guide.
FLAG_MEANINGS: dict[str, str] = {
    "fixed_location": (
        "the maps of one SpRAy cluster put their attention peak at one fixed place of the image "
        "while the objects move (or, without object masks, while the class's other maps move): "
        "a candidate shortcut such as a corner marker, a watermark or a border."
    ),
    "outside_object": (
        "the maps of one cluster put little of their positive mass on the object (median share "
        "below 0.3 and less than twice what a flat map would put there): the model's evidence "
        "for these images lies elsewhere. Needs object masks."
    ),
    "misclassified": "images of the class whose prediction is not their label.",
    "confident_error": "the misclassified images predicted with a probability of at least 0.9.",
}
#: Colours of the SpRAy clusters (scatter points and cluster headings).
_COLOURS = ("#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626")

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;
max-width:1150px;color:#1b1f24;line-height:1.45;padding:0 1rem}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{font-size:1.3rem;border-bottom:2px solid #e3e6ea;
padding-bottom:.3rem;margin-top:2rem}h3{font-size:1.1rem;margin:1rem 0 .3rem}
h4{font-size:1rem;margin:.2rem 0}
.muted{color:#5b6470;font-size:.92rem}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:.86rem;word-break:break-all}
table{border-collapse:collapse;margin:.5rem 0}th,td{text-align:left;padding:.25rem .8rem .25rem 0;
vertical-align:top;border-bottom:1px solid #eef0f2}th{color:#5b6470;font-weight:600}
table.num td{text-align:right}table.confusion td{text-align:right;min-width:2.5rem}
table.confusion td.diag{background:#e8f3ec;font-weight:600}
.card{border:1px solid #e3e6ea;border-radius:10px;padding:.8rem 1rem;margin:.8rem 0;
break-inside:avoid}
.pics{display:flex;gap:.7rem;flex-wrap:wrap;align-items:flex-start}.pics figure{margin:0;
max-width:120px}.pics figure.lead{padding-right:.7rem;border-right:2px solid #e3e6ea}
.pics figure.wide{max-width:none}
figcaption{font-size:.75rem;color:#5b6470;text-align:center;word-break:break-word}
.problem{color:#8a4b00;background:#fff6e5;border-radius:6px;padding:.5rem .8rem}
.kind{display:inline-block;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem;
background:#fff1dc;color:#8a4b00;border-radius:4px;padding:0 .35rem}
.swatch{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;vertical-align:-1px}
svg{background:#fafbfc;border:1px solid #eef0f2}
"""


# ------------------------------------------------------------------------------------------------
# Numbers from the run table
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassAccuracy:
    """One class's row of the accuracy table. ``images``: labelled images of the class with a
    prediction; ``correct``: those predicted right; ``unpredicted``: labelled images of the class
    that failed before a prediction (unreadable image, model error)."""

    class_index: int
    class_name: str
    images: int
    correct: int
    unpredicted: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.images if self.images else None


def _column(run: AuditRun, name: str) -> list[Any]:
    return run.table.column(name).to_pylist()


def class_accuracy(run: AuditRun) -> list[ClassAccuracy]:
    """Per class of the model, from the run table: labelled images, correct, and unpredicted."""
    names = list(run.manifest["model"]["class_names"])
    labels, predictions = _column(run, "label"), _column(run, "prediction")
    rows = []
    for c, name in enumerate(names):
        mine = [p for label, p in zip(labels, predictions, strict=True) if label == c]
        predicted = [p for p in mine if p is not None]
        rows.append(
            ClassAccuracy(
                class_index=c,
                class_name=name,
                images=len(predicted),
                correct=sum(1 for p in predicted if p == c),
                unpredicted=len(mine) - len(predicted),
            )
        )
    return rows


def confusion_matrix(run: AuditRun) -> np.ndarray:
    """int (n_classes, n_classes): ``[label, prediction]`` counts over the labelled, predicted
    rows of the run table."""
    n = len(run.manifest["model"]["class_names"])
    matrix = np.zeros((n, n), np.int64)
    for label, prediction in zip(_column(run, "label"), _column(run, "prediction"), strict=True):
        if label is not None and prediction is not None and label < n and prediction < n:
            matrix[label, prediction] += 1
    return matrix


# ------------------------------------------------------------------------------------------------
# Pictures
# ------------------------------------------------------------------------------------------------
def png(rgb: np.ndarray, colours: int = PALETTE) -> bytes:
    """A small PNG of a uint8 RGB picture: at most ``colours`` colours (median cut, no
    dithering; a thumbnail looks the same and weighs about half), or full colour for 0."""
    pixels = np.asarray(rgb, np.uint8)
    if not colours:
        return render.to_png(pixels)
    quantised = Image.fromarray(pixels).quantize(
        colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    buffer = io.BytesIO()
    quantised.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png(rgb)).decode("ascii")


def _img(uri: str, alt: str, title: str | None = None) -> str:
    tip = f' title="{html.escape(title)}"' if title else ""
    return f'<img src="{uri}" alt="{html.escape(alt)}"{tip}>'


def _figure(uri: str, alt: str, caption: str, title: str | None = None, cls: str = "thumb") -> str:
    return (
        f"<figure class='{cls}'>{_img(uri, alt, title)}"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _fit(shape: tuple[int, ...], side: int) -> tuple[int, int]:
    """(height, width) of a picture of ``shape`` fitted into side × side, aspect kept."""
    height, width = int(shape[0]), int(shape[1])
    scale = side / max(height, width, 1)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    height, width = _fit(image.shape, side)
    if (height, width) == image.shape[:2]:
        return np.asarray(image, np.uint8)
    small = Image.fromarray(np.asarray(image, np.uint8)).resize(
        (width, height), Image.Resampling.LANCZOS
    )
    return np.asarray(small, np.uint8)


def _map_picture(values: np.ndarray, side: int, shape: tuple[int, ...] | None = None) -> str:
    """A stored S×S map (or a mean map) as a positive-part heatmap, upsampled to the thumbnail."""
    height, width = _fit(shape or values.shape, side)
    big = resize_map(np.nan_to_num(np.asarray(values, np.float32)), (height, width))
    return _data_uri(render.heatmap(big, sign="positive", colormap=COLORMAP, clip_percentile=100))


class _Images:
    """Reads the run's images again (as the module docstring says) and makes thumbnails, each
    picture once."""

    def __init__(self, run: AuditRun, method: str, side: int) -> None:
        self.run, self.method, self.side = run, method, side
        self.maps = run.maps[method]
        self.cache: dict[int, tuple[str, str | None]] = {}
        self.images = RunImages(run)

    def read(self, index: int) -> tuple[np.ndarray | None, str | None]:
        """(image, None), or (None, why it cannot be shown)."""
        try:
            return self.images.read(index)[0], None
        except ExplainerError as error:
            return None, str(error)

    def picture(self, index: int) -> tuple[str, str | None]:
        """(data URI, note): the thumbnail with its stored map over it (note None), the map
        alone (``"map only: <why>"``), or the image alone (its map failed)."""
        if index not in self.cache:
            values = np.asarray(self.maps[index], np.float32)
            image, note = self.read(index)
            failed = not np.isfinite(values).all()
            if image is not None and not failed:
                small = _thumbnail(image, self.side)
                uri = _data_uri(
                    render.overlay(small, values, sign="positive", colormap=COLORMAP, alpha=ALPHA)
                )
            elif image is not None:
                uri, note = _data_uri(_thumbnail(image, self.side)), "no map: the method failed"
            else:
                size = self.images.sizes[index]
                shape = size if size[0] is not None else None
                uri, note = _map_picture(values, self.side, shape), f"map only: {note}"
            self.cache[index] = (uri, note)
        return self.cache[index]


# ------------------------------------------------------------------------------------------------
# HTML pieces
# ------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _kv(rows: Sequence[tuple[str, Any]], cls: str = "kv") -> str:
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows
    )
    return f'<table class="{cls}">{cells}</table>'


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _caption(columns: Mapping[str, list[Any]], index: int) -> tuple[str, str]:
    """(short caption, tooltip) of one image."""
    label, prediction = columns["label_name"][index], columns["prediction_name"][index]
    probability = columns["probability"][index]
    short = f"#{index}"
    if label is not None:
        short += f" {label}"
    if prediction is not None:
        short += f" → {prediction}" if label is not None else f" predicted {prediction}"
        if probability is not None:
            short += f" ({probability:.2f})"
    return short, f"{columns['id'][index]} · {short}"


def _thumbnails(
    images: _Images, columns: Mapping[str, list[Any]], indices: Sequence[int], lead: str = ""
) -> str:
    """A row of example thumbnails, after ``lead`` (a figure) when given."""
    figures = [lead]
    for index in indices:
        uri, note = images.picture(int(index))
        short, tip = _caption(columns, int(index))
        caption = short if note is None else f"{short} · {note}"
        figures.append(_figure(uri, f"image {index}", caption[:160], tip))
    return f"<div class='pics'>{''.join(figures)}</div>"


def _typical(maps: np.ndarray, members: np.ndarray, mean: np.ndarray, count: int) -> list[int]:
    """The ``count`` members whose maps are closest (cosine) to the cluster's mean map, closest
    first; ties by index."""
    if count <= 0 or len(members) == 0:
        return []
    normalised = normalise_maps(np.asarray(maps[np.sort(members)], np.float64)).reshape(
        len(members), -1
    )
    centre = np.nan_to_num(np.asarray(mean, np.float64)).reshape(-1)
    norms = np.linalg.norm(normalised, axis=1) * max(np.linalg.norm(centre), 1e-12)
    similarity = np.where(norms > 0, normalised @ centre / np.where(norms > 0, norms, 1), -1.0)
    order = np.argsort(-similarity, kind="stable")[:count]
    return [int(i) for i in np.sort(members)[order]]


def _scatter(embedding: np.ndarray, labels: np.ndarray, ids: Sequence[str], kind: str) -> str:
    """The SpRAy 2-D embedding as inline SVG, points coloured by cluster."""
    size, pad = 200, 10
    points = np.asarray(embedding, np.float64)
    if len(points) == 0 or points.ndim != 2 or points.shape[1] < 2:
        return ""
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high - low > 0, high - low, 1.0)
    unit = (points[:, :2] - low[:2]) / span[:2]
    dots = []
    for (x, y), cluster, name in zip(unit, labels, ids, strict=True):
        colour = _COLOURS[int(cluster) % len(_COLOURS)]
        cx, cy = pad + x * (size - 2 * pad), size - pad - y * (size - 2 * pad)
        dots.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{colour}" fill-opacity="0.8">'
            f"<title>{html.escape(f'{name} · cluster {int(cluster)}')}</title></circle>"
        )
    what = "t-SNE" if kind == "tsne" else "spectral coordinates"
    return (
        f'<figure class="wide"><svg width="{size}" height="{size}" role="img" '
        f'aria-label="SpRAy embedding">{"".join(dots)}</svg>'
        f"<figcaption>{html.escape(what)} of the maps</figcaption></figure>"
    )


def _swatch(cluster: int) -> str:
    colour = _COLOURS[cluster % len(_COLOURS)]
    return f'<span class="swatch" style="background:{colour}"></span>'


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------
def _provenance(run: AuditRun, method: str, columns: Mapping[str, list[Any]]) -> str:
    manifest = run.manifest
    model, dataset = manifest.get("model", {}), manifest.get("dataset", {})
    model_rows = [
        ("File", Path(str(model.get("path") or model.get("name") or "?")).name),
        (
            "SHA-256" + (" (of the weights)" if model.get("sha256_of") == "weights" else ""),
            model.get("sha256"),
        ),
        ("Input", f"{_fmt(model.get('input_size'))} × {_fmt(model.get('channels'))} channels"),
        ("Preprocessing", model.get("preprocessing")),
        ("Output", model.get("output_kind")),
        ("Classes", ", ".join(map(str, model.get("class_names") or []))),
    ]
    dataset_rows = [
        ("Kind", dataset.get("kind")),
        ("Source", dataset.get("source")),
        ("Fingerprint (SHA-256)", dataset.get("fingerprint")),
        ("Images", dataset.get("count")),
        ("Dataset classes", dataset.get("class_names")),
        ("Labels matched by", (dataset.get("labels") or {}).get("matched_by")),
        ("Object masks", dataset.get("has_object_masks")),
        ("Marker masks", dataset.get("has_marker_masks")),
        ("Files skipped by the scan", dataset.get("skipped")),
    ]
    if dataset.get("generator"):
        dataset_rows.append(("Generator", dataset["generator"]))
    method_rows = "".join(
        f"<tr><td class='mono'>{html.escape(name)}{' (this report)' if name == method else ''}"
        f"</td><td>{html.escape(_fmt((entry or {}).get('layer')))}</td>"
        f"<td>{html.escape(_fmt((entry or {}).get('engine')))}</td>"
        f"<td class='mono'>{html.escape(_fmt((entry or {}).get('params')))}</td></tr>"
        for name, entry in manifest.get("methods", {}).items()
    )
    errors = [(i, e) for i, e in enumerate(columns["error"]) if e is not None]
    run_rows = [
        ("Run folder", str(run.path)),
        ("Created", manifest.get("created")),
        ("Images done", f"{run.done} of {run.total}" + ("" if run.complete else " (incomplete)")),
        ("Images failed", len(errors)),
        ("Map size", f"{manifest.get('map_size')} × {manifest.get('map_size')} cells"),
        ("Explained target", manifest.get("target")),
    ]
    versions = [(name, value) for name, value in (manifest.get("versions") or {}).items()]
    versions.append(("explainers (this report)", __version__))
    failed = ""
    if errors:
        items = "".join(
            f"<li><span class='mono'>{html.escape(str(columns['id'][i]))}</span>: "
            f"{html.escape(str(message))}</li>"
            for i, message in errors[:ERRORS_LISTED]
        )
        more = (
            f"<p class='muted'>… and {len(errors) - ERRORS_LISTED} more (the run table's "
            "<code>error</code> column has them all).</p>"
            if len(errors) > ERRORS_LISTED
            else ""
        )
        failed = (
            f"<h3>Failed images</h3><p>{len(errors)} of {run.done} images failed; the first "
            f"{min(len(errors), ERRORS_LISTED)}:</p><ul class='errors'>{items}</ul>{more}"
        )
    return (
        "<h2>What was run</h2><div class='pics'><div><h3>Model</h3>"
        f"{_kv(model_rows)}</div><div><h3>Run</h3>{_kv(run_rows)}</div></div>"
        f"<h3>Dataset</h3>{_kv(dataset_rows)}"
        "<h3>Methods</h3><table class='methods'><tr><th>Method</th><th>Layer</th>"
        f"<th>Engine</th><th>Parameters (resolved)</th></tr>{method_rows}</table>"
        f"<h3>Versions</h3>{_kv(versions, 'versions')}{failed}"
    )


def _accuracy(run: AuditRun) -> str:
    names = list(run.manifest["model"]["class_names"])
    rows = class_accuracy(run)
    labelled = sum(r.images for r in rows)
    if labelled == 0 and not any(r.unpredicted for r in rows):
        return (
            "<h2>Accuracy</h2><p class='muted'>No image has both a label and a prediction: no "
            "accuracy or confusion matrix.</p>"
        )
    body = "".join(
        f"<tr><th>{html.escape(r.class_name)}</th><td>{r.images}</td><td>{r.correct}</td>"
        f"<td>{_percent(r.accuracy)}</td><td>{r.unpredicted}</td></tr>"
        for r in rows
    )
    correct = sum(r.correct for r in rows)
    total = (
        f"<tr><th>all classes</th><td>{labelled}</td><td>{correct}</td>"
        f"<td>{_percent(correct / labelled if labelled else None)}</td>"
        f"<td>{sum(r.unpredicted for r in rows)}</td></tr>"
    )
    matrix = confusion_matrix(run)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    cells = "".join(
        f"<tr><th>{html.escape(names[i])}</th>"
        + "".join(
            ("<td class='diag'>" if i == j else "<td>") + f"{int(matrix[i, j])}</td>"
            for j in range(len(names))
        )
        + "</tr>"
        for i in range(len(names))
    )
    return (
        "<h2>Accuracy</h2><div class='pics'><div><table class='accuracy num'><tr><th>Class "
        "(label)</th><th>Images</th><th>Correct</th><th>Accuracy</th><th>No prediction</th>"
        f"</tr>{body}{total}</table><p class='muted'>Images: labelled images of the class with a "
        "prediction. No prediction: labelled images that failed before the model answered."
        "</p></div><div><table class='confusion'><tr><th>label ↓ · prediction →</th>"
        f"{head}</tr>{cells}</table><p class='muted'>Rows: the label; columns: the "
        f"prediction; {int(matrix.sum())} labelled images with a prediction.</p></div></div>"
    )


def _mean_maps(run: AuditRun, review: AuditAnalysis, side: int) -> str:
    figures = []
    groups = np.asarray(_column(run, review.group_by), dtype=object)
    valid = ~np.isin(np.arange(run.done), review.failed)
    for c, name in enumerate(review.class_names):
        count = int(np.sum(valid & (groups == c)))
        mean = review.mean_maps[c]
        if not np.isfinite(mean).all():
            figures.append(
                f"<figure><div class='problem' style='width:{side}px'>no valid map</div>"
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
            )
            continue
        figures.append(
            _figure(_map_picture(mean, side), f"mean map of {name}", f"{name} ({count} maps)")
        )
    by = "label" if review.group_by == "label" else "prediction"
    return (
        "<h2>What the model looks at, per class</h2><p class='muted'>Each class's mean map: the "
        f"positive part of every valid map of the images with that {by}, each scaled to unit "
        "sum, averaged; colours scaled per picture (red: most of the evidence).</p>"
        f"<div class='pics'>{''.join(figures)}</div>"
    )


def _clusters(
    run: AuditRun,
    review: AuditAnalysis,
    images: _Images,
    columns: Mapping[str, list[Any]],
    examples: int,
) -> str:
    maps = run.maps[images.method]
    has_marker = bool(run.manifest.get("dataset", {}).get("has_marker_masks"))
    blocks = []
    for c, analysis in sorted(review.classes.items()):
        result = analysis.spray
        ids = [str(columns["id"][i]) for i in result.images]
        gaps = ", ".join(f"{g:.3f}" for g in result.gaps[: result.n_clusters + 2])
        empty = (
            f", {int(result.empty.sum())} maps without positive mass" if result.empty.any() else ""
        )
        cards = []
        for cluster in range(result.n_clusters):
            members = result.members(cluster)
            correct = sum(1 for i in members if columns["correct"][i])
            facts = f"{len(members)} images · {correct} predicted correctly"
            if has_marker:
                marked = sum(1 for i in members if columns["has_marker"][i])
                facts += f" · {marked} with the marker"
            chosen = _typical(maps, members, result.mean_maps[cluster], examples)
            mean = _figure(
                _map_picture(result.mean_maps[cluster], images.side),
                f"mean map of cluster {cluster}",
                "cluster mean map",
                cls="lead",
            )
            cards.append(
                f"<div class='card cluster' id='cluster-{c}-{cluster}'><h4>{_swatch(cluster)} "
                f"Cluster {cluster} "
                f"<span class='muted'>{html.escape(facts)}</span></h4>"
                f"{_thumbnails(images, columns, chosen, lead=mean)}</div>"
            )
        scatter = _scatter(result.embedding, result.labels, ids, result.embedding_kind)
        blocks.append(
            f"<h3>{html.escape(analysis.class_name)}</h3><div class='pics'>{scatter}<p "
            f"class='muted' style='max-width:40rem'>{len(result.images)} maps, "
            f"{result.n_clusters} cluster{'s' if result.n_clusters != 1 else ''} (eigengap; "
            f"the first gaps of the Laplacian's spectrum: {html.escape(gaps)}), "
            f"{result.n_neighbours}-nearest-neighbour graph{empty}"
            f". Examples: the {examples} maps closest to the cluster's mean map, over their "
            "images.</p></div>" + "".join(cards)
        )
    skipped = "".join(
        f"<li>{html.escape(review.class_names[c])}: {html.escape(reason)}</li>"
        for c, reason in sorted(review.skipped.items())
    )
    skipped_html = f"<p>Not clustered:</p><ul>{skipped}</ul>" if skipped else ""
    return "<h2>SpRAy clusters, per class</h2>" + "".join(blocks) + skipped_html


def _flag_examples(
    found: Sequence[Flag],
    maps: np.ndarray,
    review: AuditAnalysis,
    columns: Mapping[str, list[Any]],
    count: int,
) -> tuple[list[int], int]:
    """Example images of flags about the same cluster (or the same class's single images), and
    how many images the flags concern together."""
    concerned = np.unique(np.concatenate([np.asarray(f.images, np.int64) for f in found]))
    first = found[0]
    if first.cluster is not None and first.class_index in review.classes:
        result = review.classes[first.class_index].spray
        return _typical(maps, concerned, result.mean_maps[first.cluster], count), len(concerned)
    # Single-image findings: the most confident mistakes first (so a confident error's images
    # lead its misclassified ones).
    probabilities = [columns["probability"][int(i)] or 0.0 for i in concerned]
    order = np.argsort(-np.asarray(probabilities, np.float64), kind="stable")[:count]
    return [int(concerned[i]) for i in order], len(concerned)


def _flags(
    run: AuditRun,
    review: AuditAnalysis,
    images: _Images,
    columns: Mapping[str, list[Any]],
    examples: int,
) -> str:
    if not review.flags:
        return "<h2>Flags</h2><p>No flags: no cluster or class met a flag's rule.</p>"
    maps = run.maps[images.method]
    count = min(examples, FLAG_EXAMPLES)
    blocks = []
    for c in sorted({f.class_index for f in review.flags}):
        name = review.class_names[c] if c < len(review.class_names) else f"class {c}"
        # The flags of one cluster concern the same images: one card, one set of examples.
        groups: dict[int | None, list[Flag]] = {}
        for flag in review.flags_of(c):
            groups.setdefault(flag.cluster, []).append(flag)
        cards = []
        for cluster, found in groups.items():
            chosen, concerned = _flag_examples(found, maps, review, columns, count)
            if cluster is None:
                heading = "Misclassified images"
            else:
                heading = (
                    f"{_swatch(cluster)} <a href='#cluster-{c}-{cluster}'>Cluster {cluster}</a>"
                )
            items = "".join(
                f"<li><span class='kind'>{html.escape(flag.kind)}</span> "
                f"<span class='muted'>{_count(len(flag.images), 'image')}</span> "
                f"<span class='evidence'>{html.escape(flag.evidence)}</span></li>"
                for flag in found
            )
            shown = (
                f"<p class='muted'>{len(chosen)} of the {_count(concerned, 'image')}:</p>"
                + _thumbnails(images, columns, chosen)
                if chosen
                else ""
            )
            cards.append(f"<div class='card flag'><h4>{heading}</h4><ul>{items}</ul>{shown}</div>")
        blocks.append(f"<h3>{html.escape(name)}</h3>{''.join(cards)}")
    return f"<h2>Flags ({len(review.flags)})</h2>" + "".join(blocks)


def _guide(group_by: str) -> str:
    kinds = "".join(
        f"<li><span class='kind'>{html.escape(kind)}</span> {html.escape(meaning)}</li>"
        for kind, meaning in FLAG_MEANINGS.items()
    )
    by = "label" if group_by == "label" else "predicted class"
    return (
        "<h2>How to read this</h2><p>Every image was explained for the class the model predicted, "
        "and its map stored small. The maps are grouped by the image's "
        f"{html.escape(by)}. Spectral Relevance Analysis (SpRAy; Lapuschkin et al., "
        "“Unmasking Clever Hans predictors and assessing what machines really learn”, Nature "
        "Communications 10, 1096, 2019) compares the maps of one class with each other: maps "
        "that put their evidence in the same places form a cluster (spectral clustering of a "
        "nearest-neighbour graph of the downsampled maps; the number of clusters is where the "
        "Laplacian's spectrum has its largest gap). A cluster whose evidence sits at one fixed "
        "place while the objects move, or off the object, is a candidate “Clever Hans” "
        "strategy: look at its example images. Flags are hints with their numbers, not "
        f"verdicts.</p><ul>{kinds}</ul><p class='muted'>Pictures: the positive part of each "
        "map (jet colours, blue low, red high, scaled per picture) over a thumbnail of its "
        "image, upsampled from the stored map; when an image cannot be read any more, the map "
        "is shown alone with a note. Captions: #row label → prediction (probability).</p>"
    )


def _summary(run: AuditRun, review: AuditAnalysis | None, method: str) -> str:
    rows = class_accuracy(run)
    labelled = sum(r.images for r in rows)
    correct = sum(r.correct for r in rows)
    errors = sum(1 for e in _column(run, "error") if e is not None)
    kinds: dict[str, int] = {}
    for flag in review.flags if review is not None else ():
        kinds[flag.kind] = kinds.get(flag.kind, 0) + 1
    flags = ", ".join(f"{n} {kind}" for kind, n in kinds.items()) or "none"
    left_out = "—" if review is None else _count(len(review.failed), "image")
    accuracy = f"{correct / labelled:.1%} of {labelled} labelled images" if labelled else "n/a"
    return _kv(
        [
            ("Images", f"{run.done} of {run.total} done, {errors} failed"),
            ("Accuracy", accuracy),
            ("Method", method),
            ("Flags", flags),
            ("Left out of the analysis (failed or unlabelled)", left_out),
        ],
        "summary",
    )


# ------------------------------------------------------------------------------------------------
# The page
# ------------------------------------------------------------------------------------------------
def audit_report(
    run: AuditRun | str | os.PathLike,
    method: str | None = None,
    *,
    examples: int = 6,
    group_by: str | None = None,
    thumbnail: int = THUMBNAIL,
) -> str:
    """A self-contained HTML page reporting an audit run (module docstring).

    Parameters
    ----------
    run
        An :class:`~explainers.audit.store.AuditRun` or a run folder.
    method
        Whose maps are analysed and shown (default: the run's first method).
    examples
        Example images per SpRAy cluster (at most :data:`FLAG_EXAMPLES` of them per flag).
    group_by
        ``"label"`` or ``"prediction"`` (:func:`~explainers.audit.analysis.analyse`); default
        ``"label"``, or ``"prediction"`` when no image has a label.
    thumbnail
        Side of the pictures in pixels.

    Raises
    ------
    ParameterError
        No run in the folder, or no such method in the run.
    """
    if not isinstance(run, AuditRun):
        run = open_run(run)
    if method is None:
        method = run.methods[0]
    if method not in run.maps:
        raise ParameterError(
            f"the run has no {method!r} maps; it has {', '.join(run.maps) or 'none'}"
        )
    if int(examples) < 0:
        raise ParameterError(f"examples must be 0 or more, got {examples}")
    if not 16 <= int(thumbnail) <= 512:
        raise ParameterError(f"thumbnail must be 16..512 px, got {thumbnail}")
    examples, thumbnail = int(examples), int(thumbnail)
    columns = run.table.to_pydict()
    if group_by is None:
        group_by = "label" if any(v is not None for v in columns["label"]) else "prediction"
    if group_by not in ("label", "prediction"):
        raise ParameterError(f"group_by must be 'label' or 'prediction', got {group_by!r}")
    images = _Images(run, method, thumbnail)
    review: AuditAnalysis | None = None
    analysis = "<p class='problem'>No image is committed yet: nothing to analyse.</p>"
    if run.done:
        review = analyse_run(run, method, group_by="label" if group_by == "label" else "prediction")
        analysis = (
            _mean_maps(run, review, thumbnail)
            + _clusters(run, review, images, columns, examples)
            + _flags(run, review, images, columns, examples)
        )
    model_name = Path(str(run.manifest.get("model", {}).get("path") or "model")).name
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S %Z")
    problem = images.images.problem
    note = (
        f"<p class='problem'>Images: {html.escape(problem)}; the images are not shown.</p>"
        if problem
        else ""
    )
    incomplete = (
        ""
        if run.complete
        else f"<p class='problem'>The run is incomplete: {run.done} of {run.total} images are "
        "committed; this report covers those.</p>"
    )
    esc = html.escape
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Audit report: {esc(model_name)} · {esc(str(run.manifest["dataset"].get("source")))}</title>
<style>{_CSS}</style></head>
<body>
<h1>Dataset audit report</h1>
<p class="muted">{esc(model_name)} on {esc(str(run.manifest["dataset"].get("source")))}, maps of
<span class="mono">{esc(method)}</span>. Generated {esc(generated)} from the run folder
<span class="mono">{esc(str(run.path))}</span> by explainers {esc(__version__)}.</p>
{incomplete}{note}{_summary(run, review, method)}
{_guide(group_by)}
{_provenance(run, method, columns)}
{_accuracy(run)}
{analysis}
</body></html>
"""


def write_report(
    run: AuditRun | str | os.PathLike,
    out: str | os.PathLike | None = None,
    method: str | None = None,
    **options: Any,
) -> Path:
    """Write :func:`audit_report` to ``out`` (default ``RUN/report.html``); returns the path."""
    if not isinstance(run, AuditRun):
        run = open_run(run)
    path = Path(out) if out is not None else run.path / "report.html"
    page = audit_report(run, method, **options)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise ParameterError(f"the report cannot be written to {str(path)!r}: {error}") from None
    return path
