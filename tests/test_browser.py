"""End-to-end: ``streamlit run app.py`` driven by a real (headless) Chromium through Playwright.

Uploads a ``.keras`` model and an image through the file uploaders, opens Compare, picks four
methods, waits for four heatmaps, moves the opacity slider, downloads the HTML report and checks
its contents. A second test opens the Robustness and Evaluate pages and runs the sanity check.
Screenshots go to ``test-artifacts/``.

Without Chromium or Playwright the test is skipped, except when the ``CI`` environment variable is
set: then a missing browser is a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .dashboard_helpers import (
    APP,
    build_assets,
    png_bytes,
    sample_image,
    tiny_cam_model,
    tiny_flatten_model,
)

pytestmark = pytest.mark.browser

ROOT = APP.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: The four methods picked on the Compare page (labels as the UI shows them).
PICKED = {
    "vanilla_gradients": "Vanilla gradients",
    "occlusion": "Occlusion",
    "grad_cam": "Grad-CAM",
    "integrated_gradients": "Integrated Gradients",
}
SERVER_START_S = 120
COMPUTE_S = 120


def _chromium() -> str | None:
    for candidate in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _require_browser() -> str:
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "the playwright package is not installed"
    executable = _chromium()
    if reason is None and executable is None:
        reason = "no Chromium found (apt-get install chromium)"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {reason}")
        pytest.skip(reason)
    assert executable is not None
    return executable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """A ``streamlit run app.py`` subprocess on a free port, serving the tiny stand-in assets."""
    _require_browser()
    assets = build_assets(tmp_path_factory.mktemp("browser-assets"))
    yield from _serve(assets, "streamlit-server.log")


@pytest.fixture(scope="module")
def demo_server() -> Iterator[str]:
    """The same, serving the real bundled assets (the shipped demo models and samples)."""
    _require_browser()
    yield from _serve(None, "streamlit-demo-server.log")


def _serve(assets: Path | None, log_name: str) -> Iterator[str]:
    port = _free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / log_name).open("w")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("EXPLAINER_ASSETS_DIR", None)
    if assets is not None:
        env["EXPLAINER_ASSETS_DIR"] = str(assets)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(APP),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start; see {ARTIFACTS / log_name}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@contextmanager
def _chromium_browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright, with the page and assertion time-outs set."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=COMPUTE_S * 1000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _open_page(browser: Any, url: str) -> Any:
    """A new session (its own browser context) on ``url``."""
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.set_default_timeout(COMPUTE_S * 1000)
    page.goto(url)
    return page


def _wait_idle(page, timeout_s: float = COMPUTE_S) -> None:
    """Wait until the script run finished (no 'Running…' status widget)."""
    page.wait_for_timeout(400)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=timeout_s * 1000,
    )


def _screenshot(page, path) -> None:
    """A screenshot once the pictures in view have loaded: Streamlit draws grey skeletons while it
    lazy-loads an element's code, and a screenshot taken then shows no map. Waits at most 15 s
    (a picture that never loads is what the screenshot should then show)."""
    # A screenshot is evidence, not an assertion: after the wait, take it whatever it shows.
    with contextlib.suppress(Exception):
        page.wait_for_function(
            """() => [...document.querySelectorAll('[data-testid="stMain"] img')]
                .filter(i => { const r = i.getBoundingClientRect();
                               return r.bottom > 0 && r.top < window.innerHeight; })
                .every(i => i.complete && i.naturalWidth > 0)
                && !document.querySelector('[data-testid="stMain"] [data-testid="stSkeleton"]')""",
            timeout=15_000,
        )
    page.screenshot(path=str(path))


def _assert_no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in page.locator('[data-testid="stMain"]').inner_text()


def _card_images(page):
    selector = ", ".join(
        f".st-key-compare_card_{name} [data-testid='stImage'] img" for name in PICKED
    )
    return page.locator(selector)


def test_upload_compare_adjust_and_download_report(server, tmp_path):
    from playwright.sync_api import expect

    model_path = tmp_path / "uploaded_flatten.keras"
    tiny_flatten_model().save(model_path)
    rgb, _ = sample_image("circle", seed=3)
    image_path = tmp_path / "upload.png"
    image_path.write_bytes(png_bytes(rgb))
    model_sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    image_sha = hashlib.sha256(image_path.read_bytes()).hexdigest()

    with _chromium_browser() as browser:
        page = _open_page(browser, server)
        sidebar = page.locator('[data-testid="stSidebar"]')
        main = page.locator('[data-testid="stMain"]')

        # The default state works with nothing done: demo model, first sample, Grad-CAM.
        expect(main.get_by_text("Grad-CAM overlay")).to_be_visible()
        _wait_idle(page)
        _assert_no_exception(page)
        _screenshot(page, ARTIFACTS / "browser-01-explain-default.png")

        # Upload a model file through the model uploader.
        sidebar.get_by_text("Upload a file", exact=True).click()
        uploader = sidebar.locator('[data-testid="stFileUploader"]').filter(
            has_text="Keras model file"
        )
        uploader.locator('input[type="file"]').set_input_files(str(model_path))
        expect(sidebar.get_by_text("Loaded uploaded_flatten.keras")).to_be_visible()
        _wait_idle(page)

        # Upload an image through the image uploader.
        sidebar.get_by_role("radio", name="Upload", exact=True).click()
        uploader = sidebar.locator('[data-testid="stFileUploader"]').filter(has_text="Image file")
        uploader.locator('input[type="file"]').set_input_files(str(image_path))
        expect(sidebar.get_by_text("upload.png · 48×48")).to_be_visible()
        _wait_idle(page)
        _assert_no_exception(page)
        # The class picker shows this model's top class for this image, as the header does
        # (it showed the previous model's label for one render).
        header = re.search(
            r"predicted (.+?) \(([\d.]+%)\)", main.get_by_text("predicted").first.inner_text()
        )
        assert header is not None
        picker = main.locator("[class*='st-key-explain_target_'] [role='combobox']")
        expect(picker).to_have_value(f"Top prediction — {header[1]} ({header[2]})")
        _screenshot(page, ARTIFACTS / "browser-02-uploaded.png")

        # Compare: CAM does not apply to this model (no GAP head) and says why.
        sidebar.get_by_role("link", name="Compare").click()
        expect(main.get_by_text("Not available for this model")).to_be_visible()
        _wait_idle(page)

        # Pick four methods: empty the selection, then choose each by its label.
        field = main.locator('[data-testid="stMultiSelect"] input')
        field.click()
        for _ in range(6):
            field.press("Backspace")
        _wait_idle(page)
        for label in PICKED.values():
            field.click()
            field.fill(label)
            page.get_by_role("option", name=label, exact=True).click()
            _wait_idle(page)
        page.keyboard.press("Escape")

        expect(_card_images(page)).to_have_count(4, timeout=COMPUTE_S * 1000)
        _wait_idle(page)
        _assert_no_exception(page)
        assert main.locator('[data-testid="stProgress"]').count() == 0
        page.screenshot(path=str(ARTIFACTS / "browser-03-compare.png"), full_page=True)

        # Display control: the overlays re-render (new pictures) from the cached maps.
        before = _card_images(page).first.get_attribute("src")
        opacity = main.locator('[data-testid="stSlider"]').filter(has_text="Overlay opacity")
        opacity.get_by_role("slider").focus()
        for _ in range(6):
            page.keyboard.press("ArrowRight")
        page.wait_for_timeout(1500)  # the slider sends its value after a short debounce
        _wait_idle(page)
        expect(opacity).to_contain_text("0.80")
        expect(_card_images(page)).to_have_count(4)
        expect(_card_images(page).first).not_to_have_attribute("src", before)
        assert main.locator('[data-testid="stProgress"]').count() == 0
        _screenshot(page, ARTIFACTS / "browser-04-compare-opacity.png")

        # The HTML review report.
        with page.expect_download(timeout=COMPUTE_S * 1000) as download_info:
            main.get_by_role("button", name="HTML review report").click()
        download = download_info.value
        report_path = ARTIFACTS / "browser-report.html"
        download.save_as(str(report_path))
        html = report_path.read_text(encoding="utf-8")

        with page.expect_download() as grid_info:
            main.get_by_role("button", name="Grid as PNG").click()
        grid_path = ARTIFACTS / "browser-grid.png"
        grid_info.value.save_as(str(grid_path))
        _assert_no_exception(page)

    assert download.suggested_filename.endswith(".html")
    for label in PICKED.values():
        assert label in html
    assert model_sha in html and image_sha in html
    assert "uploaded_flatten.keras" in html and "upload.png" in html
    for name in ("TensorFlow", "Keras", "explainers"):
        assert f"<th>{name}</th>" in html
    assert "opacity 0.80" in html  # the report shows what the screen shows
    assert html.count("data:image/png;base64,") >= 1 + 3 * 4
    assert grid_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_robustness_and_evaluate_pages_render(server):
    """Both pages open from the sidebar, compute on their defaults and show their results; the
    sanity check runs when its button is pressed."""
    from playwright.sync_api import expect

    with _chromium_browser() as browser:
        page = _open_page(browser, server)
        sidebar = page.locator('[data-testid="stSidebar"]')
        main = page.locator('[data-testid="stMain"]')
        expect(main.get_by_text("Grad-CAM overlay")).to_be_visible()
        _wait_idle(page)

        sidebar.get_by_role("link", name="Robustness").click()
        expect(main.get_by_role("heading", name="Robustness")).to_be_visible()
        expect(main.get_by_text("The change, amplified ×31")).to_be_visible()
        pairs = main.locator("[class*='st-key-robustness_pair_'] [data-testid='stImage'] img")
        expect(pairs).to_have_count(4)  # two methods × (original, adversarial)
        expect(main.get_by_role("button", name="Adversarial PNG")).to_be_visible()
        _wait_idle(page)
        _assert_no_exception(page)
        _screenshot(page, ARTIFACTS / "browser-05-robustness.png")

        sidebar.get_by_role("link", name="Evaluate").click()
        expect(main.get_by_role("heading", name="Evaluate", exact=True)).to_be_visible()
        charts = main.locator('[data-testid="stPlotlyChart"]')
        expect(charts).to_have_count(2)  # deletion and insertion
        _wait_idle(page)
        main.get_by_role("button", name="Run the sanity check").click()
        expect(main.get_by_role("button", name="Sanity check up to date")).to_be_visible()
        expect(charts).to_have_count(3)
        expect(main.get_by_text(re.compile(r"(passes|flagged) — ")).first).to_be_visible()
        _wait_idle(page)
        _assert_no_exception(page)
        page.screenshot(path=str(ARTIFACTS / "browser-06-evaluate.png"), full_page=True)


def _pick(page, widget_key: str, option: str) -> None:
    """Choose ``option`` in the selectbox ``widget_key`` (a combo box: type to filter)."""
    page.locator(f".st-key-{widget_key} [role='combobox']").click()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type(option)
    page.get_by_role("option", name=option, exact=True).click()


def _set_number(page, widget_key: str, value: int) -> None:
    field = page.locator(f".st-key-{widget_key} input")
    field.fill(str(value))
    field.press("Enter")


def _no_error_shown(page) -> None:
    _assert_no_exception(page)
    errors = page.locator('[data-testid="stMain"] [data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.all_inner_texts()


def test_changes_during_a_long_computation_show_the_right_result(demo_server):
    """On the shipped demo model: start Kernel SHAP with 20,000 coalitions, and while its progress
    bar runs change the method, then the sample, then a parameter. Each time the page ends on the
    result the widgets ask for (the result's own method, parameters and image), with no error;
    then the same on Compare with a long card. This is how an abandoned request's late reply used
    to reach the next request."""
    from playwright.sync_api import expect

    with _chromium_browser() as browser:
        page = _open_page(browser, demo_server)
        main = page.locator('[data-testid="stMain"]')
        progress = main.locator('[data-testid="stProgress"]')
        expect(main.get_by_text("Grad-CAM overlay")).to_be_visible()
        _wait_idle(page)
        expect(main.get_by_text("image shapes_circle_0", exact=False)).to_be_visible()

        # 1. The method changes while Kernel SHAP runs.
        _pick(page, "explain_method", "Kernel SHAP")
        expect(main.get_by_text("Kernel SHAP overlay")).to_be_visible()
        _wait_idle(page)
        _set_number(page, "explain_kernel_shap_max_evals", 20000)
        expect(progress.first).to_be_visible()
        # A display control moved while it runs asks for a rerun of the result fragment only,
        # which Streamlit queues behind the running script; the method change after it must
        # still interrupt the computation (a full rerun takes over the queued fragment rerun).
        page.locator(".st-key-explain_alpha").get_by_role("slider").focus()
        page.keyboard.press("ArrowRight")
        _pick(page, "explain_method", "Layer-CAM")
        expect(main.get_by_text("Method: Layer-CAM (layer_cam)")).to_be_visible()
        _wait_idle(page)
        _no_error_shown(page)
        assert "max_evals" not in main.inner_text()
        _screenshot(page, ARTIFACTS / "browser-07-method-changed-mid-run.png")

        # 2. The sample changes while Kernel SHAP runs, then 3. a parameter.
        _pick(page, "explain_method", "Kernel SHAP")
        expect(progress.first).to_be_visible()
        _pick(page, "sidebar_sample", "shapes_star_0")
        expect(main.get_by_text("image shapes_star_0", exact=False)).to_be_visible()
        expect(progress.first).to_be_visible()
        _set_number(page, "explain_kernel_shap_max_evals", 64)
        expect(main.get_by_text("max_evals = 64", exact=False)).to_be_visible()
        _wait_idle(page)
        _no_error_shown(page)
        facts = main.inner_text()
        assert "Method: Kernel SHAP (kernel_shap)" in facts
        assert re.search(r"Target: star \(class 3", facts), facts
        _screenshot(page, ARTIFACTS / "browser-08-sample-and-parameter-mid-run.png")

        # 4. Compare: a long Kernel SHAP card, the sample changed while it runs.
        page.locator('[data-testid="stSidebar"]').get_by_role("link", name="Compare").click()
        expect(main.get_by_role("heading", name="Compare")).to_be_visible()
        _wait_idle(page)
        field = main.locator('[data-testid="stMultiSelect"] input')
        field.click()
        field.fill("Kernel SHAP")
        page.get_by_role("option", name="Kernel SHAP", exact=True).click()
        page.keyboard.press("Escape")
        _wait_idle(page)
        card = main.locator(".st-key-compare_card_kernel_shap")
        card.get_by_text("Parameters", exact=True).click()
        _set_number(page, "compare_kernel_shap_max_evals", 20000)
        expect(progress.first).to_be_visible()
        _pick(page, "sidebar_sample", "shapes_square_0")
        expect(main.get_by_text("image shapes_square_0", exact=False)).to_be_visible()
        cards = main.locator("[class*='st-key-compare_card_'] [data-testid='stImage'] img")
        expect(cards).to_have_count(5, timeout=COMPUTE_S * 1000)
        _wait_idle(page)
        _no_error_shown(page)
        captions = main.locator(
            "[class*='st-key-compare_card_'] [data-testid='stCaptionContainer']"
        )
        shown = " ".join(captions.all_inner_texts())
        assert shown.count("square (p") >= 5, shown
        page.screenshot(path=str(ARTIFACTS / "browser-09-compare-mid-run.png"), full_page=True)


#: Concurrent browser sessions in the many-users test (docs/RELIABILITY.md quotes this number).
SESSIONS = 4


def test_concurrent_browser_sessions_keep_their_own_inputs(server, tmp_path):
    """SESSIONS browser sessions on one server at once, each uploading its own model file and
    picking its own sample while the others do the same: each page shows its own model's
    prediction for its own image. (Streamlit runs each session's script in its own thread of
    the one server process; the service's caches and the worker pool are shared.)"""
    from playwright.sync_api import expect

    import explainers

    builders = [
        lambda: tiny_cam_model(seed=10),
        lambda: tiny_cam_model(seed=11),
        lambda: tiny_flatten_model(seed=12),
        lambda: tiny_cam_model(seed=13),
    ]
    # The stand-in assets' samples, as build_assets draws them (PNG keeps the pixels exactly).
    samples = {
        "shapes_circle_1": sample_image("circle", 0)[0],
        "shapes_square_1": sample_image("square", 1)[0],
    }
    users = []
    for index, build in enumerate(builders[:SESSIONS]):
        path = tmp_path / f"user{index}.keras"
        build().save(path)
        name = sorted(samples)[index % 2]
        probs = explainers.load_model(path).predict(samples[name])
        users.append((path, name, int(np.argmax(probs)), float(np.max(probs))))

    with _chromium_browser() as browser:
        pages = []
        for _ in users:
            page = _open_page(browser, server)
            pages.append(page)
        for page in pages:
            expect(page.get_by_text("Grad-CAM overlay")).to_be_visible()
        # Every session uploads its model before any waits: the server runs them together.
        for page, (path, *_rest) in zip(pages, users, strict=True):
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_text("Upload a file", exact=True).click()
            uploader = sidebar.locator('[data-testid="stFileUploader"]').filter(
                has_text="Keras model file"
            )
            uploader.locator('input[type="file"]').set_input_files(str(path))
        for page, (path, *_rest) in zip(pages, users, strict=True):
            sidebar = page.locator('[data-testid="stSidebar"]')
            expect(sidebar.get_by_text(f"Loaded {path.name}")).to_be_visible()
        # Each page's run after its upload (explaining the default sample with the new model)
        # finishes first: on a loaded CI machine the four runs share two cores, and a clean
        # clone's run once spent more than two minutes there before the picker took a click.
        for page in pages:
            _wait_idle(page, 3 * COMPUTE_S)
        # Then every session picks its sample, again all at once.
        for page, (_, name, *_rest) in zip(pages, users, strict=True):
            page.locator(".st-key-sidebar_sample [role='combobox']").click()
            page.keyboard.press("ControlOrMeta+a")
            page.keyboard.type(name)
            page.get_by_role("option", name=name, exact=True).click()
        problems = []
        for index, (page, (path, name, top, p)) in enumerate(zip(pages, users, strict=True)):
            main = page.locator('[data-testid="stMain"]')
            expect(main.get_by_text(f"image {name}", exact=False)).to_be_visible()
            _wait_idle(page)
            _assert_no_exception(page)
            text = main.inner_text()
            shown = re.findall(r"Model (\S+) · image (\S+) .*?predicted (.+?) \(([\d.]+)%\)", text)
            expected = (path.name, name, f"class {top}")
            if not (
                len(shown) == 1
                and shown[0][:3] == expected
                and abs(float(shown[0][3]) / 100 - p) <= 0.0006
            ):
                problems.append(
                    f"session {index}: expected {expected} at {p:.4f}, page shows {shown}"
                )
            _screenshot(page, ARTIFACTS / f"browser-10-session-{index}.png")
        assert not problems, problems


def test_audit_page_runs_a_demo_audit_and_opens_an_image_on_explain(demo_server):
    """On the shipped shortcut model: audit 60 generated shortcut_half images from the Audit
    page, see the SpRAy scatter and the flags, open a cluster, open one of its images on Explain
    (which explains it), come back and download the HTML report."""
    from playwright.sync_api import expect

    from dashboard import audits

    pattern = "demo-shortcut_half-60-s7__demo_shortcut__*"
    for old in audits.audit_root().glob(pattern):  # a run left by an earlier test session
        shutil.rmtree(old, ignore_errors=True)
    try:
        with _chromium_browser() as browser:
            page = _open_page(browser, demo_server)
            sidebar = page.locator('[data-testid="stSidebar"]')
            main = page.locator('[data-testid="stMain"]')
            expect(main.get_by_text("Grad-CAM overlay")).to_be_visible()
            _wait_idle(page)
            _pick(page, "sidebar_demo_model", "Shapes CNN — shortcut (cheats)")
            expect(sidebar.get_by_text("Loaded demo_shortcut.keras")).to_be_visible()
            _wait_idle(page)

            sidebar.get_by_role("link", name="Audit").click()
            expect(main.get_by_role("heading", name="Audit", exact=True)).to_be_visible()
            _wait_idle(page)
            _set_number(page, "audit_demo_n", 60)
            _wait_idle(page)
            _set_number(page, "audit_demo_seed", 7)
            expect(main.get_by_text("60 images in 4 classes")).to_be_visible()
            _wait_idle(page)
            main.get_by_role("button", name="Run the audit").click()

            # The run, then its analysis, finish in the workers; the page shows the review.
            scatter = main.locator(
                "[class*='st-key-audit_scatter_'] [data-testid='stVegaLiteChart']"
            )
            expect(scatter).to_have_count(1, timeout=COMPUTE_S * 1000)
            expect(main.get_by_text(re.compile(r"^Flags \(\d+\)$"))).to_be_visible()
            expect(main.get_by_text("Attention at a fixed place").first).to_be_visible()
            _wait_idle(page)
            _no_error_shown(page)
            top = "e => e.scrollIntoView({block: 'start'})"
            main.get_by_role("heading", name="Accuracy").evaluate(top)
            _screenshot(page, ARTIFACTS / "browser-11-audit-review.png")
            main.get_by_role("heading", name="Class mean maps").evaluate(top)
            _screenshot(page, ARTIFACTS / "browser-12-audit-mean-maps.png")
            main.get_by_role("heading", name="Clusters of explanations (SpRAy)").evaluate(top)
            _screenshot(page, ARTIFACTS / "browser-13-audit-scatter.png")

            # Hovering a point shows its image and its map (a picture in Vega's tooltip).
            tooltip = page.locator("#vg-tooltip-element.visible")
            where = _hover_a_point(page, scatter, tooltip)
            assert where is not None, "no point of the scatter showed a picture on hover"
            title = tooltip.locator("h2").inner_text()
            picture = tooltip.locator("img")
            assert picture.evaluate("i => [i.complete, i.naturalWidth, i.naturalHeight]") == [
                True,
                2 * audits.HOVER_SIDE + 2,
                audits.HOVER_SIDE,
            ]
            _assert_image_and_map(picture.get_attribute("src"))
            cluster = tooltip.locator("tr", has_text="cluster").locator(".value").inner_text()
            _screenshot(page, ARTIFACTS / "browser-13b-audit-hover.png")

            # Clicking it opens its image and map beside the chart, and its cluster below.
            page.mouse.click(*where)
            detail = main.locator("[data-testid='stColumn']").filter(
                has=page.get_by_role("button", name="Open on Explain")
            )
            expect(detail.get_by_text(title, exact=True)).to_be_visible()
            expect(detail.get_by_text("grad_cam map")).to_be_visible()
            expect(detail.locator("[data-testid='stImage'] img")).to_have_count(2)
            number = re.match(r"cluster (\d+) ·", cluster)[1]
            expect(main.get_by_text(re.compile(rf"^Cluster {number} of circle · "))).to_be_visible()
            _wait_idle(page)
            _no_error_shown(page)
            page.mouse.move(5, 5)  # the tooltip away
            main.get_by_role("heading", name="Clusters of explanations (SpRAy)").evaluate(top)
            _screenshot(page, ARTIFACTS / "browser-13c-audit-point.png")

            # A box dragged around every point selects them all (shown below); a double-click
            # clears the selection.
            centres = _symbol_centres(scatter)
            xs, ys = [x for x, _ in centres], [y for _, y in centres]
            page.mouse.move(min(xs) - 8, min(ys) - 8)
            page.mouse.down()
            page.mouse.move(max(xs) + 8, max(ys) + 8, steps=10)
            page.mouse.up()
            expect(
                main.get_by_text(f"{len(centres)} images selected — shown below.")
            ).to_be_visible()
            expect(main.get_by_text(f"{len(centres)} selected images")).to_be_visible()
            _wait_idle(page)
            _no_error_shown(page)
            page.mouse.move(5, 5)
            _screenshot(page, ARTIFACTS / "browser-13d-audit-box.png")
            page.mouse.dblclick(min(xs) - 8, min(ys) - 8)
            expect(
                main.get_by_text("Click a point to see its image and its map here.")
            ).to_be_visible()
            _wait_idle(page)

            # Open cluster 1 of the first class: its images with their maps.
            main.get_by_role("radio", name=re.compile(r"^cluster 1 · ")).click()
            expect(main.get_by_text(re.compile(r"^Cluster 1 of circle · "))).to_be_visible()
            _wait_idle(page)
            view = main.locator(".st-key-audit_cluster_view")
            thumbnails = view.locator("[data-testid='stImage'] img")
            expect(thumbnails.first).to_be_visible()
            assert thumbnails.count() >= 2  # the cluster's mean map and its images
            view.evaluate(top)
            _screenshot(page, ARTIFACTS / "browser-14-audit-cluster.png")
            main.get_by_role("heading", name=re.compile(r"^Flags")).evaluate(top)
            _screenshot(page, ARTIFACTS / "browser-15-audit-flags.png")

            # One image of the cluster on Explain: the page explains it with the sidebar model.
            caption = view.locator("[data-testid='stImageCaption']").nth(1).inner_text()
            index = int(re.match(r"#(\d+)", caption)[1])
            view.get_by_role("button", name="Explain").first.click()
            expect(main.get_by_role("heading", name="Explain", exact=True)).to_be_visible()
            expect(main.get_by_text(f"image shortcut_half-7-{index:06d}")).to_be_visible()
            expect(main.get_by_text("Grad-CAM overlay")).to_be_visible()
            _wait_idle(page)
            _no_error_shown(page)
            # ... with the model chosen before (the switch must not reset the sidebar).
            expect(main.get_by_text("Model demo_shortcut.keras")).to_be_visible()
            expect(sidebar.get_by_text("Loaded demo_shortcut.keras")).to_be_visible()
            main.get_by_role("heading", name="Explain", exact=True).evaluate(top)
            _screenshot(page, ARTIFACTS / "browser-16-audit-image-on-explain.png")

            # Back on Audit the run is still open; its report downloads.
            sidebar.get_by_role("link", name="Audit").click()
            button = main.get_by_role("button", name="Download the HTML report")
            expect(button).to_be_visible()
            _wait_idle(page)
            with page.expect_download(timeout=COMPUTE_S * 1000) as download_info:
                button.click()
            report_path = ARTIFACTS / "browser-audit-report.html"
            download_info.value.save_as(str(report_path))
            file_name = download_info.value.suggested_filename
            _no_error_shown(page)
    finally:
        for made in audits.audit_root().glob(pattern):
            shutil.rmtree(made, ignore_errors=True)

    report = report_path.read_text(encoding="utf-8")
    assert file_name.endswith("-grad_cam.html"), file_name
    assert "Dataset audit report" in report and "demo:shortcut_half" in report
    assert "fixed_location" in report
    assert report.count("data:image/png;base64,") >= 10


def _symbol_centres(chart) -> list[tuple[float, float]]:
    """Where the points of a Vega-Lite scatter drawn as SVG are on the page (none on a canvas)."""
    centres = []
    for symbol in chart.locator("svg.marks g.mark-symbol.role-mark path").all():
        box = symbol.bounding_box()
        if box:
            centres.append((box["x"] + box["width"] / 2, box["y"] + box["height"] / 2))
    return centres


def _hover_a_point(page, chart, tooltip) -> tuple[float, float] | None:
    """Move the mouse over the points of a Vega-Lite scatter (its symbols, or a grid over a
    canvas) until the tooltip shows a picture; where it did, or None."""
    spots = _symbol_centres(chart)
    if not spots:
        box = chart.locator("canvas, svg.marks").first.bounding_box()
        spots = [
            (box["x"] + dx, box["y"] + dy)
            for dy in range(10, int(box["height"]) - 10, 6)
            for dx in range(10, int(box["width"]) - 10, 6)
        ]
    for x, y in spots:
        page.mouse.move(x, y)
        with contextlib.suppress(Exception):
            tooltip.locator("img[src^='data:image/']").wait_for(timeout=300)
            return x, y
    return None


def _assert_image_and_map(src: str) -> None:
    """A hover picture is the image and, beside it, the image with its map over it."""
    import base64
    import io

    from PIL import Image

    head, _, data = src.partition(",")
    assert head in ("data:image/jpeg;base64", "data:image/png;base64"), head
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), float)
    half = picture.shape[1] // 2
    image, overlay = picture[:, : half - 1], picture[:, -(half - 1) :]
    assert image.std() > 10 and overlay.std() > 10  # neither is blank
    assert np.abs(image - overlay).mean() > 10  # the map is drawn over the right one


