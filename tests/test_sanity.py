"""The model-parameter randomisation test (Adebayo et al. 2018) on copies of the model."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest
from PIL import Image

import explainers
from explainers.evaluation.sanity import (
    blocks_required,
    model_randomisation_test,
    randomised_copy,
    rank_average,
    spearman,
    steps_held,
    weighted_blocks,
)
from explainers.io.demo_data import generate_dataset
from explainers.io.models import layer_object
from explainers.registry import REGISTRY, MethodSpec

from .conftest import ROOT
from .models_zoo import nested_base, random_image, seeded

# Seeds never used for training or validation by assets/make_demo_models.py (0-3, 10, 20, 100,
# 200) nor by the other demo-model tests.
FRESH_SEED = 20_261_127 + 303


def test_spearman_uses_average_ranks_for_ties():
    np.testing.assert_array_equal(rank_average(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])
    a = np.array([0.1, 0.4, 0.4, 2.0, 5.0])
    assert spearman(a, a**3 + 7) == pytest.approx(1.0)  # any increasing transform
    assert spearman(a, -a) == pytest.approx(-1.0)
    # Ranks (1, 2.5, 2.5, 4, 5) against (2, 1, 3, 5, 4), correlated by hand: 7 / sqrt(9.5 · 10).
    b = np.array([2.0, 1.0, 3.0, 5.0, 4.0])
    assert spearman(a, b) == pytest.approx(7 / np.sqrt(9.5 * 10))
    assert np.isnan(spearman(np.zeros(5), b))  # a constant map has no ranking


def test_demo_model_blocks_run_from_the_output_and_keep_batchnorm_with_its_conv(demo_bundle):
    blocks = weighted_blocks(demo_bundle)
    assert [block.name for block in blocks] == [
        "predictions",
        "last_conv",
        "conv3",
        "conv2",
        "conv1",
    ]
    assert blocks[2].paths == ("conv3", "bn3")


def test_randomised_copies_leave_the_users_model_alone():
    bundle = explainers.bundle_from_model(nested_base(), preprocessing="0_1")
    before = [w.copy() for w in bundle.model.get_weights()]
    paths = ("head", "base/block2_conv")
    copy = randomised_copy(bundle, paths, seed=5)
    again = randomised_copy(bundle, paths, seed=5)
    assert copy.model is not bundle.model
    for original, after in zip(before, bundle.model.get_weights(), strict=True):
        np.testing.assert_array_equal(original, after)
    changed = {"head", "base/block2_conv"}
    for info in bundle.layers:
        if info.is_model or info.n_params == 0:
            continue
        mine = copy.layer(info.path)
        assert mine.path == info.path
        new = [np.asarray(w) for w in layer_object(copy.model, info.path).get_weights()]
        old = [np.asarray(w) for w in layer_object(bundle.model, info.path).get_weights()]
        seeded = [np.asarray(w) for w in layer_object(again.model, info.path).get_weights()]
        kernels_equal = np.array_equal(new[0], old[0])
        assert kernels_equal == (info.path not in changed), info.path
        for n, s in zip(new, seeded, strict=True):
            np.testing.assert_array_equal(n, s)  # the same seed gives the same copy
    # Nothing randomised: the copy predicts exactly what the original does.
    image = random_image(40, 48, seed=2)
    np.testing.assert_array_equal(
        randomised_copy(bundle, (), seed=0).predict(image), bundle.predict(image)
    )
    # The whole test through a nested sub-model, one block at a time.
    result = model_randomisation_test(bundle, image, "vanilla_gradients", mode="independent")
    assert result.randomised == (("head",), ("base/block2_conv",), ("base/block1_conv",))
    assert len(result.correlations["vanilla_gradients"]) == 3
    assert result.verdict("vanilla_gradients").startswith("vanilla_gradients: ")
    for original, after in zip(before, bundle.model.get_weights(), strict=True):
        np.testing.assert_array_equal(original, after)


def test_sanity_arguments_are_checked(demo_bundle):
    image = np.zeros((96, 96, 3), np.uint8)
    with pytest.raises(explainers.ParameterError, match="mode"):
        model_randomisation_test(demo_bundle, image, "grad_cam", mode="shuffle")  # type: ignore[arg-type]
    with pytest.raises(explainers.ParameterError, match="not among the tested methods"):
        model_randomisation_test(demo_bundle, image, "grad_cam", params={"smoothgrad": {}})
    with pytest.raises(explainers.ParameterError, match="unknown method"):
        model_randomisation_test(demo_bundle, image, ["grad_cam", "no_such_method"], max_steps=1)
    for bad in (0, 1.5, -0.5):
        with pytest.raises(explainers.ParameterError, match="top_fraction"):
            model_randomisation_test(demo_bundle, image, "grad_cam", top_fraction=bad)


# ------------------------------------------------------------------------------------------------
# The verdict: how long the map stays similar from the output side
# ------------------------------------------------------------------------------------------------
def test_steps_held_counts_the_leading_run_above_the_threshold():
    assert steps_held([0.9, 0.8, 0.4, 0.9, 0.9], 0.5) == 2  # a later recovery does not count
    assert steps_held([0.5, 0.9], 0.5) == 0  # "above" is strict
    assert steps_held([0.9, float("nan"), 0.9], 0.5) == 1  # a map gone flat did change
    assert steps_held([0.6, 0.7], 0.5) == 2
    assert steps_held([], 0.5) == 0
    assert [blocks_required(k, 0.5) for k in (1, 2, 3, 4, 5, 7, 12)] == [1, 1, 2, 2, 3, 4, 6]
    assert blocks_required(5, 0.6) == 3 and blocks_required(5, 1.0) == 5
    assert blocks_required(5, 0.01) == 1


def five_block_model() -> keras.Model:
    """Five weighted blocks, output side first: out, hidden, conv3, conv2, conv1."""
    seeded(3)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="out")(x))


def depends_on_blocks_below(ignored_top: int) -> MethodSpec:
    """A "method" whose map is noise seeded by the weights of every block except the
    ``ignored_top`` output-side ones: randomising those leaves it identical (ρ = 1), randomising
    any other redraws it (ρ ≈ 0). ``ignored_top`` ≥ the number of blocks: it ignores the model's
    parameters altogether."""

    def compute(request):
        digest = hashlib.blake2b(digest_size=8)
        for block in weighted_blocks(request.bundle)[ignored_top:]:
            for path in block.paths:
                for weight in layer_object(request.bundle.model, path).get_weights():
                    digest.update(np.ascontiguousarray(weight).tobytes())
        rng = np.random.default_rng(int.from_bytes(digest.digest(), "little"))
        return rng.normal(size=request.x.shape[1:3]).astype(np.float32), {}

    return MethodSpec(
        name=f"test_ignores_top_{ignored_top}",
        label=f"Ignores the top {ignored_top} blocks",
        family="gradient",
        description="test double",
        reference="",
        reference_url="",
        cost="none",
        passes=lambda p, b: (0, 0),
        params=(),
        compute=compute,
    )


@pytest.fixture(scope="module")
def five_blocks():
    bundle = explainers.bundle_from_model(five_block_model(), preprocessing="0_1")
    assert [b.name for b in weighted_blocks(bundle)] == ["out", "hidden", "conv3", "conv2", "conv1"]
    return bundle


def test_verdict_judges_how_long_the_map_survives_the_cascade(five_blocks, monkeypatch):
    """Maps whose dependence on the weights is known by construction: one ignoring every
    parameter is flagged, one that changes at the first step is not, and the top-half boundary
    (3 of 5 blocks) sits where the rule says — whatever the last step shows."""
    specs = {k: depends_on_blocks_below(k) for k in (0, 2, 3, 5)}
    for spec in specs.values():
        monkeypatch.setitem(REGISTRY, spec.name, spec)
    names = [spec.name for spec in specs.values()]
    image = random_image(12, 12, seed=4)
    result = model_randomisation_test(five_blocks, image, names, target=0, seed=1)
    rho = {k: result.correlations[specs[k].name] for k in specs}
    # The construction did what it says: ρ = 1 while only ignored blocks are random, then ≈ 0.
    for k, values in rho.items():
        np.testing.assert_allclose(values[:k], 1.0)
        assert all(abs(v) < 0.3 for v in values[k:]), (k, values)
    assert result.required == 3 and result.total_blocks == 5 and result.top_fraction == 0.5
    held = {k: result.held_through[specs[k].name] for k in specs}
    assert held == {0: 0, 2: 2, 3: 3, 5: 5}
    assert {k: result.flagged[specs[k].name] for k in specs} == {
        0: False,  # changes at the first step
        2: False,  # survives 2 of 5: not the top half
        3: True,  # survives the top half (3 of 5) though its last-step ρ is ≈ 0
        5: True,  # ignores the parameters
    }
    assert "3 of the 5 weighted blocks" in result.rule and "above 0.5" in result.rule
    ignores = result.verdict(specs[5].name)
    assert ignores.startswith(f"{specs[5].name}: flagged — ")
    assert "top 5 of 5 weighted blocks" in ignores and "1.00, 1.00, 1.00, 1.00, 1.00" in ignores
    boundary = result.verdict(specs[3].name)
    assert boundary.startswith(f"{specs[3].name}: flagged — ") and "top 3 of 5" in boundary
    changes = result.verdict(specs[0].name)
    assert changes.startswith(f"{specs[0].name}: passes — ")
    assert "through 0 of 5" in changes and "as soon as out is randomised" in changes
    short = result.verdict(specs[2].name)
    assert "through 2 of 5" in short and "once conv3 is randomised too" in short
    assert "flagging needs 3" in short and "flagged" not in short
    # The share is a parameter: with top_fraction=1 only the map ignoring everything is flagged.
    strict = model_randomisation_test(five_blocks, image, names, target=0, seed=1, top_fraction=1.0)
    assert strict.required == 5
    assert [strict.flagged[n] for n in names] == [False, False, False, True]
    # With max_steps the top half of the tested blocks decides, and the rule says so.
    top_two = model_randomisation_test(five_blocks, image, names, target=0, seed=1, max_steps=2)
    assert top_two.required == 1 and top_two.total_blocks == 5
    assert [top_two.flagged[n] for n in names] == [False, True, True, True]
    assert "1 of the 2 output-side blocks tested; the model has 5" in top_two.rule
    # Independent mode keeps its rule: flagged only if no single block changes the map.
    alone = model_randomisation_test(five_blocks, image, names, target=0, mode="independent")
    assert [alone.held_through[n] for n in names] == [0, 2, 3, 5]
    assert [alone.flagged[n] for n in names] == [False, False, False, True]


def vgg_style(seed: int = 0) -> keras.Model:
    """An (untrained) VGG-style CNN: pairs of 3×3 ReLU convolutions with max pooling, the
    architecture family where guided backprop's maps are known to be set by the image, not the
    weights (Adebayo et al. 2018; Nie et al., ICML 2018). Seven weighted blocks."""
    seeded(seed)
    inp = keras.Input((64, 64, 3))
    x = inp
    for i, channels in enumerate((16, 16, 32, 32, 64, 64)):
        x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name=f"c{i + 1}")(x)
        if i % 2:
            x = keras.layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(4, name="predictions")(x))


def test_guided_backprop_is_flagged_where_it_survives_the_top_layers():
    """The textbook case: on a VGG-style CNN guided backprop's map keeps ρ ≈ 0.8–0.9 while the
    top four of seven blocks are randomised (flagged), vanilla gradients' drops below 0.1 at the
    first step and Grad-CAM's is at most ≈ 0.5 (not flagged). Reading only the last step, where
    conv1 is random too, guided backprop (ρ ≈ 0.25) would pass."""
    bundle = explainers.bundle_from_model(vgg_style(0), preprocessing="0_1")
    methods = ["guided_backprop", "grad_cam", "vanilla_gradients"]
    for name in ("shapes_star_0.png", "shapes_circle_1.png"):
        image = np.asarray(Image.open(ROOT / "assets" / "samples" / name).convert("RGB"))
        result = model_randomisation_test(bundle, image, methods, seed=0)
        for method in methods:
            print(
                f"{name} {method:>18}: |map| ρ {np.round(result.correlations[method], 2)}, "
                f"signed {np.round(result.signed_correlations[method], 2)}"
            )
        assert result.required == 4 and len(result.blocks) == 7
        gbp = result.correlations["guided_backprop"]
        assert result.held_through["guided_backprop"] >= 4
        assert result.flagged["guided_backprop"]
        assert gbp[-1] < 0.5  # the old last-step rule would have let it pass
        assert result.verdict("guided_backprop").startswith("guided_backprop: flagged — ")
        assert not result.flagged["grad_cam"] and not result.flagged["vanilla_gradients"]
        assert result.held_through["vanilla_gradients"] == 0
        assert result.verdict("grad_cam").startswith("grad_cam: passes — ")


def test_cascading_randomisation_on_the_demo_model(demo_bundle):
    """On the 5-block demo CNN guided backprop is *not* insensitive to the top layers by the
    paper's measure: its absolute map's ρ falls to ≤ 0.45 once the top three blocks are random
    (36 runs, explainers/evaluation/sanity.py), so it holds through fewer than the 3 blocks that
    flag, and no method is flagged. It is still the least sensitive of the three: its signed map
    keeps ρ > 0.4 with the top three blocks random, where vanilla gradients' is ≈ 0."""
    weights = [w.copy() for w in demo_bundle.model.get_weights()]
    data = generate_dataset(4, FRESH_SEED)
    methods = ["guided_backprop", "vanilla_gradients", "grad_cam"]
    for image, label in zip(data["images"], data["labels"], strict=True):
        calls: list[float] = []
        result = model_randomisation_test(
            demo_bundle,
            image,
            methods,
            target=int(label),
            seed=0,
            progress=lambda f, m, calls=calls: calls.append(f),
        )
        assert result.target == int(label)
        assert [len(result.correlations[m]) for m in methods] == [5, 5, 5]
        assert result.randomised[-1] == (
            "predictions", "last_conv", "conv3", "bn3", "conv2", "bn2", "conv1", "bn1"
        )  # fmt: skip
        assert result.maps["grad_cam"][0].shape == image.shape[:2]
        for method in methods:
            print(
                f"{method:>18}: |map| ρ per step {np.round(result.correlations[method], 2)}, "
                f"signed {np.round(result.signed_correlations[method], 2)}"
            )
            print(result.verdict(method))
        assert result.required == 3
        assert result.flagged == {m: False for m in methods}
        assert result.held_through["guided_backprop"] < 3
        assert result.correlations["guided_backprop"][2] <= 0.5
        # The least sensitive all the same: the signed map survives the top three blocks.
        assert result.signed_correlations["guided_backprop"][2] > 0.3
        assert max(abs(v) for v in result.signed_correlations["vanilla_gradients"][2:]) < 0.1
        assert len(calls) == 15 and calls == sorted(calls) and calls[-1] == pytest.approx(1.0)
    for before, after in zip(weights, demo_bundle.model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
