"""Session state: one place that names every key, initialises it behind guards, and keeps widget
values valid when the options they choose from change (a new model has other layers).

Widget keys are prefixed by the page that owns them (``sidebar_``, ``explain_``, ``compare_``,
``robustness_``, ``evaluate_``, ``model_``, ``guide_``); page widgets are created with
``persist_state="session"`` so that their values survive a visit to another page. The Evaluate
page's latest outcomes are kept here too, for the other pages' reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import streamlit as st

from dashboard.service import LoadedImage, ModelSummary

Page = Literal["sidebar", "explain", "compare", "robustness", "evaluate", "model", "guide"]

#: The model and image every page works on, and the last load problem of each.
ACTIVE_MODEL = "active_model"
ACTIVE_IMAGE = "active_image"
MODEL_ERROR = "model_error"
IMAGE_ERROR = "image_error"
#: What the sidebar last tried to load, so a failing upload is not retried on every rerun.
MODEL_ATTEMPT = "model_attempt"
IMAGE_ATTEMPT = "image_attempt"
#: The keras.applications architecture the user asked for with the "Load" button.
APPLICATION_REQUEST = "application_request"
#: The Evaluate page's latest outcomes, by kind, for this session's reports.
LAST_OUTCOME = {"evaluation": "_last_evaluation", "sanity": "_last_sanity"}

_DEFAULTS: dict[str, Any] = {
    ACTIVE_MODEL: None,
    ACTIVE_IMAGE: None,
    MODEL_ERROR: None,
    IMAGE_ERROR: None,
    MODEL_ATTEMPT: None,
    IMAGE_ATTEMPT: None,
    APPLICATION_REQUEST: None,
}


def init() -> None:
    """Create every app-level key once per session (never overwrites)."""
    for name, value in _DEFAULTS.items():
        if name not in st.session_state:
            st.session_state[name] = value


def key(page: Page, name: str) -> str:
    """The widget key of ``name`` on ``page``."""
    return f"{page}_{name}"


def default(widget_key: str, value: Any) -> None:
    """Give a widget its initial value through session state (once), so widgets never need a
    ``value=``/``index=`` argument that would clash with a value set here."""
    if widget_key not in st.session_state:
        st.session_state[widget_key] = value


def default_option(widget_key: str, options: Sequence[Any], fallback: Any) -> None:
    """Like :func:`default`, and drop values that are no longer among ``options`` (a layer of the
    previous model, say): a single choice falls back to ``fallback``, a multi-choice list keeps
    its valid entries."""
    if widget_key not in st.session_state:
        st.session_state[widget_key] = fallback
        return
    current = st.session_state[widget_key]
    if isinstance(current, list):
        valid = [value for value in current if value in options]
        if valid != current:
            st.session_state[widget_key] = valid
    elif current not in options:
        st.session_state[widget_key] = fallback


def active_model() -> ModelSummary | None:
    return st.session_state.get(ACTIVE_MODEL)


def active_image() -> LoadedImage | None:
    return st.session_state.get(ACTIVE_IMAGE)


def set_model(summary: ModelSummary) -> None:
    st.session_state[ACTIVE_MODEL] = summary
    st.session_state[MODEL_ERROR] = None


def set_image(image: LoadedImage) -> None:
    st.session_state[ACTIVE_IMAGE] = image
    st.session_state[IMAGE_ERROR] = None


def set_model_error(message: str | None) -> None:
    st.session_state[MODEL_ERROR] = message


def set_image_error(message: str | None) -> None:
    st.session_state[IMAGE_ERROR] = message


def model_error() -> str | None:
    return st.session_state.get(MODEL_ERROR)


def image_error() -> str | None:
    return st.session_state.get(IMAGE_ERROR)


def is_new_attempt(slot: Literal["model", "image"], attempt: Any) -> bool:
    """True once per distinct ``attempt`` (what the user selected); records it."""
    name = MODEL_ATTEMPT if slot == "model" else IMAGE_ATTEMPT
    if st.session_state.get(name) == attempt:
        return False
    st.session_state[name] = attempt
    return True


def forget_attempt(slot: Literal["model", "image"]) -> None:
    st.session_state[MODEL_ATTEMPT if slot == "model" else IMAGE_ATTEMPT] = None


def remember_outcome(kind: str, model: ModelSummary, image: LoadedImage, outcome: Any) -> None:
    """Keep the Evaluate page's latest outcome of ``kind`` for this session's reports."""
    st.session_state[LAST_OUTCOME[kind]] = (model.ref.key, image.sha256, outcome)


def last_outcome(kind: str, model: ModelSummary, image: LoadedImage) -> Any | None:
    """The Evaluate page's latest ``kind`` outcome if it was computed for this model and image."""
    kept = st.session_state.get(LAST_OUTCOME[kind])
    if kept is None or kept[0] != model.ref.key or kept[1] != image.sha256:
        return None
    return kept[2]
