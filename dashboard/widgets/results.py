"""Showing a result: a picture at display size, the input image, the library's warnings about a
map, and the card of a method that cannot run."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from dashboard import visuals
from dashboard.pictures import pictures_input
from dashboard.service import ExplanationResult, LoadedImage
from dashboard.visuals import DisplaySettings


def show_image(rgb: np.ndarray, caption: str | None = None) -> None:
    st.image(visuals.enlarge(rgb), caption=caption, width="stretch")


def input_image(image: LoadedImage, settings: DisplaySettings, caption: str = "Input") -> None:
    show_image(pictures_input(image, settings), caption)


def map_warnings(
    result: ExplanationResult, *, label: str | None = None, container: Any = None
) -> None:
    """Show the library's warnings about ``result`` (an empty, constant or negligible map, a
    saturated score...) beside its picture."""
    target = container if container is not None else st
    for warning in result.extras.get("warnings") or ():
        text = f"**{label}:** {warning}" if label else str(warning)
        target.warning(text, icon=":material/warning:")


def unavailable_card(message: str) -> None:
    st.info(message, icon=":material/block:")
