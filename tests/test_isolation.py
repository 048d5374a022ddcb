"""The dashboard survives what a model can do to the process that runs it, and keeps users apart.

Models run in worker processes (``dashboard.worker``). These tests make a worker crash (a real
``os.abort()``), hang past the time limit and grow past the memory ceiling, and check that each
costs one request: the dashboard process keeps answering and the next request succeeds. Then
several sessions compute at the same time, and each must get exactly the result computed for its
own model and image. The figures quoted in docs/RELIABILITY.md come from these tests.
"""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import explainers
from dashboard import protocol, service, worker
from dashboard.protocol import ServiceError

from .dashboard_helpers import (
    APP,
    CLASS_NAMES,
    build_assets,
    join_all,
    png_bytes,
    sample_image,
    tiny_cam_model,
    tiny_flatten_model,
)

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

DATA = Path(__file__).parent / "data"
#: Concurrent sessions in the many-users tests (docs/RELIABILITY.md quotes this number).
SESSIONS = 4
#: The memory ceiling given to the worker in the memory test (docs/RELIABILITY.md quotes it).
TEST_MEMORY_CEILING_MB = 1536


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("isolation-assets"))


@pytest.fixture(scope="module")
def demo_ref(assets):
    return service.file_model_ref(assets / "models" / "tiny_standin.keras")


def _pixels(seed: int = 0) -> np.ndarray:
    return sample_image("circle", seed)[0]


def _direct_probs(ref) -> np.ndarray:
    """The stand-in's probabilities for :func:`_pixels`, computed in this process."""
    return explainers.load_model(ref.location).predict(_pixels())


def test_a_crashing_worker_costs_one_request(hook_pool, demo_ref):
    pool = hook_pool(workers=1)
    summary = pool.call("describe", {"ref": demo_ref}, action="load the model")
    assert summary.n_classes == len(CLASS_NAMES)
    (crashed_pid,) = pool.pids()
    with pytest.raises(ServiceError) as caught:
        pool.call("test_abort", action="compute occlusion")
    message = str(caught.value)
    assert caught.value.retryable
    assert "computation crashed while trying to compute occlusion" in message
    assert "SIGABRT" in message and "Press Retry" in message
    assert pool.pids() == []  # the dead worker was reaped, not left as a zombie
    probs = pool.call("predict", {"ref": demo_ref, "pixels": _pixels()}, action="classify")
    np.testing.assert_allclose(probs, _direct_probs(demo_ref), atol=1e-6)
    assert pool.pids() and pool.pids()[0] != crashed_pid


def test_a_request_past_the_time_limit_is_stopped(hook_pool, demo_ref):
    pool = hook_pool(workers=1, timeout_s=3)
    pool.call("ping", action="start")
    (pid,) = pool.pids()
    started = time.monotonic()
    with pytest.raises(ServiceError, match="took longer than the time limit") as caught:
        pool.call("test_sleep", {"seconds": 60}, action="compute smoothgrad")
    assert caught.value.retryable
    assert time.monotonic() - started < 20  # stopped at the limit, not after the 60 s
    assert pid not in pool.pids()
    # a real method past the limit is stopped the same way, and the next request works
    pool.call("describe", {"ref": demo_ref}, action="load")
    with pytest.raises(ServiceError, match="took longer"):
        pool.call(
            "explain",
            {
                "ref": demo_ref,
                "pixels": _pixels(),
                "method": "smoothgrad",  # 500 × 256 single-image passes: minutes
                "params": {
                    "n_samples": 500,
                    "base": "integrated_gradients",
                    "base_steps": 256,
                    "batch_size": 1,
                },
                "target": None,
                "layer": None,
                "engine": "native",
            },
            action="compute smoothgrad",
            timeout_s=2,
        )
    assert pool.call("ping", action="ping") == "pong"


def test_a_request_past_the_memory_ceiling_is_stopped(hook_pool, demo_ref):
    pool = hook_pool(workers=1, memory_bytes=TEST_MEMORY_CEILING_MB * 2**20)
    pool.call("describe", {"ref": demo_ref}, action="load")
    with pytest.raises(ServiceError, match=r"needed more than 1\.5 GiB of memory") as caught:
        pool.call("test_allocate", {"megabytes": 4096}, action="compute occlusion")
    assert caught.value.retryable
    assert pool.pids() == []
    probs = pool.call("predict", {"ref": demo_ref, "pixels": _pixels()}, action="classify")
    np.testing.assert_allclose(probs, _direct_probs(demo_ref), atol=1e-6)
    # what the ceiling stopped was well above a normal request's footprint
    assert pool.peak_rss_bytes < TEST_MEMORY_CEILING_MB * 2**20 * 1.5


