"""Page tests: every dashboard page driven through ``streamlit.testing.v1.AppTest``.

The app is pointed at tiny stand-in assets (``dashboard_helpers.build_assets``) so the tests do not
depend on the trained demo models and run in seconds. ``service.compute_count`` proves which
interactions recompute an explanation and which only re-render a cached map.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from .dashboard_helpers import (
    APP,
    build_assets,
    png_bytes,
    sample_image,
    tiny_flatten_model,
    tiny_nested_model,
)

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
TIMEOUT = 120


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture
def app(assets, monkeypatch):
    """The app on its default page after the first run (demo model and first sample loaded)."""
    monkeypatch.setenv("EXPLAINER_ASSETS_DIR", str(assets))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert_clean(at)
    return at


def assert_clean(at) -> None:
    """No uncaught exception and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def service_predictions(model, image):
    from dashboard import service

    return service.predictions(model, image, k=model.n_classes)


def count(kind: str = "explain") -> int:
    from dashboard import service

    return service.compute_count(kind)


def test_no_legacy_pages_directory():
    # A pages/ folder next to app.py switches Streamlit into v1 multipage mode for deep links
    # (and for every AppTest rerun): the page would run without the sidebar. See app.py.
    assert not (APP.parent / "pages").exists()


# ------------------------------------------------------------------------------------------------
# Explain
# ------------------------------------------------------------------------------------------------
def test_explain_default_state_renders(app):
    assert [t.value for t in app.title] == ["Explain"]
    assert app.session_state["active_model"].ref.file_name == "tiny_standin.keras"
    assert app.session_state["active_image"].name == "shapes_circle_1"
    assert app.selectbox(key="explain_method").value == "grad_cam"
    assert "**Grad-CAM overlay**" in texts(app.markdown)
    assert len(app.get("plotly_chart")) == 1
    assert len(app.image) >= 3  # sidebar thumbnail, input, overlay
    assert app.selectbox(key="explain_grad_cam_layer").value == "last_conv"


def test_explain_method_change_updates_result(app):
    before = count("explain:occlusion")
    app.selectbox(key="explain_method").select("occlusion").run()
    assert_clean(app)
    assert "**Occlusion overlay**" in texts(app.markdown)
    assert count("explain:occlusion") == before + 1
    # Its parameters are generated from the ParamSpecs; advanced ones are there too.
    assert app.number_input(key="explain_occlusion_patch_size").value == 16
    assert app.number_input(key="explain_occlusion_batch_size").value == 0  # 0 = automatic
    # A compute parameter recomputes; the same parameters again come from the cache.
    app.number_input(key="explain_occlusion_patch_size").set_value(8).run()
    assert_clean(app)
    assert count("explain:occlusion") == before + 2
    app.number_input(key="explain_occlusion_patch_size").set_value(16).run()
    assert count("explain:occlusion") == before + 2


def test_explain_engine_choice(app):
    before = count("explain:grad_cam")
    app.radio(key="explain_grad_cam_engine").set_value("tf_explain").run()
    assert not app.exception
    assert count("explain:grad_cam") == before + 1
    assert not app.error and "**engine:** tf-explain" in texts(app.markdown)
    app.selectbox(key="explain_method").select("guided_backprop").run()
    assert app.get("radio") == [] or all(
        r.key != "explain_guided_backprop_engine" for r in app.radio
    )


def test_explain_target_class_is_selectable(app):
    (picker,) = [s for s in app.selectbox if s.label == "Class to explain"]
    assert picker.key.startswith("explain_target_")
    picker.select(2).run()
    assert_clean(app)
    assert "**Target:** triangle (class 2" in texts(app.markdown)
    # Another image: a new widget (its labels changed) that keeps the chosen class, labelled
    # with the new image's probability.
    app.selectbox(key="sidebar_sample").select("shapes_square_1").run()
    assert_clean(app)
    (picker,) = [s for s in app.selectbox if s.label == "Class to explain"]
    assert picker.value == 2
    model, image = app.session_state["active_model"], app.session_state["active_image"]
    p = {q.index: q.probability for q in service_predictions(model, image)}[2]
    assert picker.options[picker.index] == f"triangle ({p:.1%})"
    assert "**Target:** triangle (class 2" in texts(app.markdown)


def test_the_class_picker_follows_a_model_change(app, assets):
    """After loading another model, 'Class to explain' names the new model's top class and
    probability on the first render (it showed the previous model's for one render)."""
    import explainers

    from .dashboard_helpers import tiny_flatten_model

    path = assets / "other_model.keras"
    if not path.exists():
        tiny_flatten_model(seed=5).save(path)
    app.radio(key="sidebar_model_source").set_value("Upload a file").run()
    app.file_uploader(key="sidebar_model_upload").upload(
        path.name, path.read_bytes(), "application/octet-stream"
    ).run()
    assert_clean(app)
    probs = explainers.load_model(path).predict(app.session_state["active_image"].pixels)
    top = int(np.argmax(probs))
    (picker,) = [s for s in app.selectbox if s.label == "Class to explain"]
    names = app.session_state["active_model"].class_names
    assert picker.options[picker.index] == f"Top prediction — {names[top]} ({probs[top]:.1%})"


