"""A request its caller abandons mid-flight can never answer another request.

Streamlit stops a script run by raising inside the next Streamlit call when the user changes a
widget, and the progress callback is such a call. Before request ids, that exception left the
worker computing, the pool lent it to the next request, and the next request read the abandoned
one's reply (another method's map, another user's image). These tests abandon requests exactly
that way (a progress callback that raises a ``BaseException``, as Streamlit's ``StopException``
is) and then check that every following request, from several threads, returns exactly what a
direct library call returns.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import explainers
from dashboard import service, worker
from dashboard.protocol import ServiceError

from .dashboard_helpers import build_assets, join_all, png_bytes, sample_image


class Stopped(BaseException):
    """Stands in for Streamlit's StopException / RerunException (both BaseExceptions)."""


def raise_after(calls: int):
    """A progress callback that raises :class:`Stopped` on its ``calls``-th call."""
    seen = {"n": 0}

    def progress(fraction: float, message: str) -> None:
        seen["n"] += 1
        if seen["n"] >= calls:
            raise Stopped(message)

    return progress


def test_an_abandoned_request_is_cancelled_and_its_reply_never_read(hook_pool):
    """One worker: abandon a long job, then at once ask for others, twenty times. Each answer
    is its own request's, the worker is not replaced (the job stopped at its next progress call),
    and no request waits for the abandoned job to run to its end."""
    pool = hook_pool(workers=1)
    pool.call("ping", action="start")
    (pid,) = pool.pids()
    for round_ in range(20):
        started = time.monotonic()
        with pytest.raises(Stopped):
            pool.call(
                "test_progress",
                {"seconds": 30.0, "tag": f"abandoned {round_}"},
                action="compute kernel_shap",
                progress=raise_after(3),
            )
        answers = [
            pool.call("test_progress", {"seconds": 0.02, "tag": f"r{round_}-{k}"}, action="x")
            for k in range(3)
        ]
        assert answers == [f"r{round_}-{k}" for k in range(3)]
        assert time.monotonic() - started < 10, "a request waited for the abandoned job"
    assert pool.pids() == [pid]
    assert pool.workers[0].abandoned == 20


def test_a_job_that_ignores_cancellation_costs_its_worker_not_a_wrong_answer(hook_pool):
    """A job that makes no progress call after the cancellation (stuck in one long step) is
    killed after the grace period; the next request gets its own answer from a fresh worker."""
    pool = hook_pool(workers=1, cancel_grace_s=1.0)
    pool.call("ping", action="start")
    (pid,) = pool.pids()
    with pytest.raises(Stopped):
        pool.call(
            "test_sleep_after_progress", {"seconds": 60.0}, action="x", progress=raise_after(1)
        )
    started = time.monotonic()
    assert pool.call("test_progress", {"seconds": 0.02, "tag": "mine"}, action="x") == "mine"
    assert time.monotonic() - started < 30  # the grace period and one worker start, not 60 s
    assert pool.pids() and pool.pids() != [pid]


def test_replies_of_other_requests_are_dropped(hook_pool):
    """Defence in depth: even a stray message with another request's id is never returned."""
    pool = hook_pool(workers=1)
    pool.call("ping", action="start")
    (only,) = pool.workers
    # Inject a reply of a request that does not exist into the parent's socket, as a late
    # reply would arrive, by asking the worker to echo one.
    assert pool.call("test_stray_reply", {"tag": "stray", "request_id": 10**9}, action="x") == "own"
    assert pool.call("test_progress", {"seconds": 0.02, "tag": "next"}, action="x") == "next"
    assert only.pending is None


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """The tiny stand-in model (a CAM head) and three images, with direct library results."""
    folder = build_assets(tmp_path_factory.mktemp("abandon-assets"))
    (path,) = (folder / "models").glob("*.keras")
    bundle = explainers.load_model(path)
    images = [
        sample_image(kind, seed)[0] for kind, seed in (("circle", 7), ("square", 8), ("circle", 9))
    ]
    methods = ("grad_cam", "vanilla_gradients", "occlusion", "layer_cam")
    expected = {
        (i, m): explainers.explain(bundle, pixels, m)
        for i, pixels in enumerate(images)
        for m in methods
    }
    probs = {i: bundle.predict(pixels) for i, pixels in enumerate(images)}
    return path, images, methods, expected, probs


