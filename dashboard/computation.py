"""What a page asks the service to compute, without Streamlit: the explanation request built from
the widgets' values (or the reason the method cannot run), and :class:`Failure`, why a computation
gave no result."""

from __future__ import annotations

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
