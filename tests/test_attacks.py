"""FGSM and PGD: exact steps on a linear model, and their strength on the demo model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

import explainers
from explainers.evaluation.attacks import attack, preprocessing_affine
from explainers.io.demo_data import generate_dataset

from .models_zoo import functional_softmax, sequential_flatten

# Seeds never used for training or validation by assets/make_demo_models.py (0-3, 10, 20, 100,
# 200) nor by the other demo-model tests.
FRESH_SEED = 20_261_127 + 101
RNG = np.random.default_rng(7)


def linear_softmax_model(seed: int = 3) -> tuple[keras.Model, np.ndarray]:
    """(4, 4, 1) → Flatten → Dense(2, softmax) with fixed weights: ∂L/∂x ∝ W[:, other] − W[:, y]."""
    inp = keras.Input((4, 4, 1))
    out = keras.layers.Dense(2, activation="softmax", name="out")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    kernel = np.random.default_rng(seed).normal(size=(16, 2)).astype(np.float32)
    model.get_layer("out").set_weights([kernel, np.zeros(2, np.float32)])
    return model, kernel


@pytest.mark.parametrize("preprocessing", ["0_1", "-1_1", "caffe", "torch", "none"])
def test_preprocessing_is_recovered_as_an_affine_map(preprocessing):
    for build in (functional_softmax, sequential_flatten):  # RGB and grayscale (luma) inputs
        bundle = explainers.bundle_from_model(build(), preprocessing=preprocessing)
        matrix, offset = preprocessing_affine(bundle)
        pixels = RNG.uniform(0, 255, (5, 7, 3)).astype(np.float32)
        np.testing.assert_allclose(
            pixels @ matrix.T + offset, bundle.preprocess(pixels), rtol=1e-5, atol=1e-4
        )


def test_fgsm_on_a_linear_model_is_one_exact_signed_step():
    model, kernel = linear_softmax_model()
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    gray = RNG.integers(0, 256, (4, 4)).astype(np.uint8)
    image = np.repeat(gray[:, :, None], 3, axis=2)
    y = int(np.argmax(bundle.predict(image)))
    other = 1 - y
    # Cross-entropy of class y on logits x·W: ∂L/∂x = (p − e_y)·Wᵀ ∝ W[:, other] − W[:, y]; the luma
    # weights and 1/255 are positive, so every RGB channel of a pixel moves the same way.
    direction = np.sign(kernel[:, other] - kernel[:, y]).reshape(4, 4, 1)
    expected = np.clip(image.astype(np.int64) + 3 * direction, 0, 255).astype(np.uint8)

    result = attack(bundle, image, "fgsm", epsilon=3)
    np.testing.assert_array_equal(result.image, expected)
    np.testing.assert_array_equal(result.perturbation, expected.astype(np.float32) - image)
    assert result.linf <= 3 and result.steps == 1 and result.target is None
    assert result.losses[1] > result.losses[0]  # the step raised the loss of class y
    # With two classes, pushing towards the other class is the same step.
    targeted = attack(bundle, image, "fgsm", epsilon=3, target=other)
    np.testing.assert_array_equal(targeted.image, expected)
    assert targeted.losses[1] < targeted.losses[0]  # it lowered the loss of the target


def test_pgd_projects_onto_the_integer_ball_and_is_seeded():
    model, _ = linear_softmax_model()
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    image = RNG.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    first = attack(bundle, image, "pgd", epsilon=2.5, steps=7, step_size=1.0, seed=4)
    again = attack(bundle, image, "pgd", epsilon=2.5, steps=7, step_size=1.0, seed=4)
    np.testing.assert_array_equal(first.image, again.image)
    assert first.steps == 7 and len(first.losses) == 8
    # Rounding x + 2.5 could step to 3 levels away; the returned image stays within floor(ε).
    assert first.linf <= 2
    assert np.all(np.abs(first.image.astype(int) - image) <= 2)


def test_attack_errors_name_the_bad_value():
    model, _ = linear_softmax_model()
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(explainers.ParameterError, match=r"did you mean 8"):
        attack(bundle, image, "fgsm", epsilon=8 / 255)
    with pytest.raises(explainers.ParameterError, match="unknown attack 'cw'"):
        attack(bundle, image, "cw", epsilon=4)  # type: ignore[arg-type]
    with pytest.raises(explainers.ParameterError, match="steps"):
        attack(bundle, image, "pgd", epsilon=4, steps=0)
    with pytest.raises(explainers.ParameterError, match="step_size"):
        attack(bundle, image, "pgd", epsilon=4, step_size=300)
    with pytest.raises(explainers.ParameterError, match="unknown class 'zebra'"):
        attack(bundle, image, "pgd", epsilon=4, target="zebra")


@pytest.fixture(scope="module")
def fresh_images():
    return generate_dataset(12, FRESH_SEED)


def test_attacks_change_the_demo_models_decision(demo_bundle, fresh_images):
    weights_before = [w.copy() for w in demo_bundle.model.get_weights()]
    # 8/255, the budget of Madry et al.'s CIFAR-10 experiments. Measured on 40 fresh images:
    # FGSM flips 65% at 4/255 and 90% at 8/255, PGD-10 90% and 100%.
    epsilon = 8.0
    fgsm, pgd, targeted = [], [], []
    for image, label in zip(fresh_images["images"], fresh_images["labels"], strict=True):
        one = attack(demo_bundle, image, "fgsm", epsilon=epsilon)
        many = attack(demo_bundle, image, "pgd", epsilon=epsilon, steps=10, seed=0)
        goal = int((label + 1) % 4)
        towards = attack(demo_bundle, image, "pgd", epsilon=epsilon, steps=10, target=goal)
        for result in (one, many, towards):
            # The returned uint8 image is within ε of the original, and "after" is its prediction.
            assert result.image.dtype == np.uint8 and result.image.shape == image.shape
            assert np.abs(result.image.astype(int) - image.astype(int)).max() <= result.epsilon
            assert result.after[0][0] == int(np.argmax(demo_bundle.predict(result.image)))
        fgsm.append(one.flipped)
        pgd.append(many.flipped)
        targeted.append(towards.reached_target)
    print(
        f"demo model, {len(fgsm)} fresh images, ε=8/255: flip rate FGSM {np.mean(fgsm):.2f}, "
        f"PGD-10 {np.mean(pgd):.2f}; targeted PGD-10 reaches the target {np.mean(targeted):.2f}"
    )
    assert np.mean(fgsm) > 0.5
    assert np.mean(pgd) >= max(np.mean(fgsm), 0.9)
    assert np.mean(targeted) > 0.75
    for before, after in zip(weights_before, demo_bundle.model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


def test_attack_returns_the_original_size(demo_bundle, fresh_images):
    image = np.asarray(Image.fromarray(fresh_images["images"][0]).resize((150, 110)))
    result = attack(demo_bundle, image, "pgd", epsilon=6, steps=5)
    assert result.image.shape == (110, 150, 3) and result.perturbation.shape == (110, 150, 3)
    assert result.perturbation.dtype == np.float32
    assert result.linf == float(np.abs(result.perturbation).max()) <= 6
    assert result.l2 == pytest.approx(float(np.sqrt((result.perturbation**2).sum())), rel=1e-6)
    assert result.before[0][0] == result.original_class
    assert [c for c, _, _ in result.after] == [c for c, _, _ in demo_bundle.top_k(result.image)]
