"""The alternative engine: tf-explain 0.3.1's raw functions, adapted to our conventions.

tf-explain's ``explain()`` methods return uint8 overlays and fail on Keras 3 in several ways
(automatic layer choice, Sequential and nested models, near-blank gradient images, non-square
occlusion). Its static functions that return raw tensors do work on Functional models, so this
engine calls those and converts the result to our raw signed map. Where its conventions differ
from ours, the difference is kept (it is what a tf-explain user gets) and named in
``extras["engine_note"]``.

tf-explain also assumes ``model.output`` is one tensor. Under Keras 3 a Functional model built
(or saved) with ``outputs=[tensor]`` keeps that list: ``model(x)`` unwraps it, but
``model.output`` stays a one-element list, so Grad-CAM's gradient model returns
``[features, [probabilities]]`` and SmoothGrad reads ``model.output.shape``. Every tf-explain
call therefore gets a Functional view of the model with one input and the explained output as a
single tensor (same layers and weights), built once per model.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from explainers.core.maps import resize_map
from explainers.core.specs import ExplainRequest
from explainers.errors import MethodNotApplicableError, ParameterError

if TYPE_CHECKING:
    from explainers.core.specs import MethodSpec
    from explainers.io.models import ModelBundle

_PROBABILITY_NOTE = (
    "tf-explain differentiates the model's output as it is (probabilities when the softmax is "
    "inside the last Dense layer; it only strips a separate final activation layer)."
)


class _Views:
    """The models tf-explain is handed for one bundle model (built lazily, then reused)."""

    def __init__(self, single: Any) -> None:
        self.single = single  # one input → the explained output, as a single tensor
        self._score: Any = None

    @property
    def score(self) -> Any:
        """tf-explain's score model (a separate final activation layer stripped)."""
        if self._score is None:
            from tf_explain.core.vanilla_gradients import VanillaGradients

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "unsupported architecture": nothing to strip
                self._score = VanillaGradients().get_score_model(self.single)
        return self._score


# Keyed by the bundle's Keras model: a view holds that model's layers, not the model itself.
_VIEWS: weakref.WeakKeyDictionary[Any, _Views] = weakref.WeakKeyDictionary()
_VIEWS_LOCK = threading.Lock()


#: tf-explain's occlusion fills each patch with this value, in model-input units.
OCCLUSION_FILL = 127.5


def _model_reason(bundle: ModelBundle) -> str | None:
    import keras
    from keras.src.models.functional import Functional

    model = bundle.model
    task = getattr(bundle, "task", "classification")
    if task != "classification":
        return (
            f"the tf-explain engine explains one class of a classifier; this is a {task} "
            "model; use the native engine"
        )
    if isinstance(model, keras.Sequential) or not isinstance(model, Functional):
        return (
            "the tf-explain engine only handles Functional models (it fails on Sequential and "
            "subclassed models under Keras 3); use the native engine"
        )
    if any(info.is_model for info in bundle.layers):
        return "the tf-explain engine cannot see inside nested sub-models; use the native engine"
    if len(model.inputs) != 1:
        return (
            f"the tf-explain engine handles models with one input; this one has "
            f"{len(model.inputs)}; use the native engine"
        )
    return None


def _occlusion_reason(bundle: ModelBundle) -> str | None:
    # The model-input range of pixels 0..255 under the bundle's preprocessing, per channel.
    ends = bundle.preprocess(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8))[0]
    low, high = ends.min(axis=0), ends.max(axis=0)
    if float(low.max()) <= OCCLUSION_FILL <= float(high.min()):
        return None
    return (
        f"tf-explain's occlusion fills patches with {OCCLUSION_FILL:g} in model-input units, "
        f"outside this model's input range ({float(low.min()):g} to {float(high.max()):g} after "
        f"{bundle.preprocessing!r} preprocessing): any patch drives the score to about zero, so "
        "the map is close to flat; use the native engine"
    )


def unavailable_reason(spec: MethodSpec, bundle: ModelBundle) -> str | None:
    """Why the tf-explain engine refuses method ``spec`` on ``bundle`` (None when it runs it).

    What depends on the image is checked when it runs: occlusion refuses non-square model inputs.
    """
    if spec.tf_explain is None:
        return f"tf-explain has no {spec.label}"
    reason = _model_reason(bundle)
    if reason is None and spec.tf_explain.requirement is not None:
        reason = spec.tf_explain.requirement(bundle)
    return reason


def _views(bundle: ModelBundle) -> _Views:
    import keras

    model = bundle.model
    with _VIEWS_LOCK:
        views = _VIEWS.get(model)
        if views is None:
            views = _VIEWS[model] = _Views(
                keras.Model(model.inputs[0], model.outputs[bundle.output_index])
            )
    return views


def _vanilla(request: ExplainRequest, views: _Views) -> tuple[np.ndarray, dict[str, Any]]:
    from tf_explain.core.vanilla_gradients import VanillaGradients

    grads = VanillaGradients.compute_gradients(request.x, views.score, request.target)
    return np.asarray(grads)[0].sum(axis=-1), {"engine_note": _PROBABILITY_NOTE}


def _gradient_x_input(request: ExplainRequest, views: _Views) -> tuple[np.ndarray, dict[str, Any]]:
    from tf_explain.core.gradients_inputs import GradientsInputs

    values = GradientsInputs.compute_gradients(request.x, views.score, request.target)
    return np.asarray(values)[0].sum(axis=-1), {"engine_note": _PROBABILITY_NOTE}


