"""Identities the methods must satisfy, and cross-checks against tf-explain's raw functions."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import explainers

from . import models_zoo
from .models_zoo import random_image


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel()))
    rb = np.argsort(np.argsort(b.ravel()))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.parametrize("model_name", ["functional_softmax", "nested_base", "binary_sigmoid"])
@pytest.mark.parametrize("target", [0, 1])
def test_grad_cam_equals_cam_up_to_a_positive_scale(zoo_bundles, model_name, target):
    bundle = zoo_bundles[model_name]
    image = random_image(50, 50, seed=target)
    cam = explainers.explain(bundle, image, "cam", target=target, relu=False).model_attribution
    grad_cam = explainers.explain(bundle, image, "grad_cam", target=target, relu=False)
    h, w = grad_cam.model_attribution.shape
    np.testing.assert_allclose(grad_cam.model_attribution * h * w, cam, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rule", ["riemann_right", "trapezoid", "gauss_legendre"])
@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_integrated_gradients_completeness(zoo_bundles, rule, baseline):
    bundle = zoo_bundles["nested_base"]
    image = random_image(40, 48, seed=5)
    result = explainers.explain(
        bundle, image, "integrated_gradients", steps=64, rule=rule, baseline=baseline
    )
    x_ref = bundle.preprocess(
        explainers.methods.gradients.baseline_pixels(baseline, bundle.resize(image))
    )
    scores, _ = bundle.runner.forward(np.stack([bundle.model_input(image)[0], x_ref]))
    delta = scores[0, result.target] - scores[1, result.target]
    assert abs(delta) > 1e-3  # the identity is not trivially 0 = 0
    total = result.model_attribution.sum()
    assert total == pytest.approx(delta, rel=0.02)
    assert result.extras["completeness_relative_error"] < 0.02


def test_gradient_x_input_is_gradient_times_preprocessed_input(zoo_bundles):
    bundle = zoo_bundles["with_rescaling"]  # preprocessing "none": inputs are 0..255
    image = random_image(36, 36, seed=2)
    x = bundle.model_input(image)
    _, grads = bundle.runner.input_gradients(x, 1)
    result = explainers.explain(bundle, image, "gradient_x_input", target=1)
    np.testing.assert_allclose(
        result.model_attribution, (grads * x)[0].sum(-1), rtol=1e-5, atol=1e-7
    )


def test_randomising_weights_changes_gradient_and_grad_cam_maps(zoo_bundles):
    bundle = zoo_bundles["functional_softmax"]
    random_model = models_zoo.functional_softmax(seed=123)
    randomised = explainers.bundle_from_model(random_model)
    image = random_image(32, 32, seed=9)
    for method in ("vanilla_gradients", "grad_cam"):
        a = explainers.explain(bundle, image, method, target=0).model_attribution
        b = explainers.explain(randomised, image, method, target=0).model_attribution
        assert spearman(a, b) < 0.5, method


# ------------------------------------------------------------------------------------------------
# tf-explain, where its conventions agree with ours: a Functional model that outputs logits (so
# "the model's output" and "the pre-softmax score" are the same thing).
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logits_bundle():
    return explainers.bundle_from_model(models_zoo.functional_logits(input_shape=(32, 32, 3)))


@pytest.mark.parametrize("method", ["vanilla_gradients", "gradient_x_input", "grad_cam"])
def test_tf_explain_agrees_exactly(logits_bundle, method):
    image = random_image(32, 32, seed=4)
    ours = explainers.explain(logits_bundle, image, method, target=2)
    theirs = explainers.explain(logits_bundle, image, method, target=2, engine="tf_explain")
    assert theirs.engine == "tf_explain" and "engine_note" in theirs.extras
    np.testing.assert_allclose(
        theirs.model_attribution, ours.model_attribution, rtol=1e-4, atol=1e-6
    )


def test_tf_explain_integrated_gradients_matches_our_endpoint_rule(logits_bundle):
    # tf-explain averages gradients at α = k/(n−1), k = 0..n−1, with equal weights 1/n.
    image = random_image(32, 32, seed=4)
    theirs = explainers.explain(
        logits_bundle, image, "integrated_gradients", steps=16, engine="tf_explain", target=1
    )
    x = logits_bundle.model_input(image)
    alphas = np.linspace(0, 1, 16)
    _, grads = logits_bundle.runner.input_gradients(alphas[:, None, None, None] * x, 1)
    expected = (x[0] * grads.mean(axis=0)).sum(-1)
    np.testing.assert_allclose(theirs.model_attribution, expected, rtol=1e-4, atol=1e-6)
    ours = explainers.explain(logits_bundle, image, "integrated_gradients", steps=64, target=1)
    assert spearman(theirs.model_attribution, ours.model_attribution) > 0.95


def test_tf_explain_smoothgrad_is_our_smoothgrad_of_log_probability():
    # tf-explain differentiates −log p_c of the output; with a softmax *layer* we strip, log p_c
    # and the logit differ by log Σ exp, so compare against gradients of log-softmax by hand.
    bundle = explainers.bundle_from_model(models_zoo.functional_softmax())
    image = random_image(32, 32, seed=6)
    theirs = explainers.explain(
        bundle, image, "smoothgrad", n_samples=4, noise_level=0.0, target=1, engine="tf_explain"
    )
    x = keras.ops.convert_to_tensor(bundle.model_input(image))
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        log_p = tf.math.log(bundle.model(x)[:, 1])
    expected = tape.gradient(log_p, x).numpy()[0].sum(-1)
    np.testing.assert_allclose(theirs.model_attribution, expected, rtol=1e-3, atol=1e-6)


def occlusion_bundle(shape):
    # Raw 0..255 inputs make tf-explain's 127.5 fill a gray patch, as our "gray" fill is.
    # Seeded: with some random weights the patches hardly move p (the map's largest value was
    # 8e-5 in one run), and the test's "the map is not flat" check then failed.
    keras.utils.set_random_seed(12)
    inp = keras.Input(shape)
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inp, dense(x))
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 10, bias])  # a confident model, so patches move p visibly
    bundle = explainers.bundle_from_model(model)
    assert bundle.preprocessing == "none"
    return bundle


def test_tf_explain_occlusion_matches_ours_on_square_inputs():
    bundle = occlusion_bundle((32, 32, 3))
    image = random_image(32, 32, seed=8)
    image[8:24, 8:24] = 255  # structure for the patches to find
    target = int(np.argmin(np.abs(bundle.predict(image) - 0.5)))  # not saturated
    ours = explainers.explain(
        bundle, image, "occlusion", patch_size=8, stride=8, fill="gray", target=target
    )
    theirs = explainers.explain(
        bundle, image, "occlusion", patch_size=8, target=target, engine="tf_explain"
    )
    assert theirs.model_attribution.shape == (32, 32)
    # Same patches: our map is constant per 8×8 cell, and tf-explain's is that 4×4 grid
    # upsampled bilinearly by cv2.
    import cv2

    coarse = ours.model_attribution[::8, ::8]
    assert np.abs(coarse).max() > 1e-4
    np.testing.assert_allclose(ours.model_attribution, np.kron(coarse, np.ones((8, 8))), rtol=1e-6)
    expected = cv2.resize(coarse.astype(np.float64), (32, 32))
    np.testing.assert_allclose(theirs.model_attribution, expected, atol=1e-2 * np.abs(coarse).max())


def test_tf_explain_occlusion_refuses_non_square_inputs():
    bundle = occlusion_bundle((24, 40, 3))
    with pytest.raises(explainers.MethodNotApplicableError, match="non-square"):
        explainers.explain(bundle, random_image(24, 40), "occlusion", engine="tf_explain")


def test_tf_explain_engine_refuses_what_it_cannot_do(zoo_bundles):
    image = random_image(40, 48)
    with pytest.raises(explainers.MethodNotApplicableError, match="Functional models"):
        explainers.explain(zoo_bundles["nested_base"], image, "grad_cam", engine="tf_explain")
    with pytest.raises(explainers.ParameterError, match="only smooths vanilla gradients"):
        explainers.explain(
            zoo_bundles["functional_softmax"],
            image,
            "smoothgrad",
            base="guided_backprop",
            engine="tf_explain",
        )
