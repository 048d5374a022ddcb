"""What an explanation method is, as data: its typed parameters, its request, its spec.

A method module (``explainers/methods/*.py``) builds one :class:`MethodSpec` per method and
passes it to :func:`register`; everything else — the dashboard's controls and progress bars, the
CLI's ``--param`` parsing, the tf-explain engine, the map checks' units, the contract tests' fast
parameters — reads the spec. This module imports no method and no TensorFlow, so the registry
(:mod:`explainers.registry`), which loads the methods, sits above it without an import cycle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from explainers.errors import MethodNotApplicableError, ParameterError

if TYPE_CHECKING:
    from explainers.io.models import ModelBundle
    from explainers.tf_explain_engine import TfExplainAdapter

#: ``progress(fraction_done, message)``; fraction in [0, 1]. The one progress signature of the
#: library and the dashboard.
ProgressCallback = Callable[[float, str], None]

#: How a map's size is read in units of the explained score: ``"total"`` Σ|map| (attributions
#: that spread the score over pixels); ``"first_order"`` Σ|gradient| × the input's value range;
#: ``"total_per_cell"`` Σ|map| / (h·w) (CAM, whose mean is the logit minus the bias);
#: ``"twice_total_per_cell"`` (Grad-CAM++ with a pooled head); ``"largest"`` max|map| (maps
#: whose every value is itself a score change: patches, masks, superpixels).
Effect = Literal["total", "first_order", "total_per_cell", "twice_total_per_cell", "largest"]
Family = Literal["gradient", "perturbation", "cam"]
ParamKind = Literal["int", "float", "choice", "bool"]
Engine = Literal["native", "tf_explain"]
ENGINES: tuple[str, ...] = ("native", "tf_explain")


@dataclass(frozen=True)
class ParamSpec:
    """One method parameter: its type, default, allowed range or choices, and help text."""

    name: str
    kind: ParamKind
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    step: float | None = None
    #: "advanced" parameters are folded away in the UI.
    advanced: bool = False
    #: Display name for controls; defaults to the name in words ("batch_size" → "Batch size").
    title: str | None = None

    @property
    def label(self) -> str:
        return self.title or self.name.replace("_", " ").capitalize()

    def coerce(self, value: Any) -> Any:
        """Validate ``value`` (a Python value or a CLI string) and return it typed.

        Raises
        ------
        ParameterError
            Naming the parameter, the bad value and what is allowed.
        """
        if self.kind == "bool":
            if isinstance(value, bool | np.bool_):
                return bool(value)
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ParameterError(f"{self.name} must be true or false, got {value!r}")
        if self.kind == "choice":
            assert self.choices is not None
            for choice in self.choices:
                if value == choice or str(value).strip() == str(choice):
                    return choice
            raise ParameterError(
                f"{self.name} must be one of {', '.join(map(str, self.choices))}; got {value!r}"
            )
        if isinstance(value, bool | np.bool_):
            raise ParameterError(f"{self.name} must be a number, got {value!r}")
        try:
            number = float(value) if not isinstance(value, str) else float(value.strip())
        except (TypeError, ValueError):
            raise ParameterError(f"{self.name} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ParameterError(f"{self.name} must be a finite number, got {value!r}")
        if self.kind == "int":
            if number != int(number):
                raise ParameterError(f"{self.name} must be a whole number, got {value!r}")
            number = int(number)
        if self.low is not None and number < self.low:
            raise ParameterError(f"{self.name} must be ≥ {self.low:g}, got {value!r}")
        if self.high is not None and number > self.high:
            raise ParameterError(f"{self.name} must be ≤ {self.high:g}, got {value!r}")
        return number


@dataclass(frozen=True)
class ExplainRequest:
    """Everything a method's compute function receives. Immutable; one per explanation."""

    bundle: ModelBundle
    #: The image resized to the model's input size, uint8 (h, w, 3).
    image: np.ndarray
    #: The preprocessed model input, float32 (1, h, w, C).
    x: np.ndarray
    target: int
    layer: str | None
    params: Mapping[str, Any]
    progress: ProgressCallback | None = None

    def report(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(min(1.0, max(0.0, fraction)), message)


#: A method's computation: a signed float32 map (any resolution; the caller resizes it to the
#: image) and a dict of extra facts worth reporting (e.g. a completeness gap).
Compute = Callable[[ExplainRequest], tuple[np.ndarray, dict[str, Any]]]
#: Returns why the method cannot explain this bundle (and layer), or None when it can.
Requirement = Callable[["ModelBundle", str | None], str | None]
#: (forward passes, backward passes) for given parameters.
PassCount = Callable[[Mapping[str, Any], "ModelBundle | None"], tuple[int, int]]


def _always(bundle: ModelBundle, layer: str | None) -> str | None:
    return None


def resolve_params(
    method: str, specs: Sequence[ParamSpec], given: Mapping[str, Any]
) -> dict[str, Any]:
    """The parameters ``specs`` describe, defaults overlaid with validated ``given`` values;
    unknown names are an error. Needs only the specs (plain data), so the dashboard's UI process
    can validate a request without loading the methods (or TensorFlow)."""
    by_name = {spec.name: spec for spec in specs}
    resolved = {spec.name: spec.default for spec in specs}
    for name, value in given.items():
        if name not in by_name:
            raise ParameterError(
                f"{method} has no parameter {name!r}; its parameters are "
                f"{', '.join(by_name) or 'none'}"
            )
        resolved[name] = by_name[name].coerce(value)
    return resolved


@dataclass(frozen=True)
class MethodSpec:
    """Everything known about one explanation method."""

    name: str
    label: str
    family: Family
    description: str
    reference: str
    reference_url: str
    cost: str
    passes: PassCount
    params: tuple[ParamSpec, ...]
    compute: Compute
    uses_layer: bool = False
    requirement: Requirement = _always
    formula: str = ""
    caveats: str = ""
    #: The method reports progress while it runs (the dashboard shows a progress bar and keeps
    #: the run cancellable); quick methods finish before a bar would draw.
    reports_progress: bool = False
    #: How tf-explain computes this method (the alternative engine), or None: native only.
    tf_explain: TfExplainAdapter | None = field(default=None, compare=False)
    #: Parameters that make a quick run without changing what is exercised (fewer samples,
    #: coarser patches): the contract tests and smoke checks use them.
    fast_params: Mapping[str, Any] = field(default_factory=dict, compare=False)
    #: What the map explains: the runner's class score (a logit, or a log-probability for a
    #: model that outputs probabilities), or the class probability. ``score_param`` names a
    #: choice parameter whose value ``"probability"`` switches to the probability.
    explains: Literal["class_score", "probability"] = "class_score"
    score_param: str | None = None
    #: What one of the method's perturbed inputs is called in warnings ("occluded patch").
    perturbation: str | None = None
    #: The map's units: text with ``{score}`` for the explained score's name, or
    #: ``units(params, score, wrapped_units)``; ``wrapped_units`` is the units of the method named
    #: by ``wraps_param`` ("" without one).
    units: str | Callable[[Mapping[str, Any], str, str], str] = "{score}"
    #: How the map's size is measured in units of the explained score (see
    #: :func:`explainers.explanation.map_effect`), a callable
    #: ``effect(raw, x, params, wrapped_effect)``, or None where the map is not in the score's
    #: units.
    effect: Effect | Callable[..., tuple[float, str] | None] | None = None
    #: A wrapper method (SmoothGrad): the parameter that names the method it wraps.
    wraps_param: str | None = None

    @property
    def engines(self) -> tuple[str, ...]:
        """``("native",)``, plus ``"tf_explain"`` where tf-explain has the method."""
        return ("native", "tf_explain") if self.tf_explain is not None else ("native",)

    def explained_score_kind(self, params: Mapping[str, Any]) -> str:
        """``"probability"`` or ``"class_score"`` for these parameters."""
        if self.score_param is not None and params.get(self.score_param) == "probability":
            return "probability"
        return self.explains

    def param(self, name: str) -> ParamSpec:
        for spec in self.params:
            if spec.name == name:
                return spec
        raise ParameterError(
            f"{self.name} has no parameter {name!r}; its parameters are "
            f"{', '.join(p.name for p in self.params) or 'none'}"
        )

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with validated ``given`` values; unknown names are an error."""
        return resolve_params(self.name, self.params, given)

    def unavailable_reason(self, bundle: ModelBundle, layer: str | None = None) -> str | None:
        """Why this method cannot explain ``bundle`` (at ``layer``), or None when it can."""
        if self.uses_layer and not bundle.is_graph:
            return (
                "the model's layers cannot be reached (subclassed model); only methods "
                "that need no inner layer apply"
            )
        if self.uses_layer and layer is None and bundle.default_layer is None:
            return "the model has no layer with a spatial (height × width × channels) output"
        return self.requirement(bundle, layer)

    def check(self, bundle: ModelBundle, layer: str | None = None) -> None:
        reason = self.unavailable_reason(bundle, layer)
        if reason is not None:
            raise MethodNotApplicableError(f"{self.label} cannot be used here: {reason}")


@dataclass(frozen=True)
class MethodInfo:
    """A registry entry seen against one model: whether it applies, and if not, why."""

    spec: MethodSpec
    applicable: bool
    reason: str | None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.spec, name)


#: Every registered method, by name, in registration order. Filled by :func:`register`; read it
#: through :func:`explainers.registry.available_methods`, which loads the method modules first.
REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (a method module calls this once per method)."""
    if spec.name in REGISTRY:
        raise ValueError(f"method {spec.name!r} registered twice")
    if spec.wraps_param is not None:
        spec.param(spec.wraps_param)  # the wrapped-method parameter must exist
    if spec.score_param is not None:
        spec.param(spec.score_param)
    REGISTRY[spec.name] = spec
    return spec
