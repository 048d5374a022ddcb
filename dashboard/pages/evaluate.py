"""The Evaluate page's own widgets and defaults: the deletion / insertion protocol and the ground
truth, the curves and the ranking table, the sanity check's controls and results, and the
evaluation exports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dashboard import charts, report, service, state, visuals
from dashboard.computation import Failure, build_request
from dashboard.masks import MASK_PREVIEW_SIDE, box_mask, mask_from_upload, mask_preview
from dashboard.service import (
    LoadedImage,
    MethodSummary,
    ModelSummary,
    Prediction,
    ServiceError,
)
from dashboard.state import Page
from dashboard.visuals import DisplaySettings
from dashboard.widgets.pickers import methods_multiselect
from dashboard.widgets.results import map_warnings
from dashboard.widgets.running import compute, show_failure

#: The default selection of the Evaluate page: cheap methods of three families.
DEFAULT_EVALUATION = ("grad_cam", "vanilla_gradients", "occlusion", "rise")
#: The default methods of the sanity check: the paper's contrast (Adebayo et al. 2018 found
#: guided backprop insensitive to the weights, gradients and Grad-CAM sensitive).
DEFAULT_SANITY = ("grad_cam", "vanilla_gradients", "guided_backprop")
CURVE_STEPS = (0.01, 0.02, 0.05, 0.1)
SUBSTRATE_LABELS = {"blur": "Blurred image", "constant": "Black (constant)"}
SUBSTRATE_HELP = (
    "What a removed pixel becomes. Blurred (default) removes the shape but keeps colours. "
    "Black leaves the object's silhouette as a hole the model can still recognise, which rewards "
    "maps that miss the object (measured on the demo model) — use it with care."
)
GROUND_TRUTH_LABELS = {
    "sample": "The sample's object mask",
    "upload": "Upload a mask",
    "box": "Draw a box",
    "none": "None",
}
SANITY_MODES = {"cascading": "Cascading (paper's main test)", "independent": "One block at a time"}


def skipped_methods(methods: Sequence[MethodSummary]) -> list[MethodSummary]:
    """Show which chosen methods cannot run on this model and why; return the others."""
    skipped = [m for m in methods if not m.applicable]
    if skipped:
        reasons = "  \n".join(f"**{m.label}**: {m.reason}" for m in skipped)
        st.info(f"Skipped, not available for this model:  \n{reasons}", icon=":material/block:")
    return [m for m in methods if m.applicable]


@dataclass(frozen=True)
class CurveProtocol:
    """The deletion / insertion protocol: ``step`` is the share of pixels per curve point."""

    step: float
    deletion_substrate: str
    insertion_substrate: str


def curve_controls(page: Page) -> CurveProtocol:
    k = lambda name: state.key(page, name)  # noqa: E731
    state.default(k("step"), 0.02)
    state.default(k("deletion_substrate"), "blur")
    state.default(k("insertion_substrate"), "blur")
    c_step, c_del, c_ins = st.columns(3)
    step = c_step.select_slider(
        "Pixels per step",
        CURVE_STEPS,
        key=k("step"),
        format_func=lambda s: f"{s:.0%}",
        persist_state="session",
        help="Share of the pixels removed (or restored) between two points of a curve. "
        "Smaller is finer and slower: one forward pass per point and map.",
    )
    deletion = c_del.selectbox(
        "Deletion: removed pixels become",
        list(SUBSTRATE_LABELS),
        key=k("deletion_substrate"),
        format_func=SUBSTRATE_LABELS.get,
        persist_state="session",
        help=SUBSTRATE_HELP,
    )
    insertion = c_ins.selectbox(
        "Insertion: start from",
        list(SUBSTRATE_LABELS),
        key=k("insertion_substrate"),
        format_func=SUBSTRATE_LABELS.get,
        persist_state="session",
        help="The picture the image's pixels are restored onto, most important first.",
    )
    return CurveProtocol(float(step), str(deletion), str(insertion))


def ground_truth(page: Page, image: LoadedImage) -> np.ndarray | None:
    """The object mask to score the maps against, bool (H, W) at the image's size, or None.

    The sample's own mask when it has one; else an uploaded mask picture or a box from two
    range sliders. Problems (a bad upload) are shown and give None, so the rest of the page keeps
    working."""
    options = ["sample"] if image.mask is not None else []
    options += ["upload", "box", "none"]
    key = state.key(page, "ground_truth")
    state.default_option(key, options, options[0] if image.mask is not None else "none")
    choice = st.radio(
        "Object mask",
        options,
        key=key,
        format_func=GROUND_TRUTH_LABELS.get,
        horizontal=True,
        persist_state="session",
        help="Where the object really is: needed for the pointing game and the energy in the "
        "mask (the curves do not use it).",
    )
    width, height = image.size
    mask: np.ndarray | None = None
    note = ""
    if choice == "sample":
        mask, note = image.mask, "the object mask that comes with the sample"
    elif choice == "upload":
        upload = st.file_uploader(
            "Mask picture (white = object, black = background)",
            type=list(service.IMAGE_SUFFIXES),
            key=state.key(page, "mask_upload"),
            help=f"Same size as the image ({width}×{height}), or it is resized to it.",
        )
        if upload is None:
            st.caption("No mask uploaded yet: the table scores the curves only.")
        else:
            try:
                mask, note = mask_from_upload(upload.name, upload.getvalue(), image.size)
            except ServiceError as err:
                st.error(f"{err} The table below scores the curves only.")
    elif choice == "box":
        kx, ky = state.key(page, "box_x"), state.key(page, "box_y")
        # Reset a box left from a larger image (state.default_option cannot bound a range).
        for k, side in ((kx, width), (ky, height)):
            current = st.session_state.get(k)
            if current is None or not 0 <= current[0] < current[1] <= side:
                st.session_state[k] = (side // 4, side - side // 4)
        c_x, c_y = st.columns(2)
        xs = c_x.slider(
            "Box x: from … to (pixels)", 0, width, step=1, key=kx, persist_state="session"
        )
        ys = c_y.slider(
            "Box y: from … to (pixels)", 0, height, step=1, key=ky, persist_state="session"
        )
        if xs[0] == xs[1] or ys[0] == ys[1]:
            st.warning("The box is empty: widen it.")
        else:
            mask = box_mask(image.size, xs, ys)
            note = f"box x {xs[0]}–{xs[1]}, y {ys[0]}–{ys[1]}"
    if mask is not None:
        st.image(
            mask_preview(image.pixels, mask),
            caption=f"Ground truth (white outline): {note}",
            width=MASK_PREVIEW_SIDE,
        )
    return mask


def explanation_maps(
    page: Page,
    model: ModelSummary,
    image: LoadedImage,
    methods: Sequence[MethodSummary],
    target: int | str,
    slot: DeltaGenerator,
) -> dict[str, np.ndarray]:
    """Each method's raw map (default parameters, cached), float32 (H, W) at the image's size,
    by method name; methods that fail are reported in ``slot``'s place and left out."""
    maps: dict[str, np.ndarray] = {}
    for method in methods:
        layer = model.default_layer if method.uses_layer else None
        request = build_request(
            model, image, method, {}, target=target, layer=layer, engine="native"
        )
        if isinstance(request, str):
            st.warning(request)
            continue
        outcome = compute(request, image, slot, method)
        if isinstance(outcome, Failure):
            show_failure(outcome, f"{page}_{method.name}")
            continue
        map_warnings(outcome, label=method.label)
        maps[method.name] = outcome.attribution
    return maps


