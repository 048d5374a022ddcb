"""The frame of every page: the page style, the title, and the header that checks a model and an
image are loaded and shows their predictions."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from dashboard import service, state
from dashboard.service import LoadedImage, ModelSummary, Prediction, ServiceError
from dashboard.widgets.regions import BACKGROUND_NAMES

_STYLE = """
<style>
/* Less empty space above the title: more of each page fits on a projected screen. */
[data-testid="stMainBlockContainer"] { padding-top: 2.5rem; }
/* Comparison cards: one-line titles keep the grid's pictures aligned. */
[class*="st-key-compare_card_"] h5 {
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
}
/* Method chips wrap onto more lines: one scrolling line cut the first chips out of view. */
[data-testid="stMultiSelectTagsContainer"],
[data-testid="stMultiSelectTagsContainer"] > [role="group"] {
  flex-wrap: wrap; overflow: visible; height: auto; max-height: none;
}
[data-testid="stMultiSelect"] .react-aria-ComboBox > [role="group"] {
  height: auto; max-height: none;
}
</style>
"""


def page_style() -> None:
    st.markdown(_STYLE, unsafe_allow_html=True)


def page_title(title: str, subtitle: str) -> None:
    st.title(title)
    st.caption(subtitle)


def require_model() -> ModelSummary | None:
    model = state.active_model()
    if model is None:
        st.info(
            "No model is loaded yet. Choose a demo model, upload a .keras / .h5 file or pick a "
            "keras.applications architecture in the sidebar."
        )
    return model


def require_inputs() -> tuple[ModelSummary, LoadedImage] | None:
    """The active model and image, or an explanation of what is missing (None)."""
    model = require_model()
    image = state.active_image()
    if model is not None and image is None:
        st.info("No image is loaded yet. Pick a sample, upload an image or use the camera.")
    if model is None or image is None:
        return None
    return model, image


def context_line(model: ModelSummary, image: LoadedImage, predictions: Sequence[Prediction]):
    top = predictions[0] if predictions else None
    verdict = f" · predicted **{top.name}** ({top.probability:.1%})" if top else ""
    if model.task == "multilabel":
        present = [p.name for p in predictions if p.probability >= 0.5]
        verdict = f" · labels present: **{', '.join(present) or 'none'}** (p ≥ 0.5)"
    elif model.task == "regression" and top is not None:
        values = ", ".join(f"{p.name} = {p.probability:.4g}" for p in predictions[:3])
        verdict = f" · {values}"
    elif model.task == "segmentation":
        shapes = [
            f"{p.name} ({p.probability:.1%})"
            for p in predictions
            if p.probability > 0 and p.name.strip().lower() not in BACKGROUND_NAMES
        ]
        verdict = f" · predicted pixels: **{', '.join(shapes) or 'background only'}**"
    width, height = image.size
    st.markdown(
        f"Model **{model.ref.file_name}** · image **{image.name}** ({width}×{height}){verdict}"
    )


def predictions_or_error(model: ModelSummary, image: LoadedImage) -> list[Prediction] | None:
    """Every class's probability, best first; shows the error and returns None on failure."""
    try:
        return service.predictions(model, image, k=model.n_classes)
    except ServiceError as err:
        st.error(str(err))
        return None


def page_header(
    title: str, subtitle: str
) -> tuple[ModelSummary, LoadedImage, list[Prediction]] | None:
    """Title, the loaded model and image, their predictions and the context line; None (with the
    reason shown) when the page has nothing to work on."""
    page_title(title, subtitle)
    inputs = require_inputs()
    if inputs is None:
        return None
    model, image = inputs
    predictions = predictions_or_error(model, image)
    if predictions is None:
        return None
    context_line(model, image, predictions)
    return model, image, predictions
