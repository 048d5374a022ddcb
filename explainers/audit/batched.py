"""Batched passes for the dataset audit: many images, each explained for its own class, in one
compiled forward + backward per batch.

:func:`explainers.explain` explains one image per call; an audit explains thousands, each for its
own predicted class. For the class-activation-map family (CAM, Grad-CAM, Grad-CAM++, Layer-CAM)
the map of each row of a batch depends on that row alone (inference mode), so one pass of
:meth:`~explainers.core.runner.ModelRunner.per_row_layer_maps` gives, for a batch of different
images, every image's probabilities, its top-1 class (chosen inside the pass) and its map for
that class: gather each row's target score, differentiate their sum with respect to the layer's
activations, weight and sum the channels in the graph (float64, as :mod:`explainers.methods.cam`
does). The maps equal ``explain(bundle, image, method, target=predicted class)``'s to float32
rounding (``tests/test_audit_run.py``).

The compiled pass is traced once per model input shape with the batch axis free, so batches of
any size (the shorter last batch of a chunk, a batch with unreadable images left out) share one
graph: no padding and no retracing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from explainers.io.models import ModelBundle, layer_object
from explainers.methods.cam import (
    ChannelWeights,
    channel_reducer,
    grad_cam_plus_plus_weights,
    grad_cam_weights,
    layer_cam_weights,
)

__all__ = ["BATCHED_METHODS", "BatchResult", "batched_method", "explain_batch"]


def _row_cam_weights(
    bundle: ModelBundle, acts: tf.Tensor, grads: tf.Tensor | None, targets: tf.Tensor
) -> tf.Tensor:
    """CAM's weights with one class per row: the output layer's column for each row's target,
    (B, 1, 1, K) float64 (:func:`explainers.methods.cam.cam_weights` for a single target)."""
    assert bundle.cam_head is not None
    kernel = tf.cast(layer_object(bundle.model, bundle.cam_head.dense_layer).kernel, tf.float64)
    if kernel.shape[1] == 1:  # binary: the single logit scores class 1, its negation class 0
        sign = tf.where(tf.equal(targets, 1), 1.0, -1.0)
        columns = tf.cast(sign, tf.float64)[:, None] * kernel[None, :, 0]
    else:
        columns = tf.transpose(tf.gather(kernel, targets, axis=1))
    return columns[:, None, None, :]


#: Methods with a batched path: name → (channel weights, whether they need gradients). The
#: weight steps of Grad-CAM, Grad-CAM++ and Layer-CAM read no target, so the single-image ones
#: serve rows of different classes unchanged.
BATCHED_METHODS: dict[str, tuple[ChannelWeights, bool]] = {
    "cam": (_row_cam_weights, False),
    "grad_cam": (grad_cam_weights, True),
    "grad_cam_plus_plus": (grad_cam_plus_plus_weights, True),
    "layer_cam": (layer_cam_weights, True),
}


def batched_method(bundle: ModelBundle, name: str, engine: str) -> bool:
    """Whether the audit computes ``name`` for a batch of images at once on this model: a method
    of :data:`BATCHED_METHODS`, the native engine, and a model with a fixed input size (images
    of any size then become inputs of one shape)."""
    height, width = bundle.input_size
    return name in BATCHED_METHODS and engine == "native" and None not in (height, width)


@dataclass(frozen=True)
class BatchResult:
    """One batched pass: probabilities float64 (B, n_classes), each row's explained class (B,),
    and the raw maps float32 (B, h, w) at the layer's resolution, after the optional ReLU —
    ``Explanation.model_attribution`` for each row."""

    probs: np.ndarray
    targets: np.ndarray
    maps: np.ndarray


def explain_batch(
    bundle: ModelBundle,
    x: np.ndarray,
    method: str,
    layer: str,
    params: dict[str, Any],
    targets: Sequence[int] | np.ndarray | None = None,
) -> BatchResult:
    """Maps of ``method`` for model inputs ``x`` (B, h, w, C), each for its own class:
    ``targets`` (B,), or each row's top-1 class when None (chosen inside the same pass).

    Rows whose output is not finite come back with NaN in their probabilities (and maps): the
    caller turns them into error rows; they do not affect the other rows.
    """
    _, needs_gradients = BATCHED_METHODS[method]
    _, probs, chosen, maps, _ = bundle.runner.per_row_layer_maps(
        x,
        layer,
        channel_reducer(bundle, BATCHED_METHODS[method][0]),
        needs_gradients=needs_gradients,
        targets=None if targets is None else np.asarray(targets, np.int32),
        batch_size=len(x),
    )
    if params.get("relu", True):
        maps = np.maximum(maps, 0.0)
    return BatchResult(
        probs=probs.astype(np.float64),
        targets=chosen.astype(np.int64),
        maps=maps.astype(np.float32),
    )
