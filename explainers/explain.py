"""``explain()``: one entry point for every method and engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .compute import ProgressCallback
from .errors import ExplainerError, ParameterError
from .images import check_image_array
from .maps import resize_map
from .models import ModelBundle
from .registry import ENGINES, ExplainRequest, get_method


@dataclass(frozen=True, eq=False)
class Explanation:
    """The result of one explanation.

    ``attribution`` is the raw signed map, float32 (H, W), at the resolution of the image that was
    passed in; ``model_attribution`` is the same map at the resolution the method computed it
    (model input for gradient and perturbation methods, the layer's grid for CAM methods).
    Positive values are evidence *for* the target class.
    """

    attribution: np.ndarray
    model_attribution: np.ndarray
    method: str
    params: dict[str, Any]
    target: int
    label: str
    score: float
    layer: str | None
    engine: str
    seconds: float
    extras: dict[str, Any] = field(default_factory=dict)


def resolve_target(bundle: ModelBundle, probs: np.ndarray | None, target: int | str | None) -> int:
    """The class index to explain: top-1 of ``probs`` (n_classes,) when ``target`` is None; a
    class name is accepted. ``probs`` is only read when ``target`` is None."""
    if target is None:
        if probs is None:
            raise ValueError("resolve_target needs the probabilities to pick the top-1 class")
        return int(np.argmax(probs))
    if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
        if target in bundle.class_names:
            return bundle.class_names.index(target)
        raise ParameterError(
            f"unknown class {target!r}; the model's classes include "
            f"{', '.join(bundle.class_names[:5])}…"
        )
    try:
        index = int(target)
    except (TypeError, ValueError):
        raise ParameterError(f"target must be a class index, got {target!r}") from None
    if not 0 <= index < bundle.n_classes:
        raise ParameterError(
            f"target class {index} is out of range: the model has {bundle.n_classes} classes "
            f"(0..{bundle.n_classes - 1})"
        )
    return index


def _checked_probs(probs: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(probs)):
        raise ExplainerError(
            "the model's output for this image is not a number (NaN or inf); "
            "check the model and the preprocessing"
        )
    return probs


def explain(
    bundle: ModelBundle,
    image: np.ndarray,
    method: str,
    *,
    target: int | str | None = None,
    layer: str | None = None,
    engine: str = "native",
    progress: ProgressCallback | None = None,
    **params: Any,
) -> Explanation:
    """Explain the model's score for ``target`` on ``image`` with ``method``.

    Parameters
    ----------
    bundle
        From :func:`explainers.load_model`.
    image
        uint8 array (H, W, 3) (or (H, W), (H, W, 1), (H, W, 4)) of any size; it is resized to the
        model's input size and the map is resized back.
    method
        A registry name (see :func:`explainers.available_methods`).
    target
        Class index or name; None explains the top-1 class.
    layer
        For CAM-family methods: the layer path (default: the automatic choice).
    engine
        ``"native"`` (default) or ``"tf_explain"`` for the methods tf-explain implements.
    progress
        Optional ``callback(fraction, message)`` for long methods.
    **params
        Method parameters (see each method's parameter specs); unknown names are an error.
    """
    started = time.perf_counter()
    spec = get_method(method)
    if engine not in ENGINES:
        raise ParameterError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine not in spec.engines:
        raise ParameterError(
            f"{spec.label} is not available in the {engine} engine "
            f"(engines: {', '.join(spec.engines)})"
        )
    resolved = spec.resolve_params(params)
    if layer is not None:
        if not spec.uses_layer:
            raise ParameterError(f"{spec.label} does not use a layer; leave the layer unset")
        layer = bundle.layer(layer).path
        if layer not in bundle.spatial_layers:
            raise ParameterError(
                f"layer {layer!r} has output shape {bundle.layer(layer).output_shape}; "
                "CAM methods need a spatial (height, width, channels) layer"
            )
    spec.check(bundle, layer)
    if spec.uses_layer and layer is None:
        layer = bundle.default_layer
    image = check_image_array(image)
    resized = bundle.resize(image)
    x = bundle.preprocess(resized)[None].astype(np.float32)
    x.flags.writeable = False  # one digest for the prediction memo per explanation
    runner = bundle.runner
    # The clean prediction (top-1 class, reported score) is memoised per input. With an explicit
    # target it is looked up only after the method ran: every method whose passes include the
    # clean input (gradients, CAM family, occlusion's reference) fills the memo, so a new image
    # costs no forward pass beyond the method's own.
    probs = _checked_probs(runner.predict(x)[1]) if target is None else None
    target_index = resolve_target(bundle, probs[0] if probs is not None else None, target)
    request = ExplainRequest(
        bundle=bundle,
        image=resized,
        x=x,
        target=target_index,
        layer=layer,
        params=resolved,
        progress=progress,
    )
    if engine == "tf_explain":
        from .tf_explain_engine import compute_with_tf_explain

        raw, extras = compute_with_tf_explain(spec.name, request)
    else:
        raw, extras = spec.compute(request)
    if probs is None:
        probs = _checked_probs(runner.predict(x)[1])
    raw = np.asarray(raw, np.float32)
    if not np.all(np.isfinite(raw)):
        raise ExplainerError(f"{spec.label} produced non-finite values for this model and image")
    if progress is not None:
        progress(1.0, "done")
    return Explanation(
        attribution=resize_map(raw, image.shape[:2]),
        model_attribution=raw,
        method=spec.name,
        params=resolved,
        target=target_index,
        label=bundle.class_names[target_index],
        score=float(probs[0, target_index]),
        layer=layer,
        engine=engine,
        seconds=time.perf_counter() - started,
        extras=extras,
    )
