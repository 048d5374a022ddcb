"""UI pieces shared by the pages: sidebar inputs, pickers, parameter controls generated from
``ParamSpec``, display controls, heatmap cards, tables and download buttons.

Components read and write widgets and call :mod:`dashboard.service`; they never touch the
explainer library's compute functions directly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dashboard import charts, report, service, state, visuals
from dashboard.service import (
    ExplanationRequest,
    ExplanationResult,
    LoadedImage,
    MethodSummary,
    ModelSummary,
    Prediction,
    ServiceError,
)
from dashboard.state import Page
from dashboard.visuals import DisplaySettings
from explainers import ParamSpec, render

MODEL_SOURCES = ("Demo model", "Upload a file", "keras.applications")
IMAGE_SOURCES = ("Sample", "Upload", "Camera")
SIGN_LABELS = {
    "positive": "Positive (evidence for)",
    "negative": "Negative (evidence against)",
    "absolute": "Absolute value",
    "signed": "Signed (both)",
}
ENGINE_LABELS = {"native": "Native", "tf_explain": "tf-explain"}
FAMILY_LABELS = {"gradient": "Gradient", "perturbation": "Perturbation", "cam": "CAM"}
#: The default selection of the Compare page.
DEFAULT_COMPARISON = ("vanilla_gradients", "occlusion", "cam", "grad_cam")
#: The upload limit set in .streamlit/config.toml (server.maxUploadSize), for the help texts.
MAX_UPLOAD_MB = int(st.get_option("server.maxUploadSize"))
#: The raw-map figure shows at most this many cells per side (larger maps are subsampled).
FIGURE_MAX_SIDE = 320


# ------------------------------------------------------------------------------------------------
# Page frame
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Sidebar: model and image inputs shared by every page
# ------------------------------------------------------------------------------------------------
def sidebar() -> None:
    """The model and image inputs. Loads what the user picked; on failure keeps what was
    loaded before and says why."""
    with st.sidebar:
        st.header("Model", divider="gray")
        _model_inputs()
        st.header("Image", divider="gray")
        _image_inputs()


def _labels_input(source: str) -> tuple[bytes, str] | None:
    upload = st.file_uploader(
        "Class names (optional)",
        type=list(service.LABEL_SUFFIXES),
        key="sidebar_labels_upload",
        help="A .txt file with one class name per line, or a JSON list / {index: name} object.",
    )
    if upload is not None:
        return upload.getvalue(), upload.name
    return service.demo_labels() if source == MODEL_SOURCES[0] else None


def _try_load_model(build_ref: Callable[[], service.ModelRef]) -> None:
    try:
        with st.spinner("Loading the model…"):
            summary = service.load_model(build_ref())
    except ServiceError as err:
        state.set_model_error(str(err))
    else:
        state.set_model(summary)


def _model_inputs() -> None:
    source_key = "sidebar_model_source"
    state.default(source_key, MODEL_SOURCES[0])
    source = st.radio("Source", MODEL_SOURCES, key=source_key, label_visibility="collapsed")
    prep_key = "sidebar_preprocessing"
    state.default(prep_key, "auto")
    with st.expander("Preprocessing and class names"):
        preprocessing = st.selectbox(
            "Preprocessing",
            service.PREPROCESSING_OPTIONS,
            key=prep_key,
            format_func=lambda p: f"{p} — {service.PREPROCESSING_DESCRIPTIONS.get(p, '')}",
            help="How pixels become model inputs. 'auto' recognises keras.applications "
            "families and rescaling layers.",
        )
        labels = _labels_input(source)
    labels_sha = service.sha256_bytes(labels[0]) if labels else None

    if source == MODEL_SOURCES[0]:
        demos = service.demo_models()
        if not demos:
            st.warning(
                "The demo models are not installed (assets/models/ is empty). Upload a .keras "
                "or .h5 file instead, or build them with `python assets/make_demo_models.py`."
            )
        else:
            names = [d.file_name for d in demos]
            demo_key = "sidebar_demo_model"
            state.default_option(demo_key, names, names[0])
            descriptions = {d.file_name: d.description for d in demos}
            choice = st.selectbox(
                "Demo model", names, key=demo_key, format_func=lambda n: descriptions[n]
            )
            demo = demos[names.index(choice)]
            st.caption(service.DEMO_NOTES.get(choice, ""))
            attempt = ("demo", str(demo.path), preprocessing, labels_sha)
            if state.is_new_attempt("model", attempt):
                _try_load_model(
                    lambda: service.file_model_ref(
                        demo.path, preprocessing=preprocessing, labels=labels
                    )
                )
    elif source == MODEL_SOURCES[1]:
        upload = st.file_uploader(
            "Keras model file",
            type=list(service.MODEL_SUFFIXES),
            key="sidebar_model_upload",
            help=f"A model saved with model.save('name.keras') (or a legacy .h5), up to "
            f"{MAX_UPLOAD_MB} MB. Loaded in Keras safe mode: no custom code runs.",
        )
        if upload is not None:
            attempt = ("upload", upload.file_id, preprocessing, labels_sha)
            if state.is_new_attempt("model", attempt):

                def uploaded_ref() -> service.ModelRef:
                    path, digest = service.store_model_upload(upload.name, upload.getvalue())
                    return service.file_model_ref(
                        path,
                        file_name=upload.name,
                        sha256=digest,
                        preprocessing=preprocessing,
                        labels=labels,
                    )

                _try_load_model(uploaded_ref)
        elif state.active_model() is not None:
            st.caption("Until a file is uploaded, the model below stays loaded.")
    else:
        app_key = "sidebar_application"
        state.default(app_key, service.APPLICATION_NAMES[0])
        name = st.selectbox("Architecture", service.APPLICATION_NAMES, key=app_key)
        if st.button("Load with ImageNet weights", key="sidebar_application_load"):
            st.session_state[state.APPLICATION_REQUEST] = name
            state.forget_attempt("model")
        st.caption("The weights are downloaded on first use, which needs internet access.")
        if st.session_state.get(state.APPLICATION_REQUEST) == name:
            attempt = ("application", name, preprocessing, labels_sha)
            if state.is_new_attempt("model", attempt):
                _try_load_model(
                    lambda: service.application_model_ref(
                        name, preprocessing=preprocessing, labels=labels
                    )
                )

    error = state.model_error()
    model = state.active_model()
    if error:
        kept = f" Still using **{model.ref.file_name}**." if model is not None else ""
        st.error(f"{error}{kept}")
    if model is not None:
        st.caption(
            f"Loaded **{model.ref.file_name}** · {model.n_classes} classes · "
            f"input {model.input_size[0]}×{model.input_size[1]} · "
            f"preprocessing {model.preprocessing}"
        )


def _try_load_image(load: Callable[[], LoadedImage]) -> None:
    try:
        image = load()
    except ServiceError as err:
        state.set_image_error(str(err))
    else:
        state.set_image(image)


def _image_inputs() -> None:
    source_key = "sidebar_image_source"
    state.default(source_key, IMAGE_SOURCES[0])
    source = st.segmented_control(
        "Image source", IMAGE_SOURCES, key=source_key, required=True, width="stretch"
    )
    if source == "Sample":
        samples = service.samples()
        if not samples:
            st.warning(
                "No sample images are installed (assets/samples/ is empty). Upload an image or "
                "use the camera."
            )
        else:
            names = [s.name for s in samples]
            sample_key = "sidebar_sample"
            state.default_option(sample_key, names, names[0])
            choice = st.selectbox(
                "Sample image",
                names,
                key=sample_key,
            )
            sample = samples[names.index(choice)]
            if state.is_new_attempt("image", ("sample", str(sample.path))):
                _try_load_image(lambda: service.load_sample(sample))
    elif source == "Upload":
        upload = st.file_uploader(
            "Image file",
            type=list(service.IMAGE_SUFFIXES),
            key="sidebar_image_upload",
            help=f"PNG, JPEG, WebP, BMP, GIF (first frame) or TIFF, up to {MAX_UPLOAD_MB} MB "
            "and 40 megapixels.",
        )
        if upload is not None and state.is_new_attempt("image", ("upload", upload.file_id)):
            _try_load_image(lambda: service.load_image_bytes(upload.name, upload.getvalue()))
    else:
        shot = st.camera_input("Take a picture", key="sidebar_camera")
        if shot is not None and state.is_new_attempt("image", ("camera", shot.file_id)):
            _try_load_image(
                lambda: service.load_image_bytes("camera", shot.getvalue(), source="camera")
            )

    error = state.image_error()
    image = state.active_image()
    if error:
        kept = f" Still using **{image.name}**." if image is not None else ""
        st.error(f"{error}{kept}")
    if image is None:
        return
    width, height = image.size
    st.image(visuals.fit(image.pixels, 384), caption=f"{image.name} · {width}×{height}")
    if image.mask is not None:
        state.default("sidebar_outline_mask", False)
        st.toggle(
            "Outline the object",
            key="sidebar_outline_mask",
            help="Draw the ground-truth object outline (white) on every overlay.",
        )
    if image.marker is not None:
        state.default("sidebar_outline_marker", False)
        st.toggle(
            "Outline the corner marker",
            key="sidebar_outline_marker",
            help="Draw the shortcut marker's outline (magenta) on every overlay.",
        )


def outline_flags() -> tuple[bool, bool]:
    """Whether to draw the object mask and the corner marker (only when the image has them)."""
    image = state.active_image()
    if image is None:
        return False, False
    mask = bool(st.session_state.get("sidebar_outline_mask")) and image.mask is not None
    marker = bool(st.session_state.get("sidebar_outline_marker")) and image.marker is not None
    return mask, marker


# ------------------------------------------------------------------------------------------------
# Pickers
# ------------------------------------------------------------------------------------------------
def _method_label(model: ModelSummary) -> Callable[[str], str]:
    def label(name: str) -> str:
        method = model.method(name)
        return method.label if method.applicable else f"{method.label} (not available)"

    return label


def method_picker(page: Page, model: ModelSummary, default: str = "grad_cam") -> MethodSummary:
    names = [m.name for m in model.methods]
    key = state.key(page, "method")
    state.default_option(key, names, default if default in names else names[0])
    name = st.selectbox(
        "Method",
        names,
        key=key,
        format_func=_method_label(model),
        persist_state="session",
        help="See the Guide page for what each method computes.",
    )
    return model.method(name)


def methods_picker(page: Page, model: ModelSummary) -> list[MethodSummary]:
    names = [m.name for m in model.methods]
    key = state.key(page, "methods")
    state.default_option(key, names, [n for n in DEFAULT_COMPARISON if n in names])
    chosen = st.multiselect(
        "Methods to compare",
        names,
        key=key,
        format_func=_method_label(model),
        persist_state="session",
        placeholder="Pick one or more methods",
    )
    return [model.method(n) for n in chosen]


AUTO_TARGET = -1


def target_key(page: Page, model: ModelSummary, predictions: Sequence[Prediction]) -> str:
    """The widget key of ``page``'s class picker: one per model and per set of labels shown.

    The browser kept showing a selectbox's old label when only its labels changed (options and
    value the same): after a new model or image, "Top prediction — circle (100.0%)" stayed on
    screen for the new model's class 0 at 20%. A new key draws a new widget."""
    shown = [(p.index, f"{p.probability:.1%}") for p in predictions]
    digest = hashlib.sha256(repr((model.ref.key, shown)).encode()).hexdigest()[:12]
    return state.key(page, f"target_{digest}")


