"""The sidebar: the model and image inputs shared by every page. Loads what the user picked; on
failure keeps what was loaded before and says why."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from dashboard import service, state, visuals
from dashboard.service import LoadedImage, ServiceError

MODEL_SOURCES = ("Demo model", "Upload a file", "keras.applications")
IMAGE_SOURCES = ("Sample", "Upload", "Camera")
TASK_WORDS = {
    "classification": "classifier",
    "multilabel": "multi-label",
    "regression": "regression",
    "segmentation": "segmentation",
}
#: The upload limit set in .streamlit/config.toml (server.maxUploadSize), for the help texts.
MAX_UPLOAD_MB = int(st.get_option("server.maxUploadSize"))


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
    return None


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
        task_key = "sidebar_task"
        state.default(task_key, "auto")
        task = st.selectbox(
            "Task",
            service.TASK_OPTIONS,
            key=task_key,
            format_func=lambda t: service.TASK_DESCRIPTIONS.get(t, t),
            help="What the model's output does. 'auto' recognises it: a per-pixel map is "
            "segmentation, several sigmoids multi-label, a linear output saved with a regression "
            "loss regression. Choose 'regression' for a linear output saved without its loss.",
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
            demo_labels = labels or service.demo_labels(demo.path)
            attempt = ("demo", str(demo.path), preprocessing, labels_sha, task)
            if state.is_new_attempt("model", attempt):
                _try_load_model(
                    lambda: service.file_model_ref(
                        demo.path, preprocessing=preprocessing, labels=demo_labels, task=task
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
            attempt = ("upload", upload.file_id, preprocessing, labels_sha, task)
            if state.is_new_attempt("model", attempt):

                def uploaded_ref() -> service.ModelRef:
                    path, digest = service.store_model_upload(upload.name, upload.getvalue())
                    return service.file_model_ref(
                        path,
                        file_name=upload.name,
                        sha256=digest,
                        preprocessing=preprocessing,
                        labels=labels,
                        task=task,
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
        word = "classes" if model.unit_word == "class" else f"{model.unit_word}s"
        task = "" if model.task == "classification" else f"{TASK_WORDS[model.task]} · "
        st.caption(
            f"Loaded **{model.ref.file_name}** · {task}{model.n_classes} {word} · "
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
