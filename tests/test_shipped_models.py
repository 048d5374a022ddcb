"""The models we ship, run the way the dashboard runs them.

Every method × engine the UI offers, on every bundled demo model (``assets/models/*.keras`` with the
bundled labels and a bundled sample) and on a model exported as ``keras.Model(m.inputs,
m.outputs)``, which stores its output as a one-element list, as the demo models do. That list is
what broke tf-explain's Grad-CAM and SmoothGrad on the demo models while the tests with in-memory
models passed.

The tf-explain engine is then checked against what it should compute on the demo models: it
differentiates the softmax probability p_c where the native engine differentiates the logit z_c,
and for a softmax ∂p_c = p_c (∂z_c − Σ_j p_j ∂z_j), so its maps follow exactly from native ones.
"""

from __future__ import annotations

import numpy as np
import pytest

import explainers
from explainers import tf_explain_engine
from explainers.registry import available_methods

from . import models_zoo
from .conftest import DEMO_LABELS, ROOT
from .test_contract import FAST

MODEL_FILES = {path.stem: path for path in sorted((ROOT / "assets" / "models").glob("*.keras"))}
#: The sample each demo model is shown with; a new demo model gets the first honest sample.
SAMPLE_FOR = {
    "demo_shapes": "shapes_circle_0.png",
    "demo_shortcut": "shortcut_circle_0.png",
    "demo_fixed": "shortcut_circle_0.png",
    "demo_segmentation": "scenes_0.png",
    "demo_multilabel": "scenes_0.png",
}
#: The classifiers among them (tf-explain explains one class of a classifier only).
CLASSIFIERS = [n for n in MODEL_FILES if n not in ("demo_segmentation", "demo_multilabel")]
DEFAULT_SAMPLE = "shapes_circle_0.png"
EXPORTED = "exported_list_output"
#: Every registered method with each engine it offers (what the UI can run).
CASES = [(info.name, engine) for info in available_methods() for engine in info.engines]
#: A map whose spread is below this fraction of its largest value is constant.
CONSTANT = 1e-5


def sample_path(name: str):
    return ROOT / "assets" / "samples" / SAMPLE_FOR.get(name, DEFAULT_SAMPLE)


def labels_for(path):
    """A demo model's own labels file (the segmentation model's classes include the
    background), else the shared one."""
    own = path.with_name(f"{path.stem}_labels.txt")
    return own if own.exists() else DEMO_LABELS


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """name → (bundle, sample image): the bundled demo models and the exported model."""
    import keras

    cases = {
        name: (
            explainers.load_model(path, labels=labels_for(path)),
            explainers.load_image(sample_path(name)),
        )
        for name, path in MODEL_FILES.items()
    }
    model = models_zoo.with_rescaling()  # takes raw 0..255 pixels, so tf-explain occlusion runs
    exported = keras.Model(model.inputs, model.outputs)
    path = tmp_path_factory.mktemp("exported") / "exported.keras"
    exported.save(path)
    cases[EXPORTED] = (
        explainers.load_model(path),
        explainers.load_image(sample_path(EXPORTED)),
    )
    return cases


def test_demo_models_are_bundled():
    assert {"demo_shapes", "demo_shortcut", "demo_fixed"} <= set(MODEL_FILES)


def test_exported_model_stores_its_output_as_a_list(shipped):
    bundle, _ = shipped[EXPORTED]
    assert bundle.preprocessing == "none"
    assert isinstance(bundle.model.output, list) and len(bundle.model.output) == 1


@pytest.mark.parametrize("name", [*MODEL_FILES, EXPORTED])
def test_every_offered_method_and_engine_is_covered(shipped, name):
    bundle, _ = shipped[name]
    offered = {
        (info.name, engine)
        for info in available_methods(bundle)
        if info.applicable
        for engine in info.engines
    }
    if bundle.task == "classification":
        # every method applies to these CAM-ready models, so the UI offers every case
        assert offered == set(CASES)
        return
    # The scene models: every method applies (CAM needs a GAP → Dense head, which the
    # segmentation model has not); the tf-explain engine refuses them, saying why.
    expected = set(CASES)
    if bundle.task == "segmentation":
        expected = {case for case in expected if case[0] != "cam"}
    assert offered == expected
    for info in available_methods(bundle):
        if "tf_explain" in info.engines:
            reason = tf_explain_engine.unavailable_reason(info.spec, bundle)
            assert reason is not None and "classifier" in reason, (info.name, reason)