def target_picker(page: Page, model: ModelSummary, predictions: Sequence[Prediction]) -> int:
    """The class to explain; 'top prediction' follows the image. Returns a class index.

    The choice carries over to the next widget (a new image) for the same model; a new model
    starts at 'top prediction' (a class index means nothing for another model)."""
    probability = {p.index: p.probability for p in predictions}
    top = predictions[0]
    options = [AUTO_TARGET, *range(model.n_classes)]
    key = target_key(page, model, predictions)
    remembered_key = state.key(page, "target_choice")
    remembered = st.session_state.get(remembered_key)
    carried = remembered[1] if remembered and remembered[0] == model.ref.key else AUTO_TARGET
    state.default_option(key, options, carried)

    def label(index: int) -> str:
        if index == AUTO_TARGET:
            return f"Top prediction — {top.name} ({top.probability:.1%})"
        return f"{model.class_names[index]} ({probability.get(index, 0.0):.1%})"

    chosen = st.selectbox(
        "Class to explain",
        options,
        key=key,
        format_func=label,
        help="Explanations answer: which pixels raise the score of this class?",
    )
    st.session_state[remembered_key] = (model.ref.key, chosen)
    return top.index if chosen == AUTO_TARGET else int(chosen)


def _shape(shape: Sequence[int]) -> str:
    return " × ".join(str(s) for s in shape)


