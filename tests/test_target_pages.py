"""The dashboard explains more than one class of a classifier (issue 15): an uploaded
segmentation model (class and region), a multi-label model (any label, every label's
probability) and a regression model (what increases or decreases the value), on the Explain,
Compare, Evaluate and Robustness pages, through ``streamlit.testing.v1.AppTest``.

A click on a shape and a drawn box need a real browser (Plotly selection events): see
tests/test_browser.py. Here the region is the class's predicted pixels or the whole image.
"""

from __future__ import annotations

import numpy as np
import pytest

from .dashboard_helpers import APP, MODEL_SIDE, build_assets
from .test_pages import assert_clean, texts

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
TIMEOUT = 180


def tiny_segmenter():
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((MODEL_SIDE, MODEL_SIDE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(inputs)
    x = keras.layers.Conv2D(3, 1, name="seg_logits")(x)
    outputs = keras.layers.Activation("softmax", name="segmentation")(x)
    model = keras.Model(inputs, outputs, name="tiny_segmenter")
    # A bias that favours class 1, so that a predicted region exists.
    kernel, _ = model.get_layer("seg_logits").get_weights()
    model.get_layer("seg_logits").set_weights([kernel, np.array([0.0, 0.5, -0.5], np.float32)])
    return model


def tiny_multilabel():
    import keras

    keras.utils.set_random_seed(6)
    inputs = keras.Input((MODEL_SIDE, MODEL_SIDE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, activation="sigmoid", name="labels")(x)
    return keras.Model(inputs, outputs, name="tiny_multilabel")


def tiny_regressor():
    import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input((MODEL_SIDE, MODEL_SIDE, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="last_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="value")(x), name="tiny_regressor")
    model.compile(optimizer="sgd", loss="mse")  # the saved loss says "regression"
    return model


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = build_assets(tmp_path_factory.mktemp("assets"))
    models = folder / "models"
    tiny_segmenter().save(models / "zz_segmenter.keras")
    (models / "zz_segmenter_labels.txt").write_text("background\nblob\nrest\n")
    tiny_multilabel().save(models / "zz_multilabel.keras")
    tiny_regressor().save(models / "zz_regressor.keras")
    (models / "zz_regressor_labels.txt").write_text("value\n")
    return folder


@pytest.fixture
def app(assets, monkeypatch):
    monkeypatch.setenv("EXPLAINER_ASSETS_DIR", str(assets))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert_clean(at)
    return at


def _load_demo(app, name: str) -> None:
    app.selectbox(key="sidebar_demo_model").select(name).run()
    assert_clean(app)
    assert app.session_state["active_model"].ref.file_name == name


def test_segmentation_region_on_explain_and_evaluate(app):
    _load_demo(app, "zz_segmenter.keras")
    model = app.session_state["active_model"]
    assert model.task == "segmentation" and model.class_names == ("background", "blob", "rest")
    # The region picker: class (default: the largest non-background class), region mode.
    (picker,) = [s for s in app.selectbox if s.label == "Class to explain"]
    assert picker.value == -1  # the main predicted class, following the image
    main = picker.options[picker.index]
    assert main.startswith("Main predicted class — ") and "background" not in main
    markdown = texts(app.markdown)
    assert "**Target:** sum of" in markdown and "logits over its predicted pixels" in markdown
    assert "region's mean p" in markdown
    # The whole image, as the mean of the logits.
    app.radio(key="explain_seg_region_mode").set_value("all").run()
    app.toggle(key="explain_seg_reduce").set_value(True).run()
    assert_clean(app)
    assert "mean of" in texts(app.markdown) and "over the whole image" in texts(app.markdown)
    # Waiting for a click: the page says what to do, and computes nothing.
    app.radio(key="explain_seg_region_mode").set_value("component").run()
    assert_clean(app)
    assert "click a shape" in texts(app.info).lower()
    # Evaluate: the region is the ground truth (energy in it is scored).
    app.radio(key="explain_seg_region_mode").set_value("predicted").run()
    app.switch_page("app_pages/evaluate.py").run()
    assert_clean(app)
    app.radio(key="evaluate_ground_truth").set_value("none").run()
    assert_clean(app)
    assert "the region being explained is the ground truth" in texts(app.caption)
    table = "\n".join(str(df.value) for df in app.dataframe)
    assert "Energy" in table or "energy" in table.lower()


def test_segmentation_on_compare_and_robustness(app):
    _load_demo(app, "zz_segmenter.keras")
    app.switch_page("app_pages/compare.py").run()
    assert_clean(app)
    assert "What to explain" in texts(app.markdown)
    app.switch_page("app_pages/robustness.py").run()
    assert_clean(app)
    # The attack reads the region's class: its predictions are the region's mean probabilities.
    verdict = texts(app.success) + texts(app.warning)
    assert "→" in verdict


def test_multilabel_any_label(app):
    _load_demo(app, "zz_multilabel.keras")
    model = app.session_state["active_model"]
    assert model.task == "multilabel"
    (picker,) = [s for s in app.selectbox if s.label == "Label to explain"]
    assert len(picker.options) == 3 and all("p = " in o for o in picker.options)
    other = (picker.value + 1) % 3
    picker.select(other).run()
    assert_clean(app)
    assert f"**Target:** label {model.class_names[other]}" in texts(app.markdown)
    # Every label with its own probability in the table.
    frames = [df.value for df in app.dataframe]
    assert any(len(df) == 3 and "Label" in df.columns for df in frames)


def test_regression_direction(app):
    _load_demo(app, "zz_regressor.keras")
    model = app.session_state["active_model"]
    assert model.task == "regression"
    assert "what increases value" in texts(app.markdown)
    app.radio(key="explain_regression_direction").set_value("decrease").run()
    assert_clean(app)
    assert "what decreases value" in texts(app.markdown)
    app.switch_page("app_pages/robustness.py").run()
    assert_clean(app)
    assert "regression output has none" in texts(app.info)