def test_explain_display_changes_do_not_recompute(app):
    explained, predicted = count(), count("predict")
    app.slider(key="explain_alpha").set_value(0.8)
    app.slider(key="explain_clip").set_value(90.0)
    app.slider(key="explain_blur").set_value(2.0)
    app.selectbox(key="explain_sign").select("signed").run()
    assert_clean(app)
    app.selectbox(key="explain_colormap_diverging").select("PiYG").run()
    app.toggle(key="sidebar_outline_mask").set_value(True).run()
    app.selectbox(key="explain_sign").select("absolute").run()
    app.selectbox(key="explain_colormap_sequential").select("Viridis").run()
    assert_clean(app)
    assert (count(), count("predict")) == (explained, predicted)


def test_widget_values_survive_a_page_visit(app):
    app.selectbox(key="explain_method").select("vanilla_gradients").run()
    app.switch_page("app_pages/guide.py").run()
    app.switch_page("app_pages/explain.py").run()
    assert_clean(app)
    assert app.selectbox(key="explain_method").value == "vanilla_gradients"


# ------------------------------------------------------------------------------------------------
# Compare
# ------------------------------------------------------------------------------------------------
def test_compare_default_grid(app):
    app.switch_page("app_pages/compare.py").run()
    assert_clean(app)
    assert app.multiselect(key="compare_methods").value == [
        "vanilla_gradients",
        "occlusion",
        "cam",
        "grad_cam",
    ]
    headings = texts(app.markdown)
    for label in ("Vanilla gradients", "Occlusion", "CAM", "Grad-CAM"):
        assert f"##### {label}" in headings
    # Every card has its overlay (+ the sidebar thumbnail) and its two downloads.
    assert len(app.image) >= 5
    assert len(app.get("download_button")) >= 2 * 4


def test_compare_display_change_does_not_recompute_but_a_parameter_does(app):
    app.switch_page("app_pages/compare.py").run()
    explained = count()
    app.slider(key="compare_alpha").set_value(0.2)
    app.selectbox(key="compare_sign").select("signed").run()
    app.slider(key="compare_blur").set_value(1.5).run()
    assert_clean(app)
    assert count() == explained
    occlusion = count("explain:occlusion")
    app.number_input(key="compare_occlusion_stride").set_value(4).run()
    assert_clean(app)
    assert count() == explained + 1  # only the card whose parameter changed
    assert count("explain:occlusion") == occlusion + 1


def test_compare_any_subset(app):
    app.switch_page("app_pages/compare.py").run()
    app.multiselect(key="compare_methods").set_value(["smoothgrad", "score_cam"]).run()
    assert_clean(app)
    headings = texts(app.markdown)
    assert "##### SmoothGrad" in headings and "##### Score-CAM" in headings
    assert "##### Occlusion" not in headings
    app.multiselect(key="compare_methods").set_value([]).run()
    assert "Pick at least one method" in texts(app.info)


def test_compare_shows_inapplicable_methods_disabled_with_reason(app, tmp_path):
    path = tmp_path / "flatten_head.keras"
    tiny_flatten_model().save(path)
    app.radio(key="sidebar_model_source").set_value("Upload a file").run()
    app.file_uploader(key="sidebar_model_upload").upload(
        "flatten_head.keras", path.read_bytes(), "application/octet-stream"
    ).run()
    assert_clean(app)
    assert app.session_state["active_model"].ref.file_name == "flatten_head.keras"
    app.switch_page("app_pages/compare.py").run()
    assert_clean(app)
    notes = texts(app.info)
    assert "Not available for this model" in notes and "GlobalAveragePooling2D" in notes
    assert "##### Grad-CAM" in texts(app.markdown)


# ------------------------------------------------------------------------------------------------
# Model and Guide
# ------------------------------------------------------------------------------------------------
def test_model_page_layers_and_feature_maps(app):
    app.switch_page("app_pages/model.py").run()
    assert_clean(app)
    assert len(app.dataframe) >= 1
    table = app.dataframe[0].value
    assert list(table["Layer"])[:3] == ["input", "conv1", "last_conv"]
    assert app.selectbox(key="model_layer").value == "last_conv"
    assert len(app.image) >= 1 + 8  # the sidebar thumbnail and 8 channels
    app.selectbox(key="model_layer").select("conv1").run()
    assert_clean(app)
    assert "conv1: 8 channels of 32×32" in texts(app.caption)


def test_model_page_expands_nested_sub_models(app, tmp_path):
    path = tmp_path / "nested.keras"
    tiny_nested_model().save(path)
    app.radio(key="sidebar_model_source").set_value("Upload a file").run()
    app.file_uploader(key="sidebar_model_upload").upload("nested.keras", path.read_bytes()).run()
    app.switch_page("app_pages/model.py").run()
    assert_clean(app)
    outer = list(app.dataframe[0].value["Layer"])
    assert "backbone" in outer and "block_conv" not in outer
    assert any(e.label.startswith("Inside backbone") for e in app.expander)
    inner = list(app.dataframe[1].value["Layer"])
    assert [name.strip() for name in inner] == ["stem_conv", "block_conv"]
    layers = app.selectbox(key="model_layer").options
    assert any("backbone/block_conv" in option for option in layers)


def test_guide_lists_every_method_with_formula(app):
    import explainers

    app.switch_page("app_pages/guide.py").run()
    assert_clean(app)
    methods = explainers.available_methods()
    headings = [h.value for h in app.subheader]
    assert sorted(headings) == sorted(m.label for m in methods)
    assert len(app.latex) == sum(1 for m in methods if m.formula)
    assert all(m.reference_url in texts(app.markdown) for m in methods)


