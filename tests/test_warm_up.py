"""The server's warm-up (app.py's st.App lifespan → dashboard.computation.warm_up) computes exactly
what a first visitor's Explain page asks for: after it, opening the page makes no model call."""

from __future__ import annotations

import pytest

from .dashboard_helpers import build_assets

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest


def test_the_first_page_after_warm_up_makes_no_model_call(tmp_path, monkeypatch):
    from dashboard import service
    from dashboard.computation import warm_up

    from .conftest import ROOT

    monkeypatch.setenv("EXPLAINER_ASSETS_DIR", str(build_assets(tmp_path)))
    service.clear_caches()
    service.reset_compute_count()
    summary = warm_up()
    assert summary.startswith("warm-up done"), summary
    assert service.compute_count("load_model") == 1
    assert service.compute_count("predict") == 1
    assert service.compute_count("explain:grad_cam") == 1

    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.session_state["explain_method"] == "grad_cam"
    assert "Grad-CAM overlay" in "\n".join(str(m.value) for m in app.markdown)
    # Everything came from the warm-up's cache.
    assert service.compute_count("load_model") == 1
    assert service.compute_count("predict") == 1
    assert service.compute_count("explain") == 1


def test_warm_up_without_demo_assets_says_so(tmp_path, monkeypatch):
    from dashboard.computation import warm_up

    monkeypatch.setenv("EXPLAINER_ASSETS_DIR", str(tmp_path))  # empty: no models, no samples
    assert warm_up() == "warm-up skipped: no demo model or sample image is installed"