def _compact_shape(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


def param_label(spec: ParamSpec) -> str:
    return spec.label


def layer_picker(
    page: Page,
    model: ModelSummary,
    method: MethodSummary,
    *,
    label: str = "Layer",
    placeholder: bool = False,
) -> str | None:
    """The layer a CAM-family method reads (defaults to the automatic choice), else None.

    With ``placeholder``, a method that reads no layer gets a disabled picker saying so (keeps a
    row of controls from jumping when the method changes)."""
    if not method.uses_layer or not model.spatial_layers:
        if placeholder and not method.uses_layer:
            st.selectbox(
                label,
                ["not used by this method"],
                key=state.key(page, f"{method.name}_layer_unused"),
                disabled=True,
                help="Only CAM-family methods read an inner layer.",
            )
        return model.default_layer if method.uses_layer else None
    options = list(model.spatial_layers)
    shapes = {info.path: info.output_shape for info in model.layers}
    key = state.key(page, f"{method.name}_layer")
    fallback = model.default_layer if model.default_layer in options else options[-1]
    state.default_option(key, options, fallback)

    def describe(path: str) -> str:
        auto = " (auto)" if path == model.default_layer else ""
        return f"{path}{auto} · {_compact_shape(shapes.get(path, ()))}"

    return st.selectbox(
        label,
        options,
        key=key,
        format_func=describe,
        persist_state="session",
        help="The feature maps the method weights. The automatic choice is the last spatial "
        "layer before the classifier head.",
    )


def engine_picker(page: Page, method: MethodSummary) -> str:
    """The engine to run ``method`` with; engines that refuse this model are not offered, and
    say why."""
    engines = method.usable_engines or ("native",)
    for engine, reason in method.refused_engines:
        st.caption(f"{ENGINE_LABELS.get(engine, engine)} engine not available: {reason}.")
    if len(engines) < 2:
        return engines[0]
    key = state.key(page, f"{method.name}_engine")
    state.default_option(key, engines, engines[0])
    return st.radio(
        "Engine",
        engines,
        key=key,
        format_func=lambda e: ENGINE_LABELS.get(e, e),
        horizontal=True,
        persist_state="session",
        help="Native: this project's implementation. tf-explain: the same method computed by "
        "the tf-explain library, for cross-checking.",
    )


# ------------------------------------------------------------------------------------------------
# Parameter controls generated from ParamSpecs
# ------------------------------------------------------------------------------------------------
def _param_widget(page: Page, method: MethodSummary, spec: ParamSpec) -> Any:
    key = state.key(page, f"{method.name}_{spec.name}")
    common: dict[str, Any] = {"key": key, "help": spec.help, "persist_state": "session"}
    if spec.kind == "bool":
        state.default(key, bool(spec.default))
        return st.checkbox(param_label(spec), **common)
    if spec.kind == "choice":
        options = list(spec.choices or ())
        state.default_option(key, options, spec.default)
        return st.selectbox(param_label(spec), options, **common)
    bounded = spec.low is not None and spec.high is not None
    if spec.kind == "int":
        state.default(key, int(spec.default))
        return int(
            st.number_input(
                param_label(spec),
                min_value=int(spec.low) if spec.low is not None else None,
                max_value=int(spec.high) if spec.high is not None else None,
                step=int(spec.step or 1),
                **common,
            )
        )
    state.default(key, float(spec.default))
    if bounded:
        assert spec.low is not None and spec.high is not None
        return float(
            st.slider(
                param_label(spec),
                float(spec.low),
                float(spec.high),
                step=float(spec.step or (spec.high - spec.low) / 100),
                **common,
            )
        )
    return float(st.number_input(param_label(spec), step=float(spec.step or 0.01), **common))


def param_controls(page: Page, method: MethodSummary, columns: int = 1) -> dict[str, Any]:
    """Widgets for every parameter of ``method`` (advanced ones in an expander); returns their
    values by parameter name."""
    values: dict[str, Any] = {}
    basic = [p for p in method.params if not p.advanced]
    advanced = [p for p in method.params if p.advanced]

    def lay_out(specs: list[ParamSpec]) -> None:
        if not specs:
            return
        n = max(1, min(columns, len(specs)))
        cells = st.columns(n) if n > 1 else None
        for i, spec in enumerate(specs):
            if cells is None:
                values[spec.name] = _param_widget(page, method, spec)
            else:
                with cells[i % n]:
                    values[spec.name] = _param_widget(page, method, spec)

    lay_out(basic)
    if advanced:
        with st.expander("Advanced parameters"):
            lay_out(advanced)
    if not method.params:
        st.caption("This method has no parameters.")
    return values


# ------------------------------------------------------------------------------------------------
# Display controls (never recompute)
# ------------------------------------------------------------------------------------------------
SCALE_MODES = {
    "own": "Each map on its own scale",
    "shared": "One scale for all cards",
}


def scale_mode_control(page: Page) -> bool:
    """Whether the cards share one colour scale (True) or each map is scaled on its own."""
    key = state.key(page, "scale_mode")
    state.default(key, "own")
    mode = st.segmented_control(
        "Colour scale",
        list(SCALE_MODES),
        key=key,
        format_func=SCALE_MODES.get,
        required=True,
        help="Each map on its own: every card uses its full colour range, whatever its "
        "magnitude (good for where each method looks). One scale: the top colour is the same raw "
        "value on every card, so a weak map looks weak. Maps of different families are in "
        "different units (gradients, probability changes, CAM activations): compare magnitudes "
        "within a family.",
    )
    return mode == "shared"


def with_shared_scale(
    settings: DisplaySettings, results: Sequence[ExplanationResult]
) -> DisplaySettings:
    """``settings`` with one colour scale for all ``results`` (see :func:`visuals.shared_scale`)."""
    scale = visuals.shared_scale([r.attribution for r in results], settings)
    return replace(settings, scale=scale if scale > 0 else None)


def display_controls(page: Page) -> DisplaySettings:
    """One row of display controls. They change only the rendering of cached raw maps."""
    k = lambda name: state.key(page, name)  # noqa: E731
    state.default(k("sign"), "positive")
    state.default(k("colormap_sequential"), render.default_colormap("positive"))
    state.default(k("colormap_diverging"), render.default_colormap("signed"))
    state.default(k("alpha"), 0.5)
    state.default(k("clip"), 99.0)
    state.default(k("blur"), 0.0)
    with st.container(border=True, key=k("display")):
        st.markdown(
            "**Display** <span style='color:#5b6470'>· changes the picture only; nothing is "
            "recomputed</span>",
            unsafe_allow_html=True,
        )
        c_sign, c_map, c_alpha, c_clip, c_blur = st.columns([1.5, 1, 1.1, 1.1, 1.1])
        sign = c_sign.selectbox(
            "Sign",
            render.SIGNS,
            key=k("sign"),
            format_func=SIGN_LABELS.get,
            persist_state="session",
            help="Which part of the signed map to show. Positive: pixels that raise the class "
            "score. Signed uses a diverging colormap (red for, blue against).",
        )
        if sign == "signed":
            diverging = c_map.selectbox(
                "Colormap (diverging)",
                render.DIVERGING_COLORMAPS,
                key=k("colormap_diverging"),
                persist_state="session",
            )
            sequential = st.session_state.get(k("colormap_sequential"), "Jet")
        else:
            sequential = c_map.selectbox(
                "Colormap",
                render.SEQUENTIAL_COLORMAPS,
                key=k("colormap_sequential"),
                persist_state="session",
            )
            diverging = st.session_state.get(k("colormap_diverging"), "RdBu_r")
        alpha = c_alpha.slider(
            "Overlay opacity", 0.0, 1.0, step=0.05, key=k("alpha"), persist_state="session"
        )
        clip = c_clip.slider(
            "Clip at percentile",
            50.0,
            100.0,
            step=0.5,
            key=k("clip"),
            persist_state="session",
            help="Values above this percentile of the map get the top colour, so that a few "
            "extreme pixels do not wash out the rest.",
        )
        blur = c_blur.slider(
            "Blur σ (pixels)",
            0.0,
            8.0,
            step=0.5,
            key=k("blur"),
            persist_state="session",
            help="Gaussian smoothing of the displayed map (the raw map is unchanged).",
        )
    outline_mask, outline_marker = outline_flags()
    return DisplaySettings(
        sign=sign,
        sequential_colormap=sequential,
        diverging_colormap=diverging,
        alpha=float(alpha),
        clip_percentile=float(clip),
        blur=float(blur),
        outline_mask=outline_mask,
        outline_marker=outline_marker,
    )


# ------------------------------------------------------------------------------------------------
# Computing with a progress bar
# ------------------------------------------------------------------------------------------------
def build_request(
    model: ModelSummary,
    image: LoadedImage,
    method: MethodSummary,
    params: dict[str, Any],
    *,
    target: int,
    layer: str | None,
    engine: str,
) -> ExplanationRequest | str:
    """The request, or a message saying why the method cannot run with these settings."""
    if not method.applicable:
        return f"{method.label} cannot explain this model: {method.reason}"
    try:
        if method.uses_layer:
            reason = service.method_reason(model, method.name, layer)
            if reason is not None:
                return f"{method.label} cannot use layer {layer}: {reason}"
        return service.explanation_request(
            model, image, method.name, params, target=target, layer=layer, engine=engine
        )
    except ServiceError as err:
        return str(err)


@dataclass(frozen=True)
class Failure:
    """Why a computation gave no result. ``retry_key`` is set when trying again may help (the
    worker crashed or ran past a limit): :func:`show_failure` then offers a Retry button."""

    message: str
    retry_key: Hashable | None = None


def compute(
    request: ExplanationRequest, image: LoadedImage, slot: DeltaGenerator, label: str
) -> ExplanationResult | Failure:
    """Fetch or compute an explanation, showing a progress bar fed by the worker in ``slot``
    while it runs. Returns the result or a :class:`Failure`."""
    cached = service.cached_explanation(request)
    if cached is not None:
        return cached
    progress, clear = service.streamlit_progress(slot, label)
    try:
        return service.explain(request, image, progress)
    except ServiceError as err:
        return Failure(str(err), err.retry_key if err.retryable else None)
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


# ------------------------------------------------------------------------------------------------
# Showing results
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pictures:
    overlay: np.ndarray
    heatmap: np.ndarray


def pictures(
    result: ExplanationResult,
    image: LoadedImage,
    settings: DisplaySettings,
    max_side: int | None = visuals.DISPLAY_MAX_SIDE,
) -> Pictures:
    """The overlay and heatmap for ``settings``; large images are drawn at ``max_side`` (the
    exports are drawn at full resolution when clicked)."""
    pixels, attribution, mask, marker, scaled = visuals.display_inputs(
        image.pixels, result.attribution, image.mask, image.marker, settings, max_side
    )
    return Pictures(
        overlay=visuals.overlay_rgb(pixels, attribution, scaled, mask, marker),
        heatmap=visuals.draw_outlines(
            visuals.heatmap_rgb(attribution, scaled),
            mask if scaled.outline_mask else None,
            marker if scaled.outline_marker else None,
        ),
    )


def show_image(rgb: np.ndarray, caption: str | None = None) -> None:
    st.image(visuals.enlarge(rgb), caption=caption, width="stretch")


def pictures_input(image: LoadedImage, settings: DisplaySettings) -> np.ndarray:
    """The input image at display size, with the outlines the settings ask for."""
    pixels, _, mask, marker, _ = visuals.display_inputs(
        image.pixels,
        np.zeros(image.pixels.shape[:2], np.float32),
        image.mask,
        image.marker,
        settings,
    )
    return visuals.draw_outlines(
        pixels,
        mask if settings.outline_mask else None,
        marker if settings.outline_marker else None,
    )


def input_image(image: LoadedImage, settings: DisplaySettings, caption: str = "Input") -> None:
    show_image(pictures_input(image, settings), caption)


def raw_map_figure(result: ExplanationResult, settings: DisplaySettings, height: int = 420):
    """The interactive Plotly heatmap of the raw map (hover shows raw values)."""
    attribution = result.attribution
    step = max(1, math.ceil(max(attribution.shape) / FIGURE_MAX_SIDE))
    shown = attribution[::step, ::step]
    figure = render.heatmap_figure(
        shown,
        sign=settings.sign,  # type: ignore[arg-type]
        colormap=settings.colormap,
        clip_percentile=settings.clip_percentile,
        height=height,
        units=report.map_units(result),
        scale=settings.scale,
    )
    # Room for the axis labels (pixel coordinates of the image) and the units above.
    figure.update_layout(margin={"l": 44, "r": 10, "t": 34, "b": 36})
    figure.update_xaxes(title_text="x (pixels)")
    figure.update_yaxes(title_text="y (pixels)")
    if step > 1:
        figure.data[0].x = np.arange(0, attribution.shape[1], step)[: shown.shape[1]]
        figure.data[0].y = np.arange(0, attribution.shape[0], step)[: shown.shape[0]]
    return figure


def result_caption(result: ExplanationResult) -> str:
    return report.result_caption(result)


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
    image's full resolution.

    Every download in the dashboard is deferred: the button holds a function that Streamlit runs
    when it is clicked. Built with the page, the PNGs and the HTML report cost about 0.1 s of
    every rerun (a display change included), even for the 96-px demo images."""
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


def predictions_table(predictions: Sequence[Prediction], target: int, k: int = 5) -> None:
    rows = [
        {
            "Class": ("▶ " if p.index == target else "") + p.name,
            "Probability": p.probability,
        }
        for p in predictions[:k]
    ]
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        column_config={
            "Probability": st.column_config.ProgressColumn(
                "Probability", min_value=0.0, max_value=1.0, format="percent"
            )
        },
    )


def result_facts(result: ExplanationResult, method: MethodSummary) -> None:
    facts = [
        # From the result itself, not the widgets: what was computed, for which class.
        f"**Method:** {result.method_label} (`{result.method}`)",
        f"**Target:** {result.target_label} (class {result.target}, p = {result.score:.3f})",
        f"**Time:** {result.seconds:.2f} s · **engine:** {ENGINE_LABELS.get(result.engine)}",
    ]
    if result.layer:
        facts.append(f"**Layer:** `{result.layer}`")
    params = ", ".join(f"{k} = {v}" for k, v in sorted(result.params.items()))
    facts.append(f"**Parameters:** {params or 'none'}")
    magnitude = report.magnitude_text(result)
    if magnitude:
        facts.append(f"**Raw values:** {magnitude}")
    for name, value in sorted(result.extras.items()):
        if name in report.EXTRAS_SHOWN_APART:
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        facts.append(f"**{name.replace('_', ' ')}:** {shown}")
    st.markdown("  \n".join(facts))
    st.caption(f"{method.description} See the Guide page for the formula and caveats.")


def map_warnings(
    result: ExplanationResult, *, label: str | None = None, container: Any = None
) -> None:
    """Show the library's warnings about ``result`` (an empty, constant or negligible map, a
    saturated score...) beside its picture."""
    target = container if container is not None else st
    for warning in result.extras.get("warnings") or ():
        text = f"**{label}:** {warning}" if label else str(warning)
        target.warning(text, icon=":material/warning:")


def heatmap_card(
    page: Page,
    method: MethodSummary,
    result: ExplanationResult,
    image: LoadedImage,
    settings: DisplaySettings,
) -> Pictures:
    pics = pictures(result, image, settings)
    show_image(pics.overlay)
    layer = f" · {result.layer}" if result.layer else ""
    magnitude = report.magnitude(result)
    peak = f"  \nmax |value| {magnitude['max_abs']:.3g}" if magnitude else ""
    st.caption(
        f"{result.target_label} (p = {result.score:.3f})  \n{result.seconds:.2f} s{layer}{peak}",
        help=report.magnitude_text(result),
    )
    map_warnings(result)
    card_downloads(page, image, result, settings, compact=True)
    return pics


def unavailable_card(message: str) -> None:
    st.info(message, icon=":material/block:")


# ------------------------------------------------------------------------------------------------
# Report downloads
# ------------------------------------------------------------------------------------------------
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
    evaluation = last_outcome("evaluation", model, image)
    sanity = last_outcome("sanity", model, image)
    labels = method_labels(model)

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


# ------------------------------------------------------------------------------------------------
# Model page pieces
# ------------------------------------------------------------------------------------------------
def model_summary(model: ModelSummary) -> None:
    cols = st.columns(4)
    cols[0].metric("Parameters", f"{model.n_params:,}")
    cols[1].metric("Layers", model.n_layers)
    cols[2].metric("Input", f"{model.input_size[0]}×{model.input_size[1]}×{model.channels}")
    cols[3].metric("Classes", model.n_classes)
    st.markdown(
        f"**File:** {model.ref.file_name}"
        + (f" · **SHA-256:** `{model.sha256}`" if model.sha256 else "")
        + f"  \n**Preprocessing:** {model.preprocessing} — {model.preprocessing_reason}"
        + f"  \n**Output:** {model.output_kind} from `{model.output_layer or '?'}`"
        + (
            f" · **CAM head:** `{model.cam_head}` → global average pooling → dense"
            if model.cam_head
            else " · no GAP → dense head (CAM does not apply; Grad-CAM does)"
        )
    )


SECURITY_NOTE = """
A model file is code-like input: a crafted file can try to run code when it is loaded.

