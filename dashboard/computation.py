"""What a page asks the service to compute, without Streamlit: the explanation request built from
the widgets' values (or the reason the method cannot run), and :class:`Failure`, why a computation
gave no result."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from dashboard import service
from dashboard.service import (
    ExplanationRequest,
    LoadedImage,
    MethodSummary,
    ModelSummary,
    ServiceError,
)
from explainers.registry import resolve_params


@dataclass(frozen=True)
class Failure:
    """Why a computation gave no result. ``retry_key`` is set when trying again may help (the
    worker crashed or ran past a limit): :func:`dashboard.widgets.running.show_failure` then
    offers a Retry button."""

    message: str
    retry_key: Hashable | None = None

    @classmethod
    def from_error(cls, err: ServiceError) -> Failure:
        """The failure ``err`` reports; a retryable error (a crash, a limit) keeps its retry key."""
        return cls(str(err), err.retry_key if err.retryable else None)


def build_request(
    model: ModelSummary,
    image: LoadedImage,
    method: MethodSummary,
    params: dict[str, Any],
    *,
    target: int,
    layer: str | None,
    engine: str,
) -> ExplanationRequest | str:
    """The request, or a message saying why the method cannot run with these settings."""
    if not method.applicable:
        return f"{method.label} cannot explain this model: {method.reason}"
    try:
        if method.uses_layer:
            reason = service.method_reason(model, method.name, layer)
            if reason is not None:
                return f"{method.label} cannot use layer {layer}: {reason}"
        return service.explanation_request(
            model, image, method.name, params, target=target, layer=layer, engine=engine
        )
    except ServiceError as err:
        return str(err)


def warm_up(method: str = "grad_cam") -> str:
    """Do, before anyone visits, what a first visitor's Explain page asks for: start the compute
    workers (each imports TensorFlow, about 7 s on two cores), load the first demo model, predict
    the first sample and explain it with ``method`` (tracing the compiled passes). The results go
    to the shared cache, so the first page shows them at once. Returns a one-line summary; never
    raises (a failure is only logged: the first visitor then pays the start-up instead)."""
    started = time.perf_counter()
    try:
        service.start_workers()
        demos, pictures = service.demo_models(), service.samples()
        if not demos or not pictures:
            return "warm-up skipped: no demo model or sample image is installed"
        model = service.load_model(
            service.file_model_ref(demos[0].path, labels=service.demo_labels())
        )
        image = service.load_sample(pictures[0])
        ranked = service.predictions(model, image, k=model.n_classes)
        summary = model.method(method)
        params = resolve_params(method, summary.params, {})  # the controls' defaults
        layer = model.default_layer if summary.uses_layer else None
        # The same request the page builds (its layer check included), so the page finds it all
        # in the cache.
        request = build_request(
            model, image, summary, params, target=ranked[0].index, layer=layer, engine="native"
        )
        if isinstance(request, ExplanationRequest):
            service.explain(request, image)
    except Exception:
        logging.getLogger(__name__).exception("warm-up failed; the first visitor pays the start-up")
        return "warm-up failed (see the log)"
    return f"warm-up done in {time.perf_counter() - started:.1f} s"
