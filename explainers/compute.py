"""Compiled, batched model passes shared by every explanation method.

One :class:`ModelRunner` per loaded model holds the ``tf.function``s the methods need:

* ``forward``: class scores and probabilities (perturbation methods, predictions);
* ``input_gradients``: d score / d input, optionally with guided-backprop ReLUs;
* ``layer_gradients``: activations of one layer and d score / d activations (CAM family);
* ``activations``: activations of one layer (feature maps, Score-CAM).

Each function is traced once per input shape (the batch dimension is free), takes the target class
as a tensor (no retracing per class), and only ever differentiates with respect to the input or an
activation, never the weights: the tape does not watch variables. That is also what keeps us away
from TensorFlow 2.21's oneDNN crash in the eager filter gradient of 1×1 stride-2 convolutions.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from .graph import replay

if TYPE_CHECKING:
    from .models import ModelBundle

#: ``progress(fraction_done, message)``; fraction in [0, 1].
ProgressCallback = Callable[[float, str], None]

_RELU_NAMES = ("relu", "relu6")


@tf.custom_gradient
def guided_relu_gate(x: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
    """Identity forward; backward lets only positive gradients through.

    Placed after a ReLU, whose own backward already zeroes positions with negative input, this gives
    exactly guided backpropagation's rule (Springenberg et al. 2015, Eq. in Fig. 1):
    ``R_in = (x > 0) · (R_out > 0) · R_out``.
    """

    def grad(upstream: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(upstream)

    return tf.identity(x), grad


def _ends_in_relu(layer: Any) -> bool:
    class_name = type(layer).__name__
    if class_name == "ReLU":
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) in _RELU_NAMES


def chunks(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``batch_size`` items."""
    batch_size = max(1, int(batch_size))
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