- Files are loaded with Keras **safe mode** on and **without custom objects**: `Lambda` layers
  holding Python code and unknown custom layers are refused rather than executed.
- The Keras version in use ({keras}) includes the published fixes for earlier safe-mode bypasses
  (such as the `TFSMLayer` one) and for path traversal when a `.keras` archive is unpacked.
- Legacy `.h5` files are read by Keras' legacy loader with safe mode requested as well; prefer
  `.keras` files.
- Uploads are stored under a name made of their SHA-256 in the system's temporary folder, and the
  model's SHA-256 is printed above and in every report, so a result can be traced to its file.
- Still: on a shared server, only load models from people you trust, and keep Keras up to date.
"""


def security_note() -> None:
    with st.expander("Security notes on uploaded models", icon=":material/shield:"):
        st.markdown(SECURITY_NOTE.format(keras=service.package_version("keras")))


def _layer_rows(layers: Sequence[Any], base_depth: int = 0) -> list[dict[str, Any]]:
    rows = []
    for info in layers:
        indent = "\u2003" * max(0, info.depth - base_depth)
        kind = f"{info.class_name} (sub-model)" if info.is_model else info.class_name
        rows.append(
            {
                "Layer": indent + info.name,
                "Type": kind,
                "Output shape": _shape(info.output_shape),
                "Parameters": info.n_params,
                "Feature maps": "yes" if info.is_spatial and not info.is_model else "",
            }
        )
    return rows


def layer_table(model: ModelSummary) -> None:
    """The architecture as a table; nested sub-models get an expander each."""
    if not model.layers:
        st.info(
            "This model's layers cannot be listed (a subclassed model); only methods that need "
            "no inner layer apply."
        )
        return
    top = [info for info in model.layers if "/" not in info.path]
    height, width = model.input_size
    input_row = {
        "Layer": "input",
        "Type": "Input",
        "Output shape": _shape((height or "any", width or "any", model.channels)),
        "Parameters": 0,
        "Feature maps": "",
    }
    st.dataframe(
        [input_row, *_layer_rows(top)],
        hide_index=True,
        width="stretch",
        height=min(40 + 35 * (len(top) + 1), 720),
        column_config={"Parameters": st.column_config.NumberColumn(format="localized")},
    )
    for info in top:
        if not info.is_model:
            continue
        inner = [i for i in model.layers if i.path.startswith(info.path + "/")]
        label = f"Inside {info.name} · {len(inner)} layers · {info.n_params:,} parameters"
        with st.expander(label):
            st.dataframe(
                _layer_rows(inner, base_depth=info.depth + 1),
                hide_index=True,
                width="stretch",
                height=min(38 + 35 * len(inner), 480),
                column_config={"Parameters": st.column_config.NumberColumn(format="localized")},
            )


def feature_map_grid(
    activations: np.ndarray, channels: Sequence[int], colormap: str, columns: int = 8
) -> None:
    tiles = visuals.channel_tiles(activations, channels, colormap)
    means = activations.mean(axis=(0, 1))
    for start in range(0, len(tiles), columns):
        cells = st.columns(columns)
        for cell, index, tile in zip(
            cells, channels[start : start + columns], tiles[start : start + columns], strict=False
        ):
            cell.image(
                visuals.enlarge(tile, 128),
                caption=f"#{index} · mean {means[index]:.2f}",
                width="stretch",
            )


# ------------------------------------------------------------------------------------------------
# Guide
# ------------------------------------------------------------------------------------------------
def methods_overview(methods: Sequence[MethodSummary], with_model: bool) -> None:
    rows = []
    for m in methods:
        row = {
            "Method": m.label,
            "Family": FAMILY_LABELS.get(m.family, m.family),
            "Cost": m.cost,
            "Uses a layer": "yes" if m.uses_layer else "",
            "Engines": ", ".join(ENGINE_LABELS.get(e, e) for e in m.engines),
        }
        if with_model:
            row["Applies to this model"] = "yes" if m.applicable else f"no — {m.reason}"
        rows.append(row)
    # A plain column, not the index: st.table draws an index as a greyed header column.
    st.table(pd.DataFrame(rows).style.hide(axis="index"))


def _range_text(spec: ParamSpec) -> str:
    if spec.kind == "int":
        return f"{int(spec.low or 0):,} – {int(spec.high or 0):,}"
    return f"{spec.low:g} – {spec.high:g}"


def method_guide(method: MethodSummary, with_model: bool) -> None:
    family = FAMILY_LABELS.get(method.family, method.family)
    st.subheader(method.label, anchor=method.name)
    st.caption(f"{family} method · `{method.name}` · cost: {method.cost}")
    st.markdown(method.description)
    if method.formula:
        st.latex(method.formula)
    if method.caveats:
        st.markdown(f"**Caveats.** {method.caveats}")
    if method.params:
        rows = [
            {
                "Parameter": p.name,
                "Default": str(p.default),
                "Range / choices": (
                    "on / off"
                    if p.kind == "bool"
                    else ", ".join(map(str, p.choices))
                    if p.choices
                    else _range_text(p)
                    if p.low is not None and p.high is not None
                    else ""
                ),
                "Meaning": p.help + (" (advanced)" if p.advanced else ""),
            }
            for p in method.params
        ]
        st.table(pd.DataFrame(rows).set_index("Parameter"))
    if with_model and not method.applicable:
        st.warning(f"Not available for the loaded model: {method.reason}")
    st.markdown(f"**Paper:** [{method.reference}]({method.reference_url})")


# ------------------------------------------------------------------------------------------------
# Robustness: adversarial examples
# ------------------------------------------------------------------------------------------------
ATTACK_LABELS = {"fgsm": "FGSM", "pgd": "PGD"}
ATTACK_HELP = (
    "FGSM (Goodfellow et al. 2015): one step of size ε along the sign of the loss gradient. "
    "PGD (Madry et al. 2018): a random start in the ε-ball, then many small signed steps, each "
    "projected back into the ball; stronger, a little slower."
)
UNTARGETED = -1
#: Largest ε the slider offers, in pixel levels (32/255 is already a visible change).
MAX_EPSILON = 32
#: Which class each image's explanation answers for, on the Robustness page.
EXPLAIN_TARGETS = {
    "own": "Each image's top class",
    "original": "The original class on both",
    "adversarial": "The new class on both",
}


@dataclass(frozen=True)
class AttackSettings:
    """What the Robustness page's controls ask for. ``epsilon`` and ``step_size`` are in pixel
    levels (0–255); ``step_size`` None is the automatic ``min(ε, 2.5ε/steps)``; ``target`` None
    is untargeted. FGSM ignores steps, step size and seed, so they are normalised for it (one
    cache entry per FGSM attack, whatever the PGD controls say)."""

    method: str
    epsilon: int
    steps: int
    step_size: float | None
    target: int | None
    seed: int

    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`service.attack` (after ``method``)."""
        return {
            "epsilon": float(self.epsilon),
            "steps": int(self.steps),
            "step_size": None if self.step_size is None else float(self.step_size),
            "target": self.target,
            "seed": int(self.seed),
        }