# ------------------------------------------------------------------------------------------------
# Inputs: uploads, bad files, missing assets
# ------------------------------------------------------------------------------------------------
def test_bad_image_upload_shows_error_and_keeps_previous_image(app):
    app.segmented_control(key="sidebar_image_source").set_value("Upload").run()
    app.file_uploader(key="sidebar_image_upload").upload(
        "broken.png", b"this is not a PNG", "image/png"
    ).run()
    assert not app.exception
    message = texts(app.error)
    assert "not an image format we can read" in message
    assert "Still using **shapes_circle_1**" in message
    assert app.session_state["active_image"].name == "shapes_circle_1"
    assert "**Grad-CAM overlay**" in texts(app.markdown)  # the page still works


def test_good_image_upload_replaces_the_image(app):
    rgb, _ = sample_image("square", seed=7)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    app.segmented_control(key="sidebar_image_source").set_value("Upload").run()
    app.file_uploader(key="sidebar_image_upload").upload(
        "photo.jpg", buffer.getvalue(), "image/jpeg"
    ).run()
    assert_clean(app)
    image = app.session_state["active_image"]
    assert (image.name, image.source, image.pixels.shape) == ("photo.jpg", "upload", (48, 48, 3))
    assert image.mask is None


def test_camera_picture_becomes_the_image(app):
    rgb, _ = sample_image("circle", seed=11)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    app.segmented_control(key="sidebar_image_source").set_value("Camera").run()
    app.camera_input(key="sidebar_camera").upload("photo.jpg", buffer.getvalue()).run()
    assert_clean(app)
    assert app.session_state["active_image"].source == "camera"
    assert "**Grad-CAM overlay**" in texts(app.markdown)


def test_bad_model_upload_shows_error_and_keeps_previous_model(app):
    app.radio(key="sidebar_model_source").set_value("Upload a file").run()
    app.file_uploader(key="sidebar_model_upload").upload(
        "broken.keras", b"PK\x03\x04 definitely not a model", "application/octet-stream"
    ).run()
    assert not app.exception
    message = texts(app.error)
    assert "'broken.keras' is damaged or truncated" in message  # the user's name for the file
    assert "Still using **tiny_standin.keras**" in message
    assert app.session_state["active_model"].ref.file_name == "tiny_standin.keras"
    assert "**Grad-CAM overlay**" in texts(app.markdown)


def test_wrong_labels_file_is_explained(app):
    with_labels = app.file_uploader(key="sidebar_labels_upload")
    with_labels.upload("labels.txt", b"only\ntwo\n", "text/plain").run()
    assert not app.exception
    assert "2 class names but the model has 3 classes" in texts(app.error)
    assert app.session_state["active_model"].class_names == ("circle", "square", "triangle")


def test_keras_applications_offline_is_a_plain_message(app, monkeypatch, tmp_path):
    from dashboard import worker

    # The model is built in a worker process, which downloads the weights. Make every download
    # fail the way it does without internet (whether or not this machine has it) by sending it
    # to a closed local port, and start fresh workers that see this environment.
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no weights cached earlier are found
    worker.shutdown_pool()
    try:
        app.radio(key="sidebar_model_source").set_value("keras.applications").run()
        app.button(key="sidebar_application_load").click().run()
    finally:
        worker.shutdown_pool()  # later tests get workers with the normal environment
    assert not app.exception
    message = texts(app.error)
    assert "no internet access" in message and "Upload a saved .keras" in message
    assert app.session_state["active_model"].ref.file_name == "tiny_standin.keras"