def _smoothgrad(request: ExplainRequest, views: _Views) -> tuple[np.ndarray, dict[str, Any]]:
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
    grads = SmoothGrad.get_averaged_gradients(
        noisy.astype(np.float32), views.single, request.target, n
    )
    # It differentiates the cross-entropy loss −log p_c: negate to get evidence *for* the class.
    note = (
        "tf-explain smooths the gradient of the cross-entropy loss −log p_c; the map is negated "
        "so that positive values support the class."
    )
    return -np.asarray(grads)[0].sum(axis=-1), {"engine_note": note}


def _integrated_gradients(
    request: ExplainRequest, views: _Views
) -> tuple[np.ndarray, dict[str, Any]]:
    from tf_explain.core.integrated_gradients import IntegratedGradients

    steps = max(2, int(request.params["steps"]))
    path = IntegratedGradients.generate_interpolations(request.x, steps).astype(np.float32)
    mean_grads = IntegratedGradients.get_integrated_gradients(
        path, views.single, request.target, steps
    )
    # tf-explain returns the path-averaged gradient only; IG multiplies by (x − baseline), and
    # its baseline is zero in model-input units.
    values = np.asarray(mean_grads)[0] * request.x[0]
    note = (
        "tf-explain uses a zero baseline in model-input units and a rule with both end points "
        f"(α = k/(steps−1)); baseline/rule parameters are not used. {_PROBABILITY_NOTE}"
    )
    return values.sum(axis=-1), {"engine_note": note}


def _occlusion(request: ExplainRequest, views: _Views) -> tuple[np.ndarray, dict[str, Any]]:
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
        sensitivity = explainer.get_sensitivity_map(views.single, x, request.target, patch)
    # Its final cv2.resize upsamples the coarse grid; bring it to our float32 (h, w) map.
    sensitivity = resize_map(np.asarray(sensitivity, np.float32), (h, w))
    # It reports 1 − p(occluded); convert to our drop p(x) − p(occluded).
    _, probs = request.bundle.runner.forward(request.x)
    values = sensitivity - (1.0 - probs[0, request.target])
    note = (
        f"tf-explain uses non-overlapping patches (stride = patch size) filled with "
        f"{OCCLUSION_FILL:g} in model-input units; stride, fill and score parameters are not used."
    )
    return values.astype(np.float32), {"engine_note": note}


def _grad_cam(request: ExplainRequest, views: _Views) -> tuple[np.ndarray, dict[str, Any]]:
    from tf_explain.core.grad_cam import GradCAM

    layer = request.layer or request.bundle.default_layer
    assert layer is not None
    with warnings.catch_warnings():
        # It builds its gradient model with inputs=[model.inputs], a nested list, and calls it
        # with one tensor; Keras warns that the structures differ, and runs it correctly.
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        outputs, grads = GradCAM.get_gradients_and_filters(
            views.single, request.x, layer, request.target, use_guided_grads=False
        )
    cam = np.asarray(GradCAM.generate_ponderated_output(outputs, grads)[0], np.float32)
    if request.params["relu"]:
        cam = np.maximum(cam, 0.0)
    note = "Plain gradients (tf-explain's default uses guided gradients). " + _PROBABILITY_NOTE
    return cam, {"engine_note": note}


#: What tf-explain differentiates: the model's output as it is ("output"), the output with a
#: separate final softmax/sigmoid layer stripped ("score_model"), or the cross-entropy −log p_c,
#: negated ("log_probability").
TfExplainScore = Literal["output", "score_model", "log_probability"]


@dataclass(frozen=True)
class TfExplainAdapter:
    """How tf-explain computes one method: a method's spec points at one of these."""

    compute: Callable[[ExplainRequest, _Views], tuple[np.ndarray, dict[str, Any]]]
    score: TfExplainScore = "output"
    #: Why tf-explain's version refuses a model the others accept (None when it does not).
    requirement: Callable[[ModelBundle], str | None] | None = None

    def explained_score(
        self, bundle: ModelBundle, probs: np.ndarray, target: int, runner_score: tuple[str, float]
    ) -> tuple[str, float]:
        """(name, value) of the score tf-explain's map explains (README, "What the score is");
        ``runner_score`` is our runner's (name, value) for the target."""
        p = float(probs[target])
        if self.score == "log_probability":
            return "log-probability", float(np.log(max(p, np.finfo(np.float64).tiny)))
        last = next((i.class_name for i in bundle.layers if i.path == bundle.output_layer), "")
        if self.score == "score_model" and last in ("Activation", "Softmax"):
            return runner_score  # the separate softmax/sigmoid layer was stripped
        if bundle.output_kind in ("softmax", "sigmoid", "probabilities"):
            return "probability", p
        return runner_score


VANILLA_GRADIENTS = TfExplainAdapter(_vanilla, score="score_model")
GRADIENT_X_INPUT = TfExplainAdapter(_gradient_x_input, score="score_model")
SMOOTHGRAD = TfExplainAdapter(_smoothgrad, score="log_probability")
INTEGRATED_GRADIENTS = TfExplainAdapter(_integrated_gradients)
OCCLUSION = TfExplainAdapter(_occlusion, requirement=_occlusion_reason)
GRAD_CAM = TfExplainAdapter(_grad_cam)


def compute_with_tf_explain(
    spec: MethodSpec, request: ExplainRequest
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run method ``spec`` with tf-explain; returns (raw map, extras) like a native compute."""
    if spec.tf_explain is None:
        raise ParameterError(f"tf-explain has no {spec.label}")
    reason = unavailable_reason(spec, request.bundle)
    if reason is not None:
        raise MethodNotApplicableError(reason)
    return spec.tf_explain.compute(request, _views(request.bundle))