def test_a_crash_inside_a_method_shows_retry_and_keeps_the_app(assets, monkeypatch, tmp_path):
    crash_file = tmp_path / "crash-on"
    crash_file.write_text("occlusion")
    monkeypatch.setenv("EXPLAINER_ASSETS_DIR", str(assets))
    monkeypatch.setenv("EXPLAINER_WORKER_TEST_HOOKS", "1")
    monkeypatch.setenv("EXPLAINER_TEST_CRASH_FILE", str(crash_file))
    monkeypatch.setenv("EXPLAINER_WORKERS", "1")
    worker.shutdown_pool()
    service.clear_caches()
    try:
        at = AppTest.from_file(str(APP), default_timeout=180)
        at.run()
        assert not at.exception and not at.error
        at.selectbox(key="explain_method").select("occlusion").run()
        assert not at.exception
        errors = "\n".join(str(e.value) for e in at.error)
        assert "The computation crashed while trying to compute occlusion" in errors
        assert [b.label for b in at.button if b.key == "explain_retry"] == ["Retry"]
        # The failure is remembered: a display change does not crash the worker again.
        starts = worker.pool().starts
        at.slider(key="explain_alpha").set_value(0.7).run()
        assert "computation crashed" in "\n".join(str(e.value) for e in at.error)
        assert worker.pool().starts == starts
        # The rest of the app works while the failure is shown...
        at.selectbox(key="explain_method").select("grad_cam").run()
        assert not at.exception and not at.error
        assert "**Grad-CAM overlay**" in "\n".join(str(m.value) for m in at.markdown)
        # ...and once the cause is gone, Retry computes the same request.
        crash_file.unlink()
        at.selectbox(key="explain_method").select("occlusion").run()
        at.button(key="explain_retry").click().run()
        assert not at.exception and not at.error
        assert "**Occlusion overlay**" in "\n".join(str(m.value) for m in at.markdown)
    finally:
        worker.shutdown_pool()
        service.clear_caches()


def test_a_model_file_that_hangs_the_loader_is_stopped(hook_pool, demo_ref, tmp_path):
    """A damaged .h5 (found by fuzzing: one random byte corruption of a small model) on which
    libhdf5 spins forever, in our inspection as in Keras: the load is stopped at its limit."""
    hanging = tmp_path / "damaged.h5"
    hanging.write_bytes((DATA / "libhdf5_spins_forever.h5").read_bytes())
    pool = hook_pool(workers=1, load_timeout_s=4)
    pool.call("ping", action="start")
    ref = service.file_model_ref(hanging)
    started = time.monotonic()
    with pytest.raises(ServiceError, match="took longer than the time limit") as caught:
        pool.call(
            "describe",
            {"ref": ref},
            action="load damaged.h5",
            timeout_s=pool.settings.load_timeout_s,
        )
    assert "The file may be damaged" in str(caught.value)
    assert time.monotonic() - started < 30
    assert pool.call("describe", {"ref": demo_ref}, action="load").n_classes == 3


def test_replies_are_read_as_plain_data_only():
    """A worker running a hostile model must not be able to run code in the dashboard process
    through its reply."""

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    with pytest.raises(protocol.UnsafeReplyError, match=r"builtins\.print"):
        protocol.loads(pickle.dumps(protocol.WorkerReply("result", value=Exploit())))
    with pytest.raises(protocol.UnsafeReplyError, match=r"posix\.system|os\.system"):
        protocol.loads(pickle.dumps(__import__("os").system))
    # everything the workers really send round-trips
    result = protocol.ExplanationResult(
        attribution=np.arange(6, dtype=np.float32).reshape(2, 3),
        method="grad_cam",
        method_label="Grad-CAM",
        params={"batch_size": 32},
        target=1,
        target_label="square",
        score=0.5,
        layer="last_conv",
        engine="native",
        seconds=0.1,
        extras=protocol.plain({"layer_shape": (12, 12, 128), "gap": np.float32(0.25)}),
    )
    back = protocol.loads(protocol.dumps(protocol.WorkerReply("result", value=result)))
    np.testing.assert_array_equal(back.value.attribution, result.attribution)
    assert back.value.extras == {"layer_shape": (12, 12, 128), "gap": 0.25}


