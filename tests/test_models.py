"""Loading the models users bring: formats, structures, preprocessing, labels, bad files."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest

import explainers
from explainers.io.models import detect_preprocessing, read_labels

from . import models_zoo
from .models_zoo import random_image


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("name", ["functional_softmax", "sequential_flatten", "nested_base"])
def test_round_trip_through_a_file(tmp_path, suffix, name):
    model = models_zoo.ZOO[name]()
    path = tmp_path / f"model{suffix}"
    model.save(path)
    bundle = explainers.load_model(path)
    assert bundle.source == path.name and len(bundle.sha256) == 64
    image = random_image(50, 50)
    original = explainers.bundle_from_model(model)
    np.testing.assert_allclose(bundle.predict(image), original.predict(image), rtol=1e-5)
    a = explainers.explain(bundle, image, "grad_cam")
    b = explainers.explain(original, image, "grad_cam")
    np.testing.assert_allclose(a.attribution, b.attribution, rtol=1e-4, atol=1e-7)


def test_nested_base_layers_are_reachable(zoo_bundles):
    bundle = zoo_bundles["nested_base"]
    assert bundle.default_layer == "base/block2_relu"  # found inside the nested model
    assert "base/block1_conv" in bundle.spatial_layers
    assert bundle.cam_head.feature_layer == "base/block2_relu"
    image = random_image(40, 48)
    deep = explainers.explain(bundle, image, "grad_cam", layer="base/block1_conv")
    assert deep.layer == "base/block1_conv"
    assert deep.model_attribution.shape == (40, 48)  # block1 runs at full resolution
    by_bare_name = explainers.explain(bundle, image, "grad_cam", layer="block1_conv")
    np.testing.assert_array_equal(by_bare_name.attribution, deep.attribution)


def test_nested_keras_application_base():
    base = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(64, 64, 3), alpha=0.35
    )
    model = keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5),
        ]
    )
    bundle = explainers.bundle_from_model(model)
    assert bundle.preprocessing == "-1_1"
    assert "MobileNetV2" in bundle.preprocessing_reason
    assert bundle.default_layer.endswith("/out_relu")
    assert bundle.output_kind == "logits"
    image = random_image(64, 64)
    for method in ("grad_cam", "cam", "guided_backprop", "layer_cam"):
        result = explainers.explain(bundle, image, method)
        assert np.isfinite(result.attribution).all()
    inner = explainers.explain(bundle, image, "grad_cam", layer=f"{base.name}/block_6_expand_relu")
    assert inner.model_attribution.shape == (8, 8)


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        (lambda: keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3)), "caffe"),
        (lambda: keras.applications.DenseNet121(weights=None, input_shape=(64, 64, 3)), "torch"),
        (lambda: keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3)), "none"),
        (
            lambda: keras.applications.VGG16(
                weights=None, include_top=False, input_shape=(64, 64, 3)
            ),
            "caffe",
        ),
        (models_zoo.with_rescaling, "none"),
        (models_zoo.functional_softmax, "0_1"),
    ],
)
def test_preprocessing_is_detected(builder, expected):
    model = builder()
    layers, _ = explainers.core.graph.describe_layers(
        model, np.zeros((1, *model.inputs[0].shape[1:]), np.float32)
    )
    mode, reason = detect_preprocessing(layers)
    assert mode == expected, reason


def test_preprocessing_modes_match_keras_applications():
    pixels = random_image(8, 8).astype(np.float32)
    from explainers.io.models import apply_preprocessing

    for mode, module in (
        ("caffe", keras.applications.resnet50),
        ("-1_1", keras.applications.mobilenet_v2),
        ("torch", keras.applications.densenet),
    ):
        expected = module.preprocess_input(pixels.copy())
        np.testing.assert_allclose(
            apply_preprocessing(pixels, mode), expected, rtol=1e-5, atol=1e-4
        )


def test_grayscale_and_non_square_inputs(zoo_bundles):
    gray = zoo_bundles["sequential_flatten"]
    assert gray.channels == 1 and gray.input_size == (28, 28)
    assert gray.model_input(random_image(60, 30)).shape == (1, 28, 28, 1)
    binary = zoo_bundles["binary_sigmoid"]
    assert binary.input_size == (24, 40) and binary.n_classes == 2
    result = explainers.explain(binary, random_image(100, 50), "grad_cam", target=0)
    assert result.attribution.shape == (100, 50)


def test_labels_from_txt_json_and_list(tmp_path, zoo_bundles):
    txt = tmp_path / "labels.txt"
    txt.write_text("cat\ndog\n\nbird\n")
    assert read_labels(txt, 3) == ["cat", "dog", "bird"]
    js = tmp_path / "labels.json"
    js.write_text(json.dumps({"0": ["n1", "cat"], "1": ["n2", "dog"], "2": ["n3", "bird"]}))
    assert read_labels(js, 3) == ["cat", "dog", "bird"]
    assert read_labels(json.dumps(["a", "b", "c"]).encode(), 3) == ["a", "b", "c"]
    with pytest.raises(explainers.ParameterError, match="has 2 class names but the model has 3"):
        read_labels(b"a\nb\n", 3)
    with pytest.raises(explainers.ParameterError, match="does not parse"):
        read_labels(b"{not json", 3)
    model = models_zoo.functional_softmax()
    bundle = explainers.bundle_from_model(model, labels=["cat", "dog", "bird"])
    assert bundle.class_names == ("cat", "dog", "bird")


def test_imagenet_names_are_built_in():
    from explainers.io.models import default_class_names

    names = default_class_names(1000)
    assert len(names) == 1000 and names[0] == "tench" and names[207] == "golden retriever"


def test_bad_model_files_give_clear_errors(tmp_path):
    with pytest.raises(explainers.ModelLoadError, match="no model file"):
        explainers.load_model(tmp_path / "missing.keras")
    text = tmp_path / "model.txt"
    text.write_text("hello")
    with pytest.raises(explainers.ModelLoadError, match=r"expected a \.keras, \.h5"):
        explainers.load_model(text)
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(explainers.ModelLoadError, match="damaged or truncated"):
        explainers.load_model(corrupt)
    # A file that passes the safety inspection but that Keras cannot build (a Conv2D with -3
    # filters): Keras' own reason, wrapped in a ModelLoadError.
    model = models_zoo.functional_softmax()
    model.save(tmp_path / "good.keras")
    with zipfile.ZipFile(tmp_path / "good.keras") as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    config = json.loads(entries["config.json"])
    config["config"]["layers"][1]["config"]["filters"] = -3
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "bad_args.keras", "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    with pytest.raises(explainers.ModelLoadError, match="could not be loaded as a Keras model"):
        explainers.load_model(tmp_path / "bad_args.keras")


def test_models_the_methods_cannot_use(tmp_path):
    """Each kind of model the methods cannot explain is refused with a message that says why —
    in memory and, for one of them, through a saved file (the file passes the safety inspection:
    it is honest, just not an image classifier)."""
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    two_inputs = keras.Model(
        [a, b], keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Add()([a, b])))
    )
    with pytest.raises(explainers.UnsupportedModelError, match="2 inputs"):
        explainers.bundle_from_model(two_inputs)
    tabular = keras.Sequential([keras.Input((20,)), keras.layers.Dense(3)])
    with pytest.raises(
        explainers.UnsupportedModelError,
        match=r"got \(None, 20\): this does not look like an image",
    ):
        explainers.bundle_from_model(tabular)
    tabular.save(tmp_path / "tabular.keras")
    with pytest.raises(explainers.UnsupportedModelError, match="does not look like an image"):
        explainers.load_model(tmp_path / "tabular.keras")
    inp = keras.Input((16, 16, 3))
    # A per-pixel output is a segmentation map now (tests/test_targets.py); a per-token or
    # per-box output (rank 3) is still refused, with what is supported.
    segmentation = keras.Model(inp, keras.layers.Conv2D(2, 1)(inp))
    assert explainers.bundle_from_model(segmentation).task == "segmentation"
    per_row = keras.Model(inp, keras.layers.Reshape((16, 48))(inp))
    with pytest.raises(
        explainers.UnsupportedModelError,
        match=r"output has shape \(16, 48\) .*Supported: a class-score vector",
    ):
        explainers.bundle_from_model(per_row)
    scalar_per_image = keras.Model(
        inp, keras.layers.Reshape(())(keras.layers.Dense(1)(keras.layers.Flatten()(inp)))
    )
    with pytest.raises(explainers.UnsupportedModelError, match=r"output has shape \(\)"):
        explainers.bundle_from_model(scalar_per_image)
    channels_5 = keras.Sequential(
        [keras.Input((8, 8, 5)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    with pytest.raises(explainers.UnsupportedModelError, match="1 \\(grayscale\\) or 3"):
        explainers.bundle_from_model(channels_5)


def test_a_single_linear_unit_is_read_as_a_binary_logit():
    """A (batch, 1) linear head is not refused: it is the binary classifier of Keras' transfer-
    learning tutorial (trained with from_logits=True), and a scalar regression head has the same
    structure, so the two cannot be told apart. It is explained as a binary logit z: class 1 is
    scored by z, class 0 by -z, so their gradients are exact negatives."""
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(1, name="score")(x))
    bundle = explainers.bundle_from_model(model)
    assert bundle.n_classes == 2 and bundle.output_kind == "logits"
    image = random_image(12, 12)
    z = float(keras.ops.convert_to_numpy(model(bundle.model_input(image)))[0, 0])
    np.testing.assert_allclose(
        bundle.predict(image), [1 / (1 + np.exp(z)), 1 / (1 + np.exp(-z))], rtol=1e-5
    )
    one = explainers.explain(bundle, image, "vanilla_gradients", target=1)
    zero = explainers.explain(bundle, image, "vanilla_gradients", target=0)
    np.testing.assert_allclose(zero.model_attribution, -one.model_attribution, rtol=1e-6)


def test_a_model_that_outputs_nan_cannot_be_explained(tmp_path):
    """NaN weights are no safety problem (the file loads) but no explanation is made from them."""
    model = models_zoo.functional_softmax()
    model.get_layer("predictions").set_weights(
        [np.full_like(w, np.nan) for w in model.get_layer("predictions").get_weights()]
    )
    model.save(tmp_path / "nan.keras")
    bundle = explainers.load_model(tmp_path / "nan.keras")
    with pytest.raises(explainers.ExplainerError, match="not a number"):
        bundle.predict(random_image(32, 32))  # no NaN probabilities shown to a user either
    for method in ("grad_cam", "vanilla_gradients", "occlusion"):
        with pytest.raises(explainers.ExplainerError, match="not a number"):
            explainers.explain(bundle, random_image(32, 32), method)


def test_multi_output_model_explains_the_chosen_output():
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    first = keras.layers.Dense(3, activation="softmax", name="species")(x)
    second = keras.layers.Dense(2, name="size")(x)
    model = keras.Model(inp, [first, second])
    default = explainers.bundle_from_model(model)
    assert default.output_index == 0 and default.n_classes == 3
    chosen = explainers.bundle_from_model(model, output_index=1)
    assert chosen.n_classes == 2 and chosen.output_kind == "logits"
    assert chosen.cam_head.dense_layer == "size"
    assert explainers.explain(chosen, random_image(16, 16), "cam").target in (0, 1)


def test_explaining_never_mutates_the_user_model(zoo_bundles):
    model = models_zoo.nested_base()
    before = [w.copy() for w in model.get_weights()]
    config = json.dumps(model.get_config(), default=str)
    activations = [getattr(layer, "activation", None) for layer in model.layers[0].layers]
    bundle = explainers.bundle_from_model(model)
    image = random_image(40, 48)
    for method in ("guided_backprop", "guided_grad_cam", "grad_cam", "vanilla_gradients"):
        explainers.explain(bundle, image, method)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert json.dumps(model.get_config(), default=str) == config
    assert [getattr(layer, "activation", None) for layer in model.layers[0].layers] == activations
    # the user's model still predicts probabilities (the softmax was not stripped from it)
    probs = keras.ops.convert_to_numpy(model(bundle.model_input(image)))
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_application_weights_offline_fail_clearly(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://example/weights.h5: None -- [Errno -3] "
            "Temporary failure in name resolution"
        )

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(explainers.ModelLoadError, match="no internet access"):
        explainers.load_application("MobileNetV2")
    with pytest.raises(explainers.ParameterError, match="unknown architecture"):
        explainers.load_application("AlexNet")