def test_training_page_plays_the_bundled_shortcut_run(demo_server):
    """The Training page on the bundled shortcut run: its overlays at its last epoch beside its
    curves, the slider moved back to the first epoch (before training), Play stepping through
    every logged epoch and stopping at the last; then the bundled fixed run compared with it at
    the fixed run's last epoch."""
    from playwright.sync_api import expect

    from dashboard import training_runs

    shortcut = training_runs.open_view(ROOT / "assets" / "runs" / "shortcut")  # shipped
    n, last = shortcut.n_images, len(shortcut.epochs) - 1
    top = "e => e.scrollIntoView({block: 'start'})"
    with _chromium_browser() as browser:
        page = _open_page(browser, f"{demo_server}/training")
        main = page.locator('[data-testid="stMain"]')
        expect(main.get_by_role("heading", name="Training", exact=True)).to_be_visible()
        _wait_idle(page)
        _pick(page, "training_run", training_runs.BUNDLED_RUNS["shortcut"][0])
        captions = main.locator("[data-testid='stImageCaption']")
        expect(captions.first).to_have_text(training_runs.caption(shortcut, "grad_cam", last, 0))
        _wait_idle(page)
        _no_error_shown(page)
        pictures = main.locator("[data-testid='stImage'] img")
        assert pictures.count() >= n + 1  # the overlays and the first image's film strip
        assert pictures.nth(0).evaluate("i => i.complete && i.naturalWidth") == 192
        slider = main.locator(".st-key-training_epoch input[type='range']")
        label = training_runs.epoch_label
        assert slider.get_attribute("aria-valuetext") == label(shortcut.epochs[-1])
        assert main.locator(".st-key-training_attention_chart").count() == 1
        main.locator(".st-key-training_epoch").evaluate(top)
        _screenshot(page, ARTIFACTS / "browser-17-training-last-epoch.png")

        # Back to the first logged epoch with the keyboard: the maps and numbers of epoch 1.
        slider.focus()
        page.keyboard.press("Home")
        expect(captions.first).to_have_text(training_runs.caption(shortcut, "grad_cam", 0, 0))
        # The charts mark the same epoch (a keyed chart once stayed one change behind).
        chart = main.locator(".st-key-training_attention_chart")
        expect(chart).to_contain_text(f"epoch {int(shortcut.epochs[0]) + 1}")
        _wait_idle(page)
        _screenshot(page, ARTIFACTS / "browser-18-training-first-epoch.png")

        # Play (fast): the slider steps on by itself and stops at the last epoch.
        main.get_by_role("radio", name=re.compile("^Fast")).click()
        _wait_idle(page)
        main.get_by_role("button", name="Play").click()
        expect(main.get_by_role("button", name="Pause")).to_be_visible()
        expect(slider).to_have_attribute("aria-valuetext", label(shortcut.epochs[1]))
        _screenshot(page, ARTIFACTS / "browser-19-training-playing.png")
        expect(main.get_by_role("button", name="Play")).to_be_visible(timeout=60_000)
        expect(slider).to_have_attribute("aria-valuetext", label(shortcut.epochs[-1]))
        expect(captions.first).to_have_text(training_runs.caption(shortcut, "grad_cam", last, 0))
        expect(chart).to_contain_text(f"epoch {int(shortcut.epochs[-1]) + 1}")
        _wait_idle(page)
        _no_error_shown(page)
        main.locator(".st-key-training_epoch").evaluate(top)
        _screenshot(page, ARTIFACTS / "browser-20-training-played.png")

        # The story side by side: the fixed model's run (RRR on the same images) under it.
        fixed = training_runs.open_view(ROOT / "assets" / "runs" / "fixed")
        _pick(page, "training_compare", training_runs.BUNDLED_RUNS["fixed"][0])
        expect(main.get_by_text(training_runs.BUNDLED_RUNS["fixed"][0]).first).to_be_visible()
        _wait_idle(page)
        # The slider now spans both runs' epochs (the rerun replaces the old one).
        expect(slider).to_have_count(1)
        expect(slider).to_have_attribute("max", str(len(fixed.epochs) - 1))
        slider.focus()
        page.keyboard.press("End")
        expect(slider).to_have_attribute("aria-valuetext", label(fixed.epochs[-1]))
        last_fixed = len(fixed.epochs) - 1
        expect(
            main.get_by_text(training_runs.caption(fixed, "grad_cam", last_fixed, 0), exact=True)
        ).to_be_visible()
        _wait_idle(page)
        _no_error_shown(page)
        main.locator(".st-key-training_epoch").evaluate(top)
        _screenshot(page, ARTIFACTS / "browser-21-training-shortcut-vs-fixed.png")


