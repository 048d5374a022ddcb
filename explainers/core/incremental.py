"""Incremental inference for occlusion: recompute only what an occluding patch can change.

An occluding patch changes the input only inside its box, and a layer's output only inside the
*projective field* of that box: the positions whose receptive field touches it, grown layer by
layer by each layer's kernel, stride, padding and dilation. Everything outside equals the clean
image's activations. Krypton (Nakandala, Kumar & Papakonstantinou, "Incremental and Approximate
Inference for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019) treats occlusion as
incremental view maintenance: run the clean image once, keep its activations, and for every
patch recompute at each layer only the changed region, from crops of the cached activations.

How it runs here
----------------
:func:`plan_for` walks the model's graph once (nested Functional/Sequential models included,
through the same ``_run_through_graph`` replay as :mod:`explainers.core.graph`) on a zero probe
and, in NumPy, for every patch of the geometry, the changed box of every layer. Within the whole
geometry every layer gets one static crop size (the largest changed box, clamped to the map) and
each patch a crop *window* at that size, clamped inside the map and holding its changed box; the
windows' top-left corners travel into the compiled pass as one int32 array per batch. Then:

* the clean pass (one ``tf.function`` per input shape) runs the model on the clean input and
  keeps the activations that windows are read from, padded once with each convolution's own
  zero padding (``-inf`` for a max-pooling's);
* the batch pass (one ``tf.function`` per geometry; the batch axis free, so every batch, the
  shorter last one included, shares one trace) builds each patch's input crop from the fill,
  then at every layer gathers the input window it needs from the padded clean map, overlays the
  crop of the layer before (a batched ``gather_nd`` + ``where``), and applies the layer's own
  weights with ``"valid"`` padding (``keras.ops.conv`` / ``depthwise_conv`` / ``separable_conv``
  with the layer's kernel, bias, strides, dilation and activation). Point-wise layers (batch
  normalisation, activations, 1 × 1 stride-1 convolutions) run on the crop as it is; a merge
  (``Add``, ``Concatenate``, …) brings its inputs to one window first; a
  ``GlobalAveragePooling2D`` updates the clean mean by the crop's difference,
  ``mean + (Σ crop − Σ clean window) / (h·w)``; where a layer's window covers its whole map
  (exact mode: at least :data:`FULL_WINDOW_AREA` of it, where the gathers would cost more than
  they save) or at ``Flatten`` / ``GlobalMaxPooling2D``, the crop is pasted into the clean map
  and the rest of the network runs as usual on full maps (the dense head always does).

The result equals full re-inference to float round-off (the windowed convolution sums the same
products in another order). The explained score is the runner's: the output layer's softmax or
sigmoid stripped with :func:`explainers.core.runner.pre_activation` for logits, and
:func:`explainers.core.runner.class_scores` for scores and probabilities.

Approximate mode (Krypton's projective-field thresholding): with a threshold τ < 1 no layer's
window grows beyond ``ceil(τ · side)`` of its map; a changed box that would is truncated around
its centre, and changes outside it are ignored (taken as clean). Deep layers then stay cropped
instead of covering the whole map, at the cost of an error that grows as τ falls.

Supported layers
----------------
On cropped maps (anything else raises :class:`Unsupported`, and the caller falls back to full
re-inference with the reason):

* ``Conv2D`` (strides, dilation, ``"same"``/``"valid"`` padding, groups = 1),
  ``DepthwiseConv2D``, ``SeparableConv2D``, ``MaxPooling2D``, ``AveragePooling2D`` (``"same"``
  average pooling divides by the count of real pixels, as TensorFlow does);
* ``ZeroPadding2D`` (shifts the window);
* point-wise: ``BatchNormalization`` (inference, channel axis), ``Activation``, ``ReLU``,
  ``LeakyReLU``, ``ELU``, ``PReLU`` (alpha shared over space), ``Softmax`` and
  ``LayerNormalization`` over channels, ``Dropout`` and the other inference-time identities
  (``SpatialDropout2D``, ``GaussianNoise``, ``GaussianDropout``, ``AlphaDropout``,
  ``ActivityRegularization``, ``Identity``), ``Rescaling`` and ``Normalization`` per channel,
  ``Dense`` on a feature map (a 1 × 1 convolution);
* merges: ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``, ``Minimum``,
  ``Concatenate`` on the channel axis (inputs of one spatial size);
* ``GlobalAveragePooling2D`` (difference update), ``GlobalMaxPooling2D`` and ``Flatten``
  (paste, then as usual).

After a map has been pasted back (the head, or a squeeze-and-excitation gate multiplying a map by
a global vector), any layer runs as usual. Channels-last float32 layers only; layer subclasses
are not trusted (their ``call`` may differ), only these exact classes.
"""

from __future__ import annotations

import math
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from explainers.core.graph import graph_of
from explainers.core.runner import chunks, class_scores, pre_activation
from explainers.core.specs import ProgressCallback

if TYPE_CHECKING:
    from explainers.io.models import ModelBundle


class Unsupported(Exception):
    """Incremental inference cannot reason about this model or geometry; the message says why."""


def _types(*names: str) -> tuple[type, ...]:
    return tuple(t for t in (getattr(keras.layers, n, None) for n in names) if t is not None)


_POINTWISE = _types(
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "PReLU",
    "Softmax",
    "BatchNormalization",
    "LayerNormalization",
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
    "Rescaling",
    "Normalization",
    "Dense",
)
_CONVS = _types("Conv2D", "DepthwiseConv2D", "SeparableConv2D")
_POOLS = _types("MaxPooling2D", "AveragePooling2D")
_MERGES = _types("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")
_PASTE = _types("GlobalMaxPooling2D", "Flatten")
#: A layer whose window reaches at least this fraction of its map's area is pasted back and the
#: network continues on full maps: the gathers of a nearly full window cost more than they save.
FULL_WINDOW_AREA = 0.8


