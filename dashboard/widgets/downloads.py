"""Download buttons: one map's overlay PNG and raw ``.npy``, and the page's HTML review report (with
the whole grid as one PNG on Compare).

Every download in the dashboard is deferred: the button holds a function that Streamlit runs when
it is clicked. Built with the page, the PNGs and the HTML report cost about 0.1 s of every rerun (a
display change included), even for the 96-px demo images."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dashboard import report, service, state
from dashboard.pictures import pictures, pictures_input
from dashboard.service import ExplanationResult, LoadedImage, ModelSummary, Prediction
from dashboard.state import Page
from dashboard.visuals import DisplaySettings


def card_downloads(
    page: Page,
    image: LoadedImage,
    result: ExplanationResult,
    settings: DisplaySettings,
    cells: Sequence[DeltaGenerator] | None = None,
    *,
    compact: bool = False,
) -> None:
    """Download buttons for one map: the overlay as PNG and the raw map as ``.npy``, both at the
    image's full resolution."""
    stem = report.file_stem(image.name, result.method)
    left, right = cells if cells is not None else st.columns(2)

    def overlay_png() -> bytes:
        return report.png_bytes(pictures(result, image, settings, max_side=None).overlay)

    def raw_npy() -> bytes:
        return report.npy_bytes(result.attribution)

    left.download_button(
        "PNG" if compact else "Overlay PNG",
        overlay_png,
        file_name=f"{stem}.png",
        mime="image/png",
        key=state.key(page, f"{result.method}_download_png"),
        on_click="ignore",
        icon=None if compact else ":material/download:",
        width="stretch",
        help="The overlay as shown, at the image's resolution.",
    )
    right.download_button(
        "NPY" if compact else "Raw map .npy",
        raw_npy,
        file_name=f"{stem}.npy",
        mime="application/octet-stream",
        key=state.key(page, f"{result.method}_download_npy"),
        on_click="ignore",
        icon=None if compact else ":material/download:",
        width="stretch",
        help="The raw, signed float32 attribution at the image's resolution (numpy.load).",
    )


def report_downloads(
    page: Page,
    model: ModelSummary,
    image: LoadedImage,
    predictions: Sequence[Prediction],
    entries: Sequence[report.ReportEntry],
    settings: DisplaySettings,
    *,
    grid: bool,
    cells: Sequence[DeltaGenerator] | None = None,
) -> None:
    """Buttons for the HTML review report (and the whole grid as one PNG)."""
    computed = [e for e in entries if e.result is not None]
    if not computed:
        return
    stem = report.file_stem(image.name, model.ref.file_name.rsplit(".", 1)[0])
    versions = service.versions()
    top = list(predictions[:5])
    frozen_entries = list(entries)

    # The Evaluate page's scores and sanity verdicts, when computed for this model and image.
    evaluation = state.last_outcome("evaluation", model, image)
    sanity = state.last_outcome("sanity", model, image)
    labels = report.method_labels(model)

    def html() -> str:
        return report.html_report(
            model=model,
            image=image,
            predictions=top,
            entries=frozen_entries,
            settings=settings,
            versions=versions,
            evaluation=evaluation,
            sanity=sanity,
            labels=labels,
        )

    cells = list(cells) if cells is not None else st.columns([1, 1, 2])
    cells[0].download_button(
        "HTML review report",
        html,
        file_name=f"report-{stem}.html",
        mime="text/html",
        key=state.key(page, "download_report"),
        on_click="ignore",
        icon=":material/description:",
        type="primary",
        width="stretch",
        help="A self-contained page with the images, heatmaps, predictions, every method's "
        "resolved parameters, the model's and image's SHA-256 and the library versions; with "
        "the Evaluate page's scores, curves and sanity verdicts once computed for this image.",
    )
    if grid:
        title = f"{image.name} · {model.ref.file_name}"

        width, height = image.size
        shown = pictures_input(image, settings)

        def grid_png() -> bytes:
            return report.grid_png(
                frozen_entries, title=title, image=shown, image_caption=f"{width}×{height} px"
            )

        cells[1].download_button(
            "Grid as PNG",
            grid_png,
            file_name=f"comparison-{stem}.png",
            mime="image/png",
            key=state.key(page, "download_grid"),
            on_click="ignore",
            icon=":material/grid_view:",
            width="stretch",
        )
