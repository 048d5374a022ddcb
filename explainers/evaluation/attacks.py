"""Adversarial examples: FGSM and PGD under an L∞ budget, in raw pixel units.

An adversarial example is the original image plus a perturbation too small to see that changes the
model's decision. Showing one next to its explanation is a reminder that a confident prediction can
rest on features no person would call evidence.

* **FGSM**, the fast gradient sign method (Goodfellow, Shlens & Szegedy, "Explaining and
  harnessing adversarial examples", ICLR 2015, Eq. 3): one step
  ``x' = x + ε · sign(∇ₓ L(x, y))``.
* **PGD**, projected gradient descent (Madry et al., "Towards deep learning models resistant to
  adversarial attacks", ICLR 2018, Eq. 2 and §2.1): a uniform random start in the ε-ball, then
  ``steps`` signed steps of ``step_size``, each followed by the projection back onto the ε-ball
  around ``x`` and onto the valid pixel range [0, 255].

Units. ``epsilon`` and ``step_size`` are in **0–255 pixel units** (``epsilon=8`` is the literature's
8/255): the perturbation the user sees is in those units, and the returned image is uint8, whose
smallest change is one level. A value below 1 is rejected with a hint, since it is most likely a
0–1 fraction.

Gradients. The loss is the cross-entropy of the class scores, ``L = −log softmax(s)_t`` (for a
model whose scores are log-probabilities this is ``−log p_t``), differentiated with respect to the
raw pixels at the model's input resolution. ``ModelBundle.preprocess`` is numpy; every
preprocessing mode (``apply_preprocessing`` and the grayscale luma) is affine per pixel,
``x = M·p + b``, so we recover ``M`` and ``b`` by probing it once and apply the same affine map
*inside* a compiled ``tf.function`` in front of the model. The tape then yields ∂L/∂p directly
(the chain rule ``∂L/∂p = Mᵀ ∂L/∂x`` done by TensorFlow), from one backward pass per step whatever
the number of classes; only the input is watched, never the weights.

Resolution. The attack runs at the model's input size. The perturbation is then upsampled
(bilinear: a convex combination, so it stays inside the ε-ball) to the original image size, added,
rounded and clipped to the integer ε-ball, and the prediction is checked again on that uint8 image
— the image the user actually gets.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from explainers.core.maps import resize_map
from explainers.errors import ParameterError, UnsupportedModelError
from explainers.io.images import check_image_array

if TYPE_CHECKING:
    from explainers.core.specs import ProgressCallback
    from explainers.io.models import ModelBundle

AttackMethod = Literal["fgsm", "pgd"]
ATTACK_METHODS: tuple[str, ...] = ("fgsm", "pgd")
#: ``(index, class name, probability)``, as :meth:`ModelBundle.top_k` returns.
Prediction = tuple[int, str, float]


@dataclass(frozen=True, eq=False)
class AttackResult:
    """The outcome of one attack.

    Attributes
    ----------
    image
        The adversarial image, uint8 (H, W, 3), at the size of the image passed in.
    perturbation
        ``image − original`` as float32 (H, W, 3) in pixel units, integers in [−ε, ε].
    linf, l2
        L∞ and L2 norms of ``perturbation`` (pixel units; L2 over all H·W·3 values).
    before, after
        Top-k predictions (index, name, probability) on the original and on the returned image.
    original_class
        Top-1 class index on the original image.
    target
        The class the attack pushed towards (targeted), or None (untargeted).
    flipped
        Whether the top-1 class of the returned image differs from ``original_class``.
    reached_target
        Targeted attacks: whether the returned image's top-1 class is ``target``; None otherwise.
    success
        ``reached_target`` for a targeted attack, ``flipped`` for an untargeted one.
    success_at_model_resolution
        The same criterion on the float adversarial input before upsampling and rounding; when it
        is True but ``success`` is False, quantising to uint8 undid the attack.
    steps
        Gradient steps taken (1 for FGSM).
    losses
        Cross-entropy of the attacked class (``original_class`` or ``target``) before each step and
        after the last one, at model resolution: ``steps + 1`` values.
    """

    image: np.ndarray
    perturbation: np.ndarray
    linf: float
    l2: float
    method: str
    epsilon: float
    step_size: float
    steps: int
    seed: int
    original_class: int
    target: int | None
    before: tuple[Prediction, ...]
    after: tuple[Prediction, ...]
    flipped: bool
    reached_target: bool | None
    success: bool
    success_at_model_resolution: bool
    losses: tuple[float, ...]

    @property
    def adversarial_class(self) -> int:
        """Top-1 class index on the returned image."""
        return self.after[0][0]


# ------------------------------------------------------------------------------------------------
# Preprocessing as an affine map, and the compiled loss gradient
# ------------------------------------------------------------------------------------------------
def preprocessing_affine(bundle: ModelBundle) -> tuple[np.ndarray, np.ndarray]:
    """``(M, b)`` with ``bundle.preprocess(p) == p @ M.T + b`` per pixel; M is (C, 3), b is (C,).

    Found by probing ``bundle.preprocess`` with the zero pixel and the three unit pixels, then
    verified on random pixels, so it follows whatever
    :func:`~explainers.io.models.apply_preprocessing` does (scaling, mean/std, the caffe RGB→BGR
    swap, grayscale luma).

    Raises
    ------
    UnsupportedModelError
        If the preprocessing is not affine (it always is for the built-in modes).
    """
    scale = 100.0  # probe with a large step so float32 rounding stays far below the tolerance
    probes = np.zeros((4, 1, 3), np.float32)
    for channel in range(3):
        probes[channel + 1, 0, channel] = scale
    out = np.asarray(bundle.preprocess(probes), np.float64)[:, 0, :]  # (4, C)
    offset = out[0]
    matrix = ((out[1:] - offset) / scale).T  # (C, 3)
    check = np.random.default_rng(0).uniform(0, 255, (16, 1, 3)).astype(np.float32)
    expected = np.asarray(bundle.preprocess(check), np.float64)[:, 0, :]
    predicted = check[:, 0, :].astype(np.float64) @ matrix.T + offset
    if not np.allclose(expected, predicted, rtol=1e-4, atol=1e-4 * (1 + np.abs(expected).max())):
        raise UnsupportedModelError(
            f"the preprocessing {bundle.preprocessing!r} is not affine per pixel, so the attack "
            "cannot differentiate through it"
        )
    return matrix.astype(np.float32), offset.astype(np.float32)


#: ``loss_and_gradient(pixels (N, h, w, 3), labels (N,)) -> (loss (N,), ∂loss/∂pixels, probs)``.
LossGradient = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]

_FUNCTIONS: weakref.WeakKeyDictionary[ModelBundle, LossGradient] = weakref.WeakKeyDictionary()
_FUNCTIONS_LOCK = threading.Lock()


def loss_gradient_fn(bundle: ModelBundle) -> LossGradient:
    """The compiled cross-entropy gradient w.r.t. raw pixels for ``bundle`` (built once, cached).

    The class scores come from the runner's traced forward computation (``ModelRunner.scores_of``,
    used read-only): logits recovered from a softmax/sigmoid output layer, or log-probabilities.
    The cache holds no reference to the bundle itself, so it goes when the bundle goes.
    """
    with _FUNCTIONS_LOCK:
        function = _FUNCTIONS.get(bundle)
        if function is not None:
            return function
    import tensorflow as tf

    runner = bundle.runner
    scores_of = runner.scores_of  # (scores, probs, captured) for a batch of model inputs
    view = runner.view_tensors  # a targeted bundle's region mask; () otherwise
    matrix, offset = preprocessing_affine(bundle)
    matrix_t = tf.constant(matrix.T)  # (3, C)
    offset_t = tf.constant(offset)  # (C,)

    @tf.function(reduce_retracing=True)
    def compiled(pixels: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(pixels)
            x = tf.tensordot(pixels, matrix_t, axes=1) + offset_t
            scores, probs, _ = scores_of(x, view=view)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=scores)
            # Each sample's loss depends only on its own pixels, so the gradient of the sum is the
            # per-sample gradient.
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, pixels), probs

    def loss_and_gradient(
        pixels: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        loss, grad, probs = compiled(tf.constant(pixels, tf.float32), tf.constant(labels, tf.int32))
        return loss.numpy(), grad.numpy(), probs.numpy()

    with _FUNCTIONS_LOCK:
        return _FUNCTIONS.setdefault(bundle, loss_and_gradient)


# ------------------------------------------------------------------------------------------------
# The attack
# ------------------------------------------------------------------------------------------------
def _check_pixel_units(name: str, value: float, *, allow_zero: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number of pixel levels, got {value!r}") from None
    if not math.isfinite(number) or number > 255 or number < (0 if allow_zero else 1):
        hint = ""
        if 0 < number < 1:
            hint = (
                f" ({name} is in 0–255 pixel units, not a 0–1 fraction: did you mean "
                f"{number * 255:.3g}?)"
            )
        low = "0" if allow_zero else "1"
        raise ParameterError(
            f"{name} must be between {low} and 255 pixel levels, got {value!r}{hint}"
        )
    return number


def _top_k(bundle: ModelBundle, probs: np.ndarray, k: int) -> tuple[Prediction, ...]:
    order = np.argsort(-probs, kind="stable")[:k]
    return tuple((int(i), bundle.class_names[i], float(probs[i])) for i in order)


def _resize_perturbation(delta: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (h, w, 3) float perturbation to ``size`` = (H, W), per channel."""
    if delta.shape[:2] == tuple(size):
        return delta.astype(np.float32)
    return np.stack([resize_map(delta[:, :, c], size) for c in range(delta.shape[2])], axis=-1)