# ------------------------------------------------------------------------------------------------
# Many users
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def user_inputs(tmp_path_factory, assets):
    """Per session: a different model file and a different image, with the reference result
    computed directly with the library in this process."""
    folder = tmp_path_factory.mktemp("users")
    builders = [
        lambda: tiny_cam_model(seed=10),
        lambda: tiny_cam_model(seed=11),
        lambda: tiny_flatten_model(seed=12),
        lambda: tiny_cam_model(seed=13),
    ]
    users = []
    for index, build in enumerate(builders[:SESSIONS]):
        path = folder / f"user{index}.keras"
        build().save(path)
        kind = ("circle", "square")[index % 2]
        pixels = sample_image(kind, seed=100 + index)[0]
        method = "grad_cam" if index != 2 else "vanilla_gradients"
        bundle = explainers.load_model(path)
        reference = explainers.explain(bundle, pixels, method)
        users.append((path, pixels, method, reference, bundle.predict(pixels)))
    return users


def test_concurrent_sessions_get_their_own_results(user_inputs):
    """SESSIONS threads call the service at once, each with its own model and image, several
    times; every result must equal the one computed directly for that user's input."""
    worker.shutdown_pool()
    service.clear_caches()
    failures: list[str] = []
    barrier = threading.Barrier(len(user_inputs))

    def session(index: int) -> None:
        path, pixels, method, reference, probs = user_inputs[index]
        try:
            barrier.wait(timeout=120)
            model = service.load_model(service.file_model_ref(path))
            image = service.load_image_bytes(f"user{index}.png", png_bytes(pixels))
            for round_ in range(3):
                predictions = service.predictions(model, image, k=3)
                if predictions[0].index != int(np.argmax(probs)):
                    failures.append(f"session {index} round {round_}: wrong prediction")
                request = service.explanation_request(model, image, method, {}, target=None)
                result = service.explain(request, image)
                if not np.allclose(result.attribution, reference.attribution, atol=1e-5):
                    failures.append(f"session {index} round {round_}: another map")
                if result.target != reference.target:
                    failures.append(f"session {index} round {round_}: another target")
                if round_ == 1 and index == 0:
                    service.clear_caches()  # forgetting everything mid-flight must be harmless
        except Exception as err:
            failures.append(f"session {index}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(user_inputs))]
    for thread in threads:
        thread.start()
    join_all(threads, 600)
    assert not failures, failures
    # memory stays bounded: each worker holds at most its model limit, results their byte limit
    pool = worker.pool()
    assert all(len(w.loaded) <= 3 for w in pool.workers)
    assert service.RESULTS._bytes <= service.RESULTS.max_bytes
    assert len(service.RESULTS) <= service.RESULTS.max_entries


def test_reliability_doc_quotes_these_tests():
    """docs/RELIABILITY.md's Isolation, Many users and Memory sections state what these tests
    check; keep the numbers and messages in step."""
    doc = (Path(__file__).parents[1] / "docs" / "RELIABILITY.md").read_text()
    isolation = doc[doc.index("## Isolation") :]
    for name in [
        n
        for n in globals()
        if n.startswith("test_") and n != "test_reliability_doc_quotes_these_tests"
    ]:
        assert f"`{name}`" in isolation, f"{name} is not cited in docs/RELIABILITY.md"
    assert f"| {SESSIONS} sessions call the service at once" in isolation
    assert "| 4 browser sessions on one `streamlit run` server at once" in isolation
    assert f"against a {TEST_MEMORY_CEILING_MB} MiB ceiling" in isolation
    for phrase in (
        "The computation crashed while trying to compute occlusion",
        "took longer than the time limit",
        "needed more than 1.5 GiB of memory",
        "sent a reply that is not plain data",
    ):
        assert phrase in isolation
        assert phrase in (Path(worker.__file__).read_text() + Path(__file__).read_text())