def attack_controls(page: Page, model: ModelSummary) -> AttackSettings:
    """One bordered row of attack controls; the PGD-only ones are disabled for FGSM."""
    k = lambda name: state.key(page, name)  # noqa: E731
    state.default(k("attack"), "fgsm")
    state.default(k("epsilon"), 4)
    state.default_option(k("goal"), [UNTARGETED, *range(model.n_classes)], UNTARGETED)
    state.default(k("steps"), 10)
    state.default(k("step_size"), 0.0)
    state.default(k("seed"), 0)
    with st.container(border=True, key=k("controls")):
        c_method, c_eps, c_goal = st.columns([0.8, 2, 1.6])
        method = c_method.segmented_control(
            "Attack",
            list(ATTACK_LABELS),
            key=k("attack"),
            format_func=ATTACK_LABELS.get,
            required=True,
            persist_state="session",
            help=ATTACK_HELP,
        )
        epsilon = c_eps.slider(
            "ε: largest change of a pixel (levels of 255)",
            1,
            MAX_EPSILON,
            step=1,
            key=k("epsilon"),
            persist_state="session",
            help="The L∞ budget: no colour channel of any pixel moves by more than ε levels out "
            "of 255 (ε = 8 is the literature's 8/255). A few levels are hard to see at all.",
        )
        goal = c_goal.selectbox(
            "Goal",
            [UNTARGETED, *range(model.n_classes)],
            key=k("goal"),
            format_func=lambda i: (
                "Any other class (untargeted)"
                if i == UNTARGETED
                else f"Make it say “{model.class_names[i]}”"
            ),
            persist_state="session",
            help="Untargeted: push the current class down. Targeted: pull one class up.",
        )
        pgd = method == "pgd"
        why_off = "FGSM takes a single step; this applies to PGD only."
        c_steps, c_size, c_seed = st.columns([2, 1, 1])
        steps = c_steps.slider(
            "PGD steps",
            1,
            100,
            step=1,
            key=k("steps"),
            disabled=not pgd,
            persist_state="session",
            help="Gradient steps of PGD." if pgd else why_off,
        )
        step_size = c_size.number_input(
            "PGD step size (0 = auto)",
            min_value=0.0,
            max_value=float(MAX_EPSILON),
            step=0.25,
            key=k("step_size"),
            disabled=not pgd,
            persist_state="session",
            help="PGD step in pixel levels. 0 picks min(ε, 2.5·ε/steps), the Madry lab's rule "
            "of thumb."
            if pgd
            else why_off,
        )
        seed = c_seed.number_input(
            "PGD seed",
            min_value=0,
            max_value=2**31 - 1,
            step=1,
            key=k("seed"),
            disabled=not pgd,
            persist_state="session",
            help="Seed of PGD's random start in the ε-ball." if pgd else why_off,
        )
    if not pgd:
        return AttackSettings("fgsm", int(epsilon), 1, None, _goal(goal), 0)
    return AttackSettings(
        "pgd", int(epsilon), int(steps), float(step_size) or None, _goal(goal), int(seed)
    )


