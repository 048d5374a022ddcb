"""``explain()``: one entry point for every method and engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explainers.core.maps import effect_size, resize_map
from explainers.core.specs import ENGINES, ExplainRequest, MethodSpec, ProgressCallback
from explainers.errors import ExplainerError, ParameterError
from explainers.io.images import check_image_array
from explainers.io.models import ModelBundle
from explainers.registry import get_method
from explainers.targets import Target, bind
from explainers.tf_explain_engine import compute_with_tf_explain


@dataclass(frozen=True, eq=False)
class Explanation:
    """The result of one explanation.

    ``attribution`` is the raw signed map, float32 (H, W), at the resolution of the image that was
    passed in; ``model_attribution`` is the same map at the resolution the method computed it
    (model input for gradient and perturbation methods, the layer's grid for CAM methods).
    Positive values are evidence *for* the target class.

    ``extras`` holds the method's own facts (e.g. a completeness gap) and always two more:

    * ``"warnings"``: a list of plain-English strings, empty for a healthy map. Each names what
      is wrong with this map (all zero, constant, negligible against the explained score, the
      score flat or saturated to float32 precision, a target class the model hardly predicts)
      and what to try instead. See :func:`check_map`.
    * ``"magnitude"``: the raw map's size in real units, measured on ``model_attribution``:
      ``{"min", "max", "sum", "max_abs"}`` (floats), ``"score"`` (the explained score's name:
      ``"logit"``, ``"log-probability"`` or ``"probability"``), ``"score_value"`` (its value
      for the target on this input), ``"score_text"`` (e.g. ``"logit of circle = 15.72"``) and
      ``"units"`` (what one unit of the map is, in words).
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


# ------------------------------------------------------------------------------------------------
# Map checks: no silent empty or meaningless map
# ------------------------------------------------------------------------------------------------
#: A map (or the score changes a method saw) below this fraction of the explained score is
#: float32 rounding, not evidence: float32 resolves about 1.2e-7 of a value, and the methods'
#: sums of many terms lose a few more digits.
NEGLIGIBLE = 1e-6
#: A map whose spread (max − min) is below this fraction of its largest value is constant.
CONSTANT = 1e-5
#: Below this probability the target is a class the model does not predict.
LOW_PROBABILITY = 0.01
#: 1 − p below this: float32 probabilities next to 1 are 6e-8 apart, so small changes vanish.
SATURATION = 1e-6
#: The model's top class at or below this multiple of chance (1 / classes): an untrained model,
#: or an input it learned nothing about (an untrained demo CNN gives 0.256 for 4 classes, an
#: untrained MobileNetV2 exactly 1/1000; the trained demo model ≥ 0.97 on its samples).
NEAR_CHANCE = 1.1


def _class_score_name(bundle: ModelBundle, scores: np.ndarray) -> str:
    """What the runner's class scores are: logits (recovered before a softmax/sigmoid, or the
    model's own output), log-odds of a single probability unit (a logit too), or the
    log-probabilities of a model that outputs probabilities it computed itself. A regression
    output's score is its value; a segmentation region's, the sum (or mean) of the class's
    per-pixel logits over the region."""
    if bundle.task == "regression":
        return "value"
    if bundle.view is not None and bundle.view.kind.startswith("region"):
        pixel = "logit" if bundle.output_kind != "probabilities" else "log-probability"
        return f"region {'sum' if bundle.view.kind == 'region_sum' else 'mean'} of {pixel}s"
    if bundle.output_kind != "probabilities":
        return "logit"
    if len(scores) == 2 and abs(float(scores[0] + scores[1])) <= 1e-6 * max(
        1.0, abs(float(scores[1]))
    ):
        return "logit"  # a single unit: the scores are ±log-odds
    return "log-probability"


def explained_score(
    spec: MethodSpec,
    params: dict[str, Any],
    engine: str,
    bundle: ModelBundle,
    scores: np.ndarray,
    probs: np.ndarray,
    target: int,
) -> tuple[str, float]:
    """(name, value) of the score method ``spec`` explains for ``target``: ``"logit"``,
    ``"log-probability"`` or ``"probability"`` (README, "What the score is"). ``scores`` and
    ``probs`` are the runner's (n_classes,) rows for the input."""
    runner_score = (_class_score_name(bundle, scores), float(scores[target]))
    if engine == "tf_explain" and spec.tf_explain is not None:
        return spec.tf_explain.explained_score(bundle, probs, target, runner_score)
    if spec.explained_score_kind(params) == "probability":
        if bundle.task == "regression":
            return "value", float(probs[target])
        if bundle.view is not None and bundle.view.kind.startswith("region"):
            return "region mean probability", float(probs[target])
        return "probability", float(probs[target])
    return runner_score


def _resolution(kind: str, value: float) -> float:
    """The smallest change of a score of this kind and size that is more than float32 rounding:
    relative for probabilities (float32 resolves p to ~1e-7 of p at any size), relative with a
    floor of 1 for logits and log-probabilities (a change of 1e-6 in a logit moves p by < 1e-6
    of itself)."""
    if kind == "probability":
        return NEGLIGIBLE * max(abs(value), np.finfo(np.float32).tiny)
    return NEGLIGIBLE * max(1.0, abs(value))


def _wrapped(spec: MethodSpec, params: dict[str, Any]) -> MethodSpec | None:
    """The method a wrapper (SmoothGrad) applies, from its ``wraps_param``; None otherwise."""
    if spec.wraps_param is None or params.get(spec.wraps_param) is None:
        return None
    return get_method(str(params[spec.wraps_param]))


def map_units(spec: MethodSpec, params: dict[str, Any], score: str) -> str:
    """What one unit of the method's map is, in words, for the explained ``score``'s name."""
    wrapped = _wrapped(spec, params)
    wrapped_units = map_units(wrapped, {}, score) if wrapped is not None else ""
    if callable(spec.units):
        return spec.units(params, score, wrapped_units)
    return spec.units.format(score=score)


def map_effect(
    spec: MethodSpec, params: dict[str, Any], raw: np.ndarray, x: np.ndarray
) -> tuple[float, str] | None:
    """The map's size in units of the explained score, and what was measured
    (:func:`explainers.core.maps.effect_size` with the spec's rule); None where the map is not in
    the score's units (Score-CAM: probability × activation; guided Grad-CAM)."""
    if callable(spec.effect):
        wrapped = _wrapped(spec, params)
        rule = wrapped.effect if wrapped is not None and isinstance(wrapped.effect, str) else None
        return spec.effect(raw, x, params, rule)
    if spec.effect is None:
        return None
    return effect_size(spec.effect, raw, x)


def _zero_description(bundle: ModelBundle) -> str:
    return {"0_1": "a black image", "-1_1": "a mid-gray image", "none": "a black image"}.get(
        bundle.preprocessing, "zero in the model's input space"
    )


def _probability_text(p: float) -> str:
    return f"{p:.6f}" if p > 0.999 else f"{p:.4g}"


def check_map(
    raw: np.ndarray,
    spec: MethodSpec,
    params: dict[str, Any],
    engine: str,
    bundle: ModelBundle,
    x: np.ndarray,
    scores: np.ndarray,
    probs: np.ndarray,
    target: int,
    layer: str | None,
    diagnostics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"warnings": [...], "magnitude": {...}}`` for a method's raw map (see
    :class:`Explanation`). Deterministic and cheap: it reads the map, the input's (memoised)
    prediction and the facts the method left in ``diagnostics`` — ``observed_range`` (the
    explained score's range over the method's perturbed inputs), and for the CAM family the map's
    range before the ReLU and Score-CAM's weights — and runs no model pass.

    At most one warning about the model or the target (its top class at chance level; else the
    target a class it hardly predicts) and one about the map (the score flat or saturated under
    the method's perturbations; else the map all zero; constant; or negligible against the score).
    """
    diagnostics = diagnostics or {}
    label = bundle.class_names[target]
    score, value = explained_score(spec, params, engine, bundle, scores, probs, target)
    value_text = _probability_text(value) if score == "probability" else f"{value:.4g}"
    score_text = f"{score} of {label} = {value_text}"
    values = raw.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    max_abs = max(abs(low), abs(high))
    magnitude = {
        "min": low,
        "max": high,
        "sum": float(values.sum()),
        "max_abs": max_abs,
        "score": score,
        "score_value": value,
        "score_text": score_text,
        "units": map_units(spec, params, score),
    }
    warnings: list[str] = []

    # The model: its top class at chance level.
    p = float(probs[target])
    top = int(np.argmax(probs))
    p_top, n = float(probs[top]), len(probs)
    if bundle.task == "regression":
        pass  # no probabilities: nothing to say about the model's confidence
    elif bundle.task == "multilabel":
        if p < LOW_PROBABILITY:
            warnings.append(
                f"This explains the label '{label}', which the model gives p = {p:.2g}: it says "
                f"the label is absent, so positive values are evidence for a label it does not "
                "see. Explain a label it predicts to see what drove its decision."
            )
    elif p_top <= NEAR_CHANCE / n:
        warnings.append(
            f"The model's top class, '{bundle.class_names[top]}', has p = {p_top:.4g}, at or "
            f"barely above chance (1/{n} = {1 / n:.4g}): the model looks untrained, or finds "
            "nothing it learned in this image, so the map shows no learned evidence. Check that "
            "the file holds trained weights and that the preprocessing "
            f"({bundle.preprocessing}) matches training."
        )
    elif p < LOW_PROBABILITY and target != top:
        warnings.append(
            f"This explains '{label}', a class the model gives p = {p:.2g} (its top class is "
            f"'{bundle.class_names[top]}' at p = {p_top:.3f}): positive values are evidence for "
            f"'{label}', not for the model's decision. Explain the top class to see what drove "
            "the prediction."
        )
    elif p < LOW_PROBABILITY:
        warnings.append(
            f"This explains '{label}', the model's top class but at only p = {p:.2g}: the model "
            "is unsure, so read the map as evidence for a guess."
        )

    # The map.
    message = _map_warning(
        raw, spec, params, bundle, x, label, score, value, score_text, layer, diagnostics
    )
    if message:
        warnings.append(message)
    return {"warnings": warnings, "magnitude": magnitude}


def _logit_advice(spec: MethodSpec) -> str:
    if spec.score_param is not None:
        choice = spec.param(spec.score_param).label
        return f"Set {choice} to 'logit' (an advanced parameter): the logit keeps resolving."
    return (
        "Use occlusion with Score = 'logit', or a gradient or CAM method (they explain the logit)."
    )


def _map_warning(
    raw: np.ndarray,
    spec: MethodSpec,
    params: dict[str, Any],
    bundle: ModelBundle,
    x: np.ndarray,
    label: str,
    score: str,
    value: float,
    score_text: str,
    layer: str | None,
    diagnostics: dict[str, Any],
) -> str | None:
    method, name = spec.name, spec.label
    values = raw.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    max_abs = max(abs(low), abs(high))
    spread = high - low
    if max_abs == 0.0:
        state = "is all zero"
    elif spread <= CONSTANT * max_abs:
        state = "is constant"
    else:
        state = "is rounding noise"
    relu = bool(params.get("relu", False)) and spec.family == "cam"

    # 1. The explained score did not move under any of the method's perturbations.
    whole = method == "rise" and float(params.get("keep_probability", 0.5)) >= 1.0
    observed = None if whole else diagnostics.get("observed_range")
    if observed is not None:
        lo, hi = float(observed[0]), float(observed[1])
        if hi - lo <= _resolution(score, max(abs(lo), abs(hi))):
            seen = f"all at {hi:.7g}" if lo == hi else f"{lo:.7g} to {hi:.7g}"
            saturated = score == "probability" and 1.0 - value <= SATURATION
            if method == "score_cam" and "baseline_probability" not in diagnostics and hi > 0:
                return (
                    f"Every masked image scored '{label}' the same (p {seen}), so all channels "
                    "got equal weight and the map is just the sum of the layer's activations, "
                    "the same for every class. "
                    + (
                        f"'{label}' is saturated at p = {_probability_text(value)}. "
                        if saturated
                        else ""
                    )
                    + "Use Grad-CAM, which explains the logit, or occlusion with Score = 'logit'"
                    + ("." if saturated else ", and check that the model is trained.")
                )
            unit = spec.perturbation or "perturbation"
            if saturated:
                return (
                    f"'{label}' is saturated at p = {_probability_text(value)}: float32 cannot "
                    f"resolve probabilities this close to 1, so every {unit} scored the same "
                    f"({seen}) and the map {state}. {_logit_advice(spec)}"
                )
            advice = (
                "Try a larger patch or another fill, or check that the model is trained."
                if method == "occlusion" and score != "probability"
                else _logit_advice(spec) + " Check that the model is trained."
            )
            return (
                f"No {unit} changed the {score} of '{label}' beyond float32 rounding ({seen}), "
                f"so the map {state}: the model's output does not depend on what {name} hides. "
                + advice
            )

    if whole:
        return (
            f"The RISE map {state}: with keep probability 1 every mask shows the whole image, "
            "so no pixel is ever hidden. Lower it (the paper's value is 0.5)."
        )

    # 2. All zero.
    if max_abs == 0.0:
        if (
            method == "score_cam"
            and relu
            and "baseline_probability" in diagnostics
            and diagnostics.get("positive_weights", 1) == 0
        ):
            return (
                "Every Score-CAM channel weight is ≤ 0: the baseline, an all-zero input ("
                f"{_zero_description(bundle)}), already scores '{label}' at p = "
                f"{_probability_text(diagnostics['baseline_probability'])}, as high as any "
                "masked image, so subtracting it leaves nothing for the ReLU to keep. Turn off "
                "'Subtract the baseline score' (the default, as in the authors' code and "
                "tf-keras-vis), or turn off the ReLU to see the signed map."
            )
        where = f" of layer {layer}" if layer else ""
        if spec.family == "cam":
            pre_max = diagnostics.get("pre_relu_max")
            pre_min = diagnostics.get("pre_relu_min")
            if relu and pre_max is not None and pre_max <= 0.0 and (pre_min or 0.0) < 0.0:
                bound = -pre_min * raw.shape[0] * raw.shape[1]  # ≥ Σ|map| before the ReLU (all ≤ 0)
                if method in ("grad_cam", "layer_cam") and bound < _resolution(score, value):
                    return (
                        f"The {name} map is all zero, and even before the ReLU its values (down "
                        f"to {pre_min:.2g}) are float32 rounding next to the {score_text}: the "
                        f"{score} barely depends on {f'layer {layer}' if layer else 'it'}. "
                        "Check that the model is trained and the preprocessing is right, or try "
                        "another layer."
                    )
            if relu and pre_max is not None and pre_max <= 0.0 and (pre_min or 0.0) < 0.0:
                return (
                    f"The {name} map is all zero: every position{where} is ≤ 0 before the ReLU "
                    f"(the channels, as {name} weights them, count against '{label}' "
                    "everywhere), so the ReLU removed it all. Turn off 'ReLU on the map' to see "
                    "the signed map, or try another layer or method."
                )
            if relu and pre_max is None:  # an engine that reports nothing before the ReLU
                return (
                    f"The {name} map is all zero: no position{where} is positive after the "
                    "ReLU. Turn off 'ReLU on the map' to see the signed map, or try another "
                    "layer or method."
                )
            cause = {
                "cam": "the layer's activations are all zero",
                "score_cam": "the layer's activations are zero or constant for this image, or "
                "every masked image has probability 0",
            }.get(
                method,
                f"the {score}'s gradient at this layer is zero (saturated or dead units) or the "
                "layer's activations are all zero",
            )
            return (
                f"The {name} map is exactly 0 everywhere{where}: {cause}. Try an earlier layer, "
                "or a perturbation method such as occlusion; check that the model is trained."
            )
        if spec.family == "gradient":
            return (
                f"The {name} map is exactly 0: the {score}'s gradient is 0 at every pixel (dead "
                "or saturated units, or a model that ignores its input). Try occlusion with "
                "Score = 'logit', and check that the model is trained."
            )
        return (
            f"The {name} map is exactly 0: none of its perturbations moved the {score} of "
            f"'{label}'. Try other parameters (patch size, fill, more samples) or another "
            "method."
        )

    # 3. Constant.
    if spread <= CONSTANT * max_abs:
        if method in ("lime", "kernel_shap"):
            advice = "Try more samples, more superpixels or another fill."
        else:
            advice = "Try other parameters or another method."
        size = f"{values.mean():.4g}" if spread == 0.0 else f"{values.mean():.4g} ± {spread:.1g}"
        return (
            f"The {name} map has the same value ({size}) everywhere, so it points at nothing. "
            + advice
        )

    # 4. Negligible against the explained score.
    effect = map_effect(spec, params, raw, x)
    if effect is not None:
        size, measure = effect
        if size < _resolution(score, value):
            saturated = score == "probability" and 1.0 - value <= SATURATION
            advice = (
                f"'{label}' is saturated at p = {_probability_text(value)}. " + _logit_advice(spec)
                if saturated
                else f"The model's {score} barely depends on this input: check that the model "
                "is trained and the preprocessing is right."
            )
            return (
                f"The {name} map is negligible: its {measure} is {size:.2g} in {score} units, "
                f"float32 rounding next to the {score_text} (the limit is "
                f"{_resolution(score, value):.1g}), although the colour scale stretches it into "
                f"a confident-looking heatmap. {advice}"
            )
    return None


def explain(
    bundle: ModelBundle,
    image: np.ndarray,
    method: str,
    *,
    target: Target | int | str | None = None,
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
        What to explain (:class:`explainers.targets.Target`, or its text form such as
        ``"label:square"`` or ``"region:circle:at=40,52"``); a class index or name; None: the
        top-1 class (multi-label: the top label; regression: output 0; segmentation: the
        predicted pixels of the non-background class covering most of the image). On a bundle
        that is already a targeted view, an index into it.
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
    image = check_image_array(image)
    described: dict[str, Any] | None = None
    region: np.ndarray | None = None
    if bundle.view is None:
        # What is explained decides the bundle (a targeted view, another output's) and so the
        # layer choices below.
        bound = bind(bundle, image, target)
        bundle, target, region = bound.bundle, bound.index, bound.region
        described = bound.describe()
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
    if engine == "tf_explain" and (bundle.task != "classification" or bundle.view is not None):
        raise ParameterError(
            f"the tf-explain engine explains one class of a classifier; this is a {bundle.task} "
            "target. Use the native engine (the default)."
        )
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
        raw, extras = compute_with_tf_explain(spec, request)
    else:
        raw, extras = spec.compute(request)
    scores, checked = runner.predict(x)
    if probs is None:
        probs = _checked_probs(checked)
    raw = np.asarray(raw, np.float32)
    if not np.all(np.isfinite(raw)):
        raise ExplainerError(f"{spec.label} produced non-finite values for this model and image")
    extras = dict(extras)
    extras["target"] = described or {
        "task": bundle.task,
        "label": bundle.class_names[target_index],
        "text": bundle.view.text if bundle.view is not None else "",
    }
    if region is not None:
        extras["region"] = region
    diagnostics = extras.pop("_diagnostics", None) or {}
    extras.update(
        check_map(
            raw,
            spec,
            resolved,
            engine,
            bundle,
            x[0],
            scores[0],
            probs[0],
            target_index,
            layer,
            diagnostics,
        )
    )
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


def explain_each(
    bundle: ModelBundle,
    image: np.ndarray,
    method: str,
    targets: list[Target | int | str],
    **kwargs: Any,
) -> list[Any]:
    """One :func:`explainers.explain` per target (e.g. every label of a multi-label model that
    is present), in order."""
    return [explain(bundle, image, method, target=target, **kwargs) for target in targets]