def run_evaluation(
    model: ModelSummary,
    image: LoadedImage,
    maps: dict[str, np.ndarray],
    target: int | str,
    mask: np.ndarray | None,
    protocol: CurveProtocol,
    slot: DeltaGenerator,
) -> service.EvaluationOutcome | Failure:
    """Deletion / insertion curves (and localisation scores with ``mask``) of ``maps`` plus the
    random row, with a progress bar in ``slot`` while they run; or a :class:`Failure`."""
    progress, clear = service.streamlit_progress(slot, "Deletion and insertion curves")
    try:
        outcome = service.evaluate(
            model,
            image,
            maps,
            target=target,
            mask=mask,
            step=protocol.step,
            deletion_substrate=protocol.deletion_substrate,
            insertion_substrate=protocol.insertion_substrate,
            progress=progress,
        )
        state.remember_outcome("evaluation", model, image, outcome)
        return outcome
    except ServiceError as err:
        return Failure.from_error(err)
    finally:
        clear()


def curve_figures(
    page: Page, outcome: service.EvaluationOutcome, labels: dict[str, str], class_name: str
) -> None:
    """The deletion and the insertion figure side by side."""
    for column, kind in zip(st.columns(2), ("deletion", "insertion"), strict=True):
        with column:
            st.plotly_chart(
                charts.curves_figure(outcome.rows, kind, labels, class_name=class_name),
                theme=None,
                key=state.key(page, f"{kind}_figure"),
                config={"displaylogo": False},
            )