def is_constant(values: np.ndarray) -> bool:
    scale = float(np.abs(values).max())
    return scale == 0.0 or float(np.ptp(values)) <= CONSTANT * scale


@pytest.mark.parametrize(("method", "engine"), CASES)
@pytest.mark.parametrize("name", [*MODEL_FILES, EXPORTED])
def test_method_runs_on_shipped_model(shipped, name, method, engine):
    bundle, image = shipped[name]
    params = FAST.get(method, {})
    if bundle.task != "classification" and engine == "tf_explain":
        with pytest.raises(explainers.ParameterError, match="classifier"):
            explainers.explain(bundle, image, method, engine=engine, **params)
        return
    if bundle.task == "segmentation" and method == "cam":
        with pytest.raises(explainers.MethodNotApplicableError, match="GlobalAveragePooling"):
            explainers.explain(bundle, image, method, **params)
        return
    if engine == "tf_explain" and method == "occlusion" and bundle.preprocessing != "none":
        # tf-explain fills patches with 127.5 in model-input units: on a 0..1 model every patch
        # erases the prediction, so the engine refuses up front, saying why.
        reason = tf_explain_engine.unavailable_reason(explainers.get_method(method), bundle)
        assert reason is not None and "127.5" in reason and "native engine" in reason
        with pytest.raises(explainers.MethodNotApplicableError, match=r"127\.5"):
            explainers.explain(bundle, image, method, engine=engine, **params)
        return
    if engine == "tf_explain":
        assert tf_explain_engine.unavailable_reason(explainers.get_method(method), bundle) is None
    result = explainers.explain(bundle, image, method, engine=engine, **params)
    assert result.engine == engine and result.method == method
    assert result.attribution.shape == image.shape[:2]
    assert result.attribution.dtype == np.float32
    assert np.all(np.isfinite(result.attribution))
    assert np.all(np.isfinite(result.model_attribution))
    if engine == "tf_explain":
        assert result.extras["engine_note"]
    if is_constant(result.model_attribution):
        # a constant map explains nothing: acceptable only when the result says so
        assert result.extras.get("warnings"), (
            f"{method} ({engine}) on {name} returned a constant map "
            f"({float(result.model_attribution.flat[0]):g}) without a warning"
        )


def test_tf_explain_builds_its_single_output_view_once(shipped):
    bundle, image = shipped["demo_shapes"]
    view = tf_explain_engine._views(bundle)
    assert tf_explain_engine._views(bundle) is view
    assert not isinstance(view.single.output, list)
    assert view.single.get_layer(bundle.default_layer) is bundle.model.get_layer(
        bundle.default_layer
    )  # same layers and weights, not a copy
    explainers.explain(bundle, image, "grad_cam", engine="tf_explain")
    assert tf_explain_engine._views(bundle) is view


