"""Typed errors raised by the explainer library.

Every error carries a message written for the person using the dashboard or the CLI: it names the
bad value and says what was expected or what to do. The UI shows ``str(error)``, never a traceback.
"""

from __future__ import annotations


class ExplainerError(Exception):
    """Base class of every error the library raises on purpose."""


class ImageError(ExplainerError):
    """The image could not be read or converted (corrupt, unsupported, too large...)."""


class ModelLoadError(ExplainerError):
    """The model file could not be loaded (wrong format, corrupt, unsafe, offline download...)."""


class UnsafeModelError(ModelLoadError):
    """The model file was refused before Keras read it: it holds code, reaches outside Keras, or
    is built to exhaust memory or disk (see :mod:`explainers.io.safety`). The message names what was
    found, where, and what to do."""


class UnsupportedModelError(ExplainerError):
    """The model loaded but it is not an image classifier the methods can explain."""


class MethodNotApplicableError(ExplainerError):
    """The chosen method cannot be applied to this model or layer; the message says why."""


class ParameterError(ExplainerError, ValueError):
    """A method parameter, target class or layer name is invalid."""