def _goal(choice: int) -> int | None:
    return None if choice == UNTARGETED else int(choice)


def run_attack(
    model: ModelSummary, image: LoadedImage, settings: AttackSettings, slot: DeltaGenerator
) -> tuple[service.AttackOutcome, LoadedImage] | Failure:
    """The attack's outcome and the adversarial image (cached), with a progress bar in ``slot``
    while it runs, or a :class:`Failure`."""
    label = f"{ATTACK_LABELS[settings.method]} attack"
    progress, clear = service.streamlit_progress(slot, label)
    try:
        return service.attack(model, image, settings.method, **settings.options, progress=progress)
    except ServiceError as err:
        return Failure(str(err), err.retry_key if err.retryable else None)
    finally:
        clear()


def attack_summary(outcome: service.AttackOutcome, class_names: Sequence[str]) -> tuple[bool, str]:
    """(whether the attack did what was asked, the one-line verdict in Markdown)."""
    before, after = outcome.before[0], outcome.after[0]
    change = (
        f"**{before.name}** ({before.probability:.1%}) → **{after.name}** ({after.probability:.1%})"
    )
    if outcome.target is not None:
        if outcome.reached_target:
            return True, f"Target reached: {change}"
        goal = class_names[outcome.target]
        return False, f"Target “{goal}” not reached: {change} — try a larger ε or more PGD steps."
    if outcome.flipped:
        return True, f"Decision flipped: {change}"
    return False, f"Not flipped: {change} — try a larger ε (or PGD, which is stronger)."


