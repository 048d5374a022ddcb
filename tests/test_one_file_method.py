"""Adding a method is one file: a method defined in a test module (``throwaway_method``), loaded
through ``EXPLAINERS_METHOD_MODULES`` with no other edit, is in the registry, the CLI and the
dashboard's Compare page, and computes there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import DEMO_LABELS, DEMO_MODEL, ROOT

MODULE = "tests.throwaway_method"
# Its name and label, written out: importing the module would register the method in this
# process for every test that runs after collection.
NAME = "test_centre_prior"
LABEL = "Test centre prior"


@pytest.fixture
def registered(monkeypatch):
    """The throw-away method registered in this process (and in workers started now); removed
    again afterwards, so no other test sees it."""
    from explainers.core.specs import REGISTRY
    from explainers.registry import METHOD_MODULES_ENV

    monkeypatch.setenv(METHOD_MODULES_ENV, MODULE)
    yield
    REGISTRY.pop(NAME, None)
    sys.modules.pop(MODULE, None)


def test_the_registry_lists_it_and_explain_runs_it(registered):
    import explainers

    names = [m.name for m in explainers.available_methods()]
    assert NAME in names
    spec = explainers.get_method(NAME)
    assert spec.engines == ("native",) and spec.reports_progress
    bundle = explainers.load_model(DEMO_MODEL, labels=DEMO_LABELS)
    image = np.zeros((96, 96, 3), np.uint8)
    result = explainers.explain(bundle, image, NAME, **spec.fast_params)
    p = result.extras["probability"]
    # The map by hand: p at the centre of an even-sized image is p·exp(−(0.5² + 0.5²)/(2σ²)).
    sigma = 0.25 * np.hypot(96, 96) / 2
    assert result.attribution.max() == pytest.approx(p * np.exp(-0.5 / (2 * sigma**2)), rel=1e-5)
    assert result.extras["magnitude"]["units"] == "probability × centre weight"
    assert result.extras["magnitude"]["score"] == "probability"


def test_an_unimportable_method_module_is_a_clear_error(monkeypatch):
    import explainers
    from explainers.registry import METHOD_MODULES_ENV

    monkeypatch.setenv(METHOD_MODULES_ENV, "no_such_module_here")
    with pytest.raises(explainers.ParameterError, match=r"no_such_module_here.*cannot be imported"):
        explainers.available_methods()


def test_the_cli_lists_and_runs_it(registered, tmp_path, capsys):
    from explainers.cli import main
    from explainers.registry import METHOD_MODULES_ENV

    assert main(["methods", "--json"]) == 0  # in this process: the fixture set the variable
    methods = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert methods[NAME]["label"] == LABEL
    # And as a user runs it, in a fresh process that reads the variable itself.
    env = {**os.environ, METHOD_MODULES_ENV: MODULE}
    npy = tmp_path / "raw.npy"
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "explainers",
            "explain",
            "--model",
            str(DEMO_MODEL),
            "--image",
            str(ROOT / "assets" / "samples" / "shapes_circle_0.png"),
            "--method",
            NAME,
            "--param",
            "spread=0.3",
            "--out",
            str(tmp_path / "heat.png"),
            "--npy",
            str(npy),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    raw = np.load(npy)
    assert raw.shape == (96, 96) and np.unravel_index(raw.argmax(), raw.shape) in {
        (47, 47),
        (47, 48),
        (48, 47),
        (48, 48),
    }


def test_the_compare_page_offers_and_computes_it(registered):
    from streamlit.testing.v1 import AppTest

    from dashboard import service, worker

    # Workers inherit the environment when they start: start fresh ones that load the module.
    worker.shutdown_pool()
    service.clear_caches()
    try:
        app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
        app.run()
        app.switch_page("app_pages/compare.py").run()
        assert not app.exception, [e.value for e in app.exception]
        picker = app.multiselect(key="compare_methods")
        assert NAME in picker.options or LABEL in picker.options
        picker.set_value([NAME]).run()
        assert not app.exception, [e.value for e in app.exception]
        assert not app.error, [e.value for e in app.error]
        assert f"##### {LABEL}" in "\n".join(str(m.value) for m in app.markdown)
        assert service.compute_count(f"explain:{NAME}") == 1
        # Its parameter control comes from the spec.
        assert app.slider(key=f"compare_{NAME}_spread").value == 0.5
    finally:
        worker.shutdown_pool()
        service.clear_caches()
