"""Running a computation from a page: a progress bar fed by the worker while it runs, and the
failure's message with a Retry button when trying again may help."""

from __future__ import annotations

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dashboard import service
from dashboard.computation import Failure
from dashboard.service import (
    ExplanationRequest,
    ExplanationResult,
    LoadedImage,
    MethodSummary,
    ServiceError,
)


def compute(
    request: ExplanationRequest, image: LoadedImage, slot: DeltaGenerator, method: MethodSummary
) -> ExplanationResult | Failure:
    """Fetch or compute an explanation in ``slot``: a progress bar fed by the worker for a method
    whose spec says it reports progress, a one-line note for a quick one. Returns the result or a
    :class:`Failure`."""
    cached = service.cached_explanation(request)
    if cached is not None:
        return cached
    if method.reports_progress:
        progress, clear = service.streamlit_progress(slot, method.label)
    else:  # done before a bar would draw
        slot.caption(f"{method.label}: computing…")
        progress, clear = None, slot.empty
    try:
        return service.explain(request, image, progress)
    except ServiceError as err:
        return Failure.from_error(err)
    finally:
        clear()


def show_failure(failure: Failure, key: str, container: DeltaGenerator | None = None) -> None:
    """The failure's message and, for a crash or a limit, a Retry button (``key`` must be unique
    on the page). Nothing the user chose is reset: Retry reruns the same request."""
    where = container if container is not None else st.container()
    with where.container():
        st.error(failure.message)
        if failure.retry_key is not None and st.button(
            "Retry", key=f"{key}_retry", icon=":material/refresh:"
        ):
            service.forget_failure(failure.retry_key)
            st.rerun()
