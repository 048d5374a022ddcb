"""Training for the right reasons: the penalties' values, λ's calibration, double back-propagation
(on a 1×1 stride-2 convolution, in a child process) and the shipped fixed demo model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import explainers  # noqa: E402
from explainers.io.demo_data import generate_dataset  # noqa: E402
from explainers.training import ReasonTrainer, grad_cam_penalty, rrr_penalty  # noqa: E402

from .conftest import ROOT  # noqa: E402

# Seeds never used by assets/make_demo_models.py (nor by tests/test_demo.py).
FRESH_SEED = 20_260_514


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny")


def batches(n: int = 64, seed: int = 0, batch: int = 16) -> tf.data.Dataset:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 3, n)
    mask = np.zeros((n, 16, 16), np.float32)
    mask[:, :8, :8] = 1.0
    x[:, :8, :8, :] = 0.0
    x[np.arange(n), :8, :8, y] = 1.0  # a decoy in the mask: the label as a colour
    return tf.data.Dataset.from_tensor_slices((x, y, mask)).batch(batch)


def test_rrr_penalty_is_the_squared_masked_gradient():
    gradient = np.zeros((2, 2, 2, 3), np.float32)
    gradient[0, 0, 0] = [1.0, 2.0, 0.0]  # inside the mask: 1 + 4
    gradient[0, 1, 1] = [10.0, 0.0, 0.0]  # outside: ignored
    gradient[1, 0, 1] = [0.0, 0.0, 3.0]  # inside: 9
    mask = np.zeros((2, 2, 2), np.float32)
    mask[0, 0, 0] = mask[1, 0, 1] = 1.0
    assert float(rrr_penalty(tf.constant(gradient), tf.constant(mask))) == pytest.approx(7.0)


def test_grad_cam_penalty_is_the_share_inside_the_mask():
    activation = np.zeros((1, 2, 2, 2), np.float32)
    activation[0, 0, 0] = [3.0, 0.0]
    activation[0, 1, 1] = [0.0, 2.0]
    gradient = np.ones((1, 2, 2, 2), np.float32)  # weights 1: cam = [[3, 0], [0, 2]]
    mask = np.zeros((1, 4, 4), np.float32)
    mask[0, :2, :2] = 1.0  # the top-left cell, fully
    share = grad_cam_penalty(tf.constant(activation), tf.constant(gradient), tf.constant(mask))
    assert float(share) == pytest.approx(3.0 / 5.0, rel=1e-5)


@pytest.mark.parametrize(
    ("penalty", "classes"), [("rrr", "sum"), ("rrr", "label"), ("grad_cam", "sum")]
)
def test_lambda_is_calibrated_and_reported(penalty, classes):
    model = tiny_model()
    trainer = ReasonTrainer(model, penalty, calibration_batches=2, classes=classes)
    trainer.compile(optimizer=keras.optimizers.SGD(0.01), metrics=["accuracy"])
    data = batches()

    # The terms measured by hand, with our own nested tapes, on the first two batches.
    ces, penalties = [], []
    for x, y, mask in data.take(2):
        with tf.GradientTape() as tape:
            tape.watch(x)
            probs = model(x, training=True)
            log_p = tf.math.log(probs)
            if classes == "label":
                log_p = tf.gather(log_p, tf.cast(y, tf.int32), axis=1, batch_dims=1)
            summed = tf.reduce_sum(log_p)
        ces.append(float(tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))))
        if penalty == "rrr":
            gradient = tape.gradient(summed, x)
            penalties.append(
                float(tf.reduce_mean(tf.reduce_sum((gradient * mask[..., None]) ** 2, [1, 2, 3])))
            )
    history = trainer.fit(data, epochs=2, verbose=0)

    calibration = trainer.calibration
    assert calibration["batches"] == 2
    assert calibration["cross_entropy"] == pytest.approx(np.mean(ces), rel=1e-4)
    if penalty == "rrr":
        assert calibration["raw_penalty"] == pytest.approx(np.mean(penalties), rel=1e-3)
    assert calibration["lambda"] == pytest.approx(
        calibration["cross_entropy"] / calibration["raw_penalty"], rel=1e-6
    )
    assert trainer.lam == pytest.approx(calibration["lambda"], rel=1e-6)
    logs = history.history
    assert logs["calibration"] == [calibration]
    assert logs["lambda"] == pytest.approx([trainer.lam] * 2, rel=1e-6)
    # The loss is the sum of the two terms, λ-weighted (epoch means of per-batch values).
    for epoch in range(2):
        expected = logs["cross_entropy"][epoch] + trainer.lam * logs["penalty"][epoch]
        assert logs["loss"][epoch] == pytest.approx(expected, rel=1e-4)
    assert 0.0 <= logs["accuracy"][-1] <= 1.0


def test_calibration_changes_no_weights_and_a_fixed_lambda_is_kept():
    model = tiny_model(1)
    before = [w.copy() for w in model.get_weights()]
    trainer = ReasonTrainer(model, "rrr", lam=5.0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0), metrics=["accuracy"])
    trainer.calibrate(batches())
    assert trainer.calibration["lambda"] > 0
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # BatchNorm-free here, but nothing moved
    fixed = ReasonTrainer(tiny_model(1), "rrr", lam=5.0)
    fixed.compile(optimizer=keras.optimizers.SGD(0.01))
    history = fixed.fit(batches(), epochs=1, verbose=0)
    assert fixed.calibration is None and history.history["lambda"] == [5.0]
    with pytest.raises(explainers.ParameterError, match="unknown penalty"):
        ReasonTrainer(tiny_model(), "lasso")
    with pytest.raises(explainers.ParameterError, match="must yield"):
        fixed.fit(
            tf.data.Dataset.from_tensor_slices((np.zeros((4, 16, 16, 3)), np.zeros(4))).batch(2)
        )


def test_the_penalty_moves_the_weights_away_from_the_decoy():
    """Double back-propagation reaches the weights: without the penalty the model learns the
    decoy and its masked input gradient grows; with λ calibrated it stays far smaller."""
    data = batches(n=96, seed=3)

    def masked_penalty(model):
        values = []
        for x, _, mask in data:
            with tf.GradientTape() as tape:
                tape.watch(x)
                summed = tf.reduce_sum(tf.math.log(model(x)))
            values.append(float(rrr_penalty(tape.gradient(summed, x), mask)))
        return float(np.mean(values))

    results, accuracy = {}, {}
    for lam in (0.0, "auto"):
        model = tiny_model(4)
        trainer = ReasonTrainer(model, "rrr", lam=lam)
        trainer.compile(optimizer=keras.optimizers.Adam(0.02), metrics=["accuracy"])
        history = trainer.fit(data, epochs=10, verbose=0)
        results[lam] = masked_penalty(model)
        accuracy[lam] = history.history["accuracy"][-1]
    assert accuracy[0.0] > 0.9, accuracy  # the decoy alone gives the label away
    assert results["auto"] < 0.1 * results[0.0], (results, accuracy)


def bn_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="bn_model")


def test_batch_constant_pass_has_training_values_and_per_image_gradients():
    """``penalty_mode="batch_constant"``: the penalty's pass gives the training-mode values (the
    batch's own BatchNorm statistics; dropout off), and its input gradients are those of the
    per-image function, i.e. the inference-mode gradients once the moving statistics equal the
    batch's. A training-mode pass's gradients differ: they flow through the batch statistics,
    which is what let the demo's BatchNorm model hide the marker from the penalty."""
    model = bn_model()
    x = tf.constant(np.random.default_rng(0).normal(size=(5, 8, 8, 3)).astype(np.float32))
    trainer = ReasonTrainer(model, "rrr", lam=1.0, penalty_mode="batch_constant")
    constant, are_logits, _ = trainer._penalty_pass(x, "batch_constant")
    features = keras.Model(model.inputs, model.get_layer("drop").output)
    head = model.get_layer("predictions")
    trained = tf.matmul(features(x, training=False), head.kernel) + head.bias  # dropout off
    bn = model.get_layer("bn")
    moments = keras.Model(model.inputs, bn.input)(x)
    mean, variance = tf.nn.moments(moments, [0, 1, 2])
    expected = _bn_training_logits(model, x, mean, variance)
    np.testing.assert_allclose(constant.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert are_logits
    assert not np.allclose(constant.numpy(), trained.numpy(), atol=1e-3)  # moving stats differ

    bn.moving_mean.assign(mean)
    bn.moving_variance.assign(variance)

    def gradient(mode):
        with tf.GradientTape() as tape:
            tape.watch(x)
            scores, _, _ = trainer._penalty_pass(x, mode)
            summed = tf.reduce_sum(tf.nn.log_softmax(scores)[:, 0])
        return tape.gradient(summed, x).numpy()

    by_image, inference, training = (
        gradient(m) for m in ("batch_constant", "inference", "training")
    )
    scale = np.abs(inference).max()
    np.testing.assert_allclose(by_image, inference, atol=1e-6 * scale)
    assert np.abs(training - inference).max() > 0.1 * scale


def _bn_training_logits(model, x, mean, variance):
    """The model's logits by hand, BatchNorm with the given moments, no dropout."""
    bn = model.get_layer("bn")
    h = model.get_layer("c1")(x)
    h = (h - mean) / np.sqrt(variance + bn.epsilon) * bn.gamma + bn.beta
    h = tf.reduce_mean(tf.nn.relu(h), axis=[1, 2])
    head = model.get_layer("predictions")
    return (tf.matmul(h, head.kernel) + head.bias).numpy()


def test_batch_constant_needs_a_graph_model():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3, activation="softmax")

        def call(self, x):
            return self.dense(tf.reduce_mean(x, axis=[1, 2]))

    model = Subclassed()
    model(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(explainers.ParameterError, match="functional or Sequential"):
        ReasonTrainer(model, "rrr", penalty_mode="batch_constant")
    with pytest.raises(explainers.ParameterError, match="penalty_mode must be one of"):
        ReasonTrainer(tiny_model(), "rrr", penalty_mode="frozen")


DOUBLE_BACKPROP = textwrap.dedent(
    """
    import numpy as np, keras, tensorflow as tf
    from explainers.training import ReasonTrainer
    from tests.models_zoo import resnet_shortcut

    rng = np.random.default_rng(0)
    x = rng.random((8, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    mask = np.zeros((8, 32, 32), np.float32)
    mask[:, :6, :6] = 1
    data = tf.data.Dataset.from_tensor_slices((x, y, mask)).batch(4)
    def with_batchnorm():
        keras.utils.set_random_seed(0)
        inp = keras.Input((32, 32, 3))
        main = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="main_conv")(inp)
        main = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(main))
        shortcut = keras.layers.Conv2D(16, 1, strides=2, name="shortcut_conv")(inp)
        x = keras.layers.ReLU(name="block_out")(keras.layers.Add()([main, shortcut]))
        x = keras.layers.GlobalAveragePooling2D()(x)
        out = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
        return keras.Model(inp, out)

    for penalty, mode in (
        ("rrr", "training"),
        ("grad_cam", "training"),
        ("rrr", "batch_constant"),
        ("grad_cam", "batch_constant"),
    ):
        if mode == "training":
            model = resnet_shortcut(input_shape=(32, 32, 3))
        else:
            model = with_batchnorm()
        layer = "block_out" if penalty == "grad_cam" else None
        trainer = ReasonTrainer(model, penalty, layer=layer, penalty_mode=mode)
        trainer.compile(optimizer=keras.optimizers.SGD(0.01))
        before = model.get_layer("shortcut_conv").kernel.numpy().copy()
        history = trainer.fit(data, epochs=1, verbose=0)
        moved = np.abs(model.get_layer("shortcut_conv").kernel.numpy() - before).max()
        assert np.isfinite(history.history["loss"][0]) and moved > 0, (penalty, moved)
        # The eager path too: the penalty's own weight gradient, outside fit.
        xb, yb, mb = next(iter(data))
        with tf.GradientTape() as tape:
            ce, pen, _ = trainer.terms(xb, yb, mb)
        kernels = [model.get_layer(n).kernel for n in ("shortcut_conv", "main_conv")]
        grads = tape.gradient(pen, kernels)
        assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads), penalty
        assert all(np.abs(g.numpy()).max() > 0 for g in grads), penalty
        print("OK", penalty, mode, float(pen))
    """
)


def test_double_backprop_on_a_one_by_one_stride_two_convolution():
    """TF 2.21's oneDNN kernels crash in the eager filter gradient of 1×1 stride-2 convolutions;
    a crash here kills the child, not pytest."""
    result = subprocess.run(
        [sys.executable, "-c", DOUBLE_BACKPROP],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    for penalty in ("rrr", "grad_cam"):
        for mode in ("training", "batch_constant"):
            assert f"OK {penalty} {mode}" in result.stdout, result.stdout


# ------------------------------------------------------------------------------------------------
# The shipped fixed model (assets/make_demo_models.py), on freshly generated images
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fresh():
    # 1,000 images: the accuracy's standard error is then under 1 % (it was 4 % with 200).
    return {
        "without_marker": generate_dataset(1000, FRESH_SEED, variant="honest"),
        "with_marker": generate_dataset(1000, FRESH_SEED, variant="honest", marker=True),
    }


def accuracy(bundle, data) -> float:
    x = np.concatenate([bundle.model_input(image) for image in data["images"]])
    _, probs = bundle.runner.forward(x)
    return float((probs.argmax(axis=1) == data["labels"]).mean())


def marker_below_shape(bundle, data) -> float:
    """Share of images whose positive Grad-CAM mass (for the label) on the marker is below the
    mass on the shape."""
    below = []
    for image, mask, marker, label in zip(
        data["images"], data["masks"], data["marker_masks"], data["labels"], strict=True
    ):
        positive = np.maximum(
            explainers.explain(bundle, image, "grad_cam", target=int(label)).attribution, 0
        )
        below.append(positive[marker].sum() < positive[mask].sum())
    return float(np.mean(below))


def test_fixed_model_is_right_for_the_right_reasons(fixed_bundle, shortcut_bundle, fresh):
    assert fixed_bundle.model.count_params() == shortcut_bundle.model.count_params()
    assert [layer.name for layer in fixed_bundle.model.layers] == [
        layer.name for layer in shortcut_bundle.model.layers
    ]
    fixed = {name: accuracy(fixed_bundle, data) for name, data in fresh.items()}
    shortcut = {name: accuracy(shortcut_bundle, data) for name, data in fresh.items()}
    print(f"accuracy: fixed {fixed}, shortcut {shortcut}")
    assert fixed["without_marker"] >= 0.90
    assert fixed["with_marker"] >= 0.90
    assert shortcut["without_marker"] <= 0.40

    first = {k: v[:200] for k, v in fresh["with_marker"].items()}  # Grad-CAM per image
    fixed_share = marker_below_shape(fixed_bundle, first)
    shortcut_share = marker_below_shape(shortcut_bundle, first)
    print(f"Grad-CAM marker < shape: fixed {fixed_share:.3f}, shortcut {shortcut_share:.3f}")
    assert fixed_share >= 0.90
    assert shortcut_share <= 0.10


def test_the_story_in_the_json():
    """demo_models.json (assets/make_demo_models.py) against what assets/models/README.md says:
    the fixed model's λ is the calibration's, its held-out numbers meet the targets, and the
    attempts on the earlier shortcut data (shapes agreeing half the time) stay on record."""
    report = json.loads((ROOT / "assets" / "models" / "demo_models.json").read_text())
    fixed = report["training"]["demo_fixed"]
    calibration = fixed["calibration"]
    assert fixed["lambda"] == pytest.approx(
        calibration["cross_entropy"] / calibration["raw_penalty"], rel=1e-4
    )
    assert (fixed["penalty"], fixed["classes"], fixed["penalty_mode"]) == (
        "rrr",
        "label",
        "batch_constant",
    )
    metrics = report["metrics"]
    assert metrics["demo_fixed"]["honest"]["accuracy"] >= 0.9
    assert metrics["demo_shortcut"]["honest"]["accuracy"] <= 0.3
    assert metrics["demo_shortcut"]["shortcut"]["conflict_follows_marker"] > 0.95
    assert metrics["demo_fixed"]["shortcut"]["conflict_follows_shape"] > 0.8
    below = report["grad_cam_marker_below_shape"]
    assert below["demo_fixed"] >= 0.9 and below["demo_shortcut"] <= 0.1
    paper = report["story"]["earlier_attempts"]["paper_sum_training_mode"]
    assert paper["metrics"]["honest"]["accuracy"] < 0.3
