"""The class-activation-map family: one pipeline, one channel-weight step per variant.

Every variant computes ``L = ReLU(Σ_k w_k ⊙ A_k)`` on the activations ``A`` of a spatial layer
(Zhou et al. 2016; Selvaraju et al. 2017, Eq. 2). :func:`cam_pipeline` owns the activations,
gradients, weighted sum and ReLU; each variant supplies only ``w`` — per channel or per position.
The weighting and the channel sum run inside the runner's compiled pass (in float64), so only the
(h, w) map comes back from TensorFlow. Variants that need no gradients (CAM, Score-CAM) skip the
backward pass; Score-CAM's weights need more model passes and are computed after the activations.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from explainers import tf_explain_engine
from explainers.core.maps import resize_map
from explainers.core.runner import LayerReducer, batch_size_param, resolve_batch_size
from explainers.core.specs import ExplainRequest, MethodSpec, ParamSpec, register
from explainers.io.models import ModelBundle, layer_object
from explainers.methods.gradients import guided_backprop

#: ``weights(bundle, A, dA, target) -> (B, 1, 1, K) or (B, h, w, K)``, TensorFlow, float64; A and
#: dA are (B, h, w, K) (dA is None for variants declared gradient-free), target a scalar tensor.
ChannelWeights = Callable[[ModelBundle, tf.Tensor, tf.Tensor | None, tf.Tensor], tf.Tensor]


def layer_of(request: ExplainRequest) -> str:
    layer = request.layer or request.bundle.default_layer
    assert layer is not None  # MethodSpec.check guarantees it
    return request.bundle.layer(layer).path


_REDUCERS: weakref.WeakKeyDictionary[ModelBundle, dict[ChannelWeights, LayerReducer]] = (
    weakref.WeakKeyDictionary()
)
_REDUCERS_LOCK = threading.Lock()


def channel_reducer(bundle: ModelBundle, weights: ChannelWeights) -> LayerReducer:
    """``Σ_k w_k ⊙ A_k`` as a TensorFlow function, one object per (bundle, variant) so that the
    runner's compiled pass for it is traced once. Keyed by the loaded model's bundle, so a
    targeted view (a segmentation region, :mod:`explainers.targets`) shares its model's
    reducer and compiled passes: a new region does not trace again."""
    bundle = bundle.root
    with _REDUCERS_LOCK:
        per_bundle = _REDUCERS.setdefault(bundle, {})
        reduce = per_bundle.get(weights)
        if reduce is None:

            def reduce(acts: tf.Tensor, grads: tf.Tensor | None, target: tf.Tensor) -> tf.Tensor:
                a = tf.cast(acts, tf.float64)
                g = None if grads is None else tf.cast(grads, tf.float64)
                return tf.reduce_sum(weights(bundle, a, g, target) * a, axis=-1)

            per_bundle[weights] = reduce
        return reduce


def cam_pipeline(
    request: ExplainRequest, weights: ChannelWeights, *, needs_gradients: bool = True
) -> tuple[np.ndarray, dict[str, Any]]:
    """Activations (+ gradients) at the layer → weights → weighted channel sum → optional ReLU.

    Returns the map at the layer's resolution (h, w), float32, and the extras dict.
    """
    maps, shape = request.bundle.runner.layer_maps(
        request.x,
        request.target,
        layer_of(request),
        channel_reducer(request.bundle, weights),
        needs_gradients=needs_gradients,
        batch_size=resolve_batch_size(request.params.get("batch_size"), request.x.shape[1:]),
    )
    return _finish(request, maps[0], shape)


def _finish(
    request: ExplainRequest,
    cam: np.ndarray,
    shape: tuple[int, ...],
    diagnostics: dict[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Optional ReLU; the extras carry the layer's shape and, under ``"_diagnostics"`` (read and
    removed by :func:`explainers.explain`), the map's range before the ReLU, so that an empty
    map can be explained (everything ≤ 0 and cut by the ReLU, or exactly 0 already)."""
    facts = {
        **(diagnostics or {}),
        "pre_relu_min": float(np.min(cam)),
        "pre_relu_max": float(np.max(cam)),
    }
    if request.params.get("relu", True):
        cam = np.maximum(cam, 0.0)
    return cam.astype(np.float32), {"layer_shape": list(shape), "_diagnostics": facts}


