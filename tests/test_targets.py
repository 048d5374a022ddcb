"""Targets: what is explained, beyond one class of a classifier (issue 15).

Exact values on tiny hand-built models: Seg-Grad-CAM against its formula, a region's gradient
against the sum of its pixels' gradients, a regression model whose output depends on one region
only; task recognition; the text syntax; metrics, attacks and the sanity check on a region.
"""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import explainers
from explainers.errors import ParameterError, UnsupportedModelError
from explainers.explanation import explain_each
from explainers.io.models import bundle_from_model, load_model
from explainers.targets import Region, Target, bind

RNG = np.random.default_rng(7)


def _image(size: int = 16, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Tiny models with known weights
# ------------------------------------------------------------------------------------------------
def tiny_segmenter(size: int = 8, classes: int = 3, activation_layer: bool = True) -> keras.Model:
    """x → 1×1 conv (4 channels, ReLU) ``feat`` → 1×1 conv (classes) → softmax per pixel."""
    inputs = keras.Input((size, size, 3))
    feat = keras.layers.Conv2D(4, 1, activation="relu", name="feat")(inputs)
    if activation_layer:
        logits = keras.layers.Conv2D(classes, 1, name="logits")(feat)
        outputs = keras.layers.Activation("softmax", name="probs")(logits)
    else:
        outputs = keras.layers.Conv2D(classes, 1, activation="softmax", name="probs")(feat)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 1, w.shape).astype(np.float32) for w in layer.weights])
    return model