def test_bundled_demo_model_is_the_default(monkeypatch):
    from dashboard import service

    real = service.ASSETS_DIR
    if not (real / "models" / "demo_shapes.keras").exists():
        pytest.skip("the demo assets are not built (python assets/make_demo_models.py)")
    monkeypatch.delenv("EXPLAINER_ASSETS_DIR", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert_clean(at)
    assert at.session_state["active_model"].ref.file_name == "demo_shapes.keras"
    assert at.session_state["active_model"].class_names[:2] == ("circle", "square")
    assert at.session_state["active_image"].name.startswith("shapes_")
    assert at.session_state["active_image"].mask is not None


def test_missing_assets_do_not_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLAINER_ASSETS_DIR", str(tmp_path / "nothing-here"))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    assert "demo models are not installed" in texts(at.warning)
    assert "No sample images are installed" in texts(at.warning)
    assert "No model is loaded yet" in texts(at.info)
    for page in ("app_pages/compare.py", "app_pages/model.py", "app_pages/guide.py"):
        at.switch_page(page).run()
        assert not at.exception
    assert len(at.latex) > 0  # the Guide works without a model


# ------------------------------------------------------------------------------------------------
# Service and export (no page)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(assets):
    from dashboard import service

    model = service.load_model(
        service.file_model_ref(assets / "models" / "tiny_standin.keras", preprocessing="auto")
    )
    image = service.load_sample(
        service.Sample(
            assets / "samples" / "shapes_circle_1.png",
            assets / "samples" / "shapes_circle_1_mask.png",
            None,
        )
    )
    return model, image


def test_progress_is_forwarded_for_long_methods(loaded):
    from dashboard import service

    model, image = loaded
    request = service.explanation_request(
        model, image, "occlusion", {"patch_size": 8, "stride": 3}, target=0
    )
    calls: list[tuple[float, str]] = []
    service.explain(request, image, lambda fraction, message: calls.append((fraction, message)))
    assert len(calls) >= 3 and calls[-1][0] == 1.0
    assert all(0.0 <= f <= 1.0 for f, _ in calls)
    before = service.compute_count()
    service.explain(request, image, lambda f, m: calls.append((f, m)))  # cached: no compute
    assert service.compute_count() == before


def test_service_errors_are_sentences(loaded):
    from dashboard import service

    model, image = loaded
    with pytest.raises(service.ServiceError, match="patch_size must be ≥ 1"):
        service.explanation_request(model, image, "occlusion", {"patch_size": 0}, target=0)
    with pytest.raises(service.ServiceError, match="not an image format"):
        service.load_image_bytes("x.png", b"nope")


def test_html_report_and_exports(loaded):
    from dashboard import report, service, visuals

    model, image = loaded
    settings = visuals.DisplaySettings(outline_mask=True)
    entries = []
    for name in ("vanilla_gradients", "grad_cam"):
        request = service.explanation_request(
            model, image, name, {}, target=1, layer="last_conv" if name == "grad_cam" else None
        )
        result = service.explain(request, image)
        entries.append(
            report.ReportEntry(
                model.method(name),
                result,
                visuals.overlay_rgb(image.pixels, result.attribution, settings, image.mask),
                visuals.heatmap_rgb(result.attribution, settings),
            )
        )
    entries.append(report.ReportEntry(model.method("occlusion"), problem="skipped on purpose"))
    page = report.html_report(
        model=model,
        image=image,
        predictions=service.predictions(model, image, k=3),
        entries=entries,
        settings=settings,
        versions=service.versions(),
    )
    assert model.sha256 in page and image.sha256 in page
    assert "Vanilla gradients" in page and "Grad-CAM" in page and "skipped on purpose" in page
    assert "tiny_standin.keras" in page and f"<td>{model.n_layers}</td>" in page
    for name in ("TensorFlow", "Keras", "explainers"):
        assert f"<th>{name}</th>" in page
    assert page.count('src="data:image/png;base64,') >= 1 + 3 * 2
    assert 'src="http' not in page
    grid = Image.open(io.BytesIO(report.grid_png(entries, title="t")))
    assert grid.format == "PNG" and grid.size[0] > 2 * 288
    raw = np.load(io.BytesIO(report.npy_bytes(entries[0].result.attribution)))
    assert raw.dtype == np.float32 and raw.shape == image.pixels.shape[:2]
    assert report.png_bytes(entries[0].overlay)[:8] == b"\x89PNG\r\n\x1a\n"


def test_display_settings_change_the_pictures_not_the_map(loaded):
    from dashboard import service, visuals

    model, image = loaded
    request = service.explanation_request(model, image, "grad_cam", {}, target=0, layer=None)
    result = service.explain(request, image)
    raw = result.attribution.copy()
    soft = visuals.overlay_rgb(image.pixels, raw, visuals.DisplaySettings(alpha=0.2))
    strong = visuals.overlay_rgb(image.pixels, raw, visuals.DisplaySettings(alpha=0.9))
    outlined = visuals.overlay_rgb(
        image.pixels, raw, visuals.DisplaySettings(outline_mask=True), image.mask
    )
    assert not np.array_equal(soft, strong)
    assert (outlined == 255).all(axis=-1).sum() > 0
    np.testing.assert_array_equal(result.attribution, raw)
    assert not result.attribution.flags.writeable
    assert png_bytes(soft)[:4] == b"\x89PNG"


def test_large_images_are_drawn_at_display_size():
    from dashboard import visuals

    image = np.zeros((1500, 2000, 3), np.uint8)
    attribution = np.random.default_rng(0).normal(size=(1500, 2000)).astype(np.float32)
    mask = np.zeros((1500, 2000), bool)
    mask[100:400, 100:400] = True
    settings = visuals.DisplaySettings(blur=4.0)
    small, small_map, small_mask, marker, scaled = visuals.display_inputs(
        image, attribution, mask, None, settings
    )
    assert small.shape == (768, 1024, 3) and small_map.shape == small_mask.shape == (768, 1024)
    assert marker is None and scaled.blur == pytest.approx(4.0 * 1024 / 2000)
    assert visuals.enlarge(np.zeros((96, 96, 3), np.uint8)).shape == (384, 384, 3)


# ------------------------------------------------------------------------------------------------
# Robustness
# ------------------------------------------------------------------------------------------------
def _active(app):
    return app.session_state["active_model"], app.session_state["active_image"]


def test_robustness_default_render(app):
    from dashboard import service
    from dashboard.attacks import attack_summary

    app.switch_page("app_pages/robustness.py").run()
    assert_clean(app)
    assert [t.value for t in app.title] == ["Robustness"]
    assert app.segmented_control(key="robustness_attack").value == "fgsm"
    assert app.slider(key="robustness_epsilon").value == 4
    assert app.slider(key="robustness_steps").disabled  # PGD-only controls are off for FGSM
    assert app.multiselect(key="robustness_methods").value == ["grad_cam", "vanilla_gradients"]
    # The page attacked with exactly these arguments: asking the service again is a cache hit.
    model, image = _active(app)
    attacks = count("attack")
    outcome, adversarial = service.attack(model, image, "fgsm", epsilon=4, steps=1)
    assert count("attack") == attacks
    assert outcome.linf == 4.0 and np.abs(outcome.perturbation).max() == 4.0
    assert adversarial.mask is image.mask and adversarial.sha256 != image.sha256
    # The verdict line matches the outcome (the untrained tiny model does not flip).
    _, line = attack_summary(outcome, model.class_names)
    assert line in texts(app.success) + texts(app.warning)
    markdown = texts(app.markdown)
    assert f"**The change, amplified ×{127 // 4}**" in markdown
    assert "##### Grad-CAM" in markdown and "##### Vanilla gradients" in markdown
    captions = [picture.proto.imgs[0].caption for picture in app.image]
    assert sum(c.startswith("Original · ") for c in captions) == 2
    assert sum(c.startswith("Adversarial · ") for c in captions) == 2
    (button,) = app.get("download_button")
    # Deferred: the PNG is built when the button is clicked (no file in the page until then).
    assert button.label == "Adversarial PNG" and button.proto.deferred_file_id
    assert len(app.dataframe) == 1 and list(app.dataframe[0].value.columns) == [
        "Class",
        "Before",
        "After",
    ]


def test_robustness_attack_change_recomputes_once_display_does_not(app):
    app.switch_page("app_pages/robustness.py").run()
    attacks, explained = count("attack"), count()
    app.slider(key="robustness_epsilon").set_value(6).run()
    assert_clean(app)
    # One new attack; the new adversarial image is explained by both methods (the original's
    # maps come from the cache).
    assert (count("attack"), count()) == (attacks + 1, explained + 2)
    assert "**The change, amplified ×21**" in texts(app.markdown)
    app.slider(key="robustness_alpha").set_value(0.8)
    app.selectbox(key="robustness_sign").select("signed").run()
    app.toggle(key="sidebar_outline_mask").set_value(True).run()
    assert_clean(app)
    assert (count("attack"), count()) == (attacks + 1, explained + 2)
    # Adding a method explains both images with it, and does not attack again.
    app.multiselect(key="robustness_methods").select("gradient_x_input").run()
    assert_clean(app)
    assert (count("attack"), count()) == (attacks + 1, explained + 4)
    # PGD: its own controls; each change is one attack, going back is a cache hit.
    app.segmented_control(key="robustness_attack").set_value("pgd").run()
    assert not app.slider(key="robustness_steps").disabled
    assert count("attack") == attacks + 2
    app.slider(key="robustness_steps").set_value(3).run()
    app.number_input(key="robustness_seed").set_value(5).run()
    assert_clean(app)
    assert count("attack") == attacks + 4
    app.number_input(key="robustness_seed").set_value(0).run()
    app.slider(key="robustness_steps").set_value(10).run()
    assert count("attack") == attacks + 4
    assert "PGD ε=6" in texts(app.get("metric"))


def test_robustness_targeted_attack_reports_the_target(app):
    from dashboard import attacks, service

    app.switch_page("app_pages/robustness.py").run()
    app.selectbox(key="robustness_goal").select(2).run()
    assert_clean(app)
    model, image = _active(app)
    outcome, _ = service.attack(model, image, "fgsm", epsilon=4, steps=1, target=2)
    assert outcome.target == 2
    ok, line = attacks.attack_summary(outcome, model.class_names)
    assert line.startswith("Target reached" if ok else "Target “triangle” not reached")
    assert line in texts(app.success) + texts(app.warning)


def _attack_outcome(before, after, target=None):
    from dashboard.service import AttackOutcome, Prediction

    names = ("circle", "square", "triangle")
    return AttackOutcome(
        adversarial=np.zeros((2, 2, 3), np.uint8),
        perturbation=np.zeros((2, 2, 3), np.float32),
        linf=0.0,
        l2=0.0,
        method="fgsm",
        epsilon=4.0,
        step_size=4.0,
        steps=1,
        seed=0,
        original_class=before[0],
        target=target,
        before=(Prediction(before[0], names[before[0]], before[1]),),
        after=(Prediction(after[0], names[after[0]], after[1]),),
        flipped=before[0] != after[0],
        reached_target=None if target is None else after[0] == target,
        success=(after[0] == target) if target is not None else before[0] != after[0],
        success_at_model_resolution=False,
        losses=(1.0,),
    )


def test_attack_summary_sentences():
    from dashboard.attacks import attack_summary

    names = ("circle", "square", "triangle")
    flipped = _attack_outcome((0, 0.9), (1, 0.8))
    assert attack_summary(flipped, names) == (
        True,
        "Decision flipped: **circle** (90.0%) → **square** (80.0%)",
    )
    kept = attack_summary(_attack_outcome((0, 0.9), (0, 0.6)), names)
    assert kept[0] is False and kept[1].startswith("Not flipped: **circle** (90.0%) → **circle**")
    assert "try a larger ε" in kept[1]
    reached = attack_summary(_attack_outcome((0, 0.9), (2, 0.7), target=2), names)
    assert reached == (True, "Target reached: **circle** (90.0%) → **triangle** (70.0%)")
    missed = attack_summary(_attack_outcome((0, 0.9), (1, 0.5), target=2), names)
    assert missed[0] is False and missed[1].startswith("Target “triangle” not reached")


def test_amplified_perturbation_is_exact():
    from dashboard.attacks import amplified_perturbation

    delta = np.array([[[-4, 0, 4], [1, -1, 2]]], np.float32)  # (1, 2, 3) pixel levels
    picture, factor = amplified_perturbation(delta)
    assert factor == 31  # floor(127 / 4)
    assert picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[0, 0], [128 - 124, 128, 128 + 124])
    np.testing.assert_array_equal(picture[0, 1], [159, 97, 190])
    unchanged, one = amplified_perturbation(np.zeros((2, 2, 3), np.float32))
    assert one == 1 and (unchanged == 128).all()


