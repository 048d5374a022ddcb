"""Compiled, batched model passes shared by every explanation method.

One :class:`ModelRunner` per loaded model holds the ``tf.function``s the methods need:

* ``forward``: class scores and probabilities (perturbation methods, predictions);
* ``input_gradients``: d score / d input, optionally with guided-backprop ReLUs;
* ``layer_gradients``: activations of one layer and d score / d activations (CAM family);
* ``activations``: activations of one layer (feature maps, Score-CAM);
* ``per_row_layer_maps``: the CAM family's maps for a batch of *different* images, each for its
  own target class (by default its own top-1 class, chosen inside the pass): the dataset audit's
  one forward + backward per batch;
* ``built_forward`` / ``built_gradients``: the same passes on inputs that a method describes
  compactly (patch corners, noise seeds, path positions) and that are built, and for gradients
  reduced, inside the compiled function.

Each function is traced once per input shape with the batch dimension free, takes the target class
as a tensor (no retracing per class), and only ever differentiates with respect to the input or an
activation, never the weights: the tape does not watch variables. That is also what keeps us away
from TensorFlow 2.21's oneDNN crash in the eager filter gradient of 1×1 stride-2 convolutions.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import tensorflow as tf

from explainers.core.graph import replay
from explainers.core.specs import ParamSpec, ProgressCallback

if TYPE_CHECKING:
    from explainers.io.models import ModelBundle

#: ``builder(*batched_slices, *shared) -> model inputs (B, h, w, C)``, a pure TensorFlow function.
BatchBuilder = Callable[..., tf.Tensor]
#: What :meth:`ModelRunner.built_gradients` sums: the gradient, or the gradient times the input.
Transform = Literal["gradient", "gradient_x_input"]
ArrayLike = np.ndarray | tf.Tensor | float | int
#: ``reduce(activations (B, h, w, K), gradients (B, h, w, K) or None, target ()) -> (B, h, w)``.
LayerReducer = Callable[[tf.Tensor, tf.Tensor | None, tf.Tensor], tf.Tensor]
#: Like :data:`LayerReducer`, but the target is one class per row, int32 (B,).
RowLayerReducer = Callable[[tf.Tensor, tf.Tensor | None, tf.Tensor], tf.Tensor]

#: Input pixels per model call when no batch size is given ("automatic"): 8 images at 224 × 224,
#: 32 at 96 × 96, 2 at 448 × 448. Measured on two CPU cores (benchmarks/RESULTS.md, "Batch
#: size"): per-image time is lowest around 8 images for MobileNetV2/ResNet50 at 224 px and grows
#: again for larger batches (their activations outgrow the CPU caches), while the 96-px demo model
#: keeps gaining up to 16–32. Memory grows linearly with the batch.
AUTO_BATCH_PIXELS = 8 * 224 * 224
#: Most inputs per call in automatic mode.
MAX_AUTO_BATCH = 32


def auto_batch_size(input_shape: tuple[int, ...]) -> int:
    """Automatic batch size for model inputs of shape (h, w, C): about AUTO_BATCH_PIXELS pixels."""
    pixels = max(1, int(input_shape[0]) * int(input_shape[1]))
    return max(1, min(MAX_AUTO_BATCH, AUTO_BATCH_PIXELS // pixels))


def resolve_batch_size(batch_size: int | None, input_shape: tuple[int, ...]) -> int:
    """``batch_size`` when positive, else :func:`auto_batch_size` for inputs (h, w, C)."""
    return int(batch_size) if batch_size else auto_batch_size(input_shape)


def batch_size_param() -> ParamSpec:
    """The ``batch_size`` parameter of the methods in this package: 0 means automatic."""
    return ParamSpec(
        "batch_size",
        "int",
        0,
        "Inputs sent through the model per call; 0 = automatic (about 400 000 input pixels per "
        "call: 8 images at 224 × 224, 32 at 96 × 96), the fastest on a small CPU. Larger "
        "batches use more memory.",
        low=0,
        high=1024,
        step=1,
        advanced=True,
    )


_RELU_NAMES = ("relu", "relu6")
#: The output views a runner can read its scores through (:meth:`ModelRunner.bound`).
VIEW_KINDS = ("classes", "lower", "region_sum", "region_mean")


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
    """Consecutive slices of ``range(n)`` of at most ``batch_size`` items, as few as possible
    and of nearly equal sizes: 36 items at batch size 32 go as 18 + 18, not 32 + 4 (the same
    number of model calls, but a nearly empty last call wastes most of its per-call cost).
    """
    batch_size = max(1, int(batch_size))
    calls = -(-n // batch_size)
    for index in range(calls):
        yield slice(index * n // calls, (index + 1) * n // calls)


class ModelRunner:
    """Compiled passes through one model. Thread-safe; holds no per-request state.

    Every compiled function takes two tuples of tensors: *batched* ones, whose first axis runs over
    the items of the batch, and *shared* ones (the target class, the clean input, …). Each function
    is traced once per shape of its arguments with the batch axis left free (``None``), so the
    first batch and a shorter last batch share one graph: a method's first call pays one trace,
    not one per batch size.
    """

    def __init__(self, bundle: ModelBundle) -> None:
        self._model = bundle.model
        self._graph = bundle.is_graph
        self._output_index = bundle.output_index
        self._output_kind = bundle.output_kind
        self._output_layer = bundle.output_layer
        self._task = bundle.task
        #: What the scores are read from (see :meth:`bound`): the output itself ("classes"), a
        #: regression output's negation ("lower"), or a segmentation region's sum or mean
        #: ("region_sum", "region_mean", whose mask is ``_view_tensors[0]``).
        self._view_kind = "classes"
        self._view_tensors: tuple[tf.Tensor, ...] = ()
        self._lock = threading.Lock()
        self._functions: dict[tuple[Any, ...], Callable[..., Any]] = {}
        self._concrete: dict[tuple[Any, ...], Any] = {}
        self._predictions: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._keys: OrderedDict[int, tuple[weakref.ref[np.ndarray], bytes]] = OrderedDict()

    def bound(self, kind: str, tensors: tuple[np.ndarray, ...] = ()) -> ModelRunner:
        """This runner reading its scores through an output *view* (a target's, see
        :mod:`explainers.targets`): ``"classes"`` (the output's own class scores), ``"lower"``
        (a regression output negated: what lowers the value), ``"region_sum"`` /
        ``"region_mean"`` (a segmentation output's per-pixel class scores summed or averaged over
        the mask ``tensors[0]`` (h_out, w_out); probabilities are always averaged).

        The view's runner shares this runner's compiled functions: a view's kind is part of each
        function's key, its tensors are arguments, so a new region reuses the traced graphs. It
        has its own prediction memo (a prediction depends on the view).
        """
        if kind not in VIEW_KINDS:
            raise ValueError(f"unknown output view {kind!r}; known: {', '.join(VIEW_KINDS)}")
        view = copy.copy(self)
        view._view_kind = kind
        view._view_tensors = tuple(tf.constant(np.asarray(t, np.float32)) for t in tensors)
        view._predictions = OrderedDict()
        view._keys = OrderedDict()
        return view

    @property
    def view_tensors(self) -> tuple[tf.Tensor, ...]:
        """The view's tensors, for code that calls :meth:`scores_of` in its own compiled
        function (the attacks)."""
        return self._view_tensors

    def _split_view(self, shared: tuple[tf.Tensor, ...]) -> tuple[tuple[tf.Tensor, ...], ...]:
        """(the view's tensors, the function's own shared tensors) from a compiled function's
        ``shared`` argument, to which :meth:`_call` prepends the view's tensors."""
        n = len(self._view_tensors)
        return tuple(shared[:n]), tuple(shared[n:])

    # ------------------------------------------------------------------------------------------
    # The traced computation
    # ------------------------------------------------------------------------------------------
    def scores_of(
        self,
        x: tf.Tensor,
        *,
        capture: str | None = None,
        guided: bool = False,
        view: tuple[tf.Tensor, ...] = (),
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """(class_scores, probabilities, captured activation) for a batch of model inputs.

        ``class_scores`` are what gradient methods explain: pre-softmax/pre-sigmoid logits where
        the model's last layer lets us recover them exactly, otherwise log-probabilities; a
        regression output's values. Through a view (:meth:`bound`, whose tensors are ``view``)
        they are the view's scores: a region's summed (or mean) per-pixel class scores and mean
        class probabilities, or a regression value's negation.
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
                output = pre_activation(layer, layer_inputs[path])
            return output

        if self._graph:
            outputs = replay(self._model, [x], hook, before=before)
        else:
            outputs = self._model(x, training=False)
        if isinstance(outputs, list | tuple):
            outputs = outputs[self._output_index]
        scores, probs = class_scores(tf.cast(outputs, tf.float32), self._output_kind, self._task)
        scores, probs = apply_view(self._view_kind, view, scores, probs)
        return scores, probs, captured.get("activation")

    def _compiled(
        self, key: tuple[Any, ...], build: Callable[[], Callable[..., Any]]
    ) -> Callable[..., Any]:
        key = (self._view_kind, *key)
        with self._lock:
            function = self._functions.get(key)
            if function is None:
                function = build()
                self._functions[key] = function
            return function

    def _call(
        self,
        key: tuple[Any, ...],
        function: Callable[..., Any],
        batched: tuple[tf.Tensor, ...],
        shared: tuple[tf.Tensor, ...] = (),
    ) -> Any:
        """``function(batched, shared)`` through its concrete function with the batch axis free.

        Without this, ``reduce_retracing`` traces a batch of 1 exactly and only generalises on the
        second batch size it meets; for a 150-layer model each trace costs seconds. Calling the
        concrete function also skips ``tf.function``'s per-call argument matching (about half of
        its dispatch overhead, which matters for small models).
        """
        shared = (*self._view_tensors, *shared)
        signature = (
            self._view_kind,
            key,
            tuple((tuple(t.shape[1:]), t.dtype) for t in batched),
            tuple((tuple(t.shape), t.dtype) for t in shared),
        )
        concrete = self._concrete.get(signature)
        if concrete is None:
            concrete = function.get_concrete_function(
                tuple(tf.TensorSpec([None, *t.shape[1:]], t.dtype) for t in batched),
                tuple(tf.TensorSpec(t.shape, t.dtype) for t in shared),
            )
            with self._lock:
                self._concrete[signature] = concrete
        return concrete(batched, shared)

    def tracing_count(self) -> int:
        """How many graphs the runner's functions have traced so far (for tests and benchmarks)."""
        with self._lock:
            functions = list(self._functions.values())
        return sum(int(f.experimental_get_tracing_count()) for f in functions)

    def _forward_fn(self) -> Callable[..., Any]:
        def build() -> Callable[..., Any]:
            @tf.function(reduce_retracing=True)
            def forward(
                batched: tuple[tf.Tensor], shared: tuple[tf.Tensor, ...]
            ) -> tuple[tf.Tensor, ...]:
                view, _ = self._split_view(shared)
                scores, probs, _ = self.scores_of(batched[0], view=view)
                return scores, probs

            return forward

        return self._compiled(("forward",), build)

    def _input_gradient_fn(self, guided: bool) -> Callable[..., Any]:
        def build() -> Callable[..., Any]:
            @tf.function(reduce_retracing=True)
            def input_gradients(
                batched: tuple[tf.Tensor], shared: tuple[tf.Tensor]
            ) -> tuple[tf.Tensor, ...]:
                view, (target,) = self._split_view(shared)
                x = batched[0]
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)
                    scores, probs, _ = self.scores_of(x, guided=guided, view=view)
                    score = scores[:, target]
                return scores, probs, tape.gradient(score, x)

            return input_gradients

        return self._compiled(("input_gradients", guided), build)

    def _layer_gradient_fn(self, layer: str) -> Callable[..., Any]:
        def build() -> Callable[..., Any]:
            @tf.function(reduce_retracing=True)
            def layer_gradients(
                batched: tuple[tf.Tensor], shared: tuple[tf.Tensor]
            ) -> tuple[tf.Tensor, ...]:
                view, (target,) = self._split_view(shared)
                x = batched[0]
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)  # keeps the activation on the tape; never differentiated
                    scores, probs, activation = self.scores_of(x, capture=layer, view=view)
                    score = scores[:, target]
                return scores, probs, activation, tape.gradient(score, activation)

            return layer_gradients

        return self._compiled(("layer_gradients", layer), build)

    def _activation_fn(self, layer: str) -> Callable[..., Any]:
        def build() -> Callable[..., Any]:
            @tf.function(reduce_retracing=True)
            def activations(
                batched: tuple[tf.Tensor], shared: tuple[tf.Tensor, ...]
            ) -> tuple[tf.Tensor, ...]:
                view, _ = self._split_view(shared)
                scores, probs, activation = self.scores_of(batched[0], capture=layer, view=view)
                return scores, probs, activation

            return activations

        return self._compiled(("activations", layer), build)

    def _layer_map_fn(
        self, layer: str, reduce: LayerReducer, needs_gradients: bool
    ) -> Callable[..., Any]:
        def build() -> Callable[..., Any]:
            @tf.function(reduce_retracing=True)
            def layer_maps(
                batched: tuple[tf.Tensor], shared: tuple[tf.Tensor]
            ) -> tuple[tf.Tensor, ...]:
                view, (target,) = self._split_view(shared)
                x = batched[0]
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)  # keeps the activation on the tape; never differentiated
                    scores, probs, activation = self.scores_of(x, capture=layer, view=view)
                    score = scores[:, target]
                grads = tape.gradient(score, activation) if needs_gradients else None
                return scores, probs, reduce(activation, grads, target), tf.shape(activation)

            return layer_maps

        return self._compiled(("layer_maps", layer, reduce, needs_gradients), build)

    def _per_row_layer_map_fn(
        self, layer: str, reduce: RowLayerReducer, needs_gradients: bool, given: bool
    ) -> Callable[..., Any]:
        def build() -> Callable[..., Any]:
            @tf.function(reduce_retracing=True)
            def per_row_layer_maps(
                batched: tuple[tf.Tensor, ...], shared: tuple[tf.Tensor, ...]
            ) -> tuple[tf.Tensor, ...]:
                view, _ = self._split_view(shared)
                x = batched[0]
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)  # keeps the activation on the tape; never differentiated
                    scores, probs, activation = self.scores_of(x, capture=layer, view=view)
                    if given:
                        targets = tf.cast(batched[1], tf.int32)
                    else:
                        targets = tf.argmax(probs, axis=-1, output_type=tf.int32)
                    # Each row's own class; rows are independent (inference mode), so the
                    # gradient of the sum holds every row's own gradient.
                    score = tf.gather(scores, targets, axis=1, batch_dims=1)
                grads = tape.gradient(score, activation) if needs_gradients else None
                maps = reduce(activation, grads, targets)
                return scores, probs, targets, maps, tf.shape(activation)

            return per_row_layer_maps

        return self._compiled(("per_row_layer_maps", layer, reduce, needs_gradients, given), build)

    def _built_forward_fn(self, builder: BatchBuilder) -> Callable[..., Any]:
        def build() -> Callable[..., Any]:
            @tf.function(reduce_retracing=True)
            def built_forward(
                batched: tuple[tf.Tensor, ...], shared: tuple[tf.Tensor, ...]
            ) -> tuple[tf.Tensor, ...]:
                view, shared = self._split_view(shared)
                scores, probs, _ = self.scores_of(builder(*batched, *shared), view=view)
                return scores, probs

            return built_forward

        return self._compiled(("built_forward", builder), build)

    def _built_gradient_fn(
        self, builder: BatchBuilder, guided: bool, transform: Transform, squared: bool
    ) -> Callable[..., Any]:
        def build() -> Callable[..., Any]:
            @tf.function(reduce_retracing=True)
            def built_gradients(
                batched: tuple[tf.Tensor, ...], shared: tuple[tf.Tensor, ...]
            ) -> tuple[tf.Tensor, tf.Tensor]:
                weights, *items = batched
                view, (target, *rest) = self._split_view(shared)
                inputs = builder(*items, *rest)
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(inputs)
                    scores, _, _ = self.scores_of(inputs, guided=guided, view=view)
                    score = scores[:, target]
                # Items are independent (inference mode), so the gradient of the summed score
                # holds each item's own gradient.
                attribution = tape.gradient(score, inputs)
                if transform == "gradient_x_input":
                    attribution = attribution * inputs
                if squared:
                    attribution = tf.square(attribution)
                return score, tf.tensordot(weights, attribution, axes=1)

            return built_gradients

        return self._compiled(("built_gradients", builder, guided, transform, squared), build)

    # ------------------------------------------------------------------------------------------
    # The prediction memo
    # ------------------------------------------------------------------------------------------
    def _memo_key(self, x: np.ndarray) -> bytes:
        """Digest of the input's bytes and shape.

        An array that owns its data and is read-only (``explain()`` freezes its model input) cannot
        change, so its digest is remembered by identity: one explanation hashes its input once,
        not once per pass plus once for the prediction.
        """
        frozen = not x.flags.writeable and x.base is None
        if frozen:
            with self._lock:
                known = self._keys.get(id(x))
            if known is not None and known[0]() is x:
                return known[1]
        array = np.ascontiguousarray(x, np.float32)
        # SHA-256 runs on the CPU's SHA extensions where present: 2–3× quicker than BLAKE2 here.
        key = hashlib.sha256(array.data).digest() + repr(array.shape).encode()
        if frozen:
            with self._lock:
                self._keys[id(x)] = (weakref.ref(x), key)
                while len(self._keys) > 8:
                    self._keys.popitem(last=False)
        return key

    def _remember(self, x: np.ndarray, scores: tf.Tensor, probs: tf.Tensor) -> None:
        """Memoise the prediction of a single input that a pass has just computed anyway.

        Every single-image pass (a gradient, a layer's activations) runs the model forward on the
        clean input, so :meth:`predict` for that input can be answered without another forward.
        """
        if len(x) != 1:
            return
        self._store(self._memo_key(x), (scores.numpy(), probs.numpy()))

    def _store(self, key: bytes, result: tuple[np.ndarray, np.ndarray]) -> None:
        with self._lock:
            self._predictions[key] = result
            self._predictions.move_to_end(key)
            while len(self._predictions) > 16:
                self._predictions.popitem(last=False)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`forward` for one input (1, h, w, C), memoised by the input's bytes.

        Every explanation needs the clean input's prediction (top-1 class, reported score); a user
        comparing methods on one image pays that forward pass once, not once per method, and a
        method whose own passes include the clean input fills the memo for free. The memo holds
        the last 16 inputs' predictions (a few floats each).
        """
        key = self._memo_key(x)
        with self._lock:
            hit = self._predictions.get(key)
            if hit is not None:
                self._predictions.move_to_end(key)
                return hit
        result = self.forward(x)
        self._store(key, result)
        return result

    def cached_prediction(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The memoised prediction of input (1, h, w, C), or None (never runs the model)."""
        key = self._memo_key(x)
        with self._lock:
            return self._predictions.get(key)

    # ------------------------------------------------------------------------------------------
    # Batched numpy API
    # ------------------------------------------------------------------------------------------
    def forward(
        self,
        x: np.ndarray,
        *,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
        message: str = "forward passes",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class scores and probabilities, each float32 (N, n_classes), for inputs (N, h, w, C)."""
        function = self._forward_fn()
        scores, probs = [], []
        for part in _progress_chunks(
            len(x), resolve_batch_size(batch_size, x.shape[1:]), progress, message
        ):
            s, p = self._call(("forward",), function, (tf.constant(x[part], tf.float32),))
            scores.append(s.numpy())
            probs.append(p.numpy())
        return _join(scores), _join(probs)

    def input_gradients(
        self,
        x: np.ndarray,
        target: int,
        *,
        guided: bool = False,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
        message: str = "gradients",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Target scores (N,) and their gradients w.r.t. the inputs (N, h, w, C), float32."""
        key = ("input_gradients", guided)
        function = self._input_gradient_fn(guided)
        target_t = tf.constant(target, tf.int32)
        scores, grads = [], []
        for part in _progress_chunks(
            len(x), resolve_batch_size(batch_size, x.shape[1:]), progress, message
        ):
            s, p, g = self._call(key, function, (tf.constant(x[part], tf.float32),), (target_t,))
            self._remember(x, s, p)
            scores.append(s.numpy()[:, target])
            grads.append(g.numpy())
        return _join(scores), _join(grads)

    def layer_gradients(
        self, x: np.ndarray, target: int, layer: str, *, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Target scores (N,), activations A (N, h, w, K) and dScore/dA (N, h, w, K)."""
        key = ("layer_gradients", layer)
        function = self._layer_gradient_fn(layer)
        target_t = tf.constant(target, tf.int32)
        parts = []
        for part in chunks(len(x), resolve_batch_size(batch_size, x.shape[1:])):
            s, p, a, g = self._call(key, function, (tf.constant(x[part], tf.float32),), (target_t,))
            self._remember(x, s, p)
            parts.append((s.numpy()[:, target], a.numpy(), g.numpy()))
        return tuple(_join([part[i] for part in parts]) for i in range(3))  # type: ignore[return-value]

    def activations(
        self, x: np.ndarray, layer: str, *, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class scores, probabilities (N, n_classes) and the layer's activations (N, h, w, K)."""
        key = ("activations", layer)
        function = self._activation_fn(layer)
        parts = []
        for part in chunks(len(x), resolve_batch_size(batch_size, x.shape[1:])):
            s, p, a = self._call(key, function, (tf.constant(x[part], tf.float32),))
            self._remember(x, s, p)
            parts.append((s.numpy(), p.numpy(), a.numpy()))
        return tuple(_join([part[i] for part in parts]) for i in range(3))  # type: ignore[return-value]

    def layer_maps(
        self,
        x: np.ndarray,
        target: int,
        layer: str,
        reduce: LayerReducer,
        *,
        needs_gradients: bool,
        batch_size: int | None = None,
    ) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Maps (N, h, w), float32, that ``reduce`` makes from a layer's activations (and, with
        ``needs_gradients``, dScore/dA) inside the compiled pass, and the layer's (h, w, K).

        The CAM family's weighting and channel sum run in the graph: only the (h, w) map per
        image comes back, not two (h, w, K) arrays. ``reduce`` is a pure TensorFlow function and
        part of the compiled function's cache key (build it once per bundle).
        """
        key = ("layer_maps", layer, reduce, needs_gradients)
        function = self._layer_map_fn(layer, reduce, needs_gradients)
        target_t = tf.constant(target, tf.int32)
        maps, shape = [], (0, 0, 0)
        for part in chunks(len(x), resolve_batch_size(batch_size, x.shape[1:])):
            s, p, m, full_shape = self._call(
                key, function, (tf.constant(x[part], tf.float32),), (target_t,)
            )
            self._remember(x, s, p)
            maps.append(m.numpy())
            shape = tuple(int(d) for d in full_shape.numpy()[1:])
        return _join(maps), shape  # type: ignore[return-value]

    def per_row_layer_maps(
        self,
        x: np.ndarray,
        layer: str,
        reduce: RowLayerReducer,
        *,
        needs_gradients: bool,
        targets: np.ndarray | None = None,
        batch_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int]]:
        """CAM-family maps of N different inputs (N, h, w, C), each for its own class.

        ``targets`` (N,) gives each row's class; None explains each row's top-1 class, chosen
        inside the pass (``argmax`` of its probabilities), so one forward + backward per batch
        gives the predictions and the maps. ``reduce(activations, gradients, targets (B,))``
        weights and sums the channels in the graph. Returns class scores and probabilities
        (N, n_classes), the targets (N,) int, the maps (N, h, w) float32 and the layer's
        (h, w, K). Traced once per input shape, the batch axis free: batches of any size share
        one graph.
        """
        given = targets is not None
        key = ("per_row_layer_maps", layer, reduce, needs_gradients, given)
        function = self._per_row_layer_map_fn(layer, reduce, needs_gradients, given)
        parts, shape = [], (0, 0, 0)
        for part in chunks(len(x), resolve_batch_size(batch_size, x.shape[1:])):
            batched = (tf.constant(x[part], tf.float32),)
            if given:
                batched += (tf.constant(np.asarray(targets)[part], tf.int32),)
            s, p, t, m, full_shape = self._call(key, function, batched)
            parts.append((s.numpy(), p.numpy(), t.numpy(), m.numpy()))
            shape = tuple(int(d) for d in full_shape.numpy()[1:])
        joined = tuple(_join([part[i] for part in parts]) for i in range(4))
        return (*joined, shape)  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------
    # Batches built inside the compiled function
    # ------------------------------------------------------------------------------------------
    def built_forward(
        self,
        builder: BatchBuilder,
        batched: tuple[ArrayLike, ...],
        shared: tuple[ArrayLike, ...] = (),
        *,
        batch_size: int,
        progress: ProgressCallback | None = None,
        message: str = "forward passes",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and probabilities, float32 (N, n_classes), of the inputs ``builder`` makes.

        ``builder(*batched_slice, *shared)`` runs inside the compiled function and returns the
        model inputs (B, h, w, C) for one slice of the ``batched`` arrays (each with N items on
        its first axis). Perturbation methods describe their inputs compactly (patch corners,
        low-resolution masks) and the full-size images exist only inside the graph: no Python
        loop per item and no image-sized NumPy↔TensorFlow copies. ``builder`` must be a pure
        TensorFlow function, defined once (it is part of the compiled function's cache key).
        """
        function = self._built_forward_fn(builder)
        batched_a = tuple(_sliceable(a) for a in batched)
        shared_t = tuple(_tensor(a) for a in shared)
        n = int(batched_a[0].shape[0])
        scores, probs = [], []
        for part in _progress_chunks(n, batch_size, progress, message):
            s, p = self._call(
                ("built_forward", builder),
                function,
                tuple(_tensor(a[part]) for a in batched_a),
                shared_t,
            )
            scores.append(s.numpy())
            probs.append(p.numpy())
        return _join(scores), _join(probs)

    def built_gradients(
        self,
        builder: BatchBuilder,
        target: int,
        weights: ArrayLike,
        batched: tuple[ArrayLike, ...],
        shared: tuple[ArrayLike, ...] = (),
        *,
        guided: bool = False,
        transform: Transform = "gradient",
        squared: bool = False,
        batch_size: int,
        progress: ProgressCallback | None = None,
        message: str = "gradients",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Σ_i w_i · T(∂S_target/∂x_i) over the N inputs x_i that ``builder`` makes.

        ``T`` is the gradient itself or the gradient times the input (``transform``), squared
        when ``squared``. Returns the target scores of the inputs, float32 (N,), and the weighted
        sum, float32 (h, w, C). The reduction happens in the graph, so only one image-sized
        array per batch comes back to NumPy (Integrated Gradients' path points and SmoothGrad's
        noisy copies are generated, differentiated and summed in TensorFlow).
        """
        function = self._built_gradient_fn(builder, guided, transform, squared)
        key = ("built_gradients", builder, guided, transform, squared)
        weights_a = _sliceable(weights)
        batched_a = tuple(_sliceable(a) for a in batched)
        shared_t = (tf.constant(target, tf.int32), *(_tensor(a) for a in shared))
        scores, total = [], None
        for part in _progress_chunks(int(weights_a.shape[0]), batch_size, progress, message):
            s, summed = self._call(
                key,
                function,
                (_tensor(weights_a[part]), *(_tensor(a[part]) for a in batched_a)),
                shared_t,
            )
            scores.append(s.numpy())
            total = summed if total is None else total + summed
        assert total is not None
        return _join(scores), total.numpy()


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """The batches' results as one array (no copy for a single batch)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _tensor(value: ArrayLike) -> tf.Tensor:
    """``value`` as a tensor; float64 arrays become float32, integer arrays int32."""
    if isinstance(value, tf.Tensor):
        return value
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return tf.constant(array, tf.float32)
    if array.dtype.kind in "iub":
        return tf.constant(array, tf.int32)
    return tf.constant(array)


def _sliceable(value: ArrayLike) -> np.ndarray | tf.Tensor:
    """A batched argument kept as NumPy where it is one: slicing a NumPy array and converting the
    slice costs microseconds, slicing an eager tensor about a millisecond per slice."""
    return value if isinstance(value, tf.Tensor) else np.asarray(value)


def _progress_chunks(
    n: int, batch_size: int, progress: ProgressCallback | None, message: str
) -> Iterator[slice]:
    for part in chunks(n, batch_size):
        yield part
        if progress is not None:
            progress(part.stop / max(1, n), f"{message}: {part.stop}/{n}")


def pre_activation(layer: Any, layer_input: tf.Tensor) -> tf.Tensor:
    """The output layer's value before its softmax/sigmoid: a Dense or convolution layer's
    affine part, or a bare activation layer's input."""
    class_name = type(layer).__name__
    if class_name == "Dense":
        z = tf.matmul(tf.cast(layer_input, tf.float32), tf.cast(layer.kernel, tf.float32))
        if layer.use_bias:
            z = z + tf.cast(layer.bias, tf.float32)
        return z
    if class_name in CONV_OUTPUT_LAYERS:
        z = layer.convolution_op(tf.cast(layer_input, tf.float32), layer.kernel)
        if layer.use_bias:
            z = z + tf.cast(layer.bias, tf.float32)
        return z
    return layer_input  # Activation / Softmax layer: its input is the logit


#: Convolutions whose softmax/sigmoid activation :func:`pre_activation` can strip (a
#: segmentation model's per-pixel classifier).
CONV_OUTPUT_LAYERS = ("Conv2D",)


def apply_view(
    kind: str, view: tuple[tf.Tensor, ...], scores: tf.Tensor, probs: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """The view's (scores, probabilities), (B, K), from the output's own (see
    :meth:`ModelRunner.bound`). A region reads per-pixel (B, h, w, K) scores through its mask:
    Seg-Grad-CAM's score (Vinogradova et al. 2020) is the sum of the class's logits over the
    region; the probability is always the region's mean class probability."""
    if kind == "classes":
        return scores, probs
    if kind == "lower":
        return -scores, -probs
    mask = view[0][None, :, :, None]
    total = tf.reduce_sum(view[0])
    summed = tf.reduce_sum(scores * mask, axis=(1, 2))
    mean_probs = tf.reduce_sum(probs * mask, axis=(1, 2)) / total
    if kind == "region_mean":
        return summed / total, mean_probs
    return summed, mean_probs


def class_scores(
    outputs: tf.Tensor, kind: str, task: str = "classification"
) -> tuple[tf.Tensor, tf.Tensor]:
    """(class scores to explain, class probabilities), both (N, n_classes) — (N, h, w,
    n_classes) per pixel for a segmentation output.

    A single-unit output is a binary classifier: its logit z scores class 1 and −z class 0, so that
    sigmoid of each class score is that class's probability. A regression output has no
    probabilities: both are its values.
    """
    if task == "regression":
        return outputs, outputs
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