def _feature_and_logit_weights(model: keras.Model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    feat = model.get_layer("feat")
    head = model.get_layer("logits") if "logits" in [la.name for la in model.layers] else None
    head = head or model.get_layer("probs")
    kernel, bias = head.get_weights()
    return feat, kernel[0, 0], bias


def test_seg_grad_cam_equals_the_hand_computation() -> None:
    """Seg-Grad-CAM (Vinogradova et al. 2020): y = Σ_{(i,j)∈M} z^c_ij; α_k = mean_ij ∂y/∂A^k_ij;
    map = ReLU(Σ_k α_k A^k). With a 1×1 classifier z^c = Σ_k W_kc A^k + b_c, so ∂y/∂A^k_ij =
    W_kc · M_ij and α_k = W_kc · |M| / (h w)."""
    model = tiny_segmenter()
    bundle = bundle_from_model(model, preprocessing="0_1", labels=["background", "a", "b"])
    image = _image(8)
    mask = np.zeros((8, 8), bool)
    mask[1:5, 2:7] = True
    x = image.astype(np.float32)[None] / 255.0
    feat_model = keras.Model(model.inputs, model.get_layer("feat").output)
    acts = feat_model(x).numpy()[0]  # (8, 8, 4)
    kernel, _ = model.get_layer("logits").get_weights()
    for c in range(3):
        alpha = kernel[0, 0, :, c] * mask.sum() / mask.size
        expected = np.maximum((acts * alpha).sum(-1), 0.0)
        result = explainers.explain(
            bundle,
            image,
            "grad_cam",
            target=Target(unit=c, region=Region("mask", mask=mask)),
            layer="feat",
        )
        np.testing.assert_allclose(result.model_attribution, expected, rtol=1e-4, atol=1e-5)
        # The score is the summed logit over the region.
        logits = (
            np.einsum("hwk,kc->hwc", acts, kernel[0, 0])
            + model.get_layer("logits").get_weights()[1]
        )
        assert result.extras["magnitude"]["score_value"] == pytest.approx(
            float(logits[..., c][mask].sum()), rel=1e-4
        )
        assert result.extras["target"]["region_pixels"] == int(mask.sum())


def test_region_gradient_is_the_sum_of_per_pixel_gradients() -> None:
    """∂(Σ_{p∈M} z^c_p)/∂x = Σ_{p∈M} ∂z^c_p/∂x, for a model whose softmax sits inside a
    convolution (the logits are recovered from the conv's affine part)."""
    inputs = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", activation="tanh")(inputs)
    outputs = keras.layers.Conv2D(3, 3, padding="same", activation="softmax", name="out")(h)
    model = keras.Model(inputs, outputs)
    bundle = bundle_from_model(model, preprocessing="0_1")
    assert bundle.task == "segmentation" and bundle.output_kind == "softmax"
    image = _image(12, seed=1)
    mask = np.zeros((12, 12), bool)
    mask[3:8, 2:6] = True
    mask[10, 10] = True
    # Reference: per-pixel gradients of the logit (the conv without its softmax).
    out = model.get_layer("out")
    logit_model = keras.Model(model.inputs, out.input)
    x = tf.constant(image.astype(np.float32)[None] / 255.0)
    total = np.zeros((12, 12, 3), np.float64)
    for row, column in zip(*np.nonzero(mask), strict=True):
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = out.convolution_op(logit_model(x), out.kernel) + out.bias
            score = z[0, row, column, 2]
        total += tape.gradient(score, x).numpy()[0]
    bound = bind(bundle, image, Target(2, Region("mask", mask=mask)))
    _, grads = bound.bundle.runner.input_gradients(x.numpy(), bound.index)
    np.testing.assert_allclose(grads[0], total, rtol=1e-4, atol=1e-6)
    # And through explain(): the map is that gradient summed over the colour channels.
    result = explainers.explain(
        bundle, image, "vanilla_gradients", target=Target(2, Region("mask", mask=mask))
    )
    np.testing.assert_allclose(result.model_attribution, total.sum(-1), rtol=1e-4, atol=1e-6)


def test_region_kinds_resolve_on_the_prediction() -> None:
    bundle = bundle_from_model(tiny_segmenter(16), preprocessing="0_1", labels=["bg", "a", "b"])
    image = _image(32, seed=2)  # twice the model's size: points and boxes are image pixels
    predicted = np.argmax(bundle.segment(image), -1)
    present = [c for c in range(3) if (predicted == c).any()]
    c = present[-1]
    whole = bind(bundle, image, f"region:{bundle.class_names[c]}")
    np.testing.assert_array_equal(whole.region, predicted == c)
    # A component at a pixel of class c: inside the class's pixels, connected, holds the pixel.
    row, column = np.argwhere(predicted == c)[0]
    at = bind(bundle, image, f"region:*:at={2 * column + 1},{2 * row + 1}")
    assert at.index == c and at.region[row, column]
    assert not (at.region & (predicted != c)).any()
    box = bind(bundle, image, "region:a:box=0,0,16,8:mean")
    assert box.region.sum() == 8 * 4 and box.region[:4, :8].all()
    assert box.bundle.view.kind == "region_mean"
    everything = bind(bundle, image, "region:b:all")
    assert everything.region.all()
    absent = [n for i, n in enumerate(bundle.class_names) if not (predicted == i).any()]
    if absent:
        with pytest.raises(ParameterError, match="predicts no"):
            bind(bundle, image, f"region:{absent[0]}")
    wrong = np.argwhere(predicted != c)
    if len(wrong):
        r, col = wrong[0]
        with pytest.raises(ParameterError, match="is predicted"):
            bind(bundle, image, f"region:{bundle.class_names[c]}:at={2 * col},{2 * r}")


def test_a_new_region_reuses_the_compiled_passes() -> None:
    bundle = bundle_from_model(tiny_segmenter(), preprocessing="0_1")
    image = _image(8)
    explainers.explain(bundle, image, "grad_cam", target="region:class 1:all", layer="feat")
    traced = bundle.runner.tracing_count()
    for box in ("0,0,4,4", "2,2,8,8", "1,0,3,8"):
        explainers.explain(
            bundle, image, "grad_cam", target=f"region:class 1:box={box}", layer="feat"
        )
    assert bundle.runner.tracing_count() == traced


# ------------------------------------------------------------------------------------------------
# Regression and multi-label
# ------------------------------------------------------------------------------------------------
def region_regressor() -> keras.Model:
    """y = 3 · mean of the top-left 6 × 6 pixels' first channel + 1: a known function of one
    region of a 16 × 16 image."""
    inputs = keras.Input((16, 16, 3))
    crop = keras.layers.Cropping2D(((0, 10), (0, 10)))(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(crop)
    outputs = keras.layers.Dense(1, name="value")(pooled)
    model = keras.Model(inputs, outputs)
    model.get_layer("value").set_weights(
        [np.array([[3.0], [0.0], [0.0]], np.float32), np.array([1.0], np.float32)]
    )
    return model


def test_regression_is_recognised_from_the_saved_loss(tmp_path) -> None:
    model = region_regressor()
    model.compile(optimizer="sgd", loss="mse")
    path = tmp_path / "regressor.keras"
    model.save(path)
    bundle = load_model(path, preprocessing="0_1")
    assert bundle.task == "regression" and bundle.n_classes == 1
    uncompiled = tmp_path / "plain.keras"
    region_regressor().save(uncompiled)
    assert load_model(uncompiled).task == "classification"  # a lone logit, by default
    assert load_model(uncompiled, task="regression").task == "regression"


@pytest.mark.parametrize("method", ["vanilla_gradients", "integrated_gradients", "occlusion"])
def test_regression_attributes_to_the_region_it_reads(method: str) -> None:
    bundle = bundle_from_model(region_regressor(), preprocessing="0_1", task="regression")
    image = _image(16, seed=4)
    params = {"patch_size": 2, "stride": 2} if method == "occlusion" else {}
    up = explainers.explain(bundle, image, method, target="value:0", **_known(method, params))
    down = explainers.explain(
        bundle, image, method, target="value:0:lower", **_known(method, params)
    )
    raw = up.model_attribution
    outside = np.ones((16, 16), bool)
    outside[:6, :6] = False
    assert np.abs(raw[outside]).max() <= 1e-6 * np.abs(raw).max()
    assert np.abs(raw[:6, :6]).min() > 0 or method == "occlusion"
    np.testing.assert_allclose(down.model_attribution, -raw, rtol=1e-5, atol=1e-7)
    value = 3 * image[:6, :6, 0].astype(np.float64).mean() / 255 + 1
    assert up.score == pytest.approx(value, rel=1e-5)
    assert down.score == pytest.approx(-value, rel=1e-5)
    assert up.extras["magnitude"]["score"] == "value"
    assert "increases" in up.extras["target"]["text"]


def _known(method: str, params: dict) -> dict:
    spec = explainers.get_method(method)
    names = {p.name for p in spec.params}
    return {k: v for k, v in params.items() if k in names}


def test_gradient_of_regression_is_exact() -> None:
    """∂y/∂x = 3 / 36 on the region's first channel (model input = pixel values)."""
    bundle = bundle_from_model(region_regressor(), preprocessing="none", task="regression")
    image = _image(16, seed=5)
    result = explainers.explain(bundle, image, "vanilla_gradients", target=0)
    expected = np.zeros((16, 16), np.float32)
    expected[:6, :6] = 3.0 / 36.0  # the first channel's; the others are 0
    np.testing.assert_allclose(result.model_attribution, expected, rtol=1e-5, atol=1e-8)


def tiny_multilabel() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="feat")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(3, activation="sigmoid", name="labels")(pooled)
    keras.utils.set_random_seed(11)
    return keras.Model(inputs, outputs)


def test_multilabel_any_label_and_one_map_each() -> None:
    bundle = bundle_from_model(tiny_multilabel(), labels=["a", "b", "c"], preprocessing="0_1")
    assert bundle.task == "multilabel" and bundle.output_kind == "sigmoid"
    image = _image(8, seed=6)
    probs = bundle.predict(image)
    results = explain_each(bundle, image, "grad_cam", ["label:a", "label:b", 2])
    assert [r.label for r in results] == ["a", "b", "c"]
    for r, p in zip(results, probs, strict=True):
        assert r.score == pytest.approx(p, rel=1e-5)
        assert r.extras["target"]["text"].startswith("label ")
        # No "chance level" warning for independent labels.
        assert not any("chance" in w for w in r.extras["warnings"])
    # Different labels, different maps (the CAM head's weights differ per label).
    assert not np.allclose(results[0].model_attribution, results[1].model_attribution)


# ------------------------------------------------------------------------------------------------
# Recognition, syntax and refusals
# ------------------------------------------------------------------------------------------------
def test_output_kinds_are_recognised_and_said() -> None:
    seg = bundle_from_model(tiny_segmenter(activation_layer=False))
    assert (seg.task, seg.output_kind, seg.output_shape) == ("segmentation", "softmax", (8, 8, 3))
    assert seg.default_layer == "feat"
    inputs = keras.Input((8, 8, 3))
    boxes = keras.layers.Reshape((9, 3))(keras.layers.Conv2D(3, 3, strides=2)(inputs))
    with pytest.raises(UnsupportedModelError, match="detection head") as info:
        bundle_from_model(keras.Model(inputs, boxes))
    assert "segmentation" in str(info.value) and "regression" in str(info.value)
    with pytest.raises(ParameterError, match="segmentation output"):
        bundle_from_model(tiny_segmenter(), task="classification")


def test_target_syntax() -> None:
    assert Target.parse("3").unit == 3 and Target.parse("circle").unit == "circle"
    t = Target.parse("region:star:at=40,52:mean:output=1")
    assert (t.unit, t.region.how, t.region.point, t.reduce, t.output) == (
        "star",
        "component",
        (40.0, 52.0),
        "mean",
        1,
    )
    assert Target.parse("region:circle:box=1,2,3,4").region.box == (1, 2, 3, 4)
    assert Target.parse("value:0:lower").direction == "decrease"
    assert Target.parse("region:*:all").unit is None
    for bad, message in [
        ("label:a:at=1,2", "choose a region"),
        ("class:a:lower", "regression"),
        ("region:a:box=1,2", "4 comma-separated"),
        ("frame:a", "cannot read"),
        ("region:a:wobble", "unknown target option"),
    ]:
        with pytest.raises(ParameterError, match=message):
            Target.parse(bad)


def test_targets_the_task_lacks_are_refused() -> None:
    classifier = bundle_from_model(tiny_multilabel(), preprocessing="0_1", task="classification")
    image = _image(8)
    with pytest.raises(ParameterError, match="segmentation model"):
        bind(classifier, image, "region:class 0")
    with pytest.raises(ParameterError, match="regression"):
        bind(classifier, image, Target(0, direction="decrease"))
    with pytest.raises(ParameterError, match="unknown label"):
        bind(bundle_from_model(tiny_multilabel()), image, "label:zebra")
    seg = bundle_from_model(tiny_segmenter())
    with pytest.raises(ParameterError, match="tf-explain"):
        explainers.explain(seg, image, "grad_cam", engine="tf_explain")


def test_one_output_of_a_multi_output_model() -> None:
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="feat")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(h)
    first = keras.layers.Dense(2, activation="softmax", name="kind")(pooled)
    second = keras.layers.Conv2D(3, 1, activation="softmax", name="mask")(h)
    bundle = bundle_from_model(keras.Model(inputs, [first, second]), preprocessing="0_1")
    assert bundle.task == "classification" and bundle.output_index == 0
    image = _image(8)
    result = explainers.explain(bundle, image, "grad_cam", target="region:*:all:output=1")
    assert result.extras["target"]["task"] == "segmentation"
    assert bundle.for_output(1) is bundle.for_output(1)