# ------------------------------------------------------------------------------------------------
# Channel-weight steps
# ------------------------------------------------------------------------------------------------
def cam_weights(
    bundle: ModelBundle, acts: tf.Tensor, grads: tf.Tensor | None, target: tf.Tensor
) -> tf.Tensor:
    """CAM: the output layer's weights for the class (Zhou et al. 2016, Eq. in §2).

    Read from the layer inside the compiled pass, so a change to the model's weights shows.
    """
    assert bundle.cam_head is not None
    kernel = tf.cast(layer_object(bundle.model, bundle.cam_head.dense_layer).kernel, tf.float64)
    if kernel.shape[1] == 1:  # binary: the single logit scores class 1, its negation class 0
        column = tf.where(tf.equal(target, 1), kernel[:, 0], -kernel[:, 0])
    else:
        column = tf.gather(kernel, target, axis=1)
    return column[None, None, None, :]


def grad_cam_weights(
    bundle: ModelBundle, acts: tf.Tensor, grads: tf.Tensor, target: tf.Tensor
) -> tf.Tensor:
    """Grad-CAM: spatial mean of the gradients (Selvaraju et al. 2017, Eq. 1)."""
    return tf.reduce_mean(grads, axis=[1, 2], keepdims=True)


def grad_cam_plus_plus_weights(
    bundle: ModelBundle, acts: tf.Tensor, grads: tf.Tensor, target: tf.Tensor
) -> tf.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, Eqs. 10 and 19).

    With the exponential of the score, higher derivatives are powers of the first, so
    α = g² / (2g² + Σ_ab A_ab g³) and w_k = Σ_ij α_ij ReLU(g_ij).
    """
    g2 = tf.square(grads)
    g3 = g2 * grads
    denominator = 2.0 * g2 + tf.reduce_sum(acts, axis=[1, 2], keepdims=True) * g3
    usable = tf.abs(denominator) > 1e-30
    alpha = tf.where(usable, g2 / tf.where(usable, denominator, tf.ones_like(denominator)), 0.0)
    return tf.reduce_sum(alpha * tf.nn.relu(grads), axis=[1, 2], keepdims=True)


def layer_cam_weights(
    bundle: ModelBundle, acts: tf.Tensor, grads: tf.Tensor, target: tf.Tensor
) -> tf.Tensor:
    """Layer-CAM: a weight per position and channel, ReLU of the gradient (Jiang et al. 2021,
    Eq. 5)."""
    return tf.nn.relu(grads)


def score_cam_inputs(maps: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """Masked inputs X ∘ H_k, float32 (B, h, w, C), for activation maps (B, h′, w′).

    Each map is min-max normalised to [0, 1] (a constant map becomes 0) at the layer's
    resolution and upsampled bilinearly with half-pixel centres — the same numbers as
    :func:`explainers.core.maps.resize_map` — inside the runner's compiled forward: one batched op
    for all channels, no Python per channel.
    """
    low = tf.reduce_min(maps, axis=[1, 2], keepdims=True)
    span = tf.reduce_max(maps, axis=[1, 2], keepdims=True) - low
    safe = tf.where(span > 0, span, tf.ones_like(span))
    normalised = tf.where(span > 0, (maps - low) / safe, tf.zeros_like(maps))
    size = tf.shape(x)[:2]
    masks = tf.image.resize(normalised[..., None], size, method="bilinear", antialias=False)
    # Repeating the mask over the colour channels first is faster than TensorFlow's broadcasting
    # multiply (about a third less time for 32 masks at 224 px); the values are the same.
    return tf.repeat(masks, tf.shape(x)[2], axis=-1) * x[None]


def score_cam_weights(
    request: ExplainRequest, acts: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """Score-CAM's channel weights: the class probability of the input masked by each channel's
    upsampled, min-max normalised activation map, ``w_k = p_c(X ∘ H_k)``.

    This is what the authors' reference code (haofanwang/Score-CAM, ``cam/scorecam.py``) and
    tf-keras-vis (``Scorecam``) compute: the softmax score of the masked input, with no baseline
    subtracted. The paper's channel-wise increase of confidence (Wang et al. 2020, Eqs. 3–5),
    ``w_k = p_c(X ∘ H_k) − p_c(X_b)``, shifts every weight by the same constant ``p_c(X_b)``; for
    a model whose baseline image (all zeros in its input space) already scores the class highly
    — the demo model calls a black image "circle" at p ≈ 0.998 — every weight is then ≤ 0 and
    the ReLU empties the map. That form is kept as ``baseline_subtract=True``. (pytorch-grad-cam
    goes the other way and applies a softmax over the channels' target scores.)

    A channel whose activation map is constant gets weight 0, as in the reference code, which
    skips it (its mask would be all zeros). ``acts`` are the layer's activations (h, w, K) for
    the image; returns the weights, float64 (K,), and diagnostics for :func:`explainers.explain`.
    """
    bundle = request.bundle
    x = request.x[0]
    n_channels = acts.shape[-1]
    max_channels = int(request.params.get("max_channels", 0))
    channels = np.arange(n_channels)
    if 0 < max_channels < n_channels:  # keep the most active channels (a documented speed-up)
        channels = np.sort(np.argsort(-acts.mean(axis=(0, 1)))[:max_channels])
    maps = np.moveaxis(acts[:, :, channels], -1, 0).astype(np.float32)  # (k, h', w')
    _, probs = bundle.runner.built_forward(
        score_cam_inputs,
        (maps,),
        (tf.constant(x, tf.float32),),
        batch_size=resolve_batch_size(request.params.get("batch_size"), request.x.shape[1:]),
        progress=request.progress,
        message="Score-CAM channels",
    )
    masked = probs[:, request.target].astype(np.float64)
    varying = maps.max(axis=(1, 2)) > maps.min(axis=(1, 2))  # as in score_cam_inputs
    diagnostics: dict[str, Any] = {
        "observed_range": [float(masked[varying].min()), float(masked[varying].max())]
        if varying.any()
        else None,
        "channels_used": int(varying.sum()),
    }
    if request.params.get("baseline_subtract", False):
        # The zero baseline's prediction is memoised by the runner: paid once per model.
        _, baseline_probs = bundle.runner.predict(np.zeros((1, *x.shape), np.float32))
        baseline = float(baseline_probs[0, request.target])
        masked = masked - baseline
        diagnostics["baseline_probability"] = baseline
    weights = np.zeros(n_channels)
    weights[channels] = np.where(varying, masked, 0.0)
    diagnostics["positive_weights"] = int(np.sum(weights > 0))
    return weights, diagnostics


def score_cam(request: ExplainRequest) -> tuple[np.ndarray, dict[str, Any]]:
    """The CAM pipeline with Score-CAM's weights, which need the activations first (NumPy)."""
    _, _, activations = request.bundle.runner.activations(
        request.x,
        layer_of(request),
        batch_size=resolve_batch_size(request.params.get("batch_size"), request.x.shape[1:]),
    )
    acts = activations[0].astype(np.float64)
    weights, diagnostics = score_cam_weights(request, acts)
    cam = np.sum(weights * acts, axis=-1)
    map_, extras = _finish(request, cam, acts.shape, diagnostics)
    extras["channels_weighted"] = diagnostics["channels_used"]
    extras["positive_weights"] = diagnostics["positive_weights"]
    if "baseline_probability" in diagnostics:
        extras["baseline_probability"] = diagnostics["baseline_probability"]
    return map_, extras


# ------------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------------
def _needs_cam_head(bundle: ModelBundle, layer: str | None) -> str | None:
    head = bundle.cam_head
    if head is None:
        return (
            "CAM needs the model to end in GlobalAveragePooling2D → Dense (the output layer); "
            "use Grad-CAM, which works with any head"
        )
    if layer is not None and bundle.layer(layer).path != head.feature_layer:
        return (
            f"CAM only works on the layer feeding the global average pooling ({head.feature_layer})"
        )
    return None


RELU = ParamSpec(
    "relu",
    "bool",
    True,
    "Keep only positive evidence (the papers' ReLU); off shows signed raw maps.",
    title="ReLU on the map",
)
_CAM_CAVEAT = (
    "Resolution is that of the chosen layer (e.g. 12×12 upsampled), so it localises coarsely. "
)


def _cam_method(
    name: str,
    label: str,
    weights: ChannelWeights | Callable[[ExplainRequest], tuple[np.ndarray, dict[str, Any]]],
    *,
    needs_gradients: bool,
    description: str,
    reference: str,
    reference_url: str,
    cost: str,
    passes: Callable[[Any, ModelBundle | None], tuple[int, int]],
    formula: str,
    caveats: str,
    extra_params: tuple[ParamSpec, ...] = (),
    requirement=None,
    **spec_fields: Any,
) -> MethodSpec:
    """Register a CAM variant from its channel-weight step (or, for Score-CAM, its own compute)."""

    def compute(request: ExplainRequest) -> tuple[np.ndarray, dict[str, Any]]:
        return cam_pipeline(request, weights, needs_gradients=needs_gradients)  # type: ignore[arg-type]

    if weights is score_cam:
        compute = score_cam  # type: ignore[assignment]

    kwargs = {"requirement": requirement} if requirement is not None else {}
    return register(
        MethodSpec(
            name=name,
            label=label,
            family="cam",
            description=description,
            reference=reference,
            reference_url=reference_url,
            cost=cost,
            passes=passes,
            params=(RELU, *extra_params),
            compute=compute,
            uses_layer=True,
            formula=formula,
            caveats=_CAM_CAVEAT + caveats,
            **kwargs,
            **spec_fields,
        )
    )


_cam_method(
    "cam",
    "CAM",
    cam_weights,
    needs_gradients=False,
    description="Class activation map: the last feature maps weighted by the output layer's "
    "weights for the class. No gradients.",
    reference="Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016",
    reference_url="https://arxiv.org/abs/1512.04150",
    cost="1 forward",
    passes=lambda p, b: (1, 0),
    units="activation × output-layer weight (sums to h·w × ({score} − bias))",
    effect="total_per_cell",
    formula=r"M_c(i,j) = \sum_k w^c_k\, A_k(i,j)",
    caveats="Only for models ending in global average pooling → dense.",
    requirement=_needs_cam_head,
)
_cam_method(
    "grad_cam",
    "Grad-CAM",
    grad_cam_weights,
    needs_gradients=True,
    description="Feature maps of a layer weighted by the spatial mean of the class score's "
    "gradient; works with any head.",
    reference="Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks via "
    "Gradient-based Localization, ICCV 2017",
    reference_url="https://arxiv.org/abs/1610.02391",
    cost="1 forward + 1 backward (to the layer)",
    passes=lambda p, b: (1, 1),
    tf_explain=tf_explain_engine.GRAD_CAM,
    units="activation × mean gradient of the {score}",
    effect="total",
    formula=r"L^c = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big),\ "
    r"\alpha^c_k = \frac{1}{Z}\sum_{i,j}\frac{\partial S_c}{\partial A^k_{ij}}",
    caveats="For a GAP → dense head, Grad-CAM on the last layer equals CAM divided by h·w.",
)
_cam_method(
    "grad_cam_plus_plus",
    "Grad-CAM++",
    grad_cam_plus_plus_weights,
    needs_gradients=True,
    description="Grad-CAM with per-position gradient weights; better when an image holds "
    "several instances of the class.",
    reference="Chattopadhay et al., Grad-CAM++: Improved Visual Explanations for Deep "
    "Convolutional Networks, WACV 2018",
    reference_url="https://arxiv.org/abs/1710.11063",
    cost="1 forward + 1 backward (to the layer)",
    passes=lambda p, b: (1, 1),
    units="activation × Grad-CAM++ weight of the {score}",
    effect="twice_total_per_cell",
    formula=r"w^c_k = \sum_{i,j} \alpha^{kc}_{ij}\,\mathrm{ReLU}\Big(\frac{\partial S_c}"
    r"{\partial A^k_{ij}}\Big),\ \alpha^{kc}_{ij} = \frac{g^2}{2g^2 + \sum_{ab} A^k_{ab} g^3}",
    caveats="Uses the closed form for an exponential score; with logits near saturation the "
    "weights can be dominated by a few positions.",
)
_cam_method(
    "layer_cam",
    "Layer-CAM",
    layer_cam_weights,
    needs_gradients=True,
    description="Each activation weighted by its own positive gradient; gives finer maps "
    "from earlier layers.",
    reference="Jiang et al., LayerCAM: Exploring Hierarchical Class Activation Maps for "
    "Localization, IEEE TIP 2021",
    reference_url="https://doi.org/10.1109/TIP.2021.3089943",
    cost="1 forward + 1 backward (to the layer)",
    passes=lambda p, b: (1, 1),
    units="activation × positive gradient of the {score}",
    effect="total",
    formula=r"M^c = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\big(\tfrac{\partial S_c}"
    r"{\partial A^k}\big) \odot A^k\Big)",
    caveats="Most useful on earlier (higher-resolution) layers.",
)
_cam_method(
    "score_cam",
    "Score-CAM",
    score_cam,
    needs_gradients=False,
    description="Each feature map, used as a mask on the input, is weighted by the class "
    "probability of the masked image. No gradients; one forward pass per channel.",
    reference="Wang et al., Score-CAM: Score-Weighted Visual Explanations for Convolutional "
    "Neural Networks, CVPR-W 2020",
    reference_url="https://arxiv.org/abs/1910.01279",
    cost="1 + channels forward passes (batched)",
    explains="probability",
    perturbation="masked image",
    units="activation × class probability of the masked image",
    reports_progress=True,
    fast_params={"batch_size": 8},
    passes=lambda p, b: (
        1
        + int(bool(p.get("baseline_subtract", False)))  # the all-zero input, when subtracted
        + (
            int(p["max_channels"])
            or (
                b.layer(b.default_layer).output_shape[-1]
                if b is not None and b.default_layer
                else 0
            )
        ),
        0,
    ),
    formula=r"w^c_k = p_c(X \circ H_k)\ \big[-\,p_c(X_b)\big],\ "
    r"H_k = \mathrm{norm}(\mathrm{up}(A^k))",
    caveats="Cost grows with the number of channels; max_channels keeps the most active ones. "
    "By default a channel's weight is the masked image's class probability, as in the authors' "
    "code and tf-keras-vis; the paper's baseline-subtracted weights (baseline_subtract) shift "
    "every weight by the same constant and empty the map when an all-zero input already scores "
    "the class.",
    extra_params=(
        ParamSpec(
            "baseline_subtract",
            "bool",
            False,
            "Subtract the class probability of an all-zero input (black for 0..1 inputs) from "
            "every channel weight: the paper's 'increase of confidence' formula. It shifts all "
            "weights by the same amount, so if the blank image already scores the class, every "
            "weight is ≤ 0 and the ReLU leaves an empty map. Off (default) weights each channel "
            "by the masked image's probability, as the authors' code and tf-keras-vis do.",
            advanced=True,
            title="Subtract the baseline score",
        ),
        ParamSpec(
            "max_channels",
            "int",
            0,
            "Use only the most active channels (0 = all).",
            low=0,
            high=4096,
            step=1,
            advanced=True,
        ),
        batch_size_param(),
    ),
)


def _guided_grad_cam(request: ExplainRequest) -> tuple[np.ndarray, dict[str, Any]]:
    """Guided Grad-CAM: guided backprop ⊙ upsampled Grad-CAM (Selvaraju et al. 2017, §3.1)."""
    cam, extras = cam_pipeline(request, grad_cam_weights, needs_gradients=True)
    guided = guided_backprop(request, request.x)[0].sum(axis=-1)
    return guided * resize_map(cam, guided.shape), extras


register(
    MethodSpec(
        name="guided_grad_cam",
        label="Guided Grad-CAM",
        family="cam",
        description="Guided backprop's fine detail masked by Grad-CAM's class localisation.",
        reference="Selvaraju et al., Grad-CAM, ICCV 2017 (§3.1)",
        reference_url="https://arxiv.org/abs/1610.02391",
        cost="2 forwards + 2 backwards",
        passes=lambda p, b: (2, 2),
        units="guided gradient × Grad-CAM of the {score}",
        params=(RELU,),
        compute=_guided_grad_cam,
        uses_layer=True,
        formula=r"G^c = R_{\mathrm{guided}} \odot \mathrm{up}(L^c_{\mathrm{Grad\text{-}CAM}})",
        caveats="Inherits guided backprop's failure of the model-randomisation sanity check; "
        "the Grad-CAM factor is what carries class information.",
    )
)