def attack(
    bundle: ModelBundle,
    image: np.ndarray,
    method: AttackMethod = "fgsm",
    *,
    epsilon: float = 4.0,
    steps: int = 10,
    step_size: float | None = None,
    target: int | str | None = None,
    seed: int = 0,
    top_k: int = 5,
    early_stop: bool = False,
    progress: ProgressCallback | None = None,
    subject: Any = None,
) -> AttackResult:
    """Perturb ``image`` within an L∞ ball of radius ``epsilon`` to change the model's decision.

    Parameters
    ----------
    bundle
        From :func:`explainers.load_model`.
    image
        uint8 array (H, W, 3) (or (H, W), (H, W, 1), (H, W, 4)) of any size.
    method
        ``"fgsm"`` (one signed-gradient step of size ε) or ``"pgd"`` (random start, ``steps``
        signed steps of ``step_size``, projected onto the ε-ball and [0, 255] after each).
    epsilon
        L∞ budget in 0–255 pixel units, in [1, 255] (``8`` means 8/255).
    steps
        PGD iterations (1..1000); ignored by FGSM.
    step_size
        PGD step in pixel units, in (0, 255]; default ``min(ε, 2.5 · ε / steps)``, the rule of
        thumb of the Madry lab's ``robustness`` library: the iterates can cross the ball from a
        random start and still settle near its boundary. Ignored by FGSM.
    target
        None: untargeted, push the loss of the current top-1 class up. A class index or name:
        targeted, push the loss of that class down.
    seed
        Seed of PGD's random start.
    top_k
        How many predictions to report before and after.
    early_stop
        Stop as soon as the float adversarial input at model resolution succeeds
        (Madry et al. run all steps, the default). The returned uint8 image is checked anyway.
    progress
        Optional ``callback(fraction, message)``, called after every step.
    subject
        Segmentation models: the region whose class decision is attacked (a
        :class:`explainers.targets.Target` or its text, e.g. ``"region:circle:at=40,52"``;
        default: the predicted pixels of the main non-background class). The attack pushes the
        region's summed class logits and succeeds when the region's mean class probability
        changes its top class. Other tasks: must be None.

    Raises
    ------
    ParameterError
        For an unknown method, a budget outside its range, or an unknown target class.
    """
    from explainers.explanation import resolve_target
    from explainers.targets import bind

    if method not in ATTACK_METHODS:
        raise ParameterError(
            f"unknown attack {method!r}; choose one of {', '.join(ATTACK_METHODS)}"
        )
    epsilon = _check_pixel_units("epsilon", epsilon)
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or not 1 <= steps <= 1000:
        raise ParameterError(f"steps must be a whole number from 1 to 1000, got {steps!r}")
    steps = int(steps) if method == "pgd" else 1
    if method == "fgsm":
        step_size = epsilon  # Goodfellow et al. 2015: a single step to the corner of the ball
    elif step_size is None:
        step_size = min(epsilon, 2.5 * epsilon / steps)
    else:
        step_size = _check_pixel_units("step_size", step_size, allow_zero=True)
        if step_size == 0:
            raise ParameterError("step_size must be greater than 0 pixel levels, got 0")
    if int(top_k) < 1:
        raise ParameterError(f"top_k must be at least 1, got {top_k!r}")
    k = min(int(top_k), bundle.n_classes)

    image = check_image_array(image)
    if bundle.root.task == "regression":
        raise ParameterError(
            "attacks change a decision (a class, a label, a region's class); a regression output "
            "has none. Explain what increases or decreases the value instead."
        )
    if bundle.view is None and bundle.task == "segmentation":
        # The region's class decides: the attack pushes the region's summed class logits
        # (Seg-Grad-CAM's score) and succeeds when the region's mean probability changes class.
        bundle = bind(bundle, image, subject).bundle
    elif subject is not None:
        raise ParameterError("subject (a region to attack) applies to segmentation models only")
    original = bundle.resize(image).astype(np.float32)  # (h, w, 3) pixels at model size
    _, probs_before = bundle.runner.predict(bundle.model_input(image))
    probs_before = probs_before[0]
    original_class = int(np.argmax(probs_before))
    targeted = target is not None
    attacked = resolve_target(bundle, probs_before, target) if targeted else original_class
    # Untargeted: ascend the loss of the current class; targeted: descend that of the target.
    direction = -1.0 if targeted else 1.0
    loss_and_gradient = loss_gradient_fn(bundle)
    labels = np.array([attacked], np.int32)

    def succeeded(probs: np.ndarray) -> bool:
        top = int(np.argmax(probs))
        return top == attacked if targeted else top != original_class

    low = np.maximum(original - epsilon, 0.0)
    high = np.minimum(original + epsilon, 255.0)
    adversarial = original.copy()
    if method == "pgd":
        # Madry et al. 2018 start from a uniformly random point of the ε-ball (intersected with
        # the pixel range), so that repeated runs explore different local maxima.
        rng = np.random.default_rng(seed)
        start = original + rng.uniform(-epsilon, epsilon, original.shape).astype(np.float32)
        adversarial = np.clip(start, low, high)

    # One gradient evaluation per step; the last one only reports the final loss and prediction.
    loss, grad, probs_now = loss_and_gradient(adversarial[None], labels)
    losses = [float(loss[0])]
    taken = 0
    while taken < steps and not (early_stop and succeeded(probs_now[0])):
        adversarial = adversarial + direction * step_size * np.sign(grad[0])
        adversarial = np.clip(adversarial, low, high)  # projection: ε-ball ∩ [0, 255]
        taken += 1
        loss, grad, probs_now = loss_and_gradient(adversarial[None], labels)
        losses.append(float(loss[0]))
        if progress is not None:
            progress(taken / steps, f"{method.upper()}: step {taken}/{steps}")
    success_model = succeeded(probs_now[0])

    # Back to the original size: upsample the perturbation, add, round, and keep the result in the
    # integer ε-ball (rounding a value like x + 2.5 could otherwise step outside a 2.5 budget).
    delta = _resize_perturbation(adversarial - original, image.shape[:2])
    pixels = image.astype(np.float32)
    budget = math.floor(epsilon)
    result = np.rint(pixels + delta)
    result = np.clip(result, np.maximum(pixels - budget, 0), np.minimum(pixels + budget, 255))
    adversarial_image = result.astype(np.uint8)
    perturbation = adversarial_image.astype(np.float32) - pixels

    # What the user sees: the returned uint8 image, resized and preprocessed as any other image.
    _, probs_after = bundle.runner.predict(bundle.model_input(adversarial_image))
    probs_after = probs_after[0]
    after_class = int(np.argmax(probs_after))
    flipped = after_class != original_class
    reached = after_class == attacked if targeted else None
    if progress is not None:
        progress(1.0, "done")
    return AttackResult(
        image=adversarial_image,
        perturbation=perturbation,
        linf=float(np.abs(perturbation).max(initial=0.0)),
        l2=float(np.sqrt(np.sum(perturbation.astype(np.float64) ** 2))),
        method=method,
        epsilon=epsilon,
        step_size=float(step_size),
        steps=taken,
        seed=int(seed),
        original_class=original_class,
        target=attacked if targeted else None,
        before=_top_k(bundle, probs_before, k),
        after=_top_k(bundle, probs_after, k),
        flipped=flipped,
        reached_target=reached,
        success=bool(reached) if targeted else flipped,
        success_at_model_resolution=success_model,
        losses=tuple(losses),
    )
