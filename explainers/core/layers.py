"""What the pages need to know about a model's layers, without Keras: plain data.

:func:`explainers.core.graph.describe_layers` builds these from a live model (in a worker process);
the dashboard process reads them from the worker's reply and must not import Keras to do so.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerInfo:
    """One layer of the flattened model graph, as found by :func:`describe_layers`.

    ``path`` is unique (nested layers are ``"submodel/layer"``); ``inputs`` names the layers whose
    outputs this layer consumes (``"<input>"`` for the model input); ``output_shape`` excludes the
    batch dimension and was measured on a probe input of the model's size.
    """

    path: str
    name: str
    class_name: str
    output_shape: tuple[int, ...]
    inputs: tuple[str, ...]
    n_params: int
    depth: int
    is_model: bool
    #: For a nested model: the path of its inner layer whose output is the model's output.
    same_as: str | None = None

    @property
    def is_spatial(self) -> bool:
        """A 4-D (H, W, C) output with more than one position: a layer CAM methods can use."""
        shape = self.output_shape
        return len(shape) == 3 and shape[0] * shape[1] > 1


INPUT_NAME = "<input>"