def attack_verdict(outcome: service.AttackOutcome, model: ModelSummary) -> None:
    """One line the class can read from the back: did the decision change, and to what."""
    success, line = attack_summary(outcome, model.class_names)
    if success:
        st.success(line, icon=":material/swap_horiz:")
    else:
        st.warning(line, icon=":material/block:")
    if outcome.success_at_model_resolution and not outcome.success:
        st.caption(
            "At the model's input resolution the attack did succeed; resizing and rounding the "
            "change to whole pixel levels undid it."
        )


def amplified_perturbation(perturbation: np.ndarray) -> tuple[np.ndarray, int]:
    """The perturbation (float (H, W, 3), pixel levels) as a visible uint8 picture: mid-grey is
    "unchanged", and each level is multiplied by the returned factor so that the largest change
    reaches almost full contrast."""
    largest = float(np.max(np.abs(perturbation))) if perturbation.size else 0.0
    factor = max(1, math.floor(127 / largest)) if largest > 0 else 1
    picture = np.clip(np.rint(128.0 + factor * perturbation), 0, 255).astype(np.uint8)
    return picture, factor


def attack_pictures(
    image: LoadedImage, adversarial: LoadedImage, outcome: service.AttackOutcome
) -> None:
    """Original, adversarial and the amplified perturbation side by side (with the sidebar's
    ground-truth outlines on the two images)."""
    outline_mask, outline_marker = outline_flags()
    settings = DisplaySettings(outline_mask=outline_mask, outline_marker=outline_marker)
    picture, factor = amplified_perturbation(outcome.perturbation)
    before, after = outcome.before[0], outcome.after[0]
    left, middle, right = st.columns(3)
    with left:
        st.markdown("**Original**")
        input_image(image, settings, caption=f"{before.name} · {before.probability:.1%}")
    with middle:
        st.markdown("**Adversarial**")
        input_image(adversarial, settings, caption=f"{after.name} · {after.probability:.1%}")
    with right:
        st.markdown(f"**The change, amplified ×{factor}**")
        caption = (
            "grey = unchanged; brighter / darker = pixel raised / lowered"
            if outcome.linf > 0
            else "no pixel changed"
        )
        show_image(picture, caption)


def attack_numbers(outcome: service.AttackOutcome) -> None:
    """L∞ and L2 of the change, its share of changed pixels, and what the attack ran."""
    cols = st.columns(4)
    cols[0].metric(
        "L∞ (levels)", f"{outcome.linf:g}", help="The largest change of any colour channel."
    )
    height, width = outcome.perturbation.shape[:2]
    cols[1].metric(
        "L2 (levels)",
        f"{outcome.l2:.1f}",
        help=f"The Euclidean length of the change over all {height}×{width}×3 values.",
    )
    changed = float(np.mean(np.any(outcome.perturbation != 0, axis=-1)))
    cols[2].metric("Pixels changed", f"{changed:.0%}")
    steps = "1 step" if outcome.steps == 1 else f"{outcome.steps} steps of {outcome.step_size:g}"
    cols[3].metric(
        "Attack",
        f"{outcome.method.upper()} ε={outcome.epsilon:g}",
        help=f"{steps}; seed {outcome.seed}" if outcome.method == "pgd" else steps,
    )


def attack_predictions_table(outcome: service.AttackOutcome) -> None:
    """Top classes before and after the attack, side by side."""
    before = {p.index: p for p in outcome.before}
    after = {p.index: p for p in outcome.after}
    order = list(dict.fromkeys([*before, *after]))
    rows = [
        {
            "Class": (before.get(i) or after[i]).name,
            "Before": before[i].probability if i in before else None,
            "After": after[i].probability if i in after else None,
        }
        for i in order
    ]
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        column_config={
            "Before": st.column_config.NumberColumn("Before", format="percent"),
            "After": st.column_config.NumberColumn("After", format="percent"),
        },
    )
    if len(outcome.losses) > 1:
        steps = (
            f"{outcome.steps} steps of {outcome.step_size:g} level(s)"
            if outcome.method == "pgd"
            else f"one step of {outcome.step_size:g} levels"
        )
        st.caption(
            f"{outcome.method.upper()}: {steps}. Loss of the attacked class "
            f"{outcome.losses[0]:.3f} → {outcome.losses[-1]:.3f} "
            f"({'pushed up' if outcome.target is None else 'pulled down'})."
        )


def adversarial_download(page: Page, image: LoadedImage, outcome: service.AttackOutcome) -> None:
    stem = report.file_stem(image.name, outcome.method, f"eps{outcome.epsilon:g}")
    st.download_button(
        "Adversarial PNG",
        lambda: report.png_bytes(outcome.adversarial),
        file_name=f"{stem}.png",
        mime="image/png",
        key=state.key(page, "download_adversarial"),
        on_click="ignore",
        icon=":material/download:",
        help="The adversarial image at the original's resolution (lossless: a JPEG would "
        "destroy the perturbation).",
    )


def explanation_target_picker(page: Page) -> str:
    key = state.key(page, "explain_target")
    state.default_option(key, list(EXPLAIN_TARGETS), "own")
    return st.radio(
        "Class explained",
        list(EXPLAIN_TARGETS),
        key=key,
        format_func=EXPLAIN_TARGETS.get,
        horizontal=True,
        persist_state="session",
        help="Each image's top class shows why the model says what it says; the same class on "
        "both shows how the evidence for it moved.",
    )


def explained_targets(outcome: service.AttackOutcome, choice: str) -> tuple[int, int]:
    """(class explained on the original, class explained on the adversarial image)."""
    original, adversarial = outcome.before[0].index, outcome.after[0].index
    if choice == "original":
        return original, original
    if choice == "adversarial":
        return adversarial, adversarial
    return original, adversarial


