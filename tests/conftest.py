from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "assets" / "models" / "demo_shapes.keras"
SHORTCUT_MODEL = ROOT / "assets" / "models" / "demo_shortcut.keras"
FIXED_MODEL = ROOT / "assets" / "models" / "demo_fixed.keras"
DEMO_LABELS = ROOT / "assets" / "models" / "demo_labels.txt"


@pytest.fixture(scope="session")
def zoo_bundles():
    """One bundle per model in the zoo, built once per test session."""
    import explainers

    from .models_zoo import ZOO

    return {name: explainers.bundle_from_model(build()) for name, build in ZOO.items()}


@pytest.fixture(scope="session")
def demo_bundle():
    import explainers

    return explainers.load_model(DEMO_MODEL, labels=DEMO_LABELS)


@pytest.fixture(scope="session")
def shortcut_bundle():
    import explainers

    return explainers.load_model(SHORTCUT_MODEL, labels=DEMO_LABELS)


@pytest.fixture(scope="session")
def fixed_bundle():
    import explainers

    return explainers.load_model(FIXED_MODEL, labels=DEMO_LABELS)


@pytest.fixture
def hook_pool(monkeypatch):
    """Make pools of workers with the test-only jobs (crash, sleep, allocate, progress) switched
    on; every pool made is shut down after the test."""
    monkeypatch.setenv("EXPLAINER_WORKER_TEST_HOOKS", "1")
    from dashboard import worker

    pools: list[worker.WorkerPool] = []

    def make(**settings) -> worker.WorkerPool:
        made = worker.WorkerPool(worker.WorkerSettings(**settings))
        pools.append(made)
        return made

    yield make
    for made in pools:
        made.shutdown()