# ------------------------------------------------------------------------------------------------
# Walking the graph
# ------------------------------------------------------------------------------------------------
Visit = Callable[[str, Any, tuple[Any, ...], dict[str, Any]], Any]


def _walk(model: keras.Model, inputs: Sequence[Any], visit: Visit, prefix: str = "") -> Any:
    """``model``'s graph in topological order, ``visit(path, operation, args, kwargs)`` computing
    every operation's outputs from whatever values flow (probes, crops, tensors). Nested graph
    models are entered, as :func:`explainers.core.graph.replay` does."""
    graph = graph_of(model)
    if graph is None:
        raise Unsupported(f"{prefix}{model.name} is a Sequential model that was never built")

    def operation_fn(operation: Any) -> Callable[..., Any]:
        path = prefix + operation.name
        if isinstance(operation, keras.Model) and graph_of(operation) is not None:

            def call_submodel(*args: Any, **kwargs: Any) -> Any:
                flat = keras.tree.flatten(args[0] if args else kwargs["inputs"])
                return _walk(operation, flat, visit, prefix=path + "/")

            return call_submodel

        def call(*args: Any, **kwargs: Any) -> Any:
            return visit(path, operation, args, kwargs)

        return call

    outputs = graph._run_through_graph(list(inputs), operation_fn=operation_fn)
    if isinstance(outputs, list | tuple) and len(outputs) == 1:
        return outputs[0]
    return outputs


