"""No silent empty or meaningless map: ``extras["warnings"]`` and ``extras["magnitude"]``, and
Score-CAM's default weights (the masked input's probability, no baseline subtracted)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from PIL import Image

import explainers
from explainers.methods.cam import score_cam_weights
from explainers.registry import ExplainRequest, get_method

from .conftest import ROOT

SAMPLES = ROOT / "assets" / "samples"
RNG = np.random.default_rng(7)


def sample(name: str) -> np.ndarray:
    return explainers.load_image(SAMPLES / f"{name}.png")


def sample_mask(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / f"{name}_mask.png").convert("L")) > 127


def as_image(values: np.ndarray) -> np.ndarray:
    """A gray uint8 (h, w, 3) image whose 0_1-preprocessed channels equal ``values`` / 255."""
    return np.repeat(np.asarray(values)[:, :, None], 3, axis=2).astype(np.uint8)


def linear_bundle(kernel: np.ndarray, bias: np.ndarray) -> explainers.ModelBundle:
    """4×4 gray → Flatten → Dense(softmax) with the given weights."""
    inp = keras.Input((4, 4, 1))
    out = keras.layers.Dense(len(bias), activation="softmax", name="out")(
        keras.layers.Flatten()(inp)
    )
    model = keras.Model(inp, out)
    model.get_layer("out").set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return explainers.bundle_from_model(model, preprocessing="0_1")


def conv_gap_bundle(kernel: np.ndarray, dense: np.ndarray) -> explainers.ModelBundle:
    """x (4×4×C) → 1×1 conv without bias ("feat", linear) → GAP → Dense: all by hand."""
    channels_in, channels = kernel.shape
    inp = keras.Input((4, 4, channels_in))
    feat = keras.layers.Conv2D(channels, 1, use_bias=False, name="feat")(inp)
    out = keras.layers.Dense(dense.shape[1], name="out")(
        keras.layers.GlobalAveragePooling2D()(feat)
    )
    model = keras.Model(inp, out)
    model.get_layer("feat").set_weights([kernel.reshape(1, 1, channels_in, channels)])
    model.get_layer("out").set_weights([dense, np.zeros(dense.shape[1], np.float32)])
    return explainers.bundle_from_model(model, preprocessing="0_1")


# ------------------------------------------------------------------------------------------------
# Healthy maps: no warning, and the magnitude in real units
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, params",
    [
        ("grad_cam", {}),
        ("integrated_gradients", {"steps": 16}),
        ("occlusion", {}),
        ("vanilla_gradients", {}),
    ],
)
def test_ordinary_methods_on_an_ordinary_sample_carry_no_warning(demo_bundle, method, params):
    result = explainers.explain(demo_bundle, sample("shapes_star_0"), method, **params)
    assert result.label == "star"
    assert result.extras["warnings"] == []
    magnitude = result.extras["magnitude"]
    raw = result.model_attribution.astype(np.float64)
    assert magnitude["min"] == pytest.approx(raw.min())
    assert magnitude["max"] == pytest.approx(raw.max())
    assert magnitude["sum"] == pytest.approx(raw.sum(), rel=1e-6, abs=1e-9)
    assert magnitude["max_abs"] == pytest.approx(np.abs(raw).max())
    if method == "occlusion":  # occlusion measures the probability, the others the logit
        assert magnitude["score"] == "probability"
        assert magnitude["score_value"] == pytest.approx(result.score)
        assert magnitude["score_text"].startswith("probability of star = 0.99")
    else:
        assert magnitude["score"] == "logit"
        assert magnitude["score_value"] == pytest.approx(10.59, abs=0.01)
        assert magnitude["score_text"] == "logit of star = 10.59"
    assert magnitude["units"]
    json.dumps(result.extras)  # plain data: crosses the dashboard's process boundary


# ------------------------------------------------------------------------------------------------
# Score-CAM: default weights, the paper's baseline-subtracted option
# ------------------------------------------------------------------------------------------------
def test_score_cam_on_the_default_sample_localises_the_circle(demo_bundle):
    result = explainers.explain(demo_bundle, sample("shapes_circle_0"), "score_cam")
    assert result.label == "circle"
    assert result.extras["warnings"] == []
    heat = result.attribution
    assert heat.max() > 0
    mask = sample_mask("shapes_circle_0")
    assert mask[np.unravel_index(np.argmax(heat), heat.shape)]  # the peak lies on the circle
    positive = np.maximum(heat, 0)
    energy = positive[mask].sum() / positive.sum()
    assert energy > 3 * mask.mean()  # measured: 0.66 of the mass on 9% of the image
    assert result.extras["positive_weights"] > 0


def test_score_cam_baseline_subtract_empties_the_map_and_says_why(demo_bundle):
    result = explainers.explain(
        demo_bundle, sample("shapes_circle_0"), "score_cam", baseline_subtract=True
    )
    assert np.all(result.model_attribution == 0)
    assert result.extras["positive_weights"] == 0
    assert result.extras["baseline_probability"] > 0.99  # a black image already says "circle"
    (warning,) = result.extras["warnings"]
    assert "Every Score-CAM channel weight is ≤ 0" in warning
    assert "a black image" in warning and "'circle'" in warning
    assert "Turn off 'Subtract the baseline score'" in warning


def test_score_cam_weights_are_the_masked_inputs_probabilities():
    # Three input colours → three independent channels, and a fourth that is constant (zero).
    kernel = np.array([[1.0, 0.0, 0.3, 0.0], [0.0, 1.0, 0.3, 0.0], [0.2, 0.5, 0.3, 0.0]])
    dense = np.array([[0.3, -1.0], [0.8, 0.2], [-0.4, 0.6], [0.5, 0.5]], np.float32)
    bundle = conv_gap_bundle(kernel.astype(np.float32), dense)
    image = RNG.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    x = bundle.preprocess(image)[None].astype(np.float32)
    model = bundle.model

    def probability(inputs: np.ndarray) -> float:
        logits = keras.ops.convert_to_numpy(model(inputs.astype(np.float32)))
        return float(keras.ops.convert_to_numpy(keras.ops.softmax(logits))[0, 1])

    acts = x[0] @ kernel  # (4, 4, 4); the 1×1 conv by hand
    expected = []
    for k in range(4):
        a = acts[:, :, k]
        if a.max() == a.min():
            expected.append(0.0)  # a constant map is skipped, as in the reference code
            continue
        mask = (a - a.min()) / (a.max() - a.min())  # same grid: upsampling is the identity
        expected.append(probability(x * mask[None, :, :, None]))
    spec = get_method("score_cam")
    for subtract in (False, True):
        request = ExplainRequest(
            bundle=bundle,
            image=image,
            x=x,
            target=1,
            layer="feat",
            params=spec.resolve_params({"baseline_subtract": subtract}),
        )
        weights, _ = score_cam_weights(request, acts.astype(np.float64))
        want = np.array(expected)
        if subtract:
            want[:3] -= probability(np.zeros_like(x))
        np.testing.assert_allclose(weights, want, rtol=1e-5, atol=1e-7)
    result = explainers.explain(bundle, image, "score_cam", target=1, relu=False)
    np.testing.assert_allclose(
        result.model_attribution, (acts * np.array(expected)).sum(-1), rtol=1e-4, atol=1e-6
    )


# ------------------------------------------------------------------------------------------------
# Each kind of meaningless map says what is wrong and what to try
# ------------------------------------------------------------------------------------------------
def test_a_class_the_model_hardly_predicts_is_flagged(demo_bundle):
    result = explainers.explain(demo_bundle, sample("shapes_circle_0"), "grad_cam", target="star")
    assert result.score < 1e-10
    (warning,) = [w for w in result.extras["warnings"] if "not for the model's decision" in w]
    assert "'star'" in warning and "'circle'" in warning and "Explain the top class" in warning


def test_saturated_probability_occlusion_points_to_the_logit():
    kernel = RNG.normal(size=(16, 2))
    bundle = linear_bundle(kernel, np.array([40.0, 0.0]))  # p(class 0) = 1.0 in float32
    image = as_image(RNG.integers(0, 256, (4, 4)))
    flat = explainers.explain(bundle, image, "occlusion", target=0, patch_size=2, stride=2)
    assert flat.score == 1.0 and np.all(flat.model_attribution == 0)
    (warning,) = flat.extras["warnings"]
    assert "saturated at p = 1.000000" in warning and "the map is all zero" in warning
    assert "Set Score to 'logit'" in warning
    logit = explainers.explain(
        bundle, image, "occlusion", target=0, patch_size=2, stride=2, score="logit"
    )
    assert np.abs(logit.model_attribution).max() > 0.01
    assert logit.extras["warnings"] == []
    assert logit.extras["magnitude"]["score"] == "logit"


def test_a_model_that_ignores_its_input_is_flagged():
    bundle = linear_bundle(np.zeros((16, 3)), np.zeros(3))  # every class at p = 1/3
    image = as_image(RNG.integers(0, 256, (4, 4)))
    result = explainers.explain(bundle, image, "integrated_gradients", steps=4)
    model_warning, map_warning = result.extras["warnings"]
    assert "has p = 0.3333, at or barely above chance (1/3 = 0.3333)" in model_warning
    assert "trained weights" in model_warning
    assert "exactly 0" in map_warning and "gradient" in map_warning
    occlusion = explainers.explain(bundle, image, "occlusion", patch_size=2, stride=2)
    assert "No occluded patch changed the probability" in occlusion.extras["warnings"][-1]


@pytest.mark.parametrize("method", ["integrated_gradients", "vanilla_gradients"])
def test_a_negligible_map_is_flagged(method):
    # The logits hardly depend on the input: their gradient is 1e-12 (an untrained network's
    # IG map summed to about −7e-12, yet its overlay looked like a confident heatmap).
    bundle = linear_bundle(1e-12 * RNG.normal(size=(16, 3)), np.array([0.5, -0.3, 0.1]))
    image = as_image(RNG.integers(0, 256, (4, 4)))
    result = explainers.explain(bundle, image, method, target=0)
    assert 0 < result.extras["magnitude"]["max_abs"] < 1e-11
    (warning,) = result.extras["warnings"]
    assert f"The {get_method(method).label} map is negligible" in warning
    assert "logit of class 0 = 0.5" in warning and "check that the model is trained" in warning


def test_a_cam_emptied_by_its_relu_says_so():
    kernel = np.array([[1.0, 0.5, 2.0]], np.float32)  # non-negative activations
    dense = np.array([[-0.3, 0.0], [-0.2, 0.0], [-0.4, 0.0]], np.float32)  # all against class 0
    bundle = conv_gap_bundle(kernel, dense)
    image = as_image(RNG.integers(1, 256, (4, 4)))
    result = explainers.explain(bundle, image, "grad_cam", target=0)
    assert result.score > 0.01 and np.all(result.model_attribution == 0)
    (warning,) = result.extras["warnings"]
    assert "≤ 0 before the ReLU" in warning and "Turn off 'ReLU on the map'" in warning
    signed = explainers.explain(bundle, image, "grad_cam", target=0, relu=False)
    assert signed.model_attribution.min() < 0 and signed.extras["warnings"] == []


def test_a_constant_map_is_flagged(demo_bundle):
    result = explainers.explain(
        demo_bundle,
        sample("shapes_star_0"),
        "rise",
        n_masks=8,
        keep_probability=1.0,
        center=False,
    )
    values = result.model_attribution
    assert values.max() - values.min() <= 1e-5 * values.max()
    (warning,) = result.extras["warnings"]
    assert "keep probability 1" in warning and "Lower it" in warning