def evaluation_downloads(
    page: Page,
    model: ModelSummary,
    image: LoadedImage,
    predictions: Sequence[Prediction],
    labels: dict[str, str],
) -> None:
    """The Evaluate page's exports: an HTML review report of its scores, curves and sanity
    verdicts, and the same numbers (full curves included) as JSON."""
    evaluation = state.last_outcome("evaluation", model, image)
    sanity = state.last_outcome("sanity", model, image)
    if evaluation is None and sanity is None:
        return
    stem = report.file_stem(image.name, model.ref.file_name.rsplit(".", 1)[0])
    versions = service.versions()
    top = list(predictions[:5])
    context = {
        "model": model.ref.file_name,
        "model_sha256": model.sha256,
        "image": image.name,
        "image_sha256": image.sha256,
        "versions": versions,
    }

    def html() -> str:
        return report.html_report(
            model=model,
            image=image,
            predictions=top,
            entries=(),
            settings=DisplaySettings(),
            versions=versions,
            evaluation=evaluation,
            sanity=sanity,
            labels=labels,
        )

    def as_json() -> str:
        return report.evaluation_json(evaluation, sanity, labels, context)

    left, right, _ = st.columns([1, 1, 2])
    left.download_button(
        "Evaluation report (HTML)",
        html,
        file_name=f"evaluation-{stem}.html",
        mime="text/html",
        key=state.key(page, "download_evaluation_report"),
        on_click="ignore",
        icon=":material/description:",
        type="primary",
        width="stretch",
        help="A self-contained page with the ranking, the deletion and insertion curves and the "
        "sanity check's correlations and verdicts, with the model's and image's SHA-256.",
    )
    right.download_button(
        "Scores and curves (JSON)",
        as_json,
        file_name=f"evaluation-{stem}.json",
        mime="application/json",
        key=state.key(page, "download_evaluation_json"),
        on_click="ignore",
        icon=":material/download:",
        width="stretch",
        help="Every AUC, every curve point, the sanity check's ρ per step and the verdicts.",
    )


def ranking_table(outcome: service.EvaluationOutcome, labels: dict[str, str]) -> None:
    """One row per map, best first (insertion AUC − deletion AUC), the random row included."""
    with_mask = any(r.pointing is not None for r in outcome.rows)
    columns = {
        "label": "Method",
        "deletion_auc": "Deletion AUC ↓",
        "insertion_auc": "Insertion AUC ↑",
        **(
            {"pointing_game": "Pointing game", "energy_in_mask": "Energy in mask"}
            if with_mask
            else {}
        ),
        "beats_random": "Beats random",
    }
    frame = pd.DataFrame(report.evaluation_rows(outcome, labels))[list(columns)].rename(
        columns=columns
    )
    config: dict[str, Any] = {
        "Deletion AUC ↓": st.column_config.NumberColumn(format="%.3f"),
        "Insertion AUC ↑": st.column_config.NumberColumn(format="%.3f"),
    }
    if with_mask:
        config["Energy in mask"] = st.column_config.ProgressColumn(
            "Energy in mask", min_value=0.0, max_value=1.0, format="percent"
        )
    st.dataframe(frame, hide_index=True, width="stretch", column_config=config)
    st.caption(
        f"Sorted by insertion AUC − deletion AUC. {len(outcome.rows[0].deletion.fractions)} "
        f"points per curve, deletion onto {SUBSTRATE_LABELS[outcome.deletion_substrate].lower()}, "
        f"insertion from {SUBSTRATE_LABELS[outcome.insertion_substrate].lower()}; computed in "
        f"{outcome.seconds:.1f} s."
    )