def test_abandoned_kernel_shap_then_concurrent_requests_match_the_library(stand_in):
    """The reported case, through the service: Kernel SHAP with a large budget is abandoned from
    its progress callback, then four threads at once ask for other methods on other images and
    for predictions, five rounds. Every map, target and probability equals the direct library
    call's, and the shared cache holds nothing else."""
    path, images, methods, expected, probs = stand_in
    worker.shutdown_pool()
    service.clear_caches()
    model = service.load_model(service.file_model_ref(path))
    loaded = [service.load_image_bytes(f"img{i}.png", png_bytes(p)) for i, p in enumerate(images)]
    failures: list[str] = []
    for round_ in range(5):
        service.RESULTS.clear()
        long_request = service.explanation_request(
            model, loaded[round_ % 3], "kernel_shap", {"max_evals": 20000}, target=None
        )
        with pytest.raises(Stopped):
            service.explain(long_request, loaded[round_ % 3], progress=raise_after(2))
        assert service.cached_explanation(long_request) is None

        def session(index: int, round_: int = round_) -> None:
            try:
                image = loaded[(index + round_) % 3]
                key = (index + round_) % 3
                method = methods[index]
                top = service.predictions(model, image, k=1)[0]
                if top.index != int(np.argmax(probs[key])) or not np.isclose(
                    top.probability, probs[key].max(), atol=1e-6
                ):
                    failures.append(f"round {round_} thread {index}: prediction {top}")
                request = service.explanation_request(model, image, method, {}, target=None)
                result = service.explain(request, image)
                want = expected[(key, method)]
                if result.method != method or result.target != want.target:
                    failures.append(
                        f"round {round_} thread {index}: {result.method} {result.target}"
                    )
                if not np.allclose(result.attribution, want.attribution, atol=1e-5, rtol=1e-4):
                    failures.append(f"round {round_} thread {index}: another {method} map")
            except Exception as err:
                failures.append(f"round {round_} thread {index}: {type(err).__name__}: {err}")

        threads = [
            threading.Thread(target=session, args=(i,), name=f"session-{i}")
            for i in range(len(methods))
        ]
        for thread in threads:
            thread.start()
        join_all(threads, 300)
    assert not failures, failures
    assert sum(w.abandoned for w in worker.pool().workers) == 5


def test_a_result_that_does_not_match_its_request_is_never_cached(stand_in, monkeypatch):
    """The cache's second lock: a reply for another method, target, parameters or image (as an
    abandoned request's late reply would be) is refused with a retryable error and not cached."""
    path, images, _, expected, _ = stand_in
    worker.shutdown_pool()
    service.clear_caches()
    model = service.load_model(service.file_model_ref(path))
    image = service.load_image_bytes("img0.png", png_bytes(images[0]))
    other = service.load_image_bytes("img1.png", png_bytes(images[1]))
    request = service.explanation_request(model, image, "grad_cam", {}, target=None)
    wrong_method = service.explain(
        service.explanation_request(model, image, "layer_cam", {}, target=None), image
    )
    wrong_image = service.explain(
        service.explanation_request(model, other, "grad_cam", {}, target=None), other
    )
    right = service.explain(request, image)
    np.testing.assert_allclose(right.attribution, expected[(0, "grad_cam")].attribution, atol=1e-5)
    for stale in (wrong_method, wrong_image):
        service.RESULTS.clear()
        monkeypatch.setattr(service, "_call", lambda *a, stale=stale, **k: stale)
        with pytest.raises(ServiceError, match="did not match the request") as caught:
            service.explain(request, image)
        assert caught.value.retryable
        assert service.cached_explanation(request) is None
        service.forget_failure(request.key)


def test_reliability_doc_cites_these_tests():
    """docs/RELIABILITY.md's "Every reply belongs to its request" table cites each test here."""
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "RELIABILITY.md").read_text()
    section = doc[doc.index("### Every reply belongs to its request") :]
    for name in [n for n in globals() if n.startswith("test_") and "reliability_doc" not in n]:
        assert f"`{name}`" in section, f"{name} is not cited in docs/RELIABILITY.md"
    assert "`test_changes_during_a_long_computation_show_the_right_result`" in section


def test_attack_curve_and_sanity_replies_for_another_request_are_never_cached(
    stand_in, monkeypatch
):
    """The same lock on the other cached results: an attack, curves or a sanity check computed
    for one request and handed to the service as the answer to another is refused."""
    path, images, _, _, _ = stand_in
    worker.shutdown_pool()
    service.clear_caches()
    model = service.load_model(service.file_model_ref(path))
    image = service.load_image_bytes("img0.png", png_bytes(images[0]))
    fgsm, _ = service.attack(model, image, "fgsm", epsilon=4)
    maps = {
        "grad_cam": service.explain(
            service.explanation_request(model, image, "grad_cam", {}, target=0), image
        ).attribution
    }
    curves = service.evaluate(model, image, maps, target=0, step=0.1)
    sanity = service.sanity_check(model, image, ("vanilla_gradients",), target=0)
    asks = [
        (fgsm, lambda: service.attack(model, image, "pgd", epsilon=4)),
        (curves, lambda: service.evaluate(model, image, maps, target=1, step=0.1)),
        (sanity, lambda: service.sanity_check(model, image, ("vanilla_gradients",), target=1)),
    ]
    for stale, ask in asks:
        service.RESULTS.clear()
        monkeypatch.setattr(service, "_call", lambda *a, stale=stale, **k: stale)
        with pytest.raises(ServiceError, match="did not match the request") as caught:
            ask()
        assert caught.value.retryable
        assert len(service.RESULTS) == 0
        service.forget_failure(caught.value.retry_key)