def test_robustness_crash_offers_retry(app, monkeypatch):
    from dashboard import service

    real_call = service._call

    def crashing(job, kwargs, **options):
        if job == "attack":
            raise service.ServiceError("The computation crashed (test).", retryable=True)
        return real_call(job, kwargs, **options)

    app.switch_page("app_pages/robustness.py").run()
    monkeypatch.setattr(service, "_call", crashing)
    app.slider(key="robustness_epsilon").set_value(9).run()
    assert not app.exception
    assert "The computation crashed (test)." in texts(app.error)
    monkeypatch.setattr(service, "_call", real_call)
    app.run()  # the failure is remembered: no new attempt until Retry
    assert "The computation crashed (test)." in texts(app.error)
    attacks = count("attack")
    app.button(key="robustness_attack_retry").click().run()
    assert_clean(app)
    assert count("attack") == attacks + 1
    assert "**The change, amplified ×14**" in texts(app.markdown)


# ------------------------------------------------------------------------------------------------
# Evaluate
# ------------------------------------------------------------------------------------------------
def _ranking(app):
    (table,) = [d.value for d in app.dataframe]
    return table.set_index("Method")


def test_evaluate_default_render_with_random_row(app):
    from dashboard import service
    from dashboard.computation import build_request
    from dashboard.pages import evaluate as evaluate_page

    app.switch_page("app_pages/evaluate.py").run()
    assert_clean(app)
    assert [t.value for t in app.title] == ["Evaluate"]
    assert app.multiselect(key="evaluate_methods").value == list(evaluate_page.DEFAULT_EVALUATION)
    assert app.radio(key="evaluate_ground_truth").value == "sample"
    assert len(app.get("plotly_chart")) == 2  # deletion and insertion
    table = _ranking(app)
    labels = ["Grad-CAM", "Vanilla gradients", "Occlusion", "RISE", "Random (chance)"]
    assert sorted(table.index) == sorted(labels)
    assert list(table.columns) == [
        "Deletion AUC ↓",
        "Insertion AUC ↑",
        "Pointing game",
        "Energy in mask",
        "Beats random",
    ]
    # The table shows the service's numbers for exactly these maps (a cache hit: same call).
    model, image = _active(app)
    target = service.predictions(model, image)[0].index
    maps = {}
    for name in evaluate_page.DEFAULT_EVALUATION:
        method = model.method(name)
        request = build_request(
            model,
            image,
            method,
            {},
            target=target,
            layer=model.default_layer if method.uses_layer else None,
            engine="native",
        )
        maps[name] = service.cached_explanation(request).attribution
    evaluated = count("evaluate")
    outcome = service.evaluate(model, image, maps, target=target, mask=image.mask)
    assert count("evaluate") == evaluated
    rows = {row.name: row for row in outcome.rows}
    random = rows["random"]
    for name, row in rows.items():
        label = "Random (chance)" if name == "random" else model.method(name).label
        assert table.loc[label, "Deletion AUC ↓"] == pytest.approx(row.deletion.auc)
        assert table.loc[label, "Insertion AUC ↑"] == pytest.approx(row.insertion.auc)
        assert table.loc[label, "Energy in mask"] == pytest.approx(row.energy)
        assert table.loc[label, "Pointing game"] == ("hit" if row.pointing else "miss")
        if name != "random":
            lower = row.deletion.auc < random.deletion.auc
            higher = row.insertion.auc > random.insertion.auc
            expected = {
                (True, True): "yes, on both",
                (True, False): "deletion only",
                (False, True): "insertion only",
                (False, False): "no",
            }[lower, higher]
            assert table.loc[label, "Beats random"] == expected
    assert table.loc["Random (chance)", "Beats random"] == "—"
    scores = table["Insertion AUC ↑"] - table["Deletion AUC ↓"]
    assert list(scores) == sorted(scores, reverse=True)  # best first


