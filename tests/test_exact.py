"""Exact values on tiny hand-built models, computed independently with NumPy."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import explainers
from explainers.methods.gradients import quadrature

RNG = np.random.default_rng(42)


def linear_model(h=4, w=4, c=1, n_classes=2, activation=None):
    """score = Flatten(x) @ K + b, weights fixed: the gradient is K[:, class] everywhere."""
    inp = keras.Input((h, w, c))
    x = keras.layers.Flatten()(inp)
    out = keras.layers.Dense(n_classes, activation=activation, name="out")(x)
    model = keras.Model(inp, out)
    kernel = RNG.normal(size=(h * w * c, n_classes)).astype(np.float32)
    bias = RNG.normal(size=n_classes).astype(np.float32)
    model.get_layer("out").set_weights([kernel, bias])
    return model, kernel, bias


def conv_gap_model(kernel_1x1, dense, bias=None):
    """x (4×4×1) → 1×1 conv, linear, K channels ("feat") → GAP → Dense: everything by hand."""
    channels = kernel_1x1.shape[-1]
    inp = keras.Input((4, 4, 1))
    feat = keras.layers.Conv2D(channels, 1, use_bias=False, name="feat")(inp)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(feat)
    out = keras.layers.Dense(dense.shape[1], name="out")(pooled)
    model = keras.Model(inp, out)
    model.get_layer("feat").set_weights([kernel_1x1.reshape(1, 1, 1, channels)])
    model.get_layer("out").set_weights([dense, np.zeros(dense.shape[1]) if bias is None else bias])
    return model


def as_image(values: np.ndarray) -> np.ndarray:
    """A uint8 (h, w, 3) image whose 0_1-preprocessed grayscale channel equals ``values``/255."""
    return np.repeat(values[:, :, None], 3, axis=2).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
def test_vanilla_gradient_and_gradient_x_input_of_a_linear_model():
    model, kernel, _ = linear_model()
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    pixels = RNG.integers(0, 256, (4, 4)).astype(np.uint8)
    image = as_image(pixels)
    x = bundle.preprocess(image)[:, :, 0]  # luma of a gray image is the gray value
    np.testing.assert_allclose(x, pixels / 255.0, atol=1e-6)
    for target in (0, 1):
        grads = explainers.explain(bundle, image, "vanilla_gradients", target=target)
        np.testing.assert_allclose(grads.attribution, kernel[:, target].reshape(4, 4), rtol=1e-5)
        gxi = explainers.explain(bundle, image, "gradient_x_input", target=target)
        np.testing.assert_allclose(
            gxi.attribution, kernel[:, target].reshape(4, 4) * x, rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize("rule", ["riemann_right", "trapezoid", "gauss_legendre"])
def test_integrated_gradients_of_a_linear_model_is_exact(rule):
    model, kernel, _ = linear_model()
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    image = as_image(RNG.integers(0, 256, (4, 4)))
    x = bundle.preprocess(image)[:, :, 0]
    result = explainers.explain(
        bundle, image, "integrated_gradients", target=1, steps=3, rule=rule, baseline="black"
    )
    np.testing.assert_allclose(
        result.attribution, kernel[:, 1].reshape(4, 4) * x, rtol=1e-4, atol=1e-6
    )
    assert result.extras["completeness_relative_error"] < 1e-4


def test_smoothgrad_of_a_linear_model_equals_its_gradient():
    model, kernel, _ = linear_model()
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    image = as_image(RNG.integers(0, 256, (4, 4)))
    result = explainers.explain(bundle, image, "smoothgrad", target=0, n_samples=7, noise_level=0.3)
    np.testing.assert_allclose(result.attribution, kernel[:, 0].reshape(4, 4), rtol=1e-5)


def test_softmax_is_stripped_so_gradients_are_of_the_logit():
    probs_model, kernel, bias = linear_model(activation="softmax")
    bundle = explainers.bundle_from_model(probs_model, preprocessing="0_1")
    assert bundle.output_kind == "softmax"
    image = as_image(RNG.integers(0, 256, (4, 4)))
    result = explainers.explain(bundle, image, "vanilla_gradients", target=1)
    np.testing.assert_allclose(result.attribution, kernel[:, 1].reshape(4, 4), rtol=1e-5)
    # ... while the reported score is the softmax probability
    x = bundle.preprocess(image).reshape(-1)
    logits = x @ kernel + bias
    expected = np.exp(logits) / np.exp(logits).sum()
    assert result.score == pytest.approx(expected[1], rel=1e-5)


def test_binary_sigmoid_scores_class_zero_with_the_negated_logit():
    model, kernel, _ = linear_model(n_classes=1, activation="sigmoid")
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    assert bundle.n_classes == 2
    image = as_image(RNG.integers(0, 256, (4, 4)))
    one = explainers.explain(bundle, image, "vanilla_gradients", target=1)
    zero = explainers.explain(bundle, image, "vanilla_gradients", target=0)
    np.testing.assert_allclose(one.attribution, kernel[:, 0].reshape(4, 4), rtol=1e-5)
    np.testing.assert_allclose(zero.attribution, -kernel[:, 0].reshape(4, 4), rtol=1e-5)
    assert one.score + zero.score == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------
# The CAM family on x (4×4) → A = x·k_k (1×1 conv) → GAP → Dense W: dS_c/dA_k = W[k, c] / 16.
# ------------------------------------------------------------------------------------------------
KERNEL = np.array([1.0, -0.5, 2.0], np.float32)
DENSE = np.array([[0.3, -1.0], [0.8, 0.2], [-0.4, 0.6]], np.float32)
PIXELS = np.arange(16, dtype=np.float32).reshape(4, 4) * 16  # captum's arange(16) input, ×16


@pytest.fixture(scope="module")
def cam_bundle():
    return explainers.bundle_from_model(conv_gap_model(KERNEL, DENSE), preprocessing="0_1")


def activations() -> np.ndarray:
    return (PIXELS / 255.0)[:, :, None] * KERNEL  # (4, 4, 3)


@pytest.mark.parametrize("target", [0, 1])
def test_grad_cam_weights_are_the_spatial_mean_of_the_gradient(cam_bundle, target):
    a = activations()
    gradient = np.broadcast_to(DENSE[:, target] / 16.0, a.shape)  # by hand
    expected = np.maximum((a * gradient.mean(axis=(0, 1))).sum(-1), 0)
    result = explainers.explain(cam_bundle, as_image(PIXELS), "grad_cam", target=target)
    assert result.layer == "feat"
    np.testing.assert_allclose(result.model_attribution, expected, rtol=1e-5, atol=1e-7)
    raw = explainers.explain(cam_bundle, as_image(PIXELS), "grad_cam", target=target, relu=False)
    np.testing.assert_allclose(
        raw.model_attribution, (a * gradient.mean(axis=(0, 1))).sum(-1), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("target", [0, 1])
def test_cam_is_the_dense_weights_times_activations(cam_bundle, target):
    a = activations()
    expected = np.maximum((a * DENSE[:, target]).sum(-1), 0)
    result = explainers.explain(cam_bundle, as_image(PIXELS), "cam", target=target)
    np.testing.assert_allclose(result.model_attribution, expected, rtol=1e-5, atol=1e-7)
    grad_cam = explainers.explain(cam_bundle, as_image(PIXELS), "grad_cam", target=target)
    np.testing.assert_allclose(
        result.model_attribution, 16 * grad_cam.model_attribution, rtol=1e-5, atol=1e-7
    )


def test_grad_cam_plus_plus_and_layer_cam_by_hand(cam_bundle):
    a = activations()
    g = np.broadcast_to(DENSE[:, 0] / 16.0, a.shape).astype(np.float64)
    alpha = g**2 / (2 * g**2 + a.sum(axis=(0, 1)) * g**3)
    w_pp = (alpha * np.maximum(g, 0)).sum(axis=(0, 1))
    pp = explainers.explain(cam_bundle, as_image(PIXELS), "grad_cam_plus_plus", target=0)
    np.testing.assert_allclose(
        pp.model_attribution, np.maximum((w_pp * a).sum(-1), 0), rtol=1e-4, atol=1e-7
    )
    layer = explainers.explain(cam_bundle, as_image(PIXELS), "layer_cam", target=0)
    np.testing.assert_allclose(
        layer.model_attribution, np.maximum((np.maximum(g, 0) * a).sum(-1), 0), rtol=1e-5, atol=1e-7
    )


def test_score_cam_by_hand(cam_bundle):
    """Default: w_k = p_c(X ∘ H_k), the masked input's probability (the authors' code and
    tf-keras-vis); baseline_subtract: the paper's w_k = p_c(X ∘ H_k) − p_c(X_b), X_b = 0."""
    model = cam_bundle.model
    x = (PIXELS / 255.0)[None, :, :, None]
    a = activations()
    base = keras.ops.convert_to_numpy(keras.ops.softmax(model(np.zeros_like(x))))[0, 1]
    weights = []
    for k in range(3):
        ak = a[:, :, k]
        mask = (ak - ak.min()) / (ak.max() - ak.min())  # same grid: upsampling is the identity
        p = keras.ops.convert_to_numpy(keras.ops.softmax(model(x * mask[None, :, :, None])))
        weights.append(p[0, 1])
    expected = np.maximum((a * np.array(weights)).sum(-1), 0)
    result = explainers.explain(cam_bundle, as_image(PIXELS), "score_cam", target=1)
    np.testing.assert_allclose(result.model_attribution, expected, rtol=1e-4, atol=1e-7)
    subtracted = np.maximum((a * (np.array(weights) - base)).sum(-1), 0)
    paper = explainers.explain(
        cam_bundle, as_image(PIXELS), "score_cam", target=1, baseline_subtract=True
    )
    np.testing.assert_allclose(paper.model_attribution, subtracted, rtol=1e-4, atol=1e-7)


