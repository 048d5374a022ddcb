"""Deletion/insertion curves: exact values on a linear model, and ground truth on the demo model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import explainers
from explainers.core.maps import gaussian_blur
from explainers.evaluation.metrics import (
    aggregate,
    deletion_curve,
    evaluate_maps,
    insertion_curve,
    pixel_order,
    random_map,
    trapezoid_auc,
)
from explainers.io.demo_data import generate_dataset

# Seeds never used for training or validation by assets/make_demo_models.py (0-3, 10, 20, 100,
# 200) nor by the other demo-model tests.
FRESH_SEED = 20_261_127 + 202


@pytest.fixture(scope="module")
def linear():
    """(4, 4, 1) → Flatten → Dense(2) logits with fixed weights: p = softmax(x·W + b)."""
    inp = keras.Input((4, 4, 1))
    out = keras.layers.Dense(2, name="out")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(11)
    kernel = rng.normal(size=(16, 2)).astype(np.float32)
    bias = np.array([0.3, -0.2], np.float32)
    model.get_layer("out").set_weights([kernel, bias])
    return explainers.bundle_from_model(model, preprocessing="0_1"), kernel, bias


def softmax_prob(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, target: int) -> float:
    logits = x.reshape(-1).astype(np.float64) @ kernel + bias
    e = np.exp(logits - logits.max())
    return float(e[target] / e.sum())


@pytest.mark.parametrize("kind", ["deletion", "insertion"])
def test_curve_values_are_exact_on_a_linear_model(linear, kind):
    bundle, kernel, bias = linear
    gray = np.random.default_rng(5).integers(0, 256, (4, 4)).astype(np.uint8)
    image = np.repeat(gray[:, :, None], 3, axis=2)
    x = gray.astype(np.float64) / 255.0
    attribution = np.random.default_rng(6).permutation(16).reshape(4, 4).astype(np.float32)
    order = np.argsort(-attribution.ravel())  # all distinct: the ranking is fixed
    value = 0.2
    counts = [0, 3, 6, 9, 12, 15, 16]  # step = 3 pixels, the last step shorter
    expected = []
    for count in counts:
        changed = np.zeros(16, bool)
        changed[order[:count]] = True
        if kind == "deletion":
            current = np.where(changed, value, x.ravel())
        else:
            current = np.where(changed, x.ravel(), value)
        expected.append(softmax_prob(current, kernel, bias, target=1))
    function = deletion_curve if kind == "deletion" else insertion_curve
    curve = function(
        bundle, image, attribution, target=1, step=3, substrate="constant", value=value
    )
    np.testing.assert_allclose(curve.fractions, np.array(counts) / 16)
    np.testing.assert_allclose(curve.probabilities, expected, rtol=1e-5, atol=1e-6)
    manual_auc = sum(
        (counts[i + 1] - counts[i]) / 16 * (expected[i] + expected[i + 1]) / 2 for i in range(6)
    )
    assert curve.auc == pytest.approx(manual_auc, rel=1e-5)
    assert curve.target == 1 and curve.kind == kind and curve.value == value


def test_blur_substrate_is_the_curves_far_end(linear):
    bundle, kernel, bias = linear
    image = np.random.default_rng(8).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    x = bundle.preprocess(image)
    sigma = 1.5
    blurred = np.stack(
        [gaussian_blur(image[:, :, c].astype(np.float32), sigma) for c in range(3)], -1
    )
    on_blur = softmax_prob(bundle.preprocess(blurred), kernel, bias, 0)
    on_image = softmax_prob(x, kernel, bias, 0)
    attribution = random_map((4, 4), seed=1)
    deletion = deletion_curve(bundle, image, attribution, target=0, step=0.25, blur_sigma=sigma)
    insertion = insertion_curve(bundle, image, attribution, target=0, step=0.25, blur_sigma=sigma)
    np.testing.assert_allclose(deletion.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    assert deletion.probabilities[0] == pytest.approx(on_image, rel=1e-5)
    assert deletion.probabilities[-1] == pytest.approx(on_blur, rel=1e-5)
    assert insertion.probabilities[0] == pytest.approx(on_blur, rel=1e-5)
    assert insertion.probabilities[-1] == pytest.approx(on_image, rel=1e-5)


def test_ties_are_broken_by_a_seeded_permutation():
    # A constant map is all ties: its order is the seed's permutation, i.e. a random order.
    np.testing.assert_array_equal(
        pixel_order(np.ones((3, 5)), seed=4), np.random.default_rng(4).permutation(15)
    )
    # Two levels: the high ones first, each level in the permutation's order (stable sort).
    attribution = np.zeros((2, 4))
    attribution[0, 1] = attribution[1, 2] = attribution[1, 3] = 1.0
    order = pixel_order(attribution, seed=9)
    permutation = np.random.default_rng(9).permutation(8)
    high = [p for p in permutation if attribution.ravel()[p] == 1.0]
    low = [p for p in permutation if attribution.ravel()[p] == 0.0]
    np.testing.assert_array_equal(order, high + low)
    np.testing.assert_array_equal(order, pixel_order(attribution, seed=9))  # deterministic
    assert trapezoid_auc(np.array([0, 0.5, 1.0]), np.array([1.0, 0.5, 0.0])) == pytest.approx(0.5)


def test_curve_parameters_are_validated(linear):
    bundle, _, _ = linear
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(explainers.ParameterError, match="substrate 'noise'"):
        deletion_curve(bundle, image, np.zeros((4, 4)), substrate="noise")
    with pytest.raises(explainers.ParameterError, match=r"fraction must be in \(0, 1\]"):
        deletion_curve(bundle, image, np.zeros((4, 4)), step=1.5)
    with pytest.raises(explainers.ParameterError, match="2-D attribution"):
        insertion_curve(bundle, image, np.zeros((4, 4, 3)))
    with pytest.raises(explainers.ParameterError, match="mask has shape"):
        evaluate_maps(bundle, image, {"a": np.zeros((4, 4))}, mask=np.zeros((3, 3), bool))


@pytest.fixture(scope="module")
def fresh_honest():
    return generate_dataset(6, FRESH_SEED)


def test_oracle_beats_random_and_a_constant_map_scores_chance(demo_bundle, fresh_honest):
    """The true object mask as a map must beat a random map; a constant map must score as a
    random one does (its ties are broken at random)."""
    per_image = []
    for image, mask, label in zip(
        fresh_honest["images"], fresh_honest["masks"], fresh_honest["labels"], strict=True
    ):
        maps = {"oracle": mask.astype(np.float32), "constant": np.ones(mask.shape, np.float32)}
        rows = evaluate_maps(
            demo_bundle, image, maps, target=int(label), mask=mask, step=0.04, seed=3
        )
        assert [row.name for row in rows] == ["oracle", "constant", "random"]
        assert len(rows[0].deletion.fractions) == 26
        per_image.append(rows)
    table = {row.name: row for row in aggregate(per_image)}
    for name, row in table.items():
        print(
            f"{name:>8}: deletion AUC {row.deletion_auc:.3f} ± {row.deletion_auc_sem:.3f}, "
            f"insertion AUC {row.insertion_auc:.3f} ± {row.insertion_auc_sem:.3f}, "
            f"pointing {row.pointing:.2f}, energy {row.energy:.3f} ({row.n_images} images)"
        )
    oracle, random_row, constant = table["oracle"], table["random"], table["constant"]
    # Per image, not just on average.
    for rows in per_image:
        by_name = {row.name: row for row in rows}
        assert by_name["oracle"].deletion_auc < by_name["random"].deletion_auc
        assert by_name["oracle"].insertion_auc > by_name["random"].insertion_auc
    assert oracle.pointing == 1.0 and oracle.energy == 1.0
    assert random_row.pointing <= 0.5  # chance is the object's area, about 7%
    assert abs(constant.deletion_auc - random_row.deletion_auc) < 0.05
    assert abs(constant.insertion_auc - random_row.insertion_auc) < 0.05


def test_a_black_deletion_substrate_rewards_missing_the_object(demo_bundle, fresh_honest):
    """Why deletion defaults to blur: filled with black, the deleted shape's silhouette still says
    "star", while random black specks confuse the model sooner — the oracle loses to random."""
    oracle_auc, random_auc = [], []
    for image, mask, label in zip(
        fresh_honest["images"], fresh_honest["masks"], fresh_honest["labels"], strict=True
    ):
        common = {"target": int(label), "step": 0.04, "substrate": "constant", "value": 0.0}
        oracle_auc.append(deletion_curve(demo_bundle, image, mask.astype(np.float32), **common).auc)
        random_auc.append(deletion_curve(demo_bundle, image, random_map(mask.shape), **common).auc)
    print(f"black deletion: oracle {np.mean(oracle_auc):.3f}, random {np.mean(random_auc):.3f}")
    assert np.mean(oracle_auc) > np.mean(random_auc)
