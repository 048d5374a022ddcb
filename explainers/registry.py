"""The one registry of explanation methods, with typed parameter specifications.

The dashboard builds its controls from :class:`ParamSpec`, the CLI parses ``--param k=v`` with
:meth:`ParamSpec.coerce`, and the contract tests iterate over :data:`REGISTRY`. Adding a method is
one module that calls :func:`register`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import MethodNotApplicableError, ParameterError

if TYPE_CHECKING:
    from .compute import ProgressCallback
    from .models import ModelBundle

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
    engines: tuple[str, ...] = ("native",)
    formula: str = ""
    caveats: str = ""

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


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"method {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    _load_methods()
    try:
        return REGISTRY[name]
    except KeyError:
        raise ParameterError(f"unknown method {name!r}; available: {', '.join(REGISTRY)}") from None


def available_methods(bundle: ModelBundle | None = None) -> list[MethodInfo]:
    """Every registered method, in registry order; with ``bundle``, which ones apply to it."""
    _load_methods()
    infos = []
    for spec in REGISTRY.values():
        reason = spec.unavailable_reason(bundle) if bundle is not None else None
        infos.append(MethodInfo(spec=spec, applicable=reason is None, reason=reason))
    return infos


def _load_methods() -> None:
    # Importing the method modules registers them (kept lazy so importing the registry is cheap).
    from . import cam, gradients, occlusion, rise, superpixels  # noqa: F401