# ------------------------------------------------------------------------------------------------
# Metrics, attacks and the sanity check on a region
# ------------------------------------------------------------------------------------------------
def test_evaluation_attack_and_sanity_explain_the_same_region() -> None:
    bundle = bundle_from_model(tiny_segmenter(16), preprocessing="0_1", labels=["bg", "a", "b"])
    image = _image(16, seed=8)
    target = Target("a", Region("box", box=(0, 0, 8, 8)))
    explanation = explainers.explain(bundle, image, "grad_cam", target=target, layer="feat")
    scores = explainers.evaluate_maps(
        bundle, image, {"grad_cam": explanation}, target=target, step=0.25
    )
    # The region is the ground truth: the energy in it is reported.
    assert scores[0].energy is not None
    bound = bind(bundle, image, target)
    curve = explainers.deletion_curve(bundle, image, explanation.attribution, target=target)
    assert curve.probabilities[0] == pytest.approx(
        float(bound.bundle.predict(image)[bound.index]), rel=1e-5
    )
    # The attack reads the region's class: its "before" prediction is the region's mean
    # class probabilities.
    result = explainers.attack(bundle, image, "fgsm", epsilon=8, target=None)
    region_probs = bind(bundle, image, None).bundle.predict(image)
    assert result.before[0][2] == pytest.approx(float(region_probs.max()), rel=1e-5)
    sanity = explainers.model_randomisation_test(
        bundle, image, "grad_cam", target=target, max_steps=1
    )
    assert sanity.target == bound.index and len(sanity.correlations["grad_cam"]) == 1
    # The randomised copy explains the same region, not its own prediction's.
    fixed = explainers.targets.fixed_target(explanation)
    np.testing.assert_array_equal(bind(bundle, image, fixed).region, bound.region)


