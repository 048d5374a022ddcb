"""Explain why a convolutional network made an image decision.

A plain-Python library (no Streamlit): load a model and an image, compute raw attribution maps
with any registered method, render them. The dashboard, the CLI and the tests all use this API::

    import explainers
    bundle = explainers.load_model("assets/models/demo_shapes.keras")
    image = explainers.load_image("assets/samples/shapes_circle_0.png")
    result = explainers.explain(bundle, image, "grad_cam")
    rgb = explainers.render.overlay(image, result.attribution)
"""

from __future__ import annotations

import os

# Quieten TensorFlow's start-up banner before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from . import render
from .errors import (
    ExplainerError,
    ImageError,
    MethodNotApplicableError,
    ModelLoadError,
    ParameterError,
    UnsupportedModelError,
)
from .explain import Explanation, explain
from .images import load_image
from .models import ModelBundle, bundle_from_model, load_application, load_model
from .registry import MethodInfo, MethodSpec, ParamSpec, available_methods, get_method

__version__ = "0.1.0"

__all__ = [
    "ExplainerError",
    "Explanation",
    "ImageError",
    "MethodInfo",
    "MethodNotApplicableError",
    "MethodSpec",
    "ModelBundle",
    "ModelLoadError",
    "ParamSpec",
    "ParameterError",
    "UnsupportedModelError",
    "__version__",
    "available_methods",
    "bundle_from_model",
    "explain",
    "get_method",
    "load_application",
    "load_image",
    "load_model",
    "render",
]