def test_guided_backprop_by_hand():
    w1 = RNG.normal(size=(16, 6)).astype(np.float32)
    w2 = RNG.normal(size=(6, 2)).astype(np.float32)
    inp = keras.Input((4, 4, 1))
    flat = keras.layers.Flatten()(inp)
    hidden = keras.layers.Dense(6, activation="relu", use_bias=False, name="hidden")(flat)
    out = keras.layers.Dense(2, use_bias=False, name="out")(hidden)
    model = keras.Model(inp, out)
    model.get_layer("hidden").set_weights([w1])
    model.get_layer("out").set_weights([w2])
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    pixels = RNG.integers(0, 256, (4, 4)).astype(np.float32)
    x = (pixels / 255.0).reshape(-1)
    pre = x @ w1
    upstream = w2[:, 0]
    plain = w1 @ (upstream * (pre > 0))
    guided = w1 @ (np.maximum(upstream, 0) * (pre > 0))
    image = as_image(pixels)
    result = explainers.explain(bundle, image, "guided_backprop", target=0)
    np.testing.assert_allclose(result.attribution.reshape(-1), guided, rtol=1e-5, atol=1e-6)
    vanilla = explainers.explain(bundle, image, "vanilla_gradients", target=0)
    np.testing.assert_allclose(vanilla.attribution.reshape(-1), plain, rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain, guided)  # the test distinguishes the two rules