def _call(operation: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """The operation as the model runs it (inference mode)."""
    kwargs = dict(kwargs)
    if isinstance(operation, keras.Layer):
        kwargs["training"] = False
    return operation(*args, **kwargs)


def _scope_name(path: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", path)
    return name if name[:1].isalnum() else "layer" + name


def _swap(structure: Any, kind: type, fn: Callable[[Any], Any]) -> Any:
    return keras.tree.map_structure(lambda v: fn(v) if isinstance(v, kind) else v, structure)


# ------------------------------------------------------------------------------------------------
# Geometry in NumPy: changed boxes and windows
# ------------------------------------------------------------------------------------------------
def same_padding(n: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's ``"SAME"`` padding (before, after) along an axis of ``n`` pixels."""
    n_out = -(-n // stride)
    total = max((n_out - 1) * stride + (kernel - 1) * dilation + 1 - n, 0)
    return total // 2, total - total // 2


def grow(
    lo: np.ndarray, hi: np.ndarray, kernel: int, stride: int, dilation: int, pad: int, n_out: int
) -> tuple[np.ndarray, np.ndarray]:
    """The output positions [lo', hi') whose receptive field meets the input positions [lo, hi).

    Output ``o`` reads the unpadded inputs ``o·stride − pad + t·dilation`` for t < kernel, so it
    can change iff ``o·s − pad ≤ hi − 1`` and ``o·s − pad + (k − 1)·d ≥ lo``. Empty boxes stay
    empty.
    """
    span = (kernel - 1) * dilation
    out_lo = -((span - lo - pad) // stride)  # ceil((lo + pad − span) / stride)
    out_hi = (hi - 1 + pad) // stride + 1
    out_lo = np.clip(out_lo, 0, n_out)
    out_hi = np.clip(out_hi, 0, n_out)
    empty = (hi <= lo) | (out_hi <= out_lo)
    return out_lo, np.where(empty, out_lo, out_hi)


def fit_window(
    lo: np.ndarray, hi: np.ndarray, n: int, cap: float | None
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """One static window size for all patches along an axis of ``n`` positions, and each patch's
    window start: (size, starts, lo, hi), the window holding each changed range [lo, hi).

    With ``cap`` (approximate mode) the size is at most ``ceil(cap · n)``; a longer changed range
    is truncated to a window centred on it, and the returned range is the truncated one.
    """
    size = min(max(1, int((hi - lo).max(initial=0))), n)
    if cap is not None:
        size = min(size, max(1, math.ceil(cap * n)))
    over = (hi - lo) > size
    centred = np.floor((lo + hi - size) / 2).astype(np.int64)
    starts = np.clip(np.where(over, centred, lo), 0, n - size)
    return size, starts, np.clip(lo, starts, starts + size), np.clip(hi, starts, starts + size)


# ------------------------------------------------------------------------------------------------
# Values flowing through the walks
# ------------------------------------------------------------------------------------------------
class _Meta:
    """Planning value: a zero-probe tensor (for shapes) and, for a cropped map, its window and
    each patch's changed box [lo, hi) (N, 2) in map coordinates."""

    __slots__ = ("hi", "lo", "node", "probe", "window")

    def __init__(
        self,
        node: int,
        probe: tf.Tensor,
        window: int | None = None,
        lo: np.ndarray | None = None,
        hi: np.ndarray | None = None,
    ) -> None:
        self.node, self.probe, self.window, self.lo, self.hi = node, probe, window, lo, hi

    @property
    def crop(self) -> bool:
        return self.window is not None


class _Val:
    """Batch-pass value: a cropped map (B, h, w, C) in window ``window``, or a full tensor
    (``window`` None)."""

    __slots__ = ("tensor", "window")

    def __init__(self, tensor: tf.Tensor, window: int | None = None) -> None:
        self.tensor, self.window = tensor, window


class _Context:
    """What the batch pass's steps read: the windows' starts (B, n_windows, 2) and the caches."""

    def __init__(self, offsets: tf.Tensor, caches: Sequence[tf.Tensor], plan: Plan) -> None:
        self.offsets = offsets
        self.caches = caches
        self.plan = plan

    def start(self, window: int) -> tf.Tensor:
        return self.offsets[:, window]

    def size(self, window: int) -> tuple[int, int]:
        return self.plan.windows[window][0]


def _grid(rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """(B, h, w, 2) indices from rows (B, h) and columns (B, w)."""
    shape = tf.stack([tf.shape(rows)[0], tf.shape(rows)[1], tf.shape(cols)[1]])
    return tf.stack(
        [tf.broadcast_to(rows[:, :, None], shape), tf.broadcast_to(cols[:, None, :], shape)], -1
    )


def _window(
    ctx: _Context,
    crop: _Val,
    start: tf.Tensor,
    size: tuple[int, int],
    *,
    clean: tf.Tensor | None,
    shift: tuple[int, int] = (0, 0),
) -> tf.Tensor:
    """The map's values in the window at ``start`` (B, 2) of ``size``, (B, h, w, C): the crop's
    where it covers the window, the clean map's (``clean``, (H, W, C), in the window's
    coordinates, which are the crop's shifted by ``shift``: a convolution's padding) elsewhere.
    ``clean`` None: the crop covers every window (checked when planning)."""
    h, w = size
    crop_h, crop_w = ctx.size(crop.window)  # type: ignore[arg-type]
    origin = ctx.start(crop.window) + tf.constant(shift, tf.int32)  # type: ignore[arg-type]
    rows = start[:, :1] + tf.range(h)[None]
    cols = start[:, 1:] + tf.range(w)[None]
    in_rows = rows - origin[:, :1]
    in_cols = cols - origin[:, 1:]
    over = tf.gather_nd(
        crop.tensor,
        _grid(tf.clip_by_value(in_rows, 0, crop_h - 1), tf.clip_by_value(in_cols, 0, crop_w - 1)),
        batch_dims=1,
    )
    if clean is None:
        return over
    base = tf.gather_nd(clean, _grid(rows, cols))
    inside = ((in_rows >= 0) & (in_rows < crop_h))[:, :, None] & (
        (in_cols >= 0) & (in_cols < crop_w)
    )[:, None, :]
    return tf.where(inside[..., None], over, base)


def _paste(ctx: _Context, crop: _Val, clean: tf.Tensor) -> tf.Tensor:
    """The full map (B, H, W, C): the clean map (H, W, C) with each item's crop pasted in."""
    h, w = int(clean.shape[0]), int(clean.shape[1])
    n = tf.shape(crop.tensor)[0]
    return _window(ctx, crop, tf.zeros([n, 2], tf.int32), (h, w), clean=clean)


# ------------------------------------------------------------------------------------------------
# Steps: one per operation call, in the walk's order
# ------------------------------------------------------------------------------------------------
@dataclass
class _Step:
    path: str
    kind: str
    out_nodes: tuple[int, ...]

    def run(self, op: Any, args: tuple, kwargs: dict, ctx: _Context) -> Any:
        raise NotImplementedError


@dataclass
class _FullStep(_Step):
    """As the model runs it, on full tensors; cropped inputs are pasted first (``slots``: the
    clean map of each cropped input, by position among the flattened arguments)."""

    slots: dict[int, int] = field(default_factory=dict)
    strip: bool = False

    def run(self, op: Any, args: tuple, kwargs: dict, ctx: _Context) -> Any:
        flat = keras.tree.flatten((args, kwargs))
        tensors = []
        for index, value in enumerate(flat):
            if isinstance(value, _Val):
                if value.window is not None:
                    value = _paste(ctx, value, ctx.caches[self.slots[index]])
                else:
                    value = value.tensor
            tensors.append(value)
        args, kwargs = keras.tree.pack_sequence_as((args, kwargs), tensors)
        out = pre_activation(op, args[0]) if self.strip else _call(op, args, kwargs)
        return keras.tree.map_structure(_Val, out)


@dataclass
class _PointwiseStep(_Step):
    """A layer that maps each position on its own: run on the crop, same window."""

    window: int = 0

    def run(self, op: Any, args: tuple, kwargs: dict, ctx: _Context) -> Any:
        return _Val(_call(op, (args[0].tensor,), {}), self.window)


@dataclass
class _ShiftStep(_Step):
    """ZeroPadding2D: the crop is unchanged, its window moves by the padding."""

    window: int = 0

    def run(self, op: Any, args: tuple, kwargs: dict, ctx: _Context) -> Any:
        return _Val(args[0].tensor, self.window)


@dataclass
class _WindowStep(_Step):
    """A convolution or pooling: gather the input window it needs (clean padded map + the
    crop), apply the layer's own weights with "valid" padding."""

    window: int = 0
    slot: int | None = None
    strides: tuple[int, int] = (1, 1)
    input_size: tuple[int, int] = (1, 1)
    shift: tuple[int, int] = (0, 0)
    pads_total: tuple[int, int] = (0, 0)

    def run(self, op: Any, args: tuple, kwargs: dict, ctx: _Context) -> Any:
        crop = args[0]
        start = ctx.start(self.window) * tf.constant(self.strides, tf.int32)
        clean = None if self.slot is None else ctx.caches[self.slot]
        x = _window(ctx, crop, start, self.input_size, clean=clean, shift=self.shift)
        ops = keras.ops
        if self.kind == "Conv2D":
            y = ops.conv(x, op.kernel, op.strides, "valid", "channels_last", op.dilation_rate)
        elif self.kind == "DepthwiseConv2D":
            y = ops.depthwise_conv(
                x, op.kernel, op.strides, "valid", "channels_last", op.dilation_rate
            )
        elif self.kind == "SeparableConv2D":
            y = ops.separable_conv(
                x,
                op.depthwise_kernel,
                op.pointwise_kernel,
                op.strides,
                "valid",
                "channels_last",
                op.dilation_rate,
            )
        elif self.kind == "MaxPooling2D":
            return _Val(
                ops.max_pool(x, op.pool_size, op.strides, "valid", "channels_last"), self.window
            )
        else:  # AveragePooling2D
            y = ops.average_pool(x, op.pool_size, op.strides, "valid", "channels_last")
            if op.padding == "same":  # TensorFlow divides by the real pixels, not the padding
                real = self._real_pixels(ctx, start)
                y = y / ops.average_pool(real, op.pool_size, op.strides, "valid", "channels_last")
            return _Val(y, self.window)
        if op.use_bias:
            y = ops.add(y, op.bias)
        if op.activation is not None:
            y = op.activation(y)
        return _Val(y, self.window)

    def _real_pixels(self, ctx: _Context, start: tf.Tensor) -> tf.Tensor:
        """1 on the map, 0 on the padding, (B, h, w, 1), over the padded input window."""
        h, w = self.input_size
        clean = ctx.caches[self.slot]  # type: ignore[index]
        height = int(clean.shape[0]) - self.pads_total[0]
        width = int(clean.shape[1]) - self.pads_total[1]
        rows = start[:, :1] + tf.range(h)[None] - self.shift[0]
        cols = start[:, 1:] + tf.range(w)[None] - self.shift[1]
        real_rows = tf.cast((rows >= 0) & (rows < height), tf.float32)
        real_cols = tf.cast((cols >= 0) & (cols < width), tf.float32)
        return (real_rows[:, :, None] * real_cols[:, None, :])[..., None]


@dataclass
class _MergeStep(_Step):
    """Add, Concatenate, …: bring every cropped input to the output window, then the layer."""

    window: int = 0
    #: per input: None (already in the window) or (clean slot or None, …) to re-window it.
    rewindow: tuple[tuple[bool, int | None], ...] = ()

    def run(self, op: Any, args: tuple, kwargs: dict, ctx: _Context) -> Any:
        flat = [v for v in keras.tree.flatten((args, kwargs)) if isinstance(v, _Val)]
        size = ctx.size(self.window)
        start = ctx.start(self.window)
        tensors = []
        for value, (move, slot) in zip(flat, self.rewindow, strict=True):
            if move:
                clean = None if slot is None else ctx.caches[slot]
                tensors.append(_window(ctx, value, start, size, clean=clean))
            else:
                tensors.append(value.tensor)
        it = iter(tensors)
        args, kwargs = _swap((args, kwargs), _Val, lambda _: next(it))
        return _Val(_call(op, args, kwargs), self.window)


@dataclass
class _MeanStep(_Step):
    """GlobalAveragePooling2D: the clean mean plus the crop's difference over the map size."""

    slot_map: int = 0
    slot_mean: int = 0
    area: int = 1

    def run(self, op: Any, args: tuple, kwargs: dict, ctx: _Context) -> Any:
        crop = args[0]
        clean = ctx.caches[self.slot_map]
        base = tf.gather_nd(
            clean,
            _grid(
                ctx.start(crop.window)[:, :1] + tf.range(ctx.size(crop.window)[0])[None],
                ctx.start(crop.window)[:, 1:] + tf.range(ctx.size(crop.window)[1])[None],
            ),
        )
        change = tf.reduce_sum(crop.tensor, axis=(1, 2)) - tf.reduce_sum(base, axis=(1, 2))
        mean = ctx.caches[self.slot_mean]
        change = tf.reshape(change / float(self.area), [-1, *mean.shape])
        return _Val(mean[None] + change)


# ------------------------------------------------------------------------------------------------
# Planning
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """The input shape (h, w, C), the patch (ph, pw) and every patch's top-left corner (N, 2)."""

    shape: tuple[int, int, int]
    patch: tuple[int, int]
    corners: np.ndarray


@dataclass
class LayerCost:
    """One layer's multiply-adds per image in full re-inference and per patch incrementally."""

    path: str
    kind: str
    full_macs: float
    incremental_macs: float
    map_size: tuple[int, ...]
    window: tuple[int, int] | None


@dataclass
class Plan:
    """Everything static about incremental occlusion of one model at one geometry."""

    model: keras.Model
    geometry: Geometry
    threshold: float | None
    steps: list[_Step]
    windows: list[tuple[tuple[int, int], np.ndarray]]
    #: (node, ((top, bottom), (left, right)) or None, pad value, shape (H, W, C)) per cache.
    caches: list[tuple[int, Any, float, tuple[int, ...]]]
    input_full: bool
    output_index: int
    output_kind: str
    task: str
    costs: list[LayerCost]
    _clean: Any = None
    _batch: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def full_macs(self) -> float:
        return float(sum(c.full_macs for c in self.costs))

    @property
    def incremental_macs(self) -> float:
        return float(sum(c.incremental_macs for c in self.costs))

    @property
    def flops_ratio(self) -> float:
        """Multiply-adds recomputed per patch over those of a full pass (convolutions, dense)."""
        return self.incremental_macs / self.full_macs if self.full_macs else 1.0

    def window_of(self, path: str) -> tuple[np.ndarray, tuple[int, int]] | None:
        """The window of layer ``path``'s output: every patch's top-left (N, 2) and the size
        (h, w); None where the layer runs on full maps."""
        for step in self.steps:
            if step.path == path:
                window = getattr(step, "window", None)
                if window is None:
                    return None
                size, starts = self.windows[window]
                return starts, size
        raise KeyError(path)

    @property
    def offsets(self) -> np.ndarray:
        """Every patch's window starts, int32 (N, n_windows, 2)."""
        return np.stack([starts for _, starts in self.windows], axis=1).astype(np.int32)

    # --------------------------------------------------------------------------------------
    def _clean_fn(self) -> Any:
        with self._lock:
            if self._clean is None:
                h, w, c = self.geometry.shape

                @tf.function
                def clean(x: tf.Tensor) -> tuple[tf.Tensor, ...]:
                    return self._clean_pass(x)

                self._clean = clean.get_concrete_function(tf.TensorSpec([1, h, w, c], tf.float32))
            return self._clean

    def _batch_fn(self) -> Any:
        with self._lock:
            if self._batch is None:
                h, w, c = self.geometry.shape

                @tf.function
                def batch(
                    corners: tf.Tensor,
                    offsets: tf.Tensor,
                    fill: tf.Tensor,
                    caches: tuple[tf.Tensor, ...],
                ) -> tuple[tf.Tensor, tf.Tensor]:
                    return self._batch_pass(corners, offsets, fill, caches)

                self._batch = batch.get_concrete_function(
                    tf.TensorSpec([None, 2], tf.int32),
                    tf.TensorSpec([None, len(self.windows), 2], tf.int32),
                    tf.TensorSpec([h, w, c], tf.float32),
                    tuple(tf.TensorSpec(shape, tf.float32) for *_, shape in self.caches),
                )
            return self._batch

    def _clean_pass(self, x: tf.Tensor) -> tuple[tf.Tensor, ...]:
        caches: list[tf.Tensor | None] = [None] * len(self.caches)
        by_node: dict[int, list[int]] = {}
        for index, (node, *_) in enumerate(self.caches):
            by_node.setdefault(node, []).append(index)

        def store(node: int, tensor: tf.Tensor) -> None:
            for index in by_node.get(node, ()):
                _, pads, value, _ = self.caches[index]
                single = tensor[0]
                if pads is not None:
                    single = tf.pad(single, [*pads, (0, 0)], constant_values=value)
                caches[index] = single

        store(0, x)
        steps = iter(self.steps)

        def visit(path: str, op: Any, args: tuple, kwargs: dict) -> Any:
            step = next(steps)
            out = _call(op, args, kwargs)
            for node, tensor in zip(step.out_nodes, keras.tree.flatten(out), strict=True):
                store(node, tensor)
            return out

        _walk(self.model, [x], visit)
        assert all(c is not None for c in caches)
        return tuple(caches)  # type: ignore[arg-type]

    def _batch_pass(
        self,
        corners: tf.Tensor,
        offsets: tf.Tensor,
        fill: tf.Tensor,
        caches: tuple[tf.Tensor, ...],
    ) -> tuple[tf.Tensor, tf.Tensor]:
        ctx = _Context(offsets, caches, self)
        if self.input_full:
            n = tf.shape(corners)[0]
            x = _Val(tf.broadcast_to(fill[None], tf.concat([[n], tf.shape(fill)], 0)))
        else:
            ph, pw = self.geometry.patch
            rows = corners[:, :1] + tf.range(ph)[None]
            cols = corners[:, 1:] + tf.range(pw)[None]
            x = _Val(tf.gather_nd(fill, _grid(rows, cols)), 0)
        steps = iter(self.steps)

        def visit(path: str, op: Any, args: tuple, kwargs: dict) -> Any:
            step = next(steps)
            assert step.path == path, (step.path, path)
            with tf.name_scope(_scope_name(path)):  # names the ops for profiles
                return step.run(op, args, kwargs, ctx)

        outputs = _walk(self.model, [x], visit)
        if isinstance(outputs, list | tuple):
            outputs = outputs[self.output_index]
        assert isinstance(outputs, _Val) and outputs.window is None
        return class_scores(tf.cast(outputs.tensor, tf.float32), self.output_kind, self.task)

    # --------------------------------------------------------------------------------------
    def clean_caches(self, x: np.ndarray) -> tuple[tf.Tensor, ...]:
        """The cached clean activations for input (1, h, w, C)."""
        return self._clean_fn()(tf.constant(x, tf.float32))

    def prepare(self, x: np.ndarray) -> tuple[tf.Tensor, ...]:
        """Trace the batch pass (once per plan) and run the clean pass on input (1, h, w, C):
        the caches for :meth:`run`. Everything that can fail for a model the planner misjudged
        fails here, before any patch is scored."""
        self._batch_fn()
        return self.clean_caches(x)

    def run(
        self,
        x: np.ndarray,
        fill: np.ndarray,
        *,
        batch_size: int,
        progress: ProgressCallback | None = None,
        message: str = "occlusion patches",
        caches: tuple[tf.Tensor, ...] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class scores and probabilities (N, n_classes), float32, of the occluded inputs: the
        input ``x`` (1, h, w, C) with each patch replaced by ``fill`` (h, w, C). ``caches``: from
        :meth:`prepare` for this ``x`` (computed here when None)."""
        if caches is None:
            caches = self.prepare(x)
        function = self._batch_fn()
        corners = self.geometry.corners.astype(np.int32)
        offsets = self.offsets
        fill_t = tf.constant(fill, tf.float32)
        n = len(corners)
        scores, probs = [], []
        for part in chunks(n, batch_size):
            s, p = function(tf.constant(corners[part]), tf.constant(offsets[part]), fill_t, caches)
            scores.append(s.numpy())
            probs.append(p.numpy())
            if progress is not None:
                progress(part.stop / max(1, n), f"{message}: {part.stop}/{n}")
        join = (lambda a: a[0]) if len(scores) == 1 else np.concatenate
        return join(scores), join(probs)


def _macs(op: Any, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> float:
    """Multiply-adds of one call per image (convolutions and dense layers; 0 for the rest)."""
    if isinstance(op, _CONVS) and len(out_shape) == 4:
        kh, kw = op.kernel_size
        positions = out_shape[1] * out_shape[2]
        c_in = in_shape[-1]
        if type(op).__name__ == "Conv2D":
            return positions * kh * kw * c_in * out_shape[-1] / max(1, op.groups)
        if type(op).__name__ == "DepthwiseConv2D":
            return positions * kh * kw * out_shape[-1]
        mid = c_in * op.depth_multiplier
        return positions * (kh * kw * mid + mid * out_shape[-1])
    if type(op).__name__ == "Dense":
        return float(np.prod(in_shape[1:])) * out_shape[-1]
    return 0.0


def _check_layer(op: Any) -> str | None:
    """Why a layer cannot run on crops (None: it can)."""
    fmt = getattr(op, "data_format", "channels_last")
    if fmt not in (None, "channels_last"):
        return f"data_format {fmt!r}"
    dtype = getattr(op, "compute_dtype", "float32")
    if dtype != "float32":
        return f"compute dtype {dtype}"
    if getattr(op, "quantization_mode", None) is not None:
        return "a quantized layer"
    return None


def _channel_axes(axis: Any) -> bool:
    axes = [axis] if isinstance(axis, int) else list(axis) if axis is not None else [-1]
    return bool(axes) and all(a in (-1, 3) for a in axes)


def _pointwise_reason(op: Any) -> str | None:
    """Why a point-wise-class layer is not point-wise here (None: it is)."""
    name = type(op).__name__
    if name in ("Softmax", "BatchNormalization", "LayerNormalization") and not _channel_axes(
        op.axis
    ):
        return f"it normalises over axis {op.axis}, not only the channels"
    if name == "Normalization" and op.axis is not None and not _channel_axes(op.axis):
        return f"it normalises per position (axis {op.axis})"
    if name == "Rescaling" and (np.ndim(op.scale) > 1 or np.ndim(op.offset) > 1):
        return "its scale varies over positions"
    if name == "PReLU" and any(int(d) != 1 for d in op.alpha.shape[:-1]):
        return "its slopes vary over positions (shared_axes not [1, 2])"
    return None


class _Planner:
    """One walk of the model on a zero probe, in NumPy for all patches at once."""

    def __init__(
        self,
        geometry: Geometry,
        threshold: float | None,
        output_layer: str,
        stripped: bool,
    ) -> None:
        self.geometry = geometry
        self.cap = threshold
        self.output_layer = output_layer
        self.stripped = stripped
        self.steps: list[_Step] = []
        self.windows: list[tuple[tuple[int, int], np.ndarray]] = []
        self._window_ids: dict[tuple[Any, ...], int] = {}
        self.caches: list[tuple[int, Any, float, tuple[int, ...]]] = []
        self._cache_ids: dict[tuple[Any, ...], int] = {}
        self.costs: list[LayerCost] = []
        self._nodes = 1  # node 0 is the model input

    # bookkeeping --------------------------------------------------------------------------
    def window(self, size: tuple[int, int], starts: np.ndarray) -> int:
        starts = np.asarray(starts, np.int32)
        key = (size, starts.tobytes())
        if key not in self._window_ids:
            self._window_ids[key] = len(self.windows)
            self.windows.append((size, starts))
        return self._window_ids[key]

    def cache(self, meta: _Meta, pads: Any = None, value: float = 0.0) -> int:
        key = (meta.node, pads, value)
        if key not in self._cache_ids:
            shape = [int(d) for d in meta.probe.shape[1:]]
            if pads is not None:
                shape[0] += sum(pads[0])
                shape[1] += sum(pads[1])
            self._cache_ids[key] = len(self.caches)
            self.caches.append((meta.node, pads, value, tuple(shape)))
        return self._cache_ids[key]

    def node(self) -> int:
        self._nodes += 1
        return self._nodes - 1

    def covers(self, inner: tuple[np.ndarray, tuple[int, int]], outer: int) -> bool:
        """Whether every patch's window ``inner`` (starts, size) lies inside window ``outer``."""
        starts, size = inner
        (oh, ow), ostarts = self.windows[outer]
        ends = starts + np.array(size)
        return bool(np.all(starts >= ostarts) and np.all(ends <= ostarts + np.array([oh, ow])))

    def is_full(self, size: tuple[int, int], shape: tuple[int, int]) -> bool:
        if size == shape:
            return True
        return self.cap is None and size[0] * size[1] >= FULL_WINDOW_AREA * shape[0] * shape[1]

    def fit(
        self, lo: np.ndarray, hi: np.ndarray, shape: tuple[int, int]
    ) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
        fitted = [fit_window(lo[:, a], hi[:, a], shape[a], self.cap) for a in (0, 1)]
        size = (fitted[0][0], fitted[1][0])
        starts = np.stack([fitted[0][1], fitted[1][1]], 1)
        return (
            size,
            starts,
            np.stack([f[2] for f in fitted], 1),
            np.stack([f[3] for f in fitted], 1),
        )

    def cost(self, path: str, op: Any, inputs: list[_Meta], out: tf.Tensor, window: Any) -> None:
        in_shape = tuple(int(d) for d in inputs[0].probe.shape) if inputs else ()
        out_shape = tuple(int(d) for d in out.shape)
        full = _macs(op, in_shape, out_shape)
        incremental = full
        if window is not None and full:
            (h, w), _ = self.windows[window]
            incremental = full * h * w / (out_shape[1] * out_shape[2])
        self.costs.append(
            LayerCost(
                path,
                type(op).__name__,
                full,
                incremental,
                out_shape[1:],
                None if window is None else self.windows[window][0],
            )
        )

    # the walk -----------------------------------------------------------------------------
    def input(self, probe: tf.Tensor) -> _Meta:
        h, w, _ = self.geometry.shape
        ph, pw = self.geometry.patch
        corners = self.geometry.corners.astype(np.int64)
        if (ph, pw) == (h, w):
            return _Meta(0, probe)
        window = self.window((ph, pw), corners)
        return _Meta(0, probe, window, corners, corners + np.array([ph, pw]))

    def visit(self, path: str, op: Any, args: tuple, kwargs: dict) -> Any:
        flat = keras.tree.flatten((args, kwargs))
        metas = [v for v in flat if isinstance(v, _Meta)]
        probe_args, probe_kwargs = _swap((args, kwargs), _Meta, lambda m: m.probe)
        out = _call(op, probe_args, probe_kwargs)
        crops = [m for m in metas if m.crop]
        if not crops:
            return self.full(path, op, flat, metas, out)
        outs = keras.tree.flatten(out)
        if len(outs) != 1 or not isinstance(outs[0], tf.Tensor):
            raise Unsupported(f"layer {path!r} ({type(op).__name__}) returns several outputs")
        out_shape = tuple(int(d) for d in outs[0].shape)
        kind = type(op)
        reason = _check_layer(op) if isinstance(op, keras.Layer) else None
        if reason is not None:
            raise Unsupported(f"layer {path!r} ({kind.__name__}) has {reason}")
        if kind in _MERGES:
            return self.merge(path, op, flat, metas, outs[0])
        if len(metas) != 1 or not (args and args[0] is metas[0]):
            return self.unsupported(path, op, "takes its input in an unexpected way")
        meta = metas[0]
        if kind in _POINTWISE:
            why = _pointwise_reason(op)
            if why is not None:
                return self.unsupported(path, op, why)
            if out_shape[1:3] != tuple(meta.probe.shape[1:3]) or len(out_shape) != 4:
                return self.unsupported(path, op, "changes the map's size")
            return self.pointwise(path, op, meta, outs[0])
        if kind in _CONVS or kind in _POOLS:
            return self.windowed(path, op, meta, outs[0])
        if kind is keras.layers.ZeroPadding2D:
            return self.shift(path, op, meta, outs[0])
        if kind is keras.layers.GlobalAveragePooling2D:
            return self.mean(path, op, meta, outs[0])
        if kind in _PASTE:
            return self.full(path, op, flat, metas, out)
        return self.unsupported(path, op, "is not supported by incremental inference")

    def unsupported(self, path: str, op: Any, why: str) -> Any:
        raise Unsupported(f"layer {path!r} ({type(op).__name__}) {why}")

    def full(self, path: str, op: Any, flat: list, metas: list[_Meta], out: Any) -> Any:
        slots = {
            index: self.cache(value)
            for index, value in enumerate(flat)
            if isinstance(value, _Meta) and value.crop
        }
        leaves = keras.tree.flatten(out)
        nodes = tuple(self.node() for _ in leaves)
        strip = self.stripped and path == self.output_layer
        self.steps.append(_FullStep(path, "full", nodes, slots=slots, strip=strip))
        if leaves and isinstance(leaves[0], tf.Tensor):
            self.cost(path, op, metas, leaves[0], None)
        made = iter(_Meta(n, t) for n, t in zip(nodes, leaves, strict=True))
        return keras.tree.map_structure(lambda _: next(made), out)

    def pointwise(self, path: str, op: Any, meta: _Meta, out: tf.Tensor) -> _Meta:
        node = self.node()
        self.steps.append(_PointwiseStep(path, "pointwise", (node,), window=meta.window))
        self.cost(path, op, [meta], out, meta.window)
        return _Meta(node, out, meta.window, meta.lo, meta.hi)

    def shift(self, path: str, op: Any, meta: _Meta, out: tf.Tensor) -> _Meta:
        (top, _), (left, _) = op.padding
        offset = np.array([top, left])
        size, starts = self.windows[meta.window]  # type: ignore[index]
        window = self.window(size, starts + offset)
        node = self.node()
        self.steps.append(_ShiftStep(path, "shift", (node,), window=window))
        self.cost(path, op, [meta], out, window)
        return _Meta(node, out, window, meta.lo + offset, meta.hi + offset)

    def windowed(self, path: str, op: Any, meta: _Meta, out: tf.Tensor) -> _Meta:
        kind = type(op).__name__
        if kind == "Conv2D" and op.groups != 1:
            return self.unsupported(path, op, "is a grouped convolution")
        if op.padding not in ("same", "valid"):
            return self.unsupported(path, op, f"has padding {op.padding!r}")
        if kind in ("MaxPooling2D", "AveragePooling2D"):
            kernel, strides, dilation = op.pool_size, op.strides, (1, 1)
        else:
            kernel, strides, dilation = op.kernel_size, op.strides, op.dilation_rate
        in_shape = tuple(int(d) for d in meta.probe.shape[1:3])
        out_shape = tuple(int(d) for d in out.shape[1:3])
        if len(out.shape) != 4:
            return self.unsupported(path, op, "does not output a map")
        pads, lo, hi = [], [], []
        for a in (0, 1):
            k, s, d, n = int(kernel[a]), int(strides[a]), int(dilation[a]), in_shape[a]
            pad = same_padding(n, k, s, d) if op.padding == "same" else (0, 0)
            expected = (n + sum(pad) - (k - 1) * d - 1) // s + 1
            if expected != out_shape[a]:
                return self.unsupported(path, op, f"has an unexpected output size {out_shape}")
            a_lo, a_hi = grow(meta.lo[:, a], meta.hi[:, a], k, s, d, pad[0], out_shape[a])
            pads.append(pad)
            lo.append(a_lo)
            hi.append(a_hi)
        lo_a, hi_a = np.stack(lo, 1), np.stack(hi, 1)
        if all(int(k) == 1 for k in kernel) and all(int(s) == 1 for s in strides):
            return self.pointwise(path, op, meta, out)  # a 1 × 1 stride-1 layer: point-wise
        size, starts, lo_a, hi_a = self.fit(lo_a, hi_a, out_shape)  # type: ignore[arg-type]
        if self.is_full(size, out_shape):  # type: ignore[arg-type]
            return self.full(path, op, [meta], [meta], out)
        window = self.window(size, starts)
        input_size = tuple(
            (size[a] - 1) * int(strides[a]) + (int(kernel[a]) - 1) * int(dilation[a]) + 1
            for a in (0, 1)
        )
        needed = np.stack([starts[:, a] * int(strides[a]) - pads[a][0] for a in (0, 1)], 1)
        slot = None
        padded = tuple(pads) if any(sum(p) for p in pads) else None
        if not self.covers((needed, input_size), meta.window):  # type: ignore[arg-type]
            value = -np.inf if kind == "MaxPooling2D" else 0.0
            slot = self.cache(meta, padded, value)
        if kind == "AveragePooling2D" and op.padding == "same" and slot is None:
            slot = self.cache(meta, padded, 0.0)  # read for the map's size only
        node = self.node()
        self.steps.append(
            _WindowStep(
                path,
                kind,
                (node,),
                window=window,
                slot=slot,
                strides=(int(strides[0]), int(strides[1])),
                input_size=input_size,  # type: ignore[arg-type]
                shift=(pads[0][0], pads[1][0]),
                pads_total=(sum(pads[0]), sum(pads[1])),
            )
        )
        self.cost(path, op, [meta], out, window)
        return _Meta(node, out, window, lo_a, hi_a)

    def merge(self, path: str, op: Any, flat: list, metas: list[_Meta], out: tf.Tensor) -> _Meta:
        shape = tuple(int(d) for d in out.shape[1:3])
        if type(op).__name__ == "Concatenate" and op.axis not in (-1, 3):
            return self.unsupported(path, op, f"concatenates along axis {op.axis}")
        if len(out.shape) != 4 or any(
            tuple(int(d) for d in m.probe.shape[1:3]) != shape or len(m.probe.shape) != 4
            for m in metas
        ):
            return self.full(path, op, flat, metas, out)  # broadcasting: paste, as usual
        if any(not m.crop for m in metas):
            return self.full(path, op, flat, metas, out)  # e.g. a squeeze-and-excitation gate
        windows = {m.window for m in metas}
        if len(windows) == 1:
            window = metas[0].window
            lo = np.minimum.reduce([m.lo for m in metas])
            hi = np.maximum.reduce([m.hi for m in metas])
            rewindow = tuple((False, None) for _ in metas)
        else:
            lo = np.minimum.reduce([m.lo for m in metas])
            hi = np.maximum.reduce([m.hi for m in metas])
            size, starts, lo, hi = self.fit(lo, hi, shape)  # type: ignore[arg-type]
            if self.is_full(size, shape):  # type: ignore[arg-type]
                return self.full(path, op, flat, metas, out)
            window = self.window(size, starts)
            moves = []
            for m in metas:
                if m.window == window:
                    moves.append((False, None))
                elif self.covers((starts, size), m.window):  # type: ignore[arg-type]
                    moves.append((True, None))
                else:
                    moves.append((True, self.cache(m)))
            rewindow = tuple(moves)
        node = self.node()
        self.steps.append(_MergeStep(path, "merge", (node,), window=window, rewindow=rewindow))
        self.cost(path, op, metas, out, window)
        return _Meta(node, out, window, lo, hi)

    def mean(self, path: str, op: Any, meta: _Meta, out: tf.Tensor) -> _Meta:
        node = self.node()
        self.steps.append(
            _MeanStep(
                path,
                "mean",
                (node,),
                slot_map=self.cache(meta),
                slot_mean=0,  # set below, once this node has an id
                area=int(meta.probe.shape[1]) * int(meta.probe.shape[2]),
            )
        )
        made = _Meta(node, out)
        self.steps[-1].slot_mean = self.cache(made)  # type: ignore[attr-defined]
        self.cost(path, op, [meta], out, None)
        return made


# ------------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------------
def unavailable_reason(bundle: ModelBundle) -> str | None:
    """Why occlusion of this bundle cannot run incrementally whatever the model's layers."""
    if bundle.view is not None:
        return (
            "the explained score is an output view (a region or a regression direction); "
            "incremental occlusion explains a classifier's class score"
        )
    if bundle.task != "classification":
        return f"incremental occlusion explains classifiers; this is a {bundle.task} output"
    if not bundle.is_graph:
        return "the model's layers cannot be reached (subclassed model)"
    if len(bundle.model.inputs) != 1:
        return f"the model has {len(bundle.model.inputs)} inputs"
    return None


def build_plan(bundle: ModelBundle, geometry: Geometry, threshold: float | None = None) -> Plan:
    """Plan incremental occlusion of ``bundle`` at ``geometry``; raises :class:`Unsupported`.

    ``threshold`` (0 < τ < 1) caps every layer's window at τ of its map's side (approximate mode);
    None is exact.
    """
    reason = unavailable_reason(bundle)
    if reason is not None:
        raise Unsupported(reason)
    planner = _Planner(
        geometry,
        threshold,
        bundle.output_layer,
        bundle.output_kind in ("softmax", "sigmoid"),
    )
    probe = tf.zeros((1, *geometry.shape), tf.float32)
    first = planner.input(probe)
    outputs = _walk(bundle.model, [first], planner.visit)
    if isinstance(outputs, list | tuple):
        outputs = outputs[bundle.output_index]
    if not isinstance(outputs, _Meta) or outputs.crop:
        raise Unsupported("the explained output is a spatial map")
    return Plan(
        model=bundle.model,
        geometry=geometry,
        threshold=threshold,
        steps=planner.steps,
        windows=planner.windows,
        caches=planner.caches,
        input_full=not first.crop,
        output_index=bundle.output_index,
        output_kind=bundle.output_kind,
        task=bundle.task,
        costs=planner.costs,
    )


_PLANS: weakref.WeakKeyDictionary[Any, OrderedDict[tuple[Any, ...], Plan]] = (
    weakref.WeakKeyDictionary()
)
_PLANS_LOCK = threading.Lock()
#: Plans (and their traced functions) kept per runner: a few geometries × modes.
PLANS_PER_RUNNER = 16


def plan_for(bundle: ModelBundle, geometry: Geometry, threshold: float | None = None) -> Plan:
    """:func:`build_plan`, memoised per runner and geometry (its compiled functions with it).
    An :class:`Unsupported` answer is memoised too."""
    runner = bundle.runner
    key = (
        geometry.shape,
        geometry.patch,
        geometry.corners.astype(np.int32).tobytes(),
        threshold,
    )
    with _PLANS_LOCK:
        plans = _PLANS.setdefault(runner, OrderedDict())
        known = plans.get(key)
        if known is not None:
            plans.move_to_end(key)
    if isinstance(known, Unsupported):
        raise known
    if known is not None:
        return known
    try:
        plan: Any = build_plan(bundle, geometry, threshold)
    except Unsupported as exc:
        plan = exc
    with _PLANS_LOCK:
        plans[key] = plan
        while len(plans) > PLANS_PER_RUNNER:
            plans.popitem(last=False)
    if isinstance(plan, Unsupported):
        raise plan
    return plan