def sanity_controls(page: Page, model: ModelSummary) -> tuple[list[MethodSummary], str]:
    left, right = st.columns([3, 1.2])
    with left:
        methods = methods_multiselect(
            page, model, "Methods to test", DEFAULT_SANITY, name="sanity_methods"
        )
    key = state.key(page, "sanity_mode")
    state.default_option(key, list(SANITY_MODES), "cascading")
    mode = right.selectbox(
        "Randomisation",
        list(SANITY_MODES),
        key=key,
        format_func=SANITY_MODES.get,
        persist_state="session",
        help="Cascading: re-initialise the weights from the output layer down, one more block "
        "per step. One block at a time: each block re-initialised on its own.",
    )
    return methods, str(mode)


def sanity_requested(
    page: Page,
    model: ModelSummary,
    image: LoadedImage,
    methods: tuple[str, ...],
    target: int | str,
    mode: str,
) -> bool:
    """The Run button; True when the test was asked for with exactly these settings (pressed now
    or earlier), so its cached result stays on screen while other controls change."""
    wanted = (model.ref.key, image.sha256, methods, target, mode)
    key = state.key(page, "sanity_request")

    def ask() -> None:
        # A callback runs before the rerun it triggers, so the button is drawn as done.
        st.session_state[key] = wanted

    asked = st.session_state.get(key) == wanted
    st.button(
        "Sanity check up to date" if asked else "Run the sanity check",
        key=state.key(page, "sanity_run"),
        on_click=ask,
        icon=":material/check:" if asked else ":material/play_arrow:",
        type="primary",
        disabled=asked or not methods,
    )
    return asked


def run_sanity(
    model: ModelSummary,
    image: LoadedImage,
    methods: tuple[str, ...],
    target: int | str,
    mode: str,
    slot: DeltaGenerator,
) -> service.SanityOutcome | Failure:
    progress, clear = service.streamlit_progress(slot, "Sanity check")
    try:
        outcome = service.sanity_check(
            model, image, methods, target=target, mode=mode, progress=progress
        )
        state.remember_outcome("sanity", model, image, outcome)
        return outcome
    except ServiceError as err:
        return Failure.from_error(err)
    finally:
        clear()


def sanity_verdicts(outcome: service.SanityOutcome, labels: dict[str, str]) -> None:
    """One box per method: flagged ones as warnings, passing ones as successes."""
    for method in outcome.methods:
        verdict = outcome.verdicts[method]
        # The library's sentence starts with the registry name; show the label instead.
        sentence = verdict.split(": ", 1)[1] if verdict.startswith(f"{method}: ") else verdict
        text = f"**{labels.get(method, method)}** {sentence}."
        if outcome.flagged[method]:
            st.warning(text, icon=":material/flag:")
        else:
            st.success(text, icon=":material/check_circle:")
    st.caption(f"Rule: {outcome.rule}. Computed in {outcome.seconds:.1f} s.")


def sanity_map_grid(page: Page, outcome: service.SanityOutcome, labels: dict[str, str]) -> None:
    """The chosen method's absolute map after each randomisation step, in one row."""
    key = state.key(page, "sanity_shown")
    state.default_option(key, list(outcome.methods), outcome.methods[0])
    method = st.columns([1, 2])[0].selectbox(
        "Maps after each step (absolute values)",
        list(outcome.methods),
        key=key,
        format_func=lambda m: labels.get(m, m),
        persist_state="session",
    )
    maps = outcome.maps[method]
    names = ["original model", *outcome.step_names]
    rhos = [1.0, *outcome.correlations[method]]
    settings = DisplaySettings(sign="absolute")
    cells = st.columns(len(maps))
    for i, (cell, attribution, name, rho) in enumerate(zip(cells, maps, names, rhos, strict=True)):
        prefix = "+ " if outcome.mode == "cascading" and i > 1 else ""
        shown = "ρ undefined" if math.isnan(rho) else f"ρ = {rho:.2f}"
        cell.image(
            visuals.enlarge(visuals.heatmap_rgb(attribution, settings), 160),
            caption=f"{prefix}{name} · {shown}",
            width="stretch",
        )


def sanity_figure(page: Page, outcome: service.SanityOutcome, labels: dict[str, str]) -> None:
    """The sanity check's ρ per randomisation step and method, as a Plotly line chart."""
    st.plotly_chart(
        charts.sanity_figure(outcome, labels),
        theme=None,
        key=state.key(page, "sanity_figure"),
        config={"displaylogo": False},
    )
