"""The Training page's own widgets: choosing a run (and one to compare it with), the display
options, the play button, and — in a fragment, so the play button's steps and the epoch slider
redraw only this part — the overlays of the fixed images at the chosen epoch beside the loss,
accuracy and attention curves.

Everything here reads run folders (:mod:`dashboard.training_runs`); nothing computes a model
call. Playing is a fragment with ``run_every``: each step reruns only the fragment, and any other
widget stays usable while it plays (a change elsewhere reruns the page, which keeps playing)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import streamlit as st

from dashboard import audits, service, state
from dashboard import training_runs as runs
from dashboard.training_runs import Look, RunChoice, TrainingRunError, TrainingView

PAGE = "training"
#: The picker's entry for a folder typed under the data root.
TYPED = "data:?"
NO_COMPARISON = "none"
#: Seconds per epoch while playing.
SPEEDS = {2.0: "Slow", 1.0: "Normal", 0.5: "Fast"}
#: Plain session state (not widgets): whether the play button is on, and when it last stepped.
PLAYING = "training_playing"
LAST_STEP = "training_last_step"
#: At most this many images per row of overlays, and epochs in an image's film strip.
ROW = 8
STRIP = 12
#: At most this many fixed images are drawn per run (the first ones).
MAX_IMAGES = 32


def key(name: str) -> str:
    return f"{PAGE}_{name}"


# ------------------------------------------------------------------------------------------------
# Choosing runs
# ------------------------------------------------------------------------------------------------
def available_runs() -> tuple[list[RunChoice], str | None]:
    """The bundled runs and the training runs found under the data root, and why the data root
    is not searched (None when it is)."""
    choices = runs.bundled_runs(service.assets_dir())
    root, problem = audits.data_root()
    if root is not None:
        choices += runs.data_root_runs(root)
    return choices, problem


def run_picker(choices: Sequence[RunChoice]) -> str:
    """The run to show (a choice's key, or :data:`TYPED`)."""
    keys = [c.key for c in choices] + [TYPED]
    titles = {c.key: c.title for c in choices}
    titles[TYPED] = "Another run folder under the data root…"
    state.default_option(key("run"), keys, keys[0])
    return st.selectbox(
        "Training run",
        keys,
        key=key("run"),
        format_func=lambda k: titles.get(k, k),
        persist_state="session",
        help="The runs bundled with the dashboard, and the training runs found under the data "
        f"root ({audits.ENV_DATA_ROOT}). A run is the folder ExplanationCallback writes.",
    )


def typed_folder() -> Path:
    """The folder typed under the data root (raises :class:`TrainingRunError`)."""
    state.default(key("folder"), "")
    text = st.text_input(
        "Run folder, relative to the data root",
        key=key("folder"),
        placeholder="e.g. runs/my_model",
        persist_state="session",
        help=f"A folder written by ExplanationCallback(run_dir=…), under {audits.ENV_DATA_ROOT}. "
        "Nothing outside the data root can be opened from this page.",
    )
    return runs.resolve_typed(text)


def compare_picker(choices: Sequence[RunChoice], shown: str) -> str:
    keys = [NO_COMPARISON] + [c.key for c in choices if c.key != shown]
    titles = {c.key: c.title for c in choices}
    titles[NO_COMPARISON] = "No comparison"
    fallback = next((k for k in keys if k != NO_COMPARISON), NO_COMPARISON)
    state.default_option(key("compare"), keys, NO_COMPARISON)
    if st.session_state[key("compare")] == shown:
        st.session_state[key("compare")] = fallback
    return st.selectbox(
        "Compare with",
        keys,
        key=key("compare"),
        format_func=lambda k: titles.get(k, k),
        persist_state="session",
        help="Show a second run below the first, at the same epoch, with its curves dashed in "
        "the same charts: e.g. the bundled shortcut run against a run of your own under the "
        "data root.",
    )


def open_run(path: Path) -> TrainingView | None:
    """The run read back, or None with the reason shown."""
    try:
        return runs.open_view(path)
    except runs.EmptyRunError as err:
        st.warning(str(err))
    except TrainingRunError as err:
        st.error(str(err))
    return None


def choose(choices: Sequence[RunChoice]) -> list[tuple[str, TrainingView]]:
    """The run pickers; the runs to show as (title, view), the first one being the chosen."""
    left, right = st.columns([1.3, 1])
    with left:
        chosen = run_picker(choices)
    with right:
        other = compare_picker(choices, chosen)
    shown: list[tuple[str, TrainingView]] = []
    titles = {c.key: c.title for c in choices}
    try:
        path = typed_folder() if chosen == TYPED else runs.choice_path(chosen, choices)
    except TrainingRunError as err:
        st.error(str(err))
        return []
    view = open_run(path)
    if view is None:
        return []
    shown.append((titles.get(chosen, path.name), view))
    if other != NO_COMPARISON:
        try:
            second = open_run(runs.choice_path(other, choices))
        except TrainingRunError as err:
            st.error(str(err))
            second = None
        if second is not None:
            shown.append((titles.get(other, other), second))
    return shown


def describe(runs_shown: Sequence[tuple[str, TrainingView]], choices: Sequence[RunChoice]) -> None:
    notes = {c.path: c.note for c in choices}
    for title, view in runs_shown:
        note = notes.get(view.path, "")
        st.markdown(f"**{title}** · {view.describe()}" + (f"  \n{note}" if note else ""))
        if view.still_writing:
            st.info(
                f"This run is still being written: {len(view.epochs)} of "
                f"{view.reserved_epochs} epochs logged so far. Rerun the page (R) to see the "
                "epochs logged since."
            )


# ------------------------------------------------------------------------------------------------
# Display options and the play button
# ------------------------------------------------------------------------------------------------
def display_options(methods: Sequence[str], has_masks: bool) -> tuple[str, Look]:
    with st.expander("Display options"):
        cells = st.columns([1.2, 1.6, 1.2, 1.4])
        with cells[0]:
            state.default_option(key("method"), list(methods), methods[0])
            method = st.selectbox(
                "Map",
                list(methods),
                key=key("method"),
                persist_state="session",
                disabled=len(methods) < 2,
                help="The explanation method the run logged (ExplanationCallback(methods=…)).",
            )
        with cells[1]:
            state.default(key("scale"), "own")
            scale = st.segmented_control(
                "Colour scale",
                list(runs.SCALES),
                key=key("scale"),
                format_func=runs.SCALES.get,
                required=True,
                persist_state="session",
                help="Each map on its own: every overlay uses the full colour range (where the "
                "model looks). One scale per image: an image's maps share the top colour of "
                "its strongest epoch, so a map that is still weak looks weak.",
            )
        with cells[2]:
            state.default(key("alpha"), 0.5)
            alpha = st.slider(
                "Opacity", 0.0, 1.0, step=0.05, key=key("alpha"), persist_state="session"
            )
        with cells[3]:
            state.default(key("outline_object"), False)
            state.default(key("outline_marker"), has_masks)
            outline_object = st.toggle(
                "Outline the object",
                key=key("outline_object"),
                persist_state="session",
                disabled=not has_masks,
            )
            outline_marker = st.toggle(
                "Outline the marker",
                key=key("outline_marker"),
                persist_state="session",
                disabled=not has_masks,
                help="The corner marker's outline in magenta (when the run has marker masks).",
            )
    look = Look(
        alpha=float(alpha),
        scale=str(scale or "own"),
        outline_object=bool(outline_object),
        outline_marker=bool(outline_marker),
    )
    return str(method), look


def epochs_of(shown: Sequence[tuple[str, TrainingView]]) -> list[int]:
    return runs.epoch_options([view for _, view in shown])


def _toggle_play(options: Sequence[int]) -> None:
    """The play button's callback: start (from the first epoch when at the last) or pause."""
    if st.session_state.get(PLAYING):
        st.session_state[PLAYING] = False
        return
    current = st.session_state.get(key("epoch"))
    if current not in options or runs.next_epoch(options, int(current)) is None:
        st.session_state[key("epoch")] = options[0]
    st.session_state[PLAYING] = True
    st.session_state[LAST_STEP] = None  # the first step comes one interval after it is drawn


def play_controls(options: Sequence[int]) -> float | None:
    """The play button and the speed; the seconds per epoch while playing, else None."""
    playing = bool(st.session_state.get(PLAYING))
    if len(options) < 2:
        st.session_state[PLAYING] = False
        return None
    left, right, _ = st.columns([1, 2.2, 4])
    with left:
        st.button(
            "Pause" if playing else "Play",
            key=key("play"),
            icon=":material/pause:" if playing else ":material/play_arrow:",
            type="primary",
            on_click=_toggle_play,
            args=(list(options),),
            help="Step through the logged epochs (from the first one when at the last).",
            width="stretch",
        )
    with right:
        state.default(key("speed"), 1.0)
        speed = st.segmented_control(
            "Speed",
            list(SPEEDS),
            key=key("speed"),
            format_func=lambda s: f"{SPEEDS[s]} · {s:g} s",
            required=True,
            persist_state="session",
            label_visibility="collapsed",
        )
    return float(speed or 1.0) if playing else None


# ------------------------------------------------------------------------------------------------
# The epoch view (a fragment)
# ------------------------------------------------------------------------------------------------
def _step(options: Sequence[int], seconds: float) -> None:
    """While playing: move the slider on by one logged epoch once ``seconds`` have passed since
    the last step; one step after the last epoch stop playing (a full rerun drops the timer)."""
    if not st.session_state.get(PLAYING):
        return
    now = time.monotonic()
    last = st.session_state.get(LAST_STEP)
    if last is None:
        st.session_state[LAST_STEP] = now
        return
    if now - float(last) < 0.8 * seconds:
        return  # a rerun of the fragment by its own slider, not a tick
    current = st.session_state.get(key("epoch"), options[0])
    following = runs.next_epoch(options, int(current))
    st.session_state[LAST_STEP] = now
    if following is None:
        st.session_state[PLAYING] = False
        st.rerun()
    # The last epoch is drawn by this tick; the next tick finds no following epoch and stops
    # (stopping here, with a full rerun, left the charts one epoch behind in the browser).
    st.session_state[key("epoch")] = following


def epoch_panel(
    shown: Sequence[tuple[str, TrainingView]], method: str, look: Look, seconds: float | None
) -> None:
    """The epoch slider, the overlays at that epoch and the charts with the epoch marked."""
    views = [view for _, view in shown]
    options = runs.epoch_options(views)
    if seconds is not None:
        _step(options, seconds)
    state.default_option(key("epoch"), options, options[-1])
    epoch = st.select_slider(
        "Epoch",
        options,
        key=key("epoch"),
        format_func=runs.epoch_label,
        help="The logged epochs (1-based, as Keras prints them: 1 = after the first pass over "
        "the training data; 0 = before training, when the run logged it).",
    )
    epoch = int(epoch)
    overlays(shown, method, look, epoch)
    charts(shown, method, epoch)


def overlays(
    shown: Sequence[tuple[str, TrainingView]], method: str, look: Look, epoch: int
) -> None:
    """Each fixed image with its map at ``epoch``, a row per run; the same images of two runs
    are drawn one above the other."""
    same_images = len(shown) == 2 and shown[0][1].fingerprint == shown[1][1].fingerprint
    first = shown[0][1]
    if same_images:
        for start in range(0, min(first.n_images, MAX_IMAGES), ROW):
            indices = list(range(start, min(first.n_images, start + ROW, MAX_IMAGES)))
            for title, view in shown:
                _overlay_row(title, view, method, look, epoch, indices, labelled=True)
    else:
        for title, view in shown:
            for start in range(0, min(view.n_images, MAX_IMAGES), ROW):
                indices = list(range(start, min(view.n_images, start + ROW, MAX_IMAGES)))
                _overlay_row(title, view, method, look, epoch, indices, labelled=len(shown) > 1)
    if any(view.n_images > MAX_IMAGES for _, view in shown):
        st.caption(
            f"The first {MAX_IMAGES} images are shown; the charts and the film strip below "
            "cover every image."
        )


def _overlay_row(
    title: str,
    view: TrainingView,
    method: str,
    look: Look,
    epoch: int,
    indices: Sequence[int],
    labelled: bool,
) -> None:
    slot = view.slot(epoch)
    logged = int(view.epochs[slot])
    if method not in view.maps:
        st.caption(f"**{title}** logged no {method} maps.")
        return
    note = (
        ""
        if logged == epoch
        else f" (its last logged epoch at {runs.epoch_label(epoch)}: {runs.epoch_label(logged)})"
    )
    if labelled:
        st.markdown(f"**{title}** · epoch {runs.epoch_label(logged)}{note}")
    elif note:
        st.caption(note.strip(" ()"))
    cells = st.columns(max(len(indices), min(ROW, view.n_images)))
    for cell, index in zip(cells, indices, strict=False):
        with cell:
            st.image(
                runs.overlay(view, method, slot, index, look),
                caption=runs.caption(view, method, slot, index),
                width="stretch",
            )


def charts(shown: Sequence[tuple[str, TrainingView]], method: str, epoch: int) -> None:
    """Loss, accuracy and where the attention goes, per epoch, the chosen epoch marked."""
    height = 300 if len(shown) < 2 else 340  # room for the second run's legend entries
    figures = [
        ("loss", runs.metrics_figure(shown, "loss", epoch, height)),
        ("accuracy", runs.metrics_figure(shown, "accuracy", epoch, height)),
        ("attention", runs.attention_figure(shown, method, epoch, height)),
    ]
    drawn = [(name, figure) for name, figure in figures if figure is not None]
    if not drawn:
        st.caption("The run logged no metrics and has no masks: there is nothing to chart.")
        return
    # No key on the charts themselves: a keyed plotly_chart kept showing the previous epoch's
    # marker in the browser (one slider change behind); the keyed container only names the
    # place (tests find the chart by it).
    for cell, (name, figure) in zip(st.columns(3), drawn, strict=False):
        with cell, st.container(key=key(f"{name}_chart")):
            st.plotly_chart(figure, theme=None, config={"displaylogo": False})
    if not any(name == "attention" for name, _ in drawn):
        st.caption(
            "No attention chart: the run has no object or marker masks "
            "(ExplanationCallback(masks={'object': …, 'marker': …}))."
        )
    other = runs.metrics_figure(shown, "other", epoch, height=260)
    if other is not None:
        with st.expander(
            "Other logged metrics (e.g. a ReasonTrainer's cross-entropy, penalty and λ)"
        ):
            st.plotly_chart(other, theme=None, config={"displaylogo": False})


#: The epoch view redraws itself alone: on the slider, and every step while playing.
_still_panel = st.fragment(epoch_panel)
_playing_panels = {seconds: st.fragment(epoch_panel, run_every=seconds) for seconds in SPEEDS}


def epoch_view(
    shown: Sequence[tuple[str, TrainingView]], method: str, look: Look, seconds: float | None
) -> None:
    panel = _still_panel if seconds is None else _playing_panels[seconds]
    panel(shown, method, look, seconds)


# ------------------------------------------------------------------------------------------------
# One image through training
# ------------------------------------------------------------------------------------------------
def film_strip(shown: Sequence[tuple[str, TrainingView]], method: str, look: Look) -> None:
    """One image's map at every logged epoch (at most :data:`STRIP`, evenly spread), a row per
    run."""
    first = shown[0][1]
    indices = list(range(first.n_images))
    names = first.columns.get("label_name")

    def label(i: int) -> str:
        name = str(names[-1, i]) if names is not None and names[-1, i] else ""
        return f"#{i}" + (f" · {name}" if name else "")

    state.default_option(key("image"), indices, indices[0])
    index = st.selectbox(
        "Image", indices, key=key("image"), format_func=label, persist_state="session"
    )
    strips = {
        id(view): np.unique(
            np.linspace(0, len(view.epochs) - 1, min(STRIP, len(view.epochs))).round().astype(int)
        )
        for _, view in shown
    }
    width = max([6, *(len(slots) for slots in strips.values())])  # the same size in every row
    for title, view in shown:
        if method not in view.maps or index >= view.n_images:
            continue
        slots = strips[id(view)]
        if len(shown) > 1:
            st.markdown(f"**{title}**")
        cells = st.columns(width)
        for cell, slot in zip(cells, slots, strict=False):
            shares = []
            for kind, statistic in (("object", "energy_in_mask"), ("marker", "energy_in_marker")):
                values = view.columns.get(f"{method}__{statistic}")
                if values is not None and np.isfinite(values[slot, index]):
                    shares.append(f"{kind} {float(values[slot, index]):.0%}")
            with cell:
                st.image(
                    runs.overlay(view, method, int(slot), index, look),
                    caption=f"epoch {int(view.epochs[slot]) + 1}"
                    + (" · " + " · ".join(shares) if shares else ""),
                    width="stretch",
                )