def _plot_area(chart) -> dict[str, float]:
    """The bounding box of a Plotly chart's plotting area (its drag layer)."""
    area = chart.locator(".nsewdrag").first
    box = area.bounding_box()
    assert box is not None, "the region picture has no plotting area"
    return box


def _at(box: dict[str, float], x: float, y: float, side: int) -> tuple[float, float]:
    """Screen position of image pixel (x, y) in a chart showing a ``side``-px square image."""
    return box["x"] + (x + 0.5) / side * box["width"], box["y"] + (y + 0.5) / side * box["height"]


def test_segmentation_region_by_click_and_box_and_multilabel_labels(demo_server):
    """On the shipped segmentation model and a scene with several shapes: Explain shows the
    predicted mask; a click on one shape explains that shape (its connected component), a dragged
    box explains the box; Compare shows every card for the region. Then the multi-label model:
    a label that is not the top one, on Explain and on Compare."""
    from PIL import Image
    from playwright.sync_api import expect

    samples = ROOT / "assets" / "samples"
    labels = np.asarray(Image.open(samples / "scenes_0_labels.png"))
    side = labels.shape[0]
    present = [int(v) for v in np.unique(labels) if v > 0]
    assert len(present) >= 2, "scenes_0 should hold several shapes"
    # The smallest-labelled shape's centre of mass, in image pixels.
    shape = present[-1]
    ys, xs = np.nonzero(labels == shape)
    centre = (float(np.median(xs)), float(np.median(ys)))
    seg_names = (ROOT / "assets/models/demo_segmentation_labels.txt").read_text().split()

    with _chromium_browser() as browser:
        page = _open_page(browser, demo_server)
        sidebar = page.locator('[data-testid="stSidebar"]')
        main = page.locator('[data-testid="stMain"]')
        expect(main.get_by_text("Grad-CAM overlay")).to_be_visible()
        _wait_idle(page)
        _pick(page, "sidebar_demo_model", "Shapes segmentation (encoder–decoder)")
        expect(sidebar.get_by_text("Loaded demo_segmentation.keras")).to_be_visible()
        _wait_idle(page)
        _pick(page, "sidebar_sample", "scenes_0")
        _wait_idle(page)
        box = main.locator(".st-key-explain_target_box")
        expect(box).to_be_visible()
        expect(main.get_by_text("Grad-CAM overlay")).to_be_visible()
        facts = main.inner_text()
        assert "logits over its predicted pixels" in facts, facts
        _no_error_shown(page)
        _screenshot(page, ARTIFACTS / "browser-30-segmentation-predicted.png")

        # A click on one shape.
        box.get_by_text("Click a shape").click()
        expect(main.get_by_text("Choose the region in the picture above")).to_be_visible()
        _wait_idle(page)
        chart = box.locator('[data-testid="stPlotlyChart"]')
        x, y = _at(_plot_area(chart), *centre, side)
        page.mouse.click(x, y)
        expect(main.get_by_text("connected component at", exact=False).first).to_be_visible()
        _wait_idle(page)
        _no_error_shown(page)
        facts = main.inner_text()
        assert f"sum of {seg_names[shape]}'s logits" in facts, facts
        _screenshot(page, ARTIFACTS / "browser-31-segmentation-clicked-shape.png")
        main.get_by_text("Grad-CAM overlay").scroll_into_view_if_needed()
        _screenshot(page, ARTIFACTS / "browser-31b-segmentation-clicked-shape-map.png")

        # A box dragged over the top-left quarter.
        box.get_by_text("Draw a box").click()
        _wait_idle(page)
        area = _plot_area(chart)
        start = _at(area, 2, 2, side)
        end = _at(area, side / 2, side / 2, side)
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=5)
        page.mouse.move(*end, steps=5)
        page.mouse.up()
        expect(main.get_by_text("over the box (", exact=False).first).to_be_visible()
        _wait_idle(page)
        _no_error_shown(page)
        main.get_by_text("Grad-CAM overlay").scroll_into_view_if_needed()
        _screenshot(page, ARTIFACTS / "browser-32-segmentation-box.png")

        # Compare: the same region for every card.
        box.get_by_text("Click a shape").click()
        _wait_idle(page)
        sidebar.get_by_role("link", name="Compare").click()
        expect(main.get_by_role("heading", name="Compare")).to_be_visible()
        _wait_idle(page)
        compare_box = main.locator(".st-key-compare_target_box")
        expect(compare_box).to_be_visible()
        compare_box.get_by_text("All its predicted pixels").click()
        _wait_idle(page)
        cards = main.locator("[class*='st-key-compare_card_'] [data-testid='stImage'] img")
        expect(cards.first).to_be_visible()
        _wait_idle(page)
        _no_error_shown(page)
        cards.first.scroll_into_view_if_needed()
        _screenshot(page, ARTIFACTS / "browser-33-segmentation-compare.png")

        # The multi-label model: a label that is not the top one.
        _pick(page, "sidebar_demo_model", "Shapes multi-label (several shapes per image)")
        expect(sidebar.get_by_text("Loaded demo_multilabel.keras")).to_be_visible()
        _wait_idle(page)
        sidebar.get_by_role("link", name="Explain").click()
        expect(main.get_by_role("heading", name="Explain")).to_be_visible()
        _wait_idle(page)
        picker = main.locator("[class*='st-key-explain_label_'] [role='combobox']")
        picker.click()
        options = page.get_by_role("option")
        expect(options).to_have_count(4)  # the list opens after the click, later under load
        texts = options.all_inner_texts()
        assert len(texts) == 4 and all("p = " in t for t in texts), texts
        second = texts[1]
        options.nth(1).click()
        name = second.split(" (p")[0]
        expect(main.get_by_text(f"Target: label {name}")).to_be_visible()
        _wait_idle(page)
        _no_error_shown(page)
        main.get_by_text("Grad-CAM overlay").scroll_into_view_if_needed()
        _screenshot(page, ARTIFACTS / "browser-34-multilabel-explain.png")
        sidebar.get_by_role("link", name="Compare").click()
        expect(main.get_by_role("heading", name="Compare")).to_be_visible()
        _wait_idle(page)
        expect(cards.first).to_be_visible()
        _wait_idle(page)
        _no_error_shown(page)
        cards.first.scroll_into_view_if_needed()
        _screenshot(page, ARTIFACTS / "browser-35-multilabel-compare.png")