def test_occlusion_by_hand():
    model, kernel, _ = linear_model()
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    pixels = RNG.integers(0, 256, (4, 4)).astype(np.float32)
    result = explainers.explain(
        bundle,
        as_image(pixels),
        "occlusion",
        target=1,
        patch_size=2,
        stride=2,
        fill="gray",
        score="logit",
    )
    x = pixels / 255.0
    expected = np.zeros((4, 4))
    for r in (0, 2):
        for c in (0, 2):
            occluded = x.copy()
            occluded[r : r + 2, c : c + 2] = 0.5
            drop = (x.reshape(-1) - occluded.reshape(-1)) @ kernel[:, 1]
            expected[r : r + 2, c : c + 2] = drop
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-4, atol=1e-6)


def test_overlapping_occlusion_averages_the_patches_covering_a_pixel():
    model, kernel, _ = linear_model()
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    pixels = RNG.integers(0, 256, (4, 4)).astype(np.float32)
    result = explainers.explain(
        bundle,
        as_image(pixels),
        "occlusion",
        target=0,
        patch_size=2,
        stride=1,
        fill="black",
        score="logit",
    )
    x = pixels / 255.0
    contribution = (x.reshape(-1) * kernel[:, 0]).reshape(4, 4)  # drop of hiding one pixel
    total, count = np.zeros((4, 4)), np.zeros((4, 4))
    for r in range(3):
        for c in range(3):
            total[r : r + 2, c : c + 2] += contribution[r : r + 2, c : c + 2].sum()
            count[r : r + 2, c : c + 2] += 1
    np.testing.assert_allclose(result.attribution, total / count, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "rule", ["riemann_left", "riemann_right", "riemann_middle", "trapezoid", "gauss_legendre"]
)
def test_quadrature_rules_integrate_polynomials(rule):
    points, weights = quadrature(rule, 8)
    assert weights.sum() == pytest.approx(1.0)
    assert np.all((points >= 0) & (points <= 1))
    exact_degree = {"gauss_legendre": 15, "trapezoid": 1, "riemann_middle": 1}.get(rule, 0)
    for degree in range(exact_degree + 1):
        assert (weights * points**degree).sum() == pytest.approx(1 / (degree + 1), rel=1e-9)
