"""The audit's Ray engine (``run_audit(..., engine="ray")``): the same run folder as the local
engine, resumable, the model file inspected before any actor loads it, Ray optional.

One local Ray (``ray.init(num_cpus=2)``) for the module; one actor pool is started in all (the
start-up, TensorFlow's import in each actor, is most of this module's time). Ray is required:
without it this module fails to import — it does not skip."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import ray

from explainers.audit import demo_dataset, open_run, run_audit
from explainers.audit.ray_engine import (
    AuditActor,
    import_ray,
    model_payload,
    verified_model_file,
)
from explainers.cli import main as cli_main
from explainers.errors import ExplainerError, ParameterError, UnsafeModelError

from .conftest import DEMO_LABELS, SHORTCUT_MODEL

METHODS = ["grad_cam", "vanilla_gradients"]  # one batched method, one per-image method


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


class _Stop(Exception):
    pass


def _stop_after_first_commit(fraction, message):
    if message.startswith("committed"):
        raise _Stop


def test_a_ray_run_resumes_a_local_run_into_the_same_folder(tmp_path, local_ray, shortcut_bundle):
    dataset = demo_dataset("shortcut_half", 24, seed=1)
    whole = tmp_path / "whole"
    run_audit(shortcut_bundle, dataset, whole, methods=METHODS, chunk_size=8)

    mixed = tmp_path / "mixed"  # first chunk locally, the rest on Ray
    with pytest.raises(_Stop):
        run_audit(
            SHORTCUT_MODEL,
            dataset,
            mixed,
            methods=METHODS,
            chunk_size=8,
            labels=DEMO_LABELS,
            progress=_stop_after_first_commit,
        )
    assert json.loads((mixed / "progress.json").read_text()) == {"done": 8}
    summary = run_audit(
        SHORTCUT_MODEL,
        dataset,
        mixed,
        methods=METHODS,
        chunk_size=8,
        labels=DEMO_LABELS,
        engine="ray",
        batch_size=5,  # batches that straddle chunks: rows are regrouped by index
    )
    # Only the images not committed were sent to the actors.
    assert (summary.resumed_from, summary.computed, summary.done) == (8, 16, 24)
    assert ray.is_initialized()  # an existing Ray is used, and left running

    a, b = open_run(mixed), open_run(whole)
    assert a.complete and a.table.column_names == b.table.column_names
    assert sorted(p.name for p in (mixed / "table").iterdir()) == [
        "part-00000000.parquet",
        "part-00000008.parquet",
        "part-00000016.parquet",
    ]
    # The same manifest but for the time and the model's path (a bundle records its file name).
    for manifest in (a.manifest, b.manifest):
        manifest.pop("created")
        manifest["model"].pop("path")
    assert a.manifest == b.manifest
    rows_a, rows_b = a.table.to_pylist(), b.table.to_pylist()
    assert [r["error"] for r in rows_a] == [None] * 24
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        for column, value in row_b.items():
            if column.endswith("__seconds"):
                assert row_a[column] > 0
            elif isinstance(value, float):
                assert row_a[column] == pytest.approx(value, rel=1e-5, abs=1e-9), column
            else:
                assert row_a[column] == value, column
    assert {r["prediction"] for r in rows_a} == {0, 1, 2, 3}
    for name in METHODS + list(a.masks):
        left = (a.maps if name in a.maps else a.masks)[name].astype(np.float32)
        right = (b.maps if name in b.maps else b.masks)[name].astype(np.float32)
        scale = float(np.abs(right).max())
        assert scale > 0
        np.testing.assert_allclose(left, right, rtol=2e-3, atol=1e-5 * scale)
    assert set(a.masks) == {"object", "marker"}

    # Complete: nothing is sent, and Ray is not needed at all.
    again = run_audit(shortcut_bundle, dataset, mixed, methods=METHODS, chunk_size=8, engine="ray")
    assert (again.computed, again.done) == (0, 24)


def test_an_actor_refuses_bytes_that_are_not_the_inspected_ones(tmp_path, shortcut_bundle):
    bundle, path, payload = model_payload(SHORTCUT_MODEL, DEMO_LABELS)
    assert payload.sha256 == bundle.sha256 == shortcut_bundle.sha256
    assert path == str(SHORTCUT_MODEL.resolve())
    assert verified_model_file(payload, tmp_path).read_bytes() == SHORTCUT_MODEL.read_bytes()
    tampered = type(payload)(
        **{**payload.__dict__, "data": payload.data[:-1] + bytes([payload.data[-1] ^ 1])}
    )
    with pytest.raises(UnsafeModelError, match="not to the"):
        verified_model_file(tampered, tmp_path / "nothing-written")
    with pytest.raises(UnsafeModelError, match="refusing to load them"):
        AuditActor(tampered, demo_dataset("honest", 2), job=None)  # type: ignore[arg-type]


def test_a_hostile_model_file_is_refused_before_ray_starts(tmp_path, monkeypatch):
    from .hostile_files import build_lambda_keras

    model, marker = tmp_path / "lambda.keras", tmp_path / "ran.txt"
    build_lambda_keras(model, marker)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(UnsafeModelError, match="Lambda"):
        run_audit(model, demo_dataset("honest", 2), tmp_path / "run", engine="ray")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_without_ray_the_engine_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ExplainerError, match=r'pip install "ray\[data\]==2.60.0"'):
        import_ray()


def test_engine_and_address_are_checked(tmp_path, shortcut_bundle, capsys):
    dataset = demo_dataset("honest", 2)
    with pytest.raises(ParameterError, match="unknown audit engine 'spark'"):
        run_audit(shortcut_bundle, dataset, tmp_path / "a", engine="spark")
    with pytest.raises(ParameterError, match="needs engine='ray'"):
        run_audit(shortcut_bundle, dataset, tmp_path / "b", address="127.0.0.1:6379")
    argv = ["audit", "--model", str(SHORTCUT_MODEL), "--data", "demo:honest:2"]
    code = cli_main([*argv, "--out", str(tmp_path / "c"), "--address", "127.0.0.1:6379"])
    assert code == 2 and "needs engine='ray'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([*argv, "--out", str(tmp_path / "d"), "--engine", "spark"])
