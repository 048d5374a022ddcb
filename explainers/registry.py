"""The one registry of explanation methods.

Every module of :mod:`explainers.methods` registers its methods' specs
(:class:`~explainers.core.specs.MethodSpec`) when imported; this module imports that package
the first time the registry is read, so that adding a method is adding one file there. The
dashboard builds its controls from the specs' :class:`ParamSpec`, the CLI parses ``--param k=v``
with :meth:`ParamSpec.coerce`, and the contract tests iterate over :func:`available_methods`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from explainers.core.specs import (
    ENGINES,
    REGISTRY,
    ExplainRequest,
    MethodSpec,
    ParamSpec,
    register,
    resolve_params,
)
from explainers.errors import ParameterError

if TYPE_CHECKING:
    from explainers.io.models import ModelBundle

__all__ = [
    "ENGINES",
    "METHOD_MODULES_ENV",
    "REGISTRY",
    "ExplainRequest",
    "MethodInfo",
    "MethodSpec",
    "ParamSpec",
    "available_methods",
    "get_method",
    "register",
    "resolve_params",
]


@dataclass(frozen=True)
class MethodInfo:
    """A registry entry seen against one model: whether it applies, and if not, why."""

    spec: MethodSpec
    applicable: bool
    reason: str | None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.spec, name)


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


#: Environment variable naming extra method modules to load, comma-separated importable module
#: names (e.g. ``mylab.explainers_extra``): methods that live outside this package register the
#: same way, and the dashboard's worker processes (which inherit the environment) load them too.
METHOD_MODULES_ENV = "EXPLAINERS_METHOD_MODULES"


def _load_methods() -> None:
    # Importing the package imports (and so registers) every method module in it; kept lazy so
    # that importing the registry costs no TensorFlow.
    import explainers.methods  # noqa: F401

    for name in os.environ.get(METHOD_MODULES_ENV, "").split(","):
        if name.strip():
            try:
                import_module(name.strip())
            except ImportError as error:
                raise ParameterError(
                    f"{METHOD_MODULES_ENV} names {name.strip()!r}, which cannot be imported "
                    f"({error}); fix the module name or unset the variable"
                ) from error
