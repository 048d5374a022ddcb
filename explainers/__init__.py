"""Explain why a convolutional network made an image decision.

A plain-Python library (no Streamlit): load a model and an image, compute raw attribution maps
with any registered method, render them. The dashboard, the CLI and the tests all use this API::

    import explainers
    bundle = explainers.load_model("assets/models/demo_shapes.keras")
    image = explainers.load_image("assets/samples/shapes_circle_0.png")
    result = explainers.explain(bundle, image, "grad_cam")
    rgb = explainers.render.overlay(image, result.attribution)

Beyond single explanations: ``attack`` (FGSM/PGD adversarial examples), ``evaluate_maps`` /
``deletion_curve`` / ``insertion_curve`` (faithfulness metrics against a random-map baseline) and
``model_randomisation_test`` (Adebayo et al.'s sanity check)::

    adversarial = explainers.attack(bundle, image, "pgd", epsilon=4)  # 4/255, in pixel units
    rows = explainers.evaluate_maps(bundle, image, {"grad_cam": result}, mask=object_mask)
    check = explainers.model_randomisation_test(bundle, image, ["grad_cam", "guided_backprop"])
"""

from __future__ import annotations

import os

# Quieten TensorFlow's start-up banner before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: Where each public name lives. Importing ``explainers`` imports none of them: a name is
#: imported when first used (PEP 562), so ``explainers.render``, ``explainers.load_image`` or
#: ``explainers.registry.ParamSpec`` cost no TensorFlow import — the dashboard's UI process
#: needs only those; models run in worker processes, which import the rest.
_EXPORTS: dict[str, str] = {
    "AttackResult": "evaluation.attacks",
    "attack": "evaluation.attacks",
    "ExplainerError": "errors",
    "ImageError": "errors",
    "MethodNotApplicableError": "errors",
    "ModelLoadError": "errors",
    "ParameterError": "errors",
    "UnsafeModelError": "errors",
    "UnsupportedModelError": "errors",
    "Explanation": "explanation",
    "explain": "explanation",
    "load_image": "io.images",
    "AggregateScores": "evaluation.metrics",
    "Curve": "evaluation.metrics",
    "MapScores": "evaluation.metrics",
    "aggregate": "evaluation.metrics",
    "deletion_curve": "evaluation.metrics",
    "evaluate_maps": "evaluation.metrics",
    "insertion_curve": "evaluation.metrics",
    "random_map": "evaluation.metrics",
    "ModelBundle": "io.models",
    "bundle_from_model": "io.models",
    "load_application": "io.models",
    "load_model": "io.models",
    "MethodInfo": "registry",
    "MethodSpec": "registry",
    "ParamSpec": "registry",
    "available_methods": "registry",
    "get_method": "registry",
    "SanityResult": "evaluation.sanity",
    "model_randomisation_test": "evaluation.sanity",
    "ExplanationCallback": "callbacks",
    "ReasonTrainer": "training",
    "Region": "targets",
    "Target": "targets",
    "explain_each": "explanation",
}
#: Submodules reachable as attributes (``explainers.render``, ``explainers.io.models`` ...).
_SUBMODULES = frozenset(
    {
        "audit",
        "callbacks",
        "cli",
        "core",
        "errors",
        "evaluation",
        "explanation",
        "io",
        "targets",
        "methods",
        "registry",
        "render",
        "tf_explain_engine",
        "training",
    }
)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})


if TYPE_CHECKING:  # what static tools (and readers) see
    from explainers.callbacks import ExplanationCallback
    from explainers.errors import (
        ExplainerError,
        ImageError,
        MethodNotApplicableError,
        ModelLoadError,
        ParameterError,
        UnsafeModelError,
        UnsupportedModelError,
    )
    from explainers.evaluation.attacks import AttackResult, attack
    from explainers.evaluation.metrics import (
        AggregateScores,
        Curve,
        MapScores,
        aggregate,
        deletion_curve,
        evaluate_maps,
        insertion_curve,
        random_map,
    )
    from explainers.evaluation.sanity import SanityResult, model_randomisation_test
    from explainers.explanation import Explanation, explain
    from explainers.io.images import load_image
    from explainers.io.models import ModelBundle, bundle_from_model, load_application, load_model
    from explainers.registry import MethodInfo, MethodSpec, ParamSpec, available_methods, get_method
    from explainers.training import ReasonTrainer

    from . import render

__version__ = "0.1.0"

__all__ = [
    "AggregateScores",
    "AttackResult",
    "Curve",
    "ExplainerError",
    "Explanation",
    "ExplanationCallback",
    "ImageError",
    "MapScores",
    "MethodInfo",
    "MethodNotApplicableError",
    "MethodSpec",
    "ModelBundle",
    "ModelLoadError",
    "ParamSpec",
    "ParameterError",
    "ReasonTrainer",
    "SanityResult",
    "UnsafeModelError",
    "UnsupportedModelError",
    "__version__",
    "aggregate",
    "attack",
    "available_methods",
    "bundle_from_model",
    "deletion_curve",
    "evaluate_maps",
    "explain",
    "get_method",
    "insertion_curve",
    "load_application",
    "load_image",
    "load_model",
    "model_randomisation_test",
    "random_map",
    "render",
]