# ------------------------------------------------------------------------------------------------
# tf-explain against what it should compute on the demo models
# ------------------------------------------------------------------------------------------------
def probability_gradients(bundle, xs: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """∂p_target/∂x (N, h, w, C) and the probabilities (N, n), from the native engine's logit
    gradients: for a softmax, ∂p_c = p_c (∂z_c − Σ_j p_j ∂z_j)."""
    _, probs = bundle.runner.forward(xs)
    grads = np.stack([bundle.runner.input_gradients(xs, j)[1] for j in range(bundle.n_classes)])
    mixed = np.einsum("nj,jnhwc->nhwc", probs, grads)
    return probs[:, target, None, None, None] * (grads[target] - mixed), probs


def assert_same_map(theirs: np.ndarray, expected: np.ndarray) -> None:
    assert np.abs(expected).max() > 0
    assert np.corrcoef(theirs.ravel(), expected.ravel())[0, 1] > 0.999
    # float32 cancellation in ∂z_c − Σ p_j ∂z_j (p_c ≈ 1) costs a few digits
    np.testing.assert_allclose(theirs, expected, rtol=0, atol=5e-3 * np.abs(expected).max())


@pytest.mark.parametrize(
    "method", ["vanilla_gradients", "gradient_x_input", "smoothgrad", "integrated_gradients"]
)
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_tf_explain_gradients_are_probability_gradients(shipped, name, method):
    bundle, image = shipped[name]
    assert bundle.output_kind == "softmax"  # the identity below is the softmax's
    x = bundle.model_input(image)
    target = int(np.argmax(bundle.predict(image)))
    params = FAST.get(method, {})
    if method == "smoothgrad":
        params = {"noise_level": 0.0, "n_samples": 2}  # no noise: one exact gradient to compare
    theirs = explainers.explain(bundle, image, method, engine="tf_explain", **params)
    assert theirs.target == target
    if method == "integrated_gradients":
        # tf-explain: x ⊙ mean of ∂p_c at α = k/(steps−1) x, k = 0..steps−1 (zero baseline)
        alphas = np.linspace(0.0, 1.0, params["steps"], dtype=np.float32)
        grads, _ = probability_gradients(bundle, alphas[:, None, None, None] * x, target)
        expected = (x[0] * grads.mean(axis=0)).sum(-1)
    else:
        grads, probs = probability_gradients(bundle, x, target)
        expected = {
            "vanilla_gradients": grads[0].sum(-1),
            "gradient_x_input": (x * grads)[0].sum(-1),
            # the negated gradient of the loss −log p_c, without noise: ∂p_c / p_c
            "smoothgrad": grads[0].sum(-1) / probs[0, target],
        }[method]
    assert_same_map(theirs.model_attribution, expected)
    if method == "vanilla_gradients":
        # and it is close to the native (logit) map, the convention difference aside
        ours = explainers.explain(bundle, image, method).model_attribution
        assert np.corrcoef(ours.ravel(), theirs.model_attribution.ravel())[0, 1] > 0.8


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_tf_explain_grad_cam_is_grad_cam_of_the_probability(shipped, name):
    bundle, image = shipped[name]
    assert bundle.output_kind == "softmax"
    probs = bundle.predict(image)
    target = int(np.argmax(probs))
    # Grad-CAM is linear in the gradients at the layer, so with ∂p_c = p_c (∂z_c − Σ_j p_j ∂z_j):
    # their map = p_c (G_c − Σ_j p_j G_j), G_j our (logit) Grad-CAM for class j without the ReLU.
    ours = np.stack(
        [
            explainers.explain(bundle, image, "grad_cam", target=j, relu=False).model_attribution
            for j in range(bundle.n_classes)
        ]
    )
    theirs = explainers.explain(bundle, image, "grad_cam", engine="tf_explain", relu=False)
    assert theirs.layer == bundle.default_layer and theirs.target == target
    expected = probs[target] * (ours[target] - np.einsum("j,jhw->hw", probs, ours))
    assert_same_map(theirs.model_attribution, expected)
    # With the ReLU (the default) both engines point at the same cell of the demo sample when
    # the model is sure (p_c ≈ 1, so the Σ_j p_j G_j term is p_c G_c plus almost nothing).
    # demo_fixed gives its sample 0.68 circle / 0.30 square: the square's map, subtracted,
    # moves tf-explain's peak, as the identity above says it must.
    native = explainers.explain(bundle, image, "grad_cam").model_attribution
    relu = explainers.explain(bundle, image, "grad_cam", engine="tf_explain").model_attribution
    assert native.shape == relu.shape
    if probs[target] > 0.99:
        assert np.argmax(native) == np.argmax(relu)