def test_evaluate_protocol_change_recomputes_once(app):
    app.switch_page("app_pages/evaluate.py").run()
    evaluated, explained = count("evaluate"), count()
    app.select_slider(key="evaluate_step").set_value(0.05).run()
    assert_clean(app)
    assert (count("evaluate"), count()) == (evaluated + 1, explained)
    # 32×32 = 1024 model-input pixels in steps of round(5 % · 1024) = 51: 0, 51, …, 1020, 1024.
    assert "22 points per curve" in texts(app.caption)
    app.selectbox(key="evaluate_deletion_substrate").select("constant").run()
    assert_clean(app)
    assert (count("evaluate"), count()) == (evaluated + 2, explained)
    # Fewer methods: one new evaluation, no new explanation; a new method: one of each.
    app.multiselect(key="evaluate_methods").unselect("rise").run()
    assert (count("evaluate"), count()) == (evaluated + 3, explained)
    app.multiselect(key="evaluate_methods").select("grad_cam_plus_plus").run()
    assert_clean(app)
    assert (count("evaluate"), count()) == (evaluated + 4, explained + 1)
    assert "Grad-CAM++" in _ranking(app).index
    # Display-only changes and a page visit recompute nothing.
    app.toggle(key="sidebar_outline_mask").set_value(True).run()
    app.switch_page("app_pages/guide.py").run()
    app.switch_page("app_pages/evaluate.py").run()
    assert_clean(app)
    assert app.select_slider(key="evaluate_step").value == 0.05
    assert (count("evaluate"), count()) == (evaluated + 4, explained + 1)


