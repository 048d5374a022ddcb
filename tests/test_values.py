"""Exact values of guided Grad-CAM and SmoothGrad on tiny non-linear models, recomputed in the
test with TensorFlow ops on the same weights (tf.GradientTape on the input and inner tensors
only: no weight gradients), Pillow and NumPy — not through the library's runner.

The library's conventions these follow (explainers/methods/gradients.py, explainers/methods/cam.py):

* scores are the outputs of a linear last layer; maps are summed over colour channels;
* guided backprop passes ``R_in = 1[z > 0] · max(R_out, 0)`` through every ReLU;
* Grad-CAM at the default layer (the last spatial one) is ``ReLU(Σ_k mean_ij(∂S/∂A_k) A_k)``;
  guided Grad-CAM multiplies guided backprop's map by Grad-CAM upsampled bilinearly with
  half-pixel centres (Pillow's ``BILINEAR`` on a float image);
* SmoothGrad's sample i is ``x + σ ε_i`` with ``σ = noise_level · (max x − min x)`` and
  ``ε_i`` row ``i % 16`` of ``tf.random.stateless_normal((16, h, w, C), seed=[seed, i // 16])``;
  it averages the per-sample gradients (squared per sample and channel first when ``squared``),
  then sums the channels.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import explainers


@tf.custom_gradient
def guided_relu(z: tf.Tensor):
    def grad(upstream: tf.Tensor) -> tf.Tensor:
        return upstream * tf.cast(z > 0, upstream.dtype) * tf.cast(upstream > 0, upstream.dtype)

    return tf.nn.relu(z), grad


def weights_of(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


# ------------------------------------------------------------------------------------------------
# Guided Grad-CAM
# ------------------------------------------------------------------------------------------------
def guided_grad_cam_model(seed: int) -> keras.Model:
    """8×8×3 → 3×3 conv (ReLU) → 2×2 stride-2 conv (ReLU, "feat", 4×4) → Flatten → Dense (ReLU)
    → Dense: ReLUs before and after the Grad-CAM layer, and a spatially varying ∂S/∂A."""
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(5, 2, strides=2, activation="relu", name="feat")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(6, activation="relu", name="hidden")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(x))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(
                [rng.normal(0, 0.6, w.shape).astype(np.float32) for w in layer.weights]
            )
    return model


def guided_grad_cam_forward(x: tf.Tensor, w: dict, relu, tape: tf.GradientTape):
    """Returns (scores, feat activations) with ``relu`` at every ReLU; ``tape`` records."""
    (k1, b1), (k2, b2) = w["c1"], w["feat"]
    (k3, b3), (k4, b4) = w["hidden"], w["out"]
    a1 = relu(tf.nn.conv2d(x, k1, 1, "SAME") + b1)
    feat = relu(tf.nn.conv2d(a1, k2, 2, "VALID") + b2)
    hidden = relu(tf.reshape(feat, (x.shape[0], -1)) @ k3 + b3)
    return hidden @ k4 + b4, feat


# Weights (seed) and classes picked so that Grad-CAM has cells of both signs before its ReLU.
@pytest.mark.parametrize(("seed", "target"), [(1, 2), (9, 0)])
def test_guided_grad_cam_is_guided_backprop_times_the_upsampled_grad_cam(seed, target):
    model = guided_grad_cam_model(seed)
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    assert bundle.default_layer == "feat"
    image = np.random.default_rng(seed + 1).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    x = tf.constant((image / 255.0)[None], tf.float32)
    np.testing.assert_allclose(bundle.preprocess(image)[None], x.numpy(), atol=1e-6)
    w = {name: [tf.constant(v) for v in values] for name, values in weights_of(model).items()}

    # Grad-CAM: plain gradients of the score with respect to the feat activations.
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        scores, feat = guided_grad_cam_forward(x, w, tf.nn.relu, tape)
        score = scores[0, target]
    d_feat = tape.gradient(score, feat).numpy()[0].astype(np.float64)
    acts = feat.numpy()[0].astype(np.float64)
    raw_cam = (acts * d_feat.mean(axis=(0, 1))).sum(axis=-1)  # (4, 4)
    # Guided backprop: the same network with guided ReLUs, gradient at the input.
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        guided_scores, _ = guided_grad_cam_forward(x, w, guided_relu, tape)
        guided_score = guided_scores[0, target]
    guided = tape.gradient(guided_score, x).numpy()[0].sum(axis=-1).astype(np.float64)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        plain_scores, _ = guided_grad_cam_forward(x, w, tf.nn.relu, tape)
        plain_score = plain_scores[0, target]
    plain = tape.gradient(plain_score, x).numpy()[0].sum(axis=-1)

    def upsampled(cam: np.ndarray) -> np.ndarray:
        resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((8, 8), Image.BILINEAR)
        return np.asarray(resized, np.float64)

    # The case is not degenerate: the guided rule, the upsampling and the ReLU all matter.
    assert not np.allclose(guided, plain, atol=1e-3)
    assert raw_cam.max() > 0 and raw_cam.min() < 0 and np.ptp(np.maximum(raw_cam, 0)) > 0
    assert not np.allclose(upsampled(raw_cam), np.kron(raw_cam, np.ones((2, 2))), atol=1e-4)
    assert np.abs(guided).max() > 1e-3

    result = explainers.explain(bundle, image, "guided_grad_cam", target=target)
    assert result.layer == "feat" and result.model_attribution.shape == (8, 8)
    expected = guided * upsampled(np.maximum(raw_cam, 0))
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(result.model_attribution, expected, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-4, atol=1e-5 * scale)
    # Without the ReLU the signed Grad-CAM multiplies in.
    signed = explainers.explain(bundle, image, "guided_grad_cam", target=target, relu=False)
    expected_signed = guided * upsampled(raw_cam)
    np.testing.assert_allclose(
        signed.model_attribution,
        expected_signed,
        rtol=1e-4,
        atol=1e-5 * np.abs(expected_signed).max(),
    )


# ------------------------------------------------------------------------------------------------
# SmoothGrad on a non-linear model
# ------------------------------------------------------------------------------------------------
def smooth_model(rng: np.random.Generator) -> keras.Model:
    """6×6×3 → 3×3 conv (ReLU) → Flatten → Dense (tanh) → Dense: gradients vary with x."""
    inp = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(5, activation="tanh", name="hidden")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(x))
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(
                [rng.normal(0, 0.7, w.shape).astype(np.float32) for w in layer.weights]
            )
    return model


def input_gradients(w: dict, inputs: tf.Tensor, target: int) -> np.ndarray:
    """∂S_target/∂x for each of a batch of inputs (N, 6, 6, 3), float64."""
    (k1, b1), (k2, b2), (k3, b3) = w["conv"], w["hidden"], w["out"]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(inputs)
        a = tf.nn.relu(tf.nn.conv2d(inputs, k1, 1, "SAME") + b1)
        h = tf.tanh(tf.reshape(a, (inputs.shape[0], -1)) @ k2 + b2)
        score = tf.reduce_sum((h @ k3 + b3)[:, target])  # items are independent
    return tape.gradient(score, inputs).numpy().astype(np.float64)


def smoothgrad_by_hand(
    w: dict, x: np.ndarray, target: int, n: int, noise_level: float, seed: int, squared: bool
) -> np.ndarray:
    sigma = np.float32(noise_level * (x.max() - x.min()))
    blocks = [
        tf.random.stateless_normal((16, *x.shape), seed=[seed, block])
        for block in range((n - 1) // 16 + 1)
    ]
    noise = tf.concat(blocks, axis=0)[:n]
    noisy = tf.constant(x, tf.float32)[None] + sigma * noise
    grads = input_gradients(w, noisy, target)
    if squared:
        grads = grads**2
    return grads.mean(axis=0).sum(axis=-1)


@pytest.fixture(scope="module")
def smooth():
    rng = np.random.default_rng(11)
    model = smooth_model(rng)
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    image = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
    x = (image / 255.0).astype(np.float32)
    np.testing.assert_allclose(bundle.preprocess(image), x, atol=1e-6)
    w = {name: [tf.constant(v) for v in values] for name, values in weights_of(model).items()}
    return bundle, image, x, w


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale)


def test_smoothgrad_of_a_nonlinear_model_matches_the_same_noise_by_hand(smooth):
    bundle, image, x, w = smooth
    # 20 samples span two noise blocks; batches of 7 cut across them.
    kwargs = {"n_samples": 20, "noise_level": 0.2, "seed": 5, "batch_size": 7}
    result = explainers.explain(bundle, image, "smoothgrad", target=1, **kwargs)
    expected = smoothgrad_by_hand(w, x, 1, 20, 0.2, 5, squared=False)
    close(result.attribution, expected)
    # The noise matters on this model: the average is not the gradient at x.
    at_x = input_gradients(w, tf.constant(x)[None], 1)[0].sum(axis=-1)
    assert not np.allclose(expected, at_x, rtol=0.05, atol=0.05 * np.abs(at_x).max())
    # Batching does not change the draw.
    whole = explainers.explain(
        bundle, image, "smoothgrad", target=1, **{**kwargs, "batch_size": 32}
    )
    close(whole.attribution, expected)
    # No noise: every sample is x, and the map is the plain gradient.
    silent = explainers.explain(
        bundle, image, "smoothgrad", target=1, **{**kwargs, "noise_level": 0}
    )
    close(silent.attribution, at_x)


def test_smoothgrad_seed_changes_the_noise_and_so_the_map(smooth):
    bundle, image, x, w = smooth
    kwargs = {"target": 0, "n_samples": 12, "noise_level": 0.25}
    five = explainers.explain(bundle, image, "smoothgrad", seed=5, **kwargs).attribution
    six = explainers.explain(bundle, image, "smoothgrad", seed=6, **kwargs).attribution
    close(six, smoothgrad_by_hand(w, x, 0, 12, 0.25, 6, squared=False))
    assert np.abs(five - six).max() > 0.05 * np.abs(five).max()
    again = explainers.explain(bundle, image, "smoothgrad", seed=5, **kwargs).attribution
    np.testing.assert_array_equal(five, again)


def test_smoothgrad_squared_averages_the_squared_per_sample_gradients(smooth):
    bundle, image, x, w = smooth
    kwargs = {"n_samples": 20, "noise_level": 0.2, "seed": 3}
    result = explainers.explain(bundle, image, "smoothgrad", target=2, squared=True, **kwargs)
    expected = smoothgrad_by_hand(w, x, 2, 20, 0.2, 3, squared=True)
    close(result.attribution, expected)
    assert np.all(result.attribution >= 0)
    # Squaring happens per sample and per channel: not the square of the mean, nor the mean of
    # the squared channel sums.
    sigma = np.float32(0.2 * (x.max() - x.min()))
    noise = tf.concat([tf.random.stateless_normal((16, *x.shape), seed=[3, b]) for b in (0, 1)], 0)
    grads = input_gradients(w, tf.constant(x)[None] + sigma * noise[:20], 2)
    for wrong in ((grads.mean(axis=0).sum(axis=-1)) ** 2, (grads.sum(axis=-1) ** 2).mean(axis=0)):
        assert not np.allclose(result.attribution, wrong, rtol=0.05, atol=1e-3 * wrong.max())