def test_cli_target_region(tmp_path) -> None:
    path = tmp_path / "seg.keras"
    tiny_segmenter(16).save(path)
    image = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(_image(16)).save(image)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "explainers",
            "explain",
            "--model",
            str(path),
            "--image",
            str(image),
            "--method",
            "grad_cam",
            "--target",
            "region:class 1:box=0,0,8,8:mean",
            "--npy",
            str(tmp_path / "map.npy"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads(completed.stdout[completed.stdout.index("{") :])
    assert summary["extras"]["target"]["region_pixels"] == 64
    assert summary["extras"]["target"]["text"].startswith("mean of class 1's logits")
    assert np.load(tmp_path / "map.npy").shape == (16, 16)


def test_the_audit_and_the_callback_refuse_other_tasks(tmp_path) -> None:
    """The dataset audit and ExplanationCallback explain a classifier's top class; a
    segmentation model gets a sentence saying so, not a wrong run (the callback, as for any
    error, switches itself off and lets training continue)."""
    from PIL import Image

    from explainers.audit.run import run_audit
    from explainers.callbacks import ExplanationCallback

    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(_image(8)).save(folder / "one.png")
    seg = bundle_from_model(tiny_segmenter())
    with pytest.raises(UnsupportedModelError, match="single-label classifiers"):
        run_audit(seg, tmp_path / "data", tmp_path / "run")
    callback = ExplanationCallback(_image(8)[None], methods=["grad_cam"], log_dir=tmp_path / "l")
    callback.set_model(tiny_segmenter())
    callback.on_train_begin()  # an error switches the callback off; training goes on
    assert "is a segmentation model" in str(callback.disabled)


def test_cam_reads_a_dense_head_behind_a_separate_activation() -> None:
    """Dense → Activation("sigmoid") is a CAM head too (the demo multi-label model's): CAM's map
    is Σ_k w_k A_k of the Dense's logit, which equals Grad-CAM's for a GAP head."""
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="feat")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    logits = keras.layers.Dense(3, name="logits")(pooled)
    outputs = keras.layers.Activation("sigmoid", name="labels")(logits)
    bundle = bundle_from_model(keras.Model(inputs, outputs), preprocessing="0_1")
    assert bundle.cam_head is not None and bundle.cam_head.dense_layer == "logits"
    image = _image(8, seed=9)
    cam = explainers.explain(bundle, image, "cam", target=1, relu=False)
    grad_cam = explainers.explain(bundle, image, "grad_cam", target=1, relu=False)
    # Grad-CAM's weights on a GAP head are w_k / (h·w): its map is CAM's divided by h·w.
    np.testing.assert_allclose(
        grad_cam.model_attribution * 64, cam.model_attribution, rtol=1e-4, atol=1e-6
    )
