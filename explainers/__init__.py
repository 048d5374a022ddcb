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

from . import render
from .attacks import AttackResult, attack
from .errors import (
    ExplainerError,
    ImageError,
    MethodNotApplicableError,
    ModelLoadError,
    ParameterError,
    UnsafeModelError,
    UnsupportedModelError,
)
from .explain import Explanation, explain
from .images import load_image
from .metrics import (
    AggregateScores,
    Curve,
    MapScores,
    aggregate,
    deletion_curve,
    evaluate_maps,
    insertion_curve,
    random_map,
)
from .models import ModelBundle, bundle_from_model, load_application, load_model
from .registry import MethodInfo, MethodSpec, ParamSpec, available_methods, get_method
from .sanity import SanityResult, model_randomisation_test

__version__ = "0.1.0"

__all__ = [
    "AggregateScores",
    "AttackResult",
    "Curve",
    "ExplainerError",
    "Explanation",
    "ImageError",
    "MapScores",
    "MethodInfo",
    "MethodNotApplicableError",
    "MethodSpec",
    "ModelBundle",
    "ModelLoadError",
    "ParamSpec",
    "ParameterError",
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
