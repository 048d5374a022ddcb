"""Re-running a Keras model layer by layer, so that explanations can see inside it.

Explanation methods need more than ``model(x)``: the activations of an inner layer (Grad-CAM), the
class score before the final softmax (gradient methods), ReLUs whose backward pass is modified
(guided backprop). Building a new ``keras.Model`` from inner tensors fails for nested models (the
classic "graph disconnected" error when the layer lives inside a ``keras.applications`` base) and
re-wiring layers adds nodes to the user's model.

Instead we *replay* the model's own graph on real tensors: ``Functional._run_through_graph`` calls
each operation in topological order, and we recurse into nested Functional/Sequential sub-models.
A hook sees every layer's output under a path name (``"mobilenetv2/block_16_project"``) and may
record it or replace it. Nothing is written to the user's model, so one model can be shared by
concurrent explanations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras.src.models.functional import Functional

from explainers.core.layers import INPUT_NAME, LayerInfo

#: ``hook(path, layer, output) -> output``: called after every layer; return the output to use.
Hook = Callable[[str, keras.Layer, Any], Any]


def is_graph_model(model: keras.Layer) -> bool:
    """True for models whose layer graph can be replayed (Functional, built Sequential)."""
    if isinstance(model, keras.Sequential):
        return True
    return isinstance(model, Functional)


def graph_of(model: keras.Model) -> Functional | None:
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if isinstance(model, Functional):
        return model
    return None


#: ``before(path, args)``: called before every layer with its positional inputs.
Before = Callable[[str, tuple[Any, ...]], None]


def replay(
    model: keras.Model,
    inputs: Sequence[Any],
    hook: Hook,
    prefix: str = "",
    before: Before | None = None,
) -> Any:
    """Run ``model`` on ``inputs`` in inference mode, calling ``hook`` after every layer.

    Nested graph models are entered recursively; their layers get the path ``"outer/inner"`` and
    the sub-model itself is reported to ``hook`` after its layers. Returns the model's outputs with
    the same structure as ``model(inputs)``.
    """
    graph = graph_of(model)

    def operation_fn(operation: Any) -> Callable[..., Any]:
        return _call_operation(operation, prefix, hook, before)

    if graph is None:
        if not isinstance(model, keras.Sequential):
            raise TypeError(f"cannot replay a model of type {type(model).__name__}")
        x = inputs[0]  # a Sequential that was never built: run its layers in order
        for layer in model.layers:
            x = operation_fn(layer)(x)
        return x
    outputs = graph._run_through_graph(list(inputs), operation_fn=operation_fn)
    if isinstance(outputs, list | tuple) and len(outputs) == 1:
        return outputs[0]
    return outputs


def _call_operation(
    operation: Any, prefix: str, hook: Hook, before: Before | None
) -> Callable[..., Any]:
    path = prefix + operation.name
    if isinstance(operation, keras.Model) and graph_of(operation) is not None:

        def call_submodel(*args: Any, **kwargs: Any) -> Any:
            if before is not None:
                before(path, args)
            flat = keras.tree.flatten(args[0] if args else kwargs["inputs"])
            out = replay(operation, flat, hook, prefix=path + "/", before=before)
            return hook(path, operation, out)

        return call_submodel

    def call_layer(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(path, args)
        if isinstance(operation, keras.Layer):
            kwargs["training"] = False
        return hook(path, operation, operation(*args, **kwargs))

    return call_layer


def describe_layers(model: keras.Model, probe: np.ndarray) -> tuple[list[LayerInfo], list[str]]:
    """Flatten the model into a list of layers (execution order) with their data flow.

    Parameters
    ----------
    model
        A graph model (see :func:`is_graph_model`).
    probe
        float32 array of shape (1, H, W, C) to run once, eagerly, to learn every output shape.

    Returns
    -------
    layers, output_paths
        The layers, and for each model output the path of the layer producing it. A nested model
        appears after its own layers and its output is attributed to it.
    """
    producer: dict[int, str] = {}
    keep_alive: list[Any] = []  # ids are only unique while the tensors live
    inputs_of: dict[str, tuple[str, ...]] = {}
    layers: list[LayerInfo] = []

    def before(path: str, args: tuple[Any, ...]) -> None:
        found: list[str] = []
        for tensor in keras.tree.flatten(args):
            name = producer.get(id(tensor))
            if name is not None and name not in found:
                found.append(name)
        inputs_of[path] = tuple(found)

    def hook(path: str, layer: keras.Layer, output: Any) -> Any:
        flat = keras.tree.flatten(output)
        is_model = isinstance(layer, keras.Model)
        layers.append(
            LayerInfo(
                path=path,
                name=layer.name,
                class_name=type(layer).__name__,
                output_shape=tuple(int(d) for d in flat[0].shape[1:]) if flat else (),
                inputs=inputs_of.get(path, ()),
                n_params=int(sum(int(np.prod(w.shape)) for w in layer.weights)),
                depth=path.count("/"),
                is_model=is_model,
                same_as=producer.get(id(flat[0])) if is_model and flat else None,
            )
        )
        for tensor in flat:
            keep_alive.append(tensor)
            producer[id(tensor)] = path
        return output

    probe_tensor = keras.ops.convert_to_tensor(probe)
    producer[id(probe_tensor)] = INPUT_NAME
    outputs = replay(model, [probe_tensor], hook, before=before)
    output_paths = [producer.get(id(t), "") for t in keras.tree.flatten(outputs)]
    return layers, output_paths
