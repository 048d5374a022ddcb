"""The alternative engine: tf-explain 0.3.1's raw functions, adapted to our conventions.

tf-explain's ``explain()`` methods return uint8 overlays and fail on Keras 3 in several ways
(automatic layer choice, Sequential and nested models, near-blank gradient images, non-square
occlusion). Its static functions that return raw tensors do work on Functional models, so this
engine calls those and converts the result to our raw signed map. Where its conventions differ
from ours, the difference is kept (it is what a tf-explain user gets) and named in
``extras["engine_note"]``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import MethodNotApplicableError, ParameterError
from .maps import resize_map
from .registry import ExplainRequest

_PROBABILITY_NOTE = (
    "tf-explain differentiates the model's output as it is (probabilities when the softmax is "
    "inside the last Dense layer; it only strips a separate final activation layer)."
)


def _check_model(request: ExplainRequest) -> Any:
    import keras
    from keras.src.models.functional import Functional

    model = request.bundle.model
    if isinstance(model, keras.Sequential) or not isinstance(model, Functional):
        raise MethodNotApplicableError(
            "the tf-explain engine only handles Functional models (it fails on Sequential and "
            "subclassed models under Keras 3); use the native engine"
        )
    if any(info.is_model for info in request.bundle.layers):
        raise MethodNotApplicableError(
            "the tf-explain engine cannot see inside nested sub-models; use the native engine"
        )
    return model


def _score_model(model: Any) -> Any:
    import warnings

    from tf_explain.core.vanilla_gradients import VanillaGradients

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VanillaGradients().get_score_model(model)


def _vanilla(request: ExplainRequest, model: Any) -> tuple[np.ndarray, dict[str, Any]]:
    from tf_explain.core.vanilla_gradients import VanillaGradients

    grads = VanillaGradients.compute_gradients(request.x, _score_model(model), request.target)
    return np.asarray(grads)[0].sum(axis=-1), {"engine_note": _PROBABILITY_NOTE}


def _gradient_x_input(request: ExplainRequest, model: Any) -> tuple[np.ndarray, dict[str, Any]]:
    from tf_explain.core.gradients_inputs import GradientsInputs

    values = GradientsInputs.compute_gradients(request.x, _score_model(model), request.target)
    return np.asarray(values)[0].sum(axis=-1), {"engine_note": _PROBABILITY_NOTE}


def _smoothgrad(request: ExplainRequest, model: Any) -> tuple[np.ndarray, dict[str, Any]]:
    from tf_explain.core.smoothgrad import SmoothGrad

    params = request.params
    if params["base"] != "vanilla_gradients" or params["squared"]:
        raise ParameterError(
            "tf-explain's SmoothGrad only smooths vanilla gradients (base=vanilla_gradients, "
            "squared=false)"
        )
    n = int(params["n_samples"])
    sigma = float(params["noise_level"]) * float(request.x.max() - request.x.min() or 1.0)
    # tf-explain draws from NumPy's global generator: seed it for reproducibility, then restore.
    state = np.random.get_state()
    try:
        np.random.seed(int(params["seed"]))
        noisy = SmoothGrad.generate_noisy_images(request.x, n, sigma)
    finally:
        np.random.set_state(state)
    grads = SmoothGrad.get_averaged_gradients(noisy.astype(np.float32), model, request.target, n)
    # It differentiates the cross-entropy loss −log p_c: negate to get evidence *for* the class.
    note = (
        "tf-explain smooths the gradient of the cross-entropy loss −log p_c; the map is negated "
        "so that positive values support the class."
    )
    return -np.asarray(grads)[0].sum(axis=-1), {"engine_note": note}


def _integrated_gradients(request: ExplainRequest, model: Any) -> tuple[np.ndarray, dict[str, Any]]:
    from tf_explain.core.integrated_gradients import IntegratedGradients

    steps = max(2, int(request.params["steps"]))
    path = IntegratedGradients.generate_interpolations(request.x, steps).astype(np.float32)
    mean_grads = IntegratedGradients.get_integrated_gradients(path, model, request.target, steps)
    # tf-explain returns the path-averaged gradient only; IG multiplies by (x − baseline), and
    # its baseline is zero in model-input units.
    values = np.asarray(mean_grads)[0] * request.x[0]
    note = (
        "tf-explain uses a zero baseline in model-input units and a rule with both end points "
        f"(α = k/(steps−1)); baseline/rule parameters are not used. {_PROBABILITY_NOTE}"
    )
    return values.sum(axis=-1), {"engine_note": note}


def _occlusion(request: ExplainRequest, model: Any) -> tuple[np.ndarray, dict[str, Any]]:
    from tf_explain.core.occlusion_sensitivity import OcclusionSensitivity

    x = request.x[0]
    h, w = x.shape[:2]
    if h != w:
        # It offsets patch columns by multiples of the image *height* and lists patches and map
        # cells in different orders, so on a non-square input values land in the wrong cells.
        raise MethodNotApplicableError(
            f"tf-explain's occlusion scrambles the map on non-square inputs ({h}×{w}); use the "
            "native engine"
        )
    patch = int(request.params["patch_size"])
    explainer = OcclusionSensitivity(batch_size=int(request.params["batch_size"]))
    with contextlib.redirect_stdout(io.StringIO()):  # its model.predict prints a progress bar
        sensitivity = explainer.get_sensitivity_map(model, x, request.target, patch)
    # Its final cv2.resize upsamples the coarse grid; bring it to our float32 (h, w) map.
    sensitivity = resize_map(np.asarray(sensitivity, np.float32), (h, w))
    # It reports 1 − p(occluded); convert to our drop p(x) − p(occluded).
    _, probs = request.bundle.runner.forward(request.x)
    values = sensitivity - (1.0 - probs[0, request.target])
    note = (
        "tf-explain uses non-overlapping patches (stride = patch size) filled with 127.5 in "
        "model-input units; stride, fill and score parameters are not used."
    )
    return values.astype(np.float32), {"engine_note": note}


def _grad_cam(request: ExplainRequest, model: Any) -> tuple[np.ndarray, dict[str, Any]]:
    from tf_explain.core.grad_cam import GradCAM

    layer = request.layer or request.bundle.default_layer
    assert layer is not None
    outputs, grads = GradCAM.get_gradients_and_filters(
        model, request.x, layer, request.target, use_guided_grads=False
    )
    cam = np.asarray(GradCAM.generate_ponderated_output(outputs, grads)[0], np.float32)
    if request.params["relu"]:
        cam = np.maximum(cam, 0.0)
    note = "Plain gradients (tf-explain's default uses guided gradients). " + _PROBABILITY_NOTE
    return cam, {"engine_note": note}


_ENGINE: dict[str, Callable[[ExplainRequest, Any], tuple[np.ndarray, dict[str, Any]]]] = {
    "vanilla_gradients": _vanilla,
    "gradient_x_input": _gradient_x_input,
    "smoothgrad": _smoothgrad,
    "integrated_gradients": _integrated_gradients,
    "occlusion": _occlusion,
    "grad_cam": _grad_cam,
}


def compute_with_tf_explain(method: str, request: ExplainRequest) -> tuple[np.ndarray, dict]:
    """Run ``method`` with tf-explain; returns (raw map, extras) like a native compute."""
    if method not in _ENGINE:
        raise ParameterError(f"tf-explain has no {method}")
    model = _check_model(request)
    return _ENGINE[method](request, model)
