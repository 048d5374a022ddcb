"""Incremental occlusion (Krypton): the changed region per layer by hand, the same map as full
re-inference on every supported layer and on real architectures, and honest fallbacks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import explainers
from explainers.core import incremental
from explainers.core.incremental import Geometry, fit_window, grow, same_padding

from .conftest import ROOT
from .models_zoo import calibrate_batchnorm, random_image, seeded


def both(bundle, image, *, score="logit", **params):
    """(full, incremental) explanations of the same request."""
    full = explainers.explain(bundle, image, "occlusion", mode="full", score=score, **params)
    fast = explainers.explain(bundle, image, "occlusion", mode="incremental", score=score, **params)
    return full, fast


def assert_same_map(full, fast):
    assert fast.extras["occlusion_mode"] == "incremental", fast.extras.get("fallback_reason")
    assert 0 < fast.extras["incremental_flops_ratio"] <= 1
    expected = full.model_attribution
    scale = float(np.abs(expected).max())
    assert scale > 0  # a map that is all zero would prove nothing
    np.testing.assert_allclose(fast.model_attribution, expected, rtol=0, atol=2e-4 * scale)


# ------------------------------------------------------------------------------------------------
# Geometry by hand
# ------------------------------------------------------------------------------------------------
def span(bounds: tuple[np.ndarray, np.ndarray]) -> list[int]:
    return [int(bounds[0][0]), int(bounds[1][0])]


def test_grow_follows_kernel_stride_padding_and_dilation():
    lo, hi = np.array([6]), np.array([10])
    # 3×3 "same", stride 1: one more row on each side
    assert span(grow(lo, hi, 3, 1, 1, 1, 24)) == [5, 11]
    # 3×3 stride 2 "valid": outputs 2..4 read inputs 4..10
    assert span(grow(lo, hi, 3, 2, 1, 0, 11)) == [2, 5]
    # 3×3 dilated by 2, "same" (pad 2): output o reads o − 2, o, o + 2
    assert span(grow(lo, hi, 3, 1, 2, 2, 24)) == [4, 12]
    # 1×1 stride 2: only even inputs are read
    assert span(grow(lo, hi, 1, 2, 1, 0, 12)) == [3, 5]
    # clipped at the map's edges
    assert span(grow(np.array([0]), np.array([3]), 7, 1, 1, 3, 8)) == [0, 6]
    assert same_padding(7, 3, 2, 1) == (1, 1) and same_padding(8, 3, 2, 1) == (0, 1)
    # one window size for all patches; each window holds its range, inside the map
    size, starts, *_ = fit_window(np.array([0, 5, 9]), np.array([3, 9, 12]), 12, None)
    assert size == 4 and list(starts) == [0, 5, 8]


def stack_model() -> keras.Model:
    seeded(3)
    inp = keras.Input((24, 24, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inp)
    x = keras.layers.ReLU(name="relu_a")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv_b")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="valid", name="conv_c")(x)
    x = keras.layers.Conv2D(6, 3, dilation_rate=2, padding="same", name="conv_d")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="logits")(x))


def test_changed_region_of_a_3x3_stack_by_hand():
    bundle = explainers.bundle_from_model(stack_model(), preprocessing="0_1")
    corner = np.array([[10, 9]], np.int32)  # one 4 × 4 patch: rows 10..13, columns 9..12
    plan = incremental.plan_for(bundle, Geometry((24, 24, 1), (4, 4), corner))
    expected = {
        "conv_a": ((9, 8), (6, 6)),  # 3×3 same: one more on every side
        "relu_a": ((9, 8), (6, 6)),  # point-wise: the same crop
        "conv_b": ((8, 7), (8, 8)),
        "conv_c": ((3, 3), (5, 5)),  # stride 2 valid: outputs 3..7 read rows 6..16 ⊇ 8..15
        "conv_d": ((1, 1), (9, 9)),  # dilation 2, pad 2: outputs 1..9 read 3..7
    }
    for path, (start, size) in expected.items():
        starts, got = plan.window_of(path)
        assert (tuple(int(v) for v in starts[0]), got) == (start, size), path
    assert plan.window_of("gap") is None  # a vector: pasted back, the dense head as usual
    # multiply-adds recomputed: only the windows
    conv_b = next(c for c in plan.costs if c.path == "conv_b")
    assert conv_b.incremental_macs == pytest.approx(conv_b.full_macs * 64 / 576)


def test_the_stack_gives_the_full_map():
    bundle = explainers.bundle_from_model(stack_model(), preprocessing="0_1")
    image = random_image(24, 24, seed=1)
    # overlapping patches at 0, 3, …, 18 and the far edge's extra one at 19
    assert_same_map(*both(bundle, image, patch_size=5, stride=3))


# ------------------------------------------------------------------------------------------------
# Every supported layer, exact on small models
# ------------------------------------------------------------------------------------------------
def strided_model() -> keras.Model:
    """Strides, dilation, same/valid padding, pooling with both paddings, a Flatten head."""
    seeded(4)
    inp = keras.Input((26, 30, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(6, 3, dilation_rate=2, padding="valid")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.LeakyReLU(0.1)(x)
    x = keras.layers.MaxPooling2D(3, strides=1, padding="same")(x)
    x = keras.layers.AveragePooling2D(3, strides=2, padding="same")(x)
    x = keras.layers.Conv2D(8, (3, 2), strides=(1, 2), padding="valid")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(4, activation="softmax")(x)
    return keras.Model(inp, out)


def depthwise_model() -> keras.Model:
    """MobileNet-style: ZeroPadding2D + valid stride-2 depthwise, separable, an Add of branches
    that grew differently, a Concatenate, a binary sigmoid head."""
    seeded(5)
    inp = keras.Input((28, 28, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)))(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="valid", depth_multiplier=2)(x)
    y = keras.layers.SeparableConv2D(16, 3, padding="same", dilation_rate=2)(x)
    y = keras.layers.SeparableConv2D(16, 3, padding="same", activation="relu")(y)
    x = keras.layers.Add()([x, y])  # x's window is smaller: re-windowed
    z = keras.layers.Conv2D(4, 1, strides=2)(x)
    w = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = keras.layers.Concatenate()([z, w])
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inp, out)


def merge_model() -> keras.Model:
    """Multiply/Subtract/Maximum/Average merges, channel-wise normalisations, a squeeze-and-
    excitation gate (a global vector rescaling a map: pasted, then as usual), GMP head."""
    seeded(6)
    inp = keras.Input((24, 24, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="tanh")(inp)
    b = keras.layers.Conv2D(8, 5, padding="same", activation="sigmoid")(inp)
    x = keras.layers.Multiply()([a, b])
    c = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)
    d = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Subtract()([c, keras.layers.Dense(8)(d)])
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.Maximum()([x, keras.layers.Conv2D(8, 3, padding="same")(x)])
    x = keras.layers.Average()([x, keras.layers.Dropout(0.5)(x)])
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = keras.layers.Conv2D(8, 1, activation="sigmoid")(gate)
    x = keras.layers.Multiply()([x, gate])
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inp, out)


@pytest.mark.parametrize(
    "build, params",
    [
        (strided_model, {"patch_size": 6, "stride": 4}),
        (depthwise_model, {"patch_size": 5, "stride": 3, "fill": "black"}),
        (merge_model, {"patch_size": 4, "stride": 4, "fill": "mean"}),
    ],
)
def test_every_supported_layer_gives_the_full_map(build, params):
    bundle = explainers.bundle_from_model(build(), preprocessing="0_1")
    shape = bundle.model.input_shape[1:3]
    image = random_image(*shape, seed=2)
    for score in ("logit", "probability"):
        assert_same_map(*both(bundle, image, score=score, **params))


@pytest.mark.parametrize("name", ["nested_base", "sequential_flatten", "with_rescaling"])
def test_zoo_models_give_the_full_map_when_asked(zoo_bundles, name):
    """Sequential models, a functional base inside a Sequential, a Flatten head, in-model
    rescaling: small enough that "auto" keeps full passes, exact when asked."""
    bundle = zoo_bundles[name]
    shape = bundle.model.input_shape[1:3]
    full, fast = both(bundle, random_image(*shape, seed=3), patch_size=6, stride=5)
    assert_same_map(full, fast)


def test_batches_share_one_trace_and_give_the_same_scores():
    bundle = explainers.bundle_from_model(depthwise_model(), preprocessing="0_1")
    image = random_image(28, 28, seed=4)
    params = {"patch_size": 7, "stride": 7, "mode": "incremental", "score": "logit"}
    whole = explainers.explain(bundle, image, "occlusion", **params)
    plan = incremental.plan_for(
        bundle,
        Geometry(
            (28, 28, 3), (7, 7), np.array([(r, c) for r in (0, 7, 14, 21) for c in (0, 7, 14, 21)])
        ),
    )
    traced = plan._batch
    parts = explainers.explain(bundle, image, "occlusion", batch_size=3, **params)  # 3+3+…+4
    assert plan._batch is traced  # one concrete function, batch axis free
    np.testing.assert_allclose(parts.model_attribution, whole.model_attribution, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Real architectures
# ------------------------------------------------------------------------------------------------
def test_demo_model_runs_incrementally_by_default(demo_bundle):
    image = explainers.load_image(
        sorted((ROOT / "assets/samples").glob("shapes_star_*[0-9].png"))[0]
    )
    auto = explainers.explain(demo_bundle, image, "occlusion")  # the defaults: mode "auto"
    full = explainers.explain(demo_bundle, image, "occlusion", mode="full")
    assert "fallback_reason" not in auto.extras
    assert_same_map(full, auto)
    assert auto.extras["incremental_flops_ratio"] < 0.5
    assert full.extras["occlusion_mode"] == "full" and "fallback_reason" not in full.extras
    logit_full, logit_fast = both(demo_bundle, image, patch_size=12, stride=6)
    assert_same_map(logit_full, logit_fast)


def test_mobilenet_v2_gives_the_full_map():
    seeded(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3))
    bundle = explainers.bundle_from_model(model)
    image = random_image(64, 64, seed=5)
    calibrate_batchnorm(model, bundle.model_input(image))
    assert_same_map(*both(bundle, image, patch_size=16, stride=16))


def test_resnet50_gives_the_full_map():
    seeded(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    bundle = explainers.bundle_from_model(model)
    image = random_image(64, 64, seed=6)
    full, fast = both(bundle, image, patch_size=16, stride=16)
    assert_same_map(full, fast)
    # conv1 (7×7, stride 2, after ZeroPadding2D) and the max pooling grow the patch; stage 4 has
    # reached the whole 4 × 4 map and runs as usual
    plan = incremental.plan_for(
        bundle,
        Geometry(
            (64, 64, 3),
            (16, 16),
            np.array([(r, c) for r in range(0, 64, 16) for c in range(0, 64, 16)]),
        ),
    )
    assert plan.window_of("conv1_conv")[1] == (11, 11)
    assert plan.window_of("conv5_block3_out") is None


def test_a_nested_application_gives_the_full_map():
    seeded(1)
    base = keras.applications.MobileNetV2(
        weights=None, include_top=False, alpha=0.35, input_shape=(64, 64, 3)
    )
    inp = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(5, activation="softmax")(x)
    model = keras.Model(inp, out)
    bundle = explainers.bundle_from_model(model, preprocessing="none")
    image = random_image(64, 64, seed=7)
    calibrate_batchnorm(model, bundle.model_input(image))
    full, fast = both(bundle, image, patch_size=16, stride=16, score="probability")
    assert_same_map(full, fast)
    plan = incremental.plan_for(
        bundle,
        Geometry(
            (64, 64, 3),
            (16, 16),
            np.array([(r, c) for r in range(0, 64, 16) for c in range(0, 64, 16)]),
        ),
    )
    _, size = plan.window_of(base.name + "/Conv1")  # inside the nested model
    assert size == (9, 9)


# ------------------------------------------------------------------------------------------------
# Approximate mode
# ------------------------------------------------------------------------------------------------
def test_approximate_mode_trades_accuracy_for_work(demo_bundle):
    image = random_image(96, 96, seed=8)
    exact = explainers.explain(demo_bundle, image, "occlusion", mode="incremental", score="logit")
    one = explainers.explain(
        demo_bundle, image, "occlusion", mode="approximate", threshold=1.0, score="logit"
    )
    assert one.extras["occlusion_mode"] == "approximate"
    np.testing.assert_allclose(one.model_attribution, exact.model_attribution, atol=1e-6)
    half = explainers.explain(
        demo_bundle, image, "occlusion", mode="approximate", threshold=0.3, score="logit"
    )
    assert half.extras["approximate_threshold"] == 0.3
    assert half.extras["incremental_flops_ratio"] < exact.extras["incremental_flops_ratio"]
    r = np.corrcoef(half.model_attribution.ravel(), exact.model_attribution.ravel())[0, 1]
    assert r > 0.5


# ------------------------------------------------------------------------------------------------
# Fallbacks: never a wrong map
# ------------------------------------------------------------------------------------------------
def unsupported_model(kind: str) -> keras.Model:
    seeded(7)
    inp = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inp)
    if kind == "resizing":
        x = keras.layers.Resizing(16, 16, name="odd")(x)
    else:  # normalises over the whole map: every position depends on every other
        x = keras.layers.LayerNormalization(axis=(1, 2, 3), name="odd")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


@pytest.mark.parametrize("kind, reason", [("resizing", "Resizing"), ("layernorm", "axis")])
def test_an_unsupported_layer_falls_back_with_the_reason(kind, reason):
    bundle = explainers.bundle_from_model(unsupported_model(kind), preprocessing="0_1")
    image = random_image(24, 24, seed=9)
    full, fast = both(bundle, image, patch_size=6, stride=6)
    assert fast.extras["occlusion_mode"] == "full"
    assert "'odd'" in fast.extras["fallback_reason"] and reason in fast.extras["fallback_reason"]
    np.testing.assert_array_equal(fast.model_attribution, full.model_attribution)


def test_a_model_that_fails_to_compile_falls_back(monkeypatch):
    bundle = explainers.bundle_from_model(stack_model(), preprocessing="0_1")

    def broken(self, x):
        raise tf.errors.InvalidArgumentError(None, None, "no kernel for this shape")

    monkeypatch.setattr(incremental.Plan, "prepare", broken)
    full, fast = both(bundle, random_image(24, 24, seed=2), patch_size=8, stride=8)
    assert fast.extras["occlusion_mode"] == "full"
    assert "failed to compile" in fast.extras["fallback_reason"]
    np.testing.assert_array_equal(fast.model_attribution, full.model_attribution)


def test_a_cancellation_from_the_progress_callback_is_not_swallowed():
    bundle = explainers.bundle_from_model(stack_model(), preprocessing="0_1")
    seen = []

    def progress(fraction, message):
        seen.append(message)
        if "incremental" in message:
            raise KeyError("cancelled")  # the dashboard's TaskCancelled is a plain Exception

    with pytest.raises(KeyError, match="cancelled"):
        explainers.explain(
            bundle,
            random_image(24, 24),
            "occlusion",
            mode="incremental",
            patch_size=4,
            batch_size=4,
            progress=progress,
        )
    assert any("incremental" in m for m in seen)


def test_auto_keeps_full_passes_where_cropping_does_not_pay(zoo_bundles):
    bundle = zoo_bundles["sequential_flatten"]  # Flatten right after one conv: no saving
    result = explainers.explain(bundle, random_image(28, 28), "occlusion", patch_size=4)
    assert result.extras["occlusion_mode"] == "full"
    assert "full passes" in result.extras["fallback_reason"]


def test_a_regression_target_falls_back():
    seeded(8)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    bundle = explainers.bundle_from_model(model, preprocessing="0_1", task="regression")
    result = explainers.explain(
        bundle, random_image(16, 16), "occlusion", mode="incremental", patch_size=4, target=0
    )
    assert result.extras["occlusion_mode"] == "full"
    assert (
        "regression" in result.extras["fallback_reason"]
        or "view" in (result.extras["fallback_reason"])
    )