def explanation_pair(
    page: Page,
    model: ModelSummary,
    method: MethodSummary,
    images: tuple[LoadedImage, LoadedImage],
    targets: tuple[int, int],
    settings: DisplaySettings,
) -> None:
    """``method``'s map of the original and of the adversarial image, side by side, in a card."""
    with st.container(border=True, key=state.key(page, f"pair_{method.name}")):
        st.markdown(f"##### {method.label}")
        if not method.applicable:
            unavailable_card(f"Not available for this model: {method.reason}")
            return
        cells = st.columns(2)
        for cell, picture, target, title in zip(
            cells, images, targets, ("Original", "Adversarial"), strict=True
        ):
            with cell:
                layer = model.default_layer if method.uses_layer else None
                request = build_request(
                    model, picture, method, {}, target=target, layer=layer, engine="native"
                )
                if isinstance(request, str):
                    st.warning(request)
                    continue
                outcome = compute(request, picture, st.empty(), method.label)
                if isinstance(outcome, Failure):
                    show_failure(outcome, f"{page}_{method.name}_{title.lower()}")
                    continue
                show_image(
                    pictures(outcome, picture, settings).overlay,
                    f"{title} · {outcome.target_label} (p = {outcome.score:.3f})",
                )
                map_warnings(outcome)


# ------------------------------------------------------------------------------------------------
# Evaluate: deletion / insertion, localisation, sanity check
# ------------------------------------------------------------------------------------------------
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


def methods_multiselect(
    page: Page, model: ModelSummary, label: str, defaults: Sequence[str], name: str = "methods"
) -> list[MethodSummary]:
    """A multiselect of the model's methods with page-specific defaults (applicable ones only)."""
    names = [m.name for m in model.methods]
    key = state.key(page, name)
    applicable = {m.name for m in model.methods if m.applicable}
    state.default_option(key, names, [n for n in defaults if n in applicable])
    chosen = st.multiselect(
        label,
        names,
        key=key,
        format_func=_method_label(model),
        persist_state="session",
        placeholder="Pick one or more methods",
    )
    return [model.method(n) for n in chosen]


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


def mask_from_upload(name: str, data: bytes, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """A ground-truth mask from an uploaded picture: white (grey level > 127) is the object.

    ``size`` is the image's (width, height); a mask of another size is resized to it (nearest
    neighbour). Returns the bool (H, W) mask and a note on what was done. Raises ServiceError
    for a file that is not an image, or a mask that is empty or covers the whole image.
    """
    from PIL import Image

    picture = service.load_image_bytes(name, data).pixels
    grey = picture.astype(np.float32).mean(axis=2)
    note = f"{name}: {picture.shape[1]}×{picture.shape[0]}"
    width, height = size
    if grey.shape != (height, width):
        resized = Image.fromarray(grey.astype(np.uint8)).resize((width, height), Image.NEAREST)
        grey = np.asarray(resized, np.float32)
        note += f", resized to {width}×{height}"
    mask = grey > 127
    if not mask.any():
        raise ServiceError(
            f"The mask {name!r} has no white pixel: paint the object white (grey level above 127) "
            "on a black background."
        )
    if mask.all():
        raise ServiceError(
            f"The mask {name!r} is white everywhere: it must mark the object only (white) on a "
            "black background."
        )
    return mask, note + f" · object = {mask.mean():.0%} of the image"


def box_mask(size: tuple[int, int], xs: tuple[int, int], ys: tuple[int, int]) -> np.ndarray:
    """A bool (H, W) mask that is True inside the box ``xs`` × ``ys`` (pixel edges, end
    exclusive) of an image of ``size`` = (width, height)."""
    width, height = size
    mask = np.zeros((height, width), bool)
    mask[ys[0] : ys[1], xs[0] : xs[1]] = True
    return mask


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


MASK_PREVIEW_SIDE = 192


def mask_preview(pixels: np.ndarray, mask: np.ndarray, side: int = MASK_PREVIEW_SIDE) -> np.ndarray:
    """The image at about ``side`` pixels with the mask's outline in white, uint8 (h, w, 3)."""
    from PIL import Image

    if max(pixels.shape[:2]) < side:
        return visuals.draw_outlines(visuals.enlarge(pixels, side), visuals.enlarge(mask, side))
    small = visuals.fit(pixels, side)
    size = (small.shape[1], small.shape[0])
    shrunk = Image.fromarray(np.asarray(mask, np.uint8) * 255).resize(size, Image.NEAREST)
    return visuals.draw_outlines(small, np.asarray(shrunk) > 0)


def explanation_maps(
    page: Page,
    model: ModelSummary,
    image: LoadedImage,
    methods: Sequence[MethodSummary],
    target: int,
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
        outcome = compute(request, image, slot, method.label)
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
    target: int,
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
        remember_outcome("evaluation", model, image, outcome)
        return outcome
    except ServiceError as err:
        return Failure(str(err), err.retry_key if err.retryable else None)
    finally:
        clear()


def method_labels(model: ModelSummary) -> dict[str, str]:
    return {m.name: m.label for m in model.methods}


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


#: Session-state slots of the Evaluate page's last outcomes, for the reports.
_LAST_OUTCOME = {"evaluation": "_last_evaluation", "sanity": "_last_sanity"}


def remember_outcome(kind: str, model: ModelSummary, image: LoadedImage, outcome: Any) -> None:
    """Keep the Evaluate page's latest outcome of ``kind`` for this session's reports."""
    st.session_state[_LAST_OUTCOME[kind]] = (model.ref.key, image.sha256, outcome)


def last_outcome(kind: str, model: ModelSummary, image: LoadedImage) -> Any | None:
    """The Evaluate page's latest ``kind`` outcome if it was computed for this model and image."""
    kept = st.session_state.get(_LAST_OUTCOME[kind])
    if kept is None or kept[0] != model.ref.key or kept[1] != image.sha256:
        return None
    return kept[2]


def evaluation_downloads(
    page: Page,
    model: ModelSummary,
    image: LoadedImage,
    predictions: Sequence[Prediction],
    labels: dict[str, str],
) -> None:
    """The Evaluate page's exports: an HTML review report of its scores, curves and sanity
    verdicts, and the same numbers (full curves included) as JSON."""
    evaluation = last_outcome("evaluation", model, image)
    sanity = last_outcome("sanity", model, image)
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
    target: int,
    mode: str,
) -> bool:
    """The Run button; True when the test was asked for with exactly these settings (pressed now
    or earlier), so its cached result stays on screen while other controls change."""
    wanted = (model.ref.key, image.sha256, methods, int(target), mode)
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
    target: int,
    mode: str,
    slot: DeltaGenerator,
) -> service.SanityOutcome | Failure:
    progress, clear = service.streamlit_progress(slot, "Sanity check")
    try:
        outcome = service.sanity_check(
            model, image, methods, target=target, mode=mode, progress=progress
        )
        remember_outcome("sanity", model, image, outcome)
        return outcome
    except ServiceError as err:
        return Failure(str(err), err.retry_key if err.retryable else None)
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
