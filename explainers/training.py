"""Training for the right reasons: penalise explanations that use what must not matter.

:class:`ReasonTrainer` wraps a Keras 3 classifier; its ``train_step`` takes batches
``(x, y, mask)`` where ``mask`` (B, H, W) marks, per image, the pixels the decision must *not*
depend on (a watermark, a marker, a hospital tag) and adds a penalty to the cross-entropy:

* ``penalty="rrr"`` — Right for the Right Reasons (Ross, Hughes & Doshi-Velez, IJCAI 2017,
  Eq. 1): ``λ Σ_n ‖A_n ⊙ ∂/∂x_n Σ_k log p_k(x_n)‖²``, the squared input gradient of the summed
  log-probabilities inside the mask. Minimising it needs the gradient of a gradient (double
  back-propagation).
* ``penalty="grad_cam"`` — the Grad-CAM variant of Schramowski et al. (Nature Machine
  Intelligence 2020, "Making deep neural networks right for the right scientific reasons"): the
  share of the label's Grad-CAM map (at a spatial layer, ``ReLU(Σ_k α_k A_k)``) that lies inside
  the mask, with the mask averaged down to the layer's cells. Cheaper than RRR (the inner
  gradient stops at the layer), coarser (a cell is 8 px on the demo models).

What this does not guarantee: a penalty on first-order input gradients can be met without
giving up the masked evidence. On the demo's shortcut data (assets/models/README.md) the model
kept using the marker through zero-sum logit shifts at near-uniform confidence (``classes="sum"``)
and through BatchNorm's batch statistics (``penalty_mode="training"``); ``classes="label"`` with
``penalty_mode="batch_constant"`` closed both and gave ``demo_fixed.keras``. Check the result on
data without the shortcut, as the tests of any use of this module should.

λ follows the RRR paper's advice (§3: "choose λ so that the two terms have the same order of
magnitude"): with ``lam="auto"`` the first :attr:`ReasonTrainer.calibration_batches` batches of
the first ``fit`` are measured, without updating anything, and ``λ = balance × CE / penalty``.
λ, the measured terms and, every epoch, the mean cross-entropy and the mean raw penalty are in
``history.history`` (``lambda``, ``cross_entropy``, ``penalty``) and in
:attr:`ReasonTrainer.calibration`.

The wrapped model stays a plain Keras model (``trainer.model``): save that, not the wrapper.
Models with a softmax output (``Dense(..., activation="softmax")``, a ``Softmax`` or softmax
``Activation`` layer) are trained on their logits, recovered exactly from the last layer; other
outputs are read as probabilities. Only the weights' gradients of the *total* loss are taken by
Keras' optimizer path inside ``tf.function``: TF 2.21's oneDNN crash in the *eager* filter
gradient of 1×1 stride-2 convolutions is not reached (``tests/test_training.py`` checks it in a
child process).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import keras
import numpy as np
import tensorflow as tf

from explainers.core.graph import is_graph_model, replay
from explainers.errors import ParameterError

__all__ = ["PENALTIES", "ReasonTrainer", "grad_cam_penalty", "rrr_penalty"]

Penalty = Literal["rrr", "grad_cam"]
PenaltyMode = Literal["training", "inference", "batch_constant"]
#: How the penalty's forward pass treats BatchNorm (see :class:`ReasonTrainer`).
PENALTY_MODES: tuple[str, ...] = ("training", "inference", "batch_constant")
#: The penalties :class:`ReasonTrainer` knows.
PENALTIES: tuple[str, ...] = ("rrr", "grad_cam")
#: Below this, a measured penalty counts as zero and ``lam="auto"`` falls back to λ = balance.
_TINY = 1e-12


def _softmax_head(model: keras.Model) -> tuple[keras.Model, keras.layers.Layer] | None:
    """(features sub-model, output layer) when the model ends in a softmax we can undo exactly."""
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs"):
        return None
    try:
        last = model.layers[-1]
        inputs = model.inputs
    except (AttributeError, IndexError, ValueError):
        return None
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", None)
    kind = type(last).__name__
    if kind == "Dense" and name == "softmax":
        return keras.Model(inputs, last.input), last
    if kind == "Softmax" or (kind == "Activation" and name == "softmax"):
        return keras.Model(inputs, last.input), last
    return None


class ReasonTrainer(keras.Model):
    """A Keras 3 model wrapper whose ``fit`` trains ``model`` with an explanation penalty.

    Parameters
    ----------
    model
        The classifier (softmax or probability output, (B, n_classes)).
    penalty
        ``"rrr"`` or ``"grad_cam"`` (see the module docstring).
    lam
        λ, or ``"auto"``: measured on the first batches so that λ·penalty = balance × CE.
    balance
        With ``lam="auto"``: the ratio λ·penalty / CE aimed at on the first batches (1: equal).
    layer
        For ``"grad_cam"``: the spatial layer's name (default: the last layer with a 4-D output).
    calibration_batches
        How many batches ``lam="auto"`` measures.
    classes
        For ``"rrr"``: whose log-probability's input gradient is penalised. ``"sum"`` (the
        paper's Σ_k log p_k) or ``"label"`` (log p_y of each image's label). The sum has a blind
        spot: a feature that raises one logit and lowers the others by as much moves
        Σ_k log p_k hardly at all while the probabilities stay near uniform, so a model can keep
        using the masked region through such zero-sum shifts at a tiny penalty; the label's
        log-probability does not cancel that way.
    penalty_mode
        How the penalty's pass treats BatchNorm (and dropout). ``"training"`` (default): one
        training-mode pass gives both terms. ``"batch_constant"``: the penalty's pass replays the
        model normalising every BatchNorm by the batch's own mean and variance *held constant*
        (no gradient through them) with dropout off, and the cross-entropy gets its own
        training-mode pass; use this for models with BatchNorm. ``"inference"``: the penalty's
        pass runs in inference mode (moving statistics). Why it matters (measured on the demo,
        assets/models/README.md): in training mode an image's input gradient also flows through
        the batch statistics, i.e. through every other image of the batch, and a marker present
        in every image can be hidden that way (the penalty was 40× smaller than the per-image
        gradient's); in inference mode the penalised pass is not the one the cross-entropy
        trains, and the network made it constant. ``"batch_constant"`` has the training pass's
        values and the per-image function's gradients. For models without BatchNorm all three
        agree.

    The dataset yields ``(x, y, mask)``: images as the model takes them, integer labels (B,) and
    masks (B, H, W) (bool or 0..1; 1 = must not matter). ``compile`` takes the optimizer and
    metrics (``metrics=["accuracy"]``); the loss is this class's (sparse categorical
    cross-entropy plus the penalty), so do not pass one.
    """

    def __init__(
        self,
        model: keras.Model,
        penalty: Penalty = "rrr",
        lam: float | Literal["auto"] = "auto",
        *,
        balance: float = 1.0,
        layer: str | None = None,
        calibration_batches: int = 4,
        classes: Literal["sum", "label"] = "sum",
        penalty_mode: PenaltyMode = "training",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=kwargs.pop("name", f"{model.name}_{penalty}"), **kwargs)
        if penalty not in PENALTIES:
            raise ParameterError(f"unknown penalty {penalty!r}; choose one of {PENALTIES}")
        if lam != "auto" and not (isinstance(lam, int | float) and lam >= 0):
            raise ParameterError(f"lam must be a non-negative number or 'auto', got {lam!r}")
        if classes not in ("sum", "label"):
            raise ParameterError(f"classes must be 'sum' or 'label', got {classes!r}")
        self.classes = classes
        if penalty_mode not in PENALTY_MODES:
            raise ParameterError(
                f"penalty_mode must be one of {PENALTY_MODES}, got {penalty_mode!r}"
            )
        self.penalty_mode = penalty_mode
        if not balance > 0:
            raise ParameterError(f"balance must be positive, got {balance!r}")
        self.model = model
        self.penalty_kind = penalty
        self.balance = float(balance)
        self.calibration_batches = max(1, int(calibration_batches))
        self.auto_lambda = lam == "auto"
        self.calibration: dict[str, Any] | None = None
        self._lambda = tf.Variable(
            0.0 if lam == "auto" else float(lam), trainable=False, dtype=tf.float32, name="lambda"
        )
        head = _softmax_head(model)
        self._features, self._head = head if head is not None else (None, None)
        self._cam_model: keras.Model | None = None
        self._cam_layer: str | None = None
        if penalty_mode == "batch_constant" and not is_graph_model(model):
            raise ParameterError(
                "penalty_mode='batch_constant' replays the model layer by layer, which needs a "
                "functional or Sequential model; use penalty_mode='training' for this one"
            )
        if penalty == "grad_cam":
            self._cam_model = self._build_cam_model(layer)
        self._total_tracker = keras.metrics.Mean(name="loss")
        self._ce_tracker = keras.metrics.Mean(name="cross_entropy")
        self._penalty_tracker = keras.metrics.Mean(name="penalty")
        self._lambda_tracker = keras.metrics.Mean(name="lambda")

    # Model plumbing ---------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        """The λ in use (0 until ``lam="auto"`` has been calibrated)."""
        return float(self._lambda.numpy())

    def call(self, x: Any, training: bool = False) -> Any:
        return self.model(x, training=training)

    @property
    def metrics(self) -> list[Any]:
        tracked = [self._total_tracker, self._ce_tracker, self._penalty_tracker]
        tracked.append(self._lambda_tracker)
        compiled = getattr(self, "_compile_metrics", None)
        return [*tracked, *([compiled] if compiled is not None else [])]

    def _build_cam_model(self, layer: str | None) -> keras.Model:
        source = self._features if self._features is not None else self.model
        if layer is None:
            spatial = [
                candidate
                for candidate in self.model.layers
                if len(getattr(candidate, "output", np.zeros(0)).shape or ()) == 4
            ]
            if not spatial:
                raise ParameterError("the Grad-CAM penalty needs a layer with a spatial output")
            chosen = spatial[-1]
        else:
            try:
                chosen = self.model.get_layer(layer)
            except ValueError as error:
                raise ParameterError(f"the model has no layer {layer!r}") from error
        self._cam_layer = chosen.name
        return keras.Model(self.model.inputs, [chosen.output, source.outputs[0]])

    def _logits(self, x: tf.Tensor, training: bool) -> tuple[tf.Tensor, bool]:
        """(scores, are_logits) for the batch."""
        if self._features is None:
            return tf.cast(self.model(x, training=training), tf.float32), False
        return self._logits_from_features(self._features(x, training=training)), True

    def _logits_from_features(self, features: tf.Tensor) -> tf.Tensor:
        head = self._head
        features = tf.cast(features, tf.float32)
        if type(head).__name__ == "Dense":
            z = tf.matmul(features, tf.cast(head.kernel, tf.float32))
            return z + tf.cast(head.bias, tf.float32) if head.use_bias else z
        return features

    def _penalty_pass(self, x: tf.Tensor, mode: str) -> tuple[tf.Tensor, bool, tf.Tensor | None]:
        """(scores, are_logits, the Grad-CAM layer's activation or None) of the penalty's pass."""
        if mode == "batch_constant":
            return self._batch_constant_pass(x)
        flag = mode == "training"
        if self._cam_model is None:
            scores, are_logits = self._logits(x, flag)
            return scores, are_logits, None
        activation, raw = self._cam_model(x, training=flag)
        if self._features is not None:
            return self._logits_from_features(raw), True, activation
        return tf.cast(raw, tf.float32), False, activation

    def _batch_constant_pass(self, x: tf.Tensor) -> tuple[tf.Tensor, bool, tf.Tensor | None]:
        """The model replayed layer by layer with every BatchNormalization normalising by the
        batch's own mean and variance *held constant* (no gradient flows through them) and
        dropout off: the values of the training-mode pass, the input gradients of the function
        the model computes for one image."""
        source = self._features if self._features is not None else self.model
        inputs: dict[str, Any] = {}
        captured: dict[str, tf.Tensor] = {}

        def before(path: str, args: tuple[Any, ...]) -> None:
            inputs[path] = args

        def hook(path: str, layer: keras.Layer, output: Any) -> Any:
            if isinstance(layer, keras.layers.BatchNormalization):
                output = _batch_constant_normalisation(layer, inputs[path][0])
            if path == self._cam_layer:
                captured["activation"] = output
            return output

        raw = replay(source, [x], hook, before=before)
        activation = captured.get("activation")
        if self._features is not None:
            return self._logits_from_features(raw), True, activation
        return tf.cast(raw, tf.float32), False, activation

    # The loss ---------------------------------------------------------------------------------
    def terms(
        self,
        x: tf.Tensor,
        y: tf.Tensor,
        mask: tf.Tensor,
        training: bool = True,
        penalty_training: bool | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(mean cross-entropy, mean raw penalty, probabilities) of a batch. ``penalty_training``
        overrides the mode of the penalty's pass (default: per ``penalty_mode``)."""
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.reshape(tf.cast(y, tf.int32), [-1])
        mask = tf.cast(mask, tf.float32)
        # The penalty looks at the model as it will be used (see the class docstring).
        mode = self.penalty_mode if training else "inference"
        if penalty_training is not None:
            mode = "training" if penalty_training else "inference"
        if self.penalty_kind == "rrr":
            with tf.GradientTape(watch_accessed_variables=False) as inner:
                inner.watch(x)
                scores, are_logits, _ = self._penalty_pass(x, mode)
                log_p = _log_probabilities(scores, are_logits)
                if self.classes == "label":
                    summed = tf.reduce_sum(tf.gather(log_p, y, axis=1, batch_dims=1))
                else:
                    summed = tf.reduce_sum(log_p)
            gradient = inner.gradient(summed, x)
            penalty = rrr_penalty(gradient, mask)
        else:
            with tf.GradientTape(watch_accessed_variables=False) as inner:
                inner.watch(x)  # records the ops from the layer on; differentiated at the layer
                scores, are_logits, activation = self._penalty_pass(x, mode)
                log_p = _log_probabilities(scores, are_logits)
                chosen = tf.reduce_sum(tf.gather(log_p, y, axis=1, batch_dims=1))
                target_scores = (
                    tf.reduce_sum(tf.gather(scores, y, axis=1, batch_dims=1))
                    if are_logits
                    else chosen
                )
            gradient = inner.gradient(target_scores, activation)
            penalty = grad_cam_penalty(activation, gradient, mask)
        if mode != ("training" if training else "inference"):  # the cross-entropy's own pass
            scores, are_logits = self._logits(x, training)
        log_p = _log_probabilities(scores, are_logits)
        ce = -tf.reduce_mean(tf.gather(log_p, y, axis=1, batch_dims=1))
        return ce, penalty, tf.exp(log_p)

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y, mask = _unpack(data)
        with tf.GradientTape() as tape:
            ce, penalty, probs = self.terms(x, y, mask, training=True)
            loss = ce + self._lambda * penalty
            if self.model.losses:
                loss = loss + tf.add_n(self.model.losses)
        weights = self.trainable_weights
        gradients = tape.gradient(loss, weights)
        self.optimizer.apply_gradients(zip(gradients, weights, strict=True))
        return self._update(loss, ce, penalty, y, probs)

    def test_step(self, data: Any) -> dict[str, Any]:
        x, y, mask = _unpack(data)
        ce, penalty, probs = self.terms(x, y, mask, training=False)
        return self._update(ce + self._lambda * penalty, ce, penalty, y, probs)

    def _update(
        self, loss: tf.Tensor, ce: tf.Tensor, penalty: tf.Tensor, y: tf.Tensor, probs: tf.Tensor
    ) -> dict[str, Any]:
        self._total_tracker.update_state(loss)
        self._ce_tracker.update_state(ce)
        self._penalty_tracker.update_state(penalty)
        self._lambda_tracker.update_state(self._lambda)
        compiled = getattr(self, "_compile_metrics", None)
        if compiled is not None:
            compiled.update_state(y, probs)
        return self.get_metrics_result()

    # λ ----------------------------------------------------------------------------------------
    def calibrate(self, batches: Iterable[Any]) -> dict[str, Any]:
        """Measure the mean cross-entropy and raw penalty on ``batches`` (at most
        :attr:`calibration_batches` of them) and set ``λ = balance × CE / penalty``.

        Both terms are measured in training mode (before training, BatchNorm's moving
        statistics are still 0 and 1). Nothing is updated: the model's non-trainable state
        (BatchNorm statistics) is restored.
        Returns (and keeps in :attr:`calibration`) the measured terms and λ.
        """
        saved = [v.numpy() for v in self.model.non_trainable_variables]
        ces, penalties = [], []
        try:
            for index, batch in enumerate(batches):
                if index >= self.calibration_batches:
                    break
                x, y, mask = _unpack(batch)
                ce, penalty, _ = self._measure(x, y, mask)
                ces.append(float(ce))
                penalties.append(float(penalty))
        finally:
            for variable, value in zip(self.model.non_trainable_variables, saved, strict=True):
                variable.assign(value)
        if not ces:
            raise ParameterError("no batch to calibrate λ on: the dataset is empty")
        ce, penalty = float(np.mean(ces)), float(np.mean(penalties))
        if penalty > _TINY and math.isfinite(penalty):
            lam, rule = self.balance * ce / penalty, "balance × cross-entropy / penalty"
        else:
            lam, rule = self.balance, "penalty measured as 0: λ = balance"
        self._lambda.assign(lam)
        self.calibration = {
            "penalty": self.penalty_kind,
            "batches": len(ces),
            "cross_entropy": ce,
            "raw_penalty": penalty,
            "balance": self.balance,
            "lambda": lam,
            "rule": rule,
        }
        return self.calibration

    @tf.function(reduce_retracing=True)
    def _measure(self, x: Any, y: Any, mask: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        # Training mode for both terms: before training, BatchNorm's moving statistics are
        # their initial values (0 and 1), and an inference-mode penalty is meaningless.
        return self.terms(x, y, mask, training=True, penalty_training=True)

    def fit(self, x: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Keras ``fit``; with ``lam="auto"`` the first call first calibrates λ on ``x``."""
        if self.auto_lambda and self.calibration is None:
            self.calibrate(_first_batches(x, kwargs.get("batch_size"), self.calibration_batches))
        history = super().fit(x, *args, **kwargs)
        if self.calibration is not None:
            history.history["calibration"] = [dict(self.calibration)]
        return history


# ------------------------------------------------------------------------------------------------
# The penalties, as plain TensorFlow functions
# ------------------------------------------------------------------------------------------------
def rrr_penalty(input_gradient: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Batch mean of ``Σ (A ⊙ ∂Σ_k log p_k/∂x)²`` over each image's pixels and channels.

    ``input_gradient`` (B, H, W, C); ``mask`` (B, H, W) or (B, H, W, C), 1 where the input must
    not matter.
    """
    mask = tf.cast(mask, input_gradient.dtype)
    if mask.shape.rank == 3:
        mask = mask[..., None]
    return tf.reduce_mean(tf.reduce_sum(tf.square(mask * input_gradient), axis=[1, 2, 3]))


def grad_cam_penalty(activation: tf.Tensor, gradient: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Batch mean of the share of the Grad-CAM map ``ReLU(Σ_k mean(∂S/∂A_k) A_k)`` inside the
    mask, the mask averaged down to the layer's cells (``activation``/``gradient`` (B, h, w, K),
    ``mask`` (B, H, W)). A map with no positive value has share 0."""
    activation = tf.cast(activation, tf.float32)
    gradient = tf.cast(gradient, tf.float32)
    weights = tf.reduce_mean(gradient, axis=[1, 2], keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * activation, axis=-1))
    cells = tf.shape(cam)[1:3]
    small = tf.image.resize(tf.cast(mask, tf.float32)[..., None], cells, method="area")[..., 0]
    inside = tf.reduce_sum(small * cam, axis=[1, 2])
    total = tf.reduce_sum(cam, axis=[1, 2])
    return tf.reduce_mean(inside / (total + 1e-6))


def _batch_constant_normalisation(layer: keras.layers.BatchNormalization, x: Any) -> tf.Tensor:
    """``layer`` applied to ``x`` with the batch's moments, treated as constants."""
    x = tf.convert_to_tensor(x)
    rank = x.shape.rank
    axes = layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis]
    kept = {int(a) % rank for a in axes}
    reduced = [i for i in range(rank) if i not in kept]
    mean, variance = tf.nn.moments(x, reduced, keepdims=True)
    out = (x - tf.stop_gradient(mean)) * tf.math.rsqrt(tf.stop_gradient(variance) + layer.epsilon)
    if layer.scale:
        out = out * tf.cast(layer.gamma, x.dtype)
    if layer.center:
        out = out + tf.cast(layer.beta, x.dtype)
    return out


def _log_probabilities(scores: tf.Tensor, are_logits: bool) -> tf.Tensor:
    if are_logits:
        return tf.nn.log_softmax(scores, axis=-1)
    return tf.math.log(tf.clip_by_value(scores, 1e-7, 1.0))


def _unpack(data: Any) -> tuple[Any, Any, Any]:
    if not isinstance(data, list | tuple) or len(data) != 3:
        raise ParameterError(
            "a ReasonTrainer's dataset must yield (x, y, mask) batches; mask (B, H, W) marks "
            "the pixels that must not matter"
        )
    return data[0], data[1], data[2]


def _first_batches(data: Any, batch_size: int | None, count: int) -> list[Any]:
    """The first ``count`` batches of a fit input: a tf.data.Dataset or an (x, y, mask) tuple."""
    if isinstance(data, tf.data.Dataset):
        return list(data.take(count))
    if isinstance(data, list | tuple) and len(data) == 3:
        size = int(batch_size or 32)
        n = len(data[0])
        return [
            tuple(np.asarray(part[i : i + size]) for part in data)
            for i in range(0, min(n, size * count), size)
        ]
    raise ParameterError(
        "lam='auto' needs the training data as a tf.data.Dataset of (x, y, mask) batches or an "
        "(x, y, mask) tuple of arrays; or give lam a number"
    )
