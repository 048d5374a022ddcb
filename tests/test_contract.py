"""Every registered method × every model shape users bring: the API contract holds."""

from __future__ import annotations

import numpy as np
import pytest

import explainers
from explainers.registry import REGISTRY, available_methods

from .models_zoo import ZOO, random_image

METHODS = [m.name for m in available_methods()]
#: Each method's quick parameters, from its spec (fewer samples, coarser patches: the same code
#: paths, faster).
FAST = {m.name: dict(m.spec.fast_params) for m in available_methods()}


def test_registry_names_match_the_design():
    assert set(METHODS) == {
        "vanilla_gradients",
        "gradient_x_input",
        "smoothgrad",
        "integrated_gradients",
        "guided_backprop",
        "occlusion",
        "rise",
        "lime",
        "kernel_shap",
        "cam",
        "grad_cam",
        "grad_cam_plus_plus",
        "score_cam",
        "layer_cam",
        "guided_grad_cam",
    }


@pytest.mark.parametrize("method", METHODS)
def test_spec_is_complete(method):
    spec = REGISTRY[method]
    assert spec.label and spec.description and spec.reference and spec.cost and spec.formula
    assert spec.reference_url.startswith("https://")
    assert spec.family in ("gradient", "perturbation", "cam")
    for param in spec.params:
        # the default must pass its own validation
        assert param.coerce(param.default) == param.default
        if param.kind in ("int", "float"):
            assert param.low is not None and param.high is not None
        if param.kind == "choice":
            assert param.default in param.choices
    defaults = spec.resolve_params({})
    forwards, backwards = spec.passes(defaults, None)
    assert forwards >= 0 and backwards >= 0


@pytest.mark.parametrize("model_name", list(ZOO))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_every_model(zoo_bundles, model_name, method):
    bundle = zoo_bundles[model_name]
    info = next(m for m in available_methods(bundle) if m.name == method)
    image = random_image(45, 70, seed=3)  # non-square, not the model's size
    if not info.applicable:
        assert info.reason  # says why
        with pytest.raises(explainers.MethodNotApplicableError, match="cannot be used"):
            explainers.explain(bundle, image, method, **FAST.get(method, {}))
        return
    result = explainers.explain(bundle, image, method, **FAST.get(method, {}))
    assert result.attribution.shape == (45, 70)
    assert result.attribution.dtype == np.float32
    assert np.all(np.isfinite(result.attribution))
    assert result.method == method
    assert 0 <= result.target < bundle.n_classes
    assert result.label == bundle.class_names[result.target]
    assert 0.0 <= result.score <= 1.0
    probs = bundle.predict(image)
    assert result.target == int(np.argmax(probs))  # target=None means top-1
    assert result.score == pytest.approx(probs[result.target], rel=1e-5)
    assert set(result.params) == {p.name for p in REGISTRY[method].params}
    if REGISTRY[method].uses_layer:
        assert result.layer == bundle.default_layer
    else:
        assert result.layer is None
    # a map that is identically zero explains nothing: every applicable method must respond
    assert np.abs(result.model_attribution).max() > 0


def test_cam_applicability_reasons(zoo_bundles):
    flat = {m.name: m for m in available_methods(zoo_bundles["sequential_flatten"])}
    assert not flat["cam"].applicable
    assert "GlobalAveragePooling2D" in flat["cam"].reason
    assert flat["grad_cam"].applicable
    nested = {m.name: m for m in available_methods(zoo_bundles["nested_base"])}
    assert nested["cam"].applicable


@pytest.mark.parametrize("method", ["grad_cam", "occlusion", "smoothgrad"])
def test_explicit_target_and_class_name(zoo_bundles, method):
    bundle = zoo_bundles["functional_softmax"]
    image = random_image(32, 32)
    by_index = explainers.explain(bundle, image, method, target=2, **FAST.get(method, {}))
    by_name = explainers.explain(bundle, image, method, target="class 2", **FAST.get(method, {}))
    assert by_index.target == by_name.target == 2
    np.testing.assert_array_equal(by_index.attribution, by_name.attribution)


def test_bad_inputs_raise_typed_errors(zoo_bundles):
    bundle = zoo_bundles["functional_softmax"]
    image = random_image(32, 32)
    with pytest.raises(explainers.ParameterError, match="unknown method 'gradcam'"):
        explainers.explain(bundle, image, "gradcam")
    with pytest.raises(explainers.ParameterError, match=r"out of range.*3 classes"):
        explainers.explain(bundle, image, "grad_cam", target=7)
    with pytest.raises(explainers.ParameterError, match="steps must be ≥ 1"):
        explainers.explain(bundle, image, "integrated_gradients", steps=0)
    with pytest.raises(explainers.ParameterError, match="has no parameter 'radius'"):
        explainers.explain(bundle, image, "occlusion", radius=3)
    with pytest.raises(explainers.ParameterError, match="no layer named 'nope'"):
        explainers.explain(bundle, image, "grad_cam", layer="nope")
    with pytest.raises(explainers.ParameterError, match="spatial"):
        explainers.explain(bundle, image, "grad_cam", layer="predictions")
    with pytest.raises(explainers.ParameterError, match="does not use a layer"):
        explainers.explain(bundle, image, "vanilla_gradients", layer="conv2")
    with pytest.raises(explainers.ParameterError, match="engine"):
        explainers.explain(bundle, image, "score_cam", engine="tf_explain")
    with pytest.raises(explainers.ImageError, match="shape"):
        explainers.explain(bundle, np.zeros((4, 4, 5), np.uint8), "grad_cam")


def test_progress_is_reported_for_long_methods(zoo_bundles):
    bundle = zoo_bundles["functional_softmax"]
    seen: list[float] = []
    explainers.explain(
        bundle,
        random_image(32, 32),
        "occlusion",
        patch_size=4,
        stride=2,
        batch_size=16,
        progress=lambda f, msg: seen.append(f),
    )
    assert len(seen) >= 5  # one report per batch of patches, then "done"
    assert seen == sorted(seen) and seen[-1] == 1.0