def test_evaluate_sanity_button_runs_once_and_shows_verdicts(app):
    app.switch_page("app_pages/evaluate.py").run()
    sanity = count("sanity")
    assert app.button(key="evaluate_sanity_run").label == "Run the sanity check"
    assert not app.success and not app.warning
    app.button(key="evaluate_sanity_run").click().run()
    assert_clean(app)
    assert count("sanity") == sanity + 1
    model = app.session_state["active_model"]
    labels = [model.method(m).label for m in ("grad_cam", "vanilla_gradients", "guided_backprop")]
    boxes = [e.value for e in app.success] + [e.value for e in app.warning]
    assert sorted(b.split("**")[1] for b in boxes) == sorted(labels)
    assert all(("passes" in b) != ("flagged" in b) for b in boxes)
    assert len(app.get("plotly_chart")) == 3
    # The tiny model has 3 weighted blocks: the original map and one per step.
    grid = [i.proto.imgs[0].caption for i in app.image if "ρ" in i.proto.imgs[0].caption]
    assert len(grid) == 4 and grid[0] == "original model · ρ = 1.00"
    # Other controls keep the result on screen without running it again.
    app.select_slider(key="evaluate_step").set_value(0.1).run()
    app.selectbox(key="evaluate_sanity_shown").select("vanilla_gradients").run()
    assert_clean(app)
    assert count("sanity") == sanity + 1
    assert app.button(key="evaluate_sanity_run").disabled
    assert len(app.success) + len(app.warning) == 3
    # New settings need the button again.
    app.selectbox(key="evaluate_sanity_mode").select("independent").run()
    assert count("sanity") == sanity + 1
    assert not app.button(key="evaluate_sanity_run").disabled
    assert len(app.success) + len(app.warning) == 0


def test_evaluate_bad_mask_upload_is_explained_and_page_keeps_working(app):
    app.selectbox(key="sidebar_sample").select("shapes_square_1").run()  # no mask
    app.switch_page("app_pages/evaluate.py").run()
    assert_clean(app)
    assert app.radio(key="evaluate_ground_truth").options == [
        "Upload a mask",
        "Draw a box",
        "None",
    ]
    assert "Pointing game" not in _ranking(app).columns
    app.radio(key="evaluate_ground_truth").set_value("upload").run()
    uploader = app.file_uploader(key="evaluate_mask_upload")
    uploader.upload("mask.png", b"not a picture", "image/png").run()
    assert not app.exception
    assert "not an image format we can read" in texts(app.error)
    assert "Pointing game" not in _ranking(app).columns  # the curves are still scored
    black = png_bytes(np.zeros((48, 48, 3), np.uint8))
    app.file_uploader(key="evaluate_mask_upload").upload("black.png", black, "image/png").run()
    assert "has no white pixel" in texts(app.error)
    # A good mask at half the size is resized and used.
    half = np.zeros((24, 24, 3), np.uint8)
    half[5:17, 6:18] = 255
    app.file_uploader(key="evaluate_mask_upload").upload(
        "half.png", png_bytes(half), "image/png"
    ).run()
    assert_clean(app)
    (preview,) = [i.proto.imgs[0].caption for i in app.image if "Ground truth" in str(i.proto)]
    assert "half.png: 24×24, resized to 48×48 · object = 25% of the image" in preview
    assert "Pointing game" in _ranking(app).columns


def test_evaluate_box_mask_scores_energy_inside_the_box(app):
    from dashboard import service
    from dashboard.computation import build_request
    from explainers.evaluation.metrics import energy_in_mask

    app.switch_page("app_pages/evaluate.py").run()
    app.radio(key="evaluate_ground_truth").set_value("box").run()
    app.slider(key="evaluate_box_x").set_value((10, 30))
    app.slider(key="evaluate_box_y").set_value((5, 40)).run()
    assert_clean(app)
    model, image = _active(app)
    method = model.method("vanilla_gradients")
    target = service.predictions(model, image)[0].index
    request = build_request(model, image, method, {}, target=target, layer=None, engine="native")
    attribution = service.cached_explanation(request).attribution
    box = np.zeros((48, 48), bool)
    box[5:40, 10:30] = True
    expected = energy_in_mask(attribution, box)
    assert _ranking(app).loc["Vanilla gradients", "Energy in mask"] == pytest.approx(expected)
    assert 0.0 < expected < 1.0