class ModelRunner:
    """Compiled passes through one model. Thread-safe; holds no per-request state."""

    def __init__(self, bundle: ModelBundle) -> None:
        self._model = bundle.model
        self._graph = bundle.is_graph
        self._output_index = bundle.output_index
        self._output_kind = bundle.output_kind
        self._output_layer = bundle.output_layer
        self._lock = threading.Lock()
        self._functions: dict[tuple[Any, ...], Callable[..., Any]] = {}
        self._predictions: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    # ------------------------------------------------------------------------------------------
    # The traced computation
    # ------------------------------------------------------------------------------------------
    def _scores(
        self, x: tf.Tensor, *, capture: str | None = None, guided: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """(class_scores, probabilities, captured activation) for a batch of model inputs.

        ``class_scores`` are what gradient methods explain: pre-softmax/pre-sigmoid logits where
        the model's last layer lets us recover them exactly, otherwise log-probabilities.
        """
        captured: dict[str, tf.Tensor] = {}
        stripped = self._output_kind in ("softmax", "sigmoid")
        layer_inputs: dict[str, Any] = {}

        def before(path: str, args: tuple[Any, ...]) -> None:
            if stripped and path == self._output_layer:
                layer_inputs[path] = args[0]

        def hook(path: str, layer: Any, output: Any) -> Any:
            if guided and _ends_in_relu(layer):
                output = guided_relu_gate(output)
            if path == capture:
                captured["activation"] = output
            if stripped and path == self._output_layer:
                output = _pre_activation(layer, layer_inputs[path])
            return output

        if self._graph:
            outputs = replay(self._model, [x], hook, before=before)
        else:
            outputs = self._model(x, training=False)
        if isinstance(outputs, list | tuple):
            outputs = outputs[self._output_index]
        scores, probs = _class_scores(tf.cast(outputs, tf.float32), self._output_kind)
        return scores, probs, captured.get("activation")

    def _compiled(self, key: tuple[Any, ...], build: Callable[[], Callable[..., Any]]):
        with self._lock:
            function = self._functions.get(key)
            if function is None:
                function = build()
                self._functions[key] = function
            return function

    def _forward_fn(self) -> Callable[..., Any]:
        def build() -> Callable[..., Any]:
            @tf.function(reduce_retracing=True)
            def forward(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                scores, probs, _ = self._scores(x)
                return scores, probs

            return forward

        return self._compiled(("forward",), build)

    def _input_gradient_fn(self, guided: bool) -> Callable[..., Any]:
        def build() -> Callable[..., Any]:
            @tf.function(reduce_retracing=True)
            def input_gradients(x: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)
                    scores, _, _ = self._scores(x, guided=guided)
                    score = scores[:, target]
                return score, tape.gradient(score, x)

            return input_gradients

        return self._compiled(("input_gradients", guided), build)

    def _layer_gradient_fn(self, layer: str) -> Callable[..., Any]:
        def build() -> Callable[..., Any]:
            @tf.function(reduce_retracing=True)
            def layer_gradients(
                x: tf.Tensor, target: tf.Tensor
            ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)  # keeps the activation on the tape; never differentiated
                    scores, _, activation = self._scores(x, capture=layer)
                    score = scores[:, target]
                return score, activation, tape.gradient(score, activation)

            return layer_gradients

        return self._compiled(("layer_gradients", layer), build)

    def _activation_fn(self, layer: str) -> Callable[..., Any]:
        def build() -> Callable[..., Any]:
            @tf.function(reduce_retracing=True)
            def activations(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
                scores, probs, activation = self._scores(x, capture=layer)
                return scores, probs, activation

            return activations

        return self._compiled(("activations", layer), build)

    # ------------------------------------------------------------------------------------------
    # Batched numpy API
    # ------------------------------------------------------------------------------------------
    def forward(
        self,
        x: np.ndarray,
        *,
        batch_size: int = 32,
        progress: ProgressCallback | None = None,
        message: str = "forward passes",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class scores and probabilities, each float32 (N, n_classes), for inputs (N, h, w, C)."""
        function = self._forward_fn()
        scores, probs = [], []
        for part in _progress_chunks(len(x), batch_size, progress, message):
            s, p = function(tf.constant(x[part], tf.float32))
            scores.append(s.numpy())
            probs.append(p.numpy())
        return np.concatenate(scores), np.concatenate(probs)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`forward` for one input (1, h, w, C), memoised by the input's bytes.

        Every explanation starts with the clean input's prediction (top-1 class, reported score);
        a user comparing methods on one image pays that forward pass once, not once per method.
        The memo holds the last few inputs only (a few floats each).
        """
        key = hashlib.blake2b(x.tobytes(), digest_size=16).digest() + repr(x.shape).encode()
        with self._lock:
            hit = self._predictions.get(key)
            if hit is not None:
                self._predictions.move_to_end(key)
                return hit
        result = self.forward(x)
        with self._lock:
            self._predictions[key] = result
            while len(self._predictions) > 16:
                self._predictions.popitem(last=False)
        return result

    def input_gradients(
        self,
        x: np.ndarray,
        target: int,
        *,
        guided: bool = False,
        batch_size: int = 32,
        progress: ProgressCallback | None = None,
        message: str = "gradients",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Target scores (N,) and their gradients w.r.t. the inputs (N, h, w, C), float32."""
        function = self._input_gradient_fn(guided)
        target_t = tf.constant(target, tf.int32)
        scores, grads = [], []
        for part in _progress_chunks(len(x), batch_size, progress, message):
            s, g = function(tf.constant(x[part], tf.float32), target_t)
            scores.append(s.numpy())
            grads.append(g.numpy())
        return np.concatenate(scores), np.concatenate(grads)

    def layer_gradients(
        self, x: np.ndarray, target: int, layer: str, *, batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Target scores (N,), activations A (N, h, w, K) and dScore/dA (N, h, w, K)."""
        function = self._layer_gradient_fn(layer)
        target_t = tf.constant(target, tf.int32)
        parts = [
            function(tf.constant(x[p], tf.float32), target_t) for p in chunks(len(x), batch_size)
        ]
        return tuple(np.concatenate([part[i].numpy() for part in parts]) for i in range(3))  # type: ignore[return-value]

    def activations(
        self, x: np.ndarray, layer: str, *, batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class scores, probabilities (N, n_classes) and the layer's activations (N, h, w, K)."""
        function = self._activation_fn(layer)
        parts = [function(tf.constant(x[p], tf.float32)) for p in chunks(len(x), batch_size)]
        return tuple(np.concatenate([part[i].numpy() for part in parts]) for i in range(3))  # type: ignore[return-value]


def _progress_chunks(
    n: int, batch_size: int, progress: ProgressCallback | None, message: str
) -> Iterator[slice]:
    for part in chunks(n, batch_size):
        yield part
        if progress is not None:
            progress(part.stop / max(1, n), f"{message}: {part.stop}/{n}")


def _pre_activation(layer: Any, layer_input: tf.Tensor) -> tf.Tensor:
    """The output layer's value before its softmax/sigmoid (Dense or a bare activation layer)."""
    if type(layer).__name__ == "Dense":
        z = tf.matmul(tf.cast(layer_input, tf.float32), tf.cast(layer.kernel, tf.float32))
        if layer.use_bias:
            z = z + tf.cast(layer.bias, tf.float32)
        return z
    return layer_input  # Activation / Softmax layer: its input is the logit


def _class_scores(outputs: tf.Tensor, kind: str) -> tuple[tf.Tensor, tf.Tensor]:
    """(class scores to explain, class probabilities), both (N, n_classes).

    A single-unit output is a binary classifier: its logit z scores class 1 and −z class 0, so that
    sigmoid of each class score is that class's probability.
    """
    if outputs.shape[-1] == 1:
        if kind == "probabilities":
            p = tf.clip_by_value(outputs, 1e-7, 1 - 1e-7)
            z = tf.math.log(p) - tf.math.log1p(-p)
        else:
            z = outputs
        scores = tf.concat([-z, z], axis=-1)
        return scores, tf.sigmoid(scores)
    if kind == "probabilities":
        return tf.math.log(tf.maximum(outputs, 1e-12)), outputs
    if kind == "sigmoid":
        return outputs, tf.sigmoid(outputs)
    return outputs, tf.nn.softmax(outputs, axis=-1)