def test_evaluate_crashes_offer_retry(app, monkeypatch):
    from dashboard import service

    real_call = service._call
    crashing_jobs = {"evaluate", "sanity"}

    def crashing(job, kwargs, **options):
        if job in crashing_jobs:
            raise service.ServiceError(f"The {job} worker crashed (test).", retryable=True)
        return real_call(job, kwargs, **options)

    app.switch_page("app_pages/evaluate.py").run()
    monkeypatch.setattr(service, "_call", crashing)
    # Settings no other test uses, so that neither result is in the cache already.
    app.selectbox(key="evaluate_insertion_substrate").select("constant").run()
    app.multiselect(key="evaluate_sanity_methods").unselect("guided_backprop")
    app.selectbox(key="evaluate_sanity_mode").select("independent").run()
    app.button(key="evaluate_sanity_run").click().run()
    assert not app.exception
    assert "The evaluate worker crashed (test)." in texts(app.error)
    assert "The sanity worker crashed (test)." in texts(app.error)
    assert not app.dataframe
    crashing_jobs.clear()
    evaluated, sanity = count("evaluate"), count("sanity")
    app.button(key="evaluate_curves_retry").click().run()
    assert count("evaluate") == evaluated + 1 and len(app.dataframe) == 1
    assert "The sanity worker crashed (test)." in texts(app.error)  # remembered until Retry
    app.button(key="evaluate_sanity_retry").click().run()
    assert_clean(app)
    assert count("sanity") == sanity + 1
    assert len(app.success) + len(app.warning) == 2


@pytest.fixture
def demo_app(monkeypatch):
    """The app on the real bundled assets (shipped demo model, first sample shapes_circle_0)."""
    from dashboard import service

    if not (service.ASSETS_DIR / "models" / "demo_shapes.keras").exists():
        pytest.skip("the demo assets are not built (python assets/make_demo_models.py)")
    monkeypatch.delenv("EXPLAINER_ASSETS_DIR", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert_clean(at)
    assert at.session_state["active_image"].name == "shapes_circle_0"
    return at


def test_score_cam_on_the_default_sample_shows_a_map_and_its_units(demo_app):
    """On the shipped model's default sample Score-CAM gives a non-empty map with no warning
    (it was silently empty); the paper's baseline-subtracted form is empty and the page says why,
    beside the picture, with the raw values in their units."""
    app = demo_app
    app.selectbox(key="explain_method").select("score_cam").run()
    assert_clean(app)
    facts = texts(app.markdown)
    assert "**Method:** Score-CAM (`score_cam`)" in facts
    assert "**Raw values:** min 0, max 0," not in facts
    assert re.search(r"\*\*Raw values:\*\* min [\d.e+-]+, max [1-9]", facts), facts
    assert "explained score: probability of circle" in facts
    assert not app.warning
    app.checkbox(key="explain_score_cam_baseline_subtract").check().run()
    assert_clean(app)
    warnings = texts(app.warning)
    assert "Every Score-CAM channel weight is ≤ 0" in warnings
    assert "Subtract the baseline score" in warnings
    assert "**Raw values:** min 0, max 0, sum 0" in texts(app.markdown)


def test_compare_shared_scale_redraws_without_recomputing(demo_app):
    """'One scale for all cards' redraws the cards from the cached maps (no model call) on one
    colour scale: the weaker maps' overlays change, the strongest map's does not."""
    app = demo_app
    app.switch_page("app_pages/compare.py").run()
    assert_clean(app)
    own = [i.proto.imgs[0].url for i in app.image]
    explained = count()
    app.session_state["compare_scale_mode"] = "shared"
    app.run()
    assert_clean(app)
    assert count() == explained
    shared = [i.proto.imgs[0].url for i in app.image]
    assert len(shared) == len(own) and shared != own


def test_evaluate_exports_and_reports_carry_scores_curves_and_verdicts(app):
    """After the curves and the sanity check, the Evaluate page offers its exports, and the HTML
    report and JSON built from what the page computed hold every row, both curves per row and
    each verdict with the rule."""
    import json
    from html import escape as html_escape

    from dashboard import report, service

    app.switch_page("app_pages/evaluate.py").run()
    app.button(key="evaluate_sanity_run").click().run()
    assert_clean(app)
    buttons = {e.proto.label for e in app.get("download_button")}
    assert {"Evaluation report (HTML)", "Scores and curves (JSON)"} <= buttons
    evaluation = app.session_state["_last_evaluation"][2]
    sanity = app.session_state["_last_sanity"][2]
    model, image = app.session_state["active_model"], app.session_state["active_image"]
    labels = {m.name: m.label for m in model.methods}
    html = report.html_report(
        model=model,
        image=image,
        predictions=service.predictions(model, image),
        entries=(),
        settings=report.DisplaySettings(),
        versions={"explainers": "test"},
        evaluation=evaluation,
        sanity=sanity,
        labels=labels,
    )
    assert html.count("<polyline") == 2 * len(evaluation.rows)
    for row in report.evaluation_rows(evaluation, labels):
        assert f"<td>{row['deletion_auc']:.3f}</td>" in html
    for method in sanity.methods:
        assert labels[method] in html
        assert html_escape(sanity.verdicts[method].split(": ", 1)[1]) in html
    assert html_escape(sanity.rule) in html
    payload = json.loads(report.evaluation_json(evaluation, sanity, labels, {"image": image.name}))
    curves = payload["evaluation"]["curves"]
    assert set(curves) == {row.name for row in evaluation.rows}
    first = evaluation.rows[0]
    assert curves[first.name]["deletion"]["probabilities"] == pytest.approx(
        list(first.deletion.probabilities)
    )
    assert {m: v["flagged"] for m, v in payload["sanity"]["methods"].items()} == sanity.flagged
