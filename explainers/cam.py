"""The class-activation-map family: one pipeline, one channel-weight step per variant.

Every variant computes ``L = ReLU(Σ_k w_k ⊙ A_k)`` on the activations ``A`` of a spatial layer
(Zhou et al. 2016; Selvaraju et al. 2017, Eq. 2). :func:`cam_pipeline` owns the activations,
gradients, weighted sum and ReLU; each variant supplies only ``w`` — per channel (K,) or per
position (h, w, K). Variants that need no gradients (CAM, Score-CAM) skip the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .gradients import guided_backprop
from .maps import resize_map
from .models import ModelBundle, _layer_object
from .registry import ExplainRequest, MethodSpec, ParamSpec, batch_size_param, register

#: ``weights(request, A, dA) -> (K,) or (h, w, K)``; A and dA are (h, w, K) for one image
#: (dA is None for variants declared gradient-free).
ChannelWeights = Callable[[ExplainRequest, np.ndarray, np.ndarray | None], np.ndarray]


def layer_of(request: ExplainRequest) -> str:
    layer = request.layer or request.bundle.default_layer
    assert layer is not None  # MethodSpec.check guarantees it
    return request.bundle.layer(layer).path


def cam_pipeline(
    request: ExplainRequest, weights: ChannelWeights, *, needs_gradients: bool = True
) -> tuple[np.ndarray, dict[str, Any]]:
    """Activations (+ gradients) at the layer → weights → weighted channel sum → optional ReLU.

    Returns the map at the layer's resolution (h, w), float32, and the extras dict.
    """
    runner = request.bundle.runner
    layer = layer_of(request)
    batch_size = int(request.params.get("batch_size", 32))
    if needs_gradients:
        _, activations, gradients = runner.layer_gradients(
            request.x, request.target, layer, batch_size=batch_size
        )
        grads: np.ndarray | None = gradients[0].astype(np.float64)
    else:
        _, _, activations = runner.activations(request.x, layer, batch_size=batch_size)
        grads = None
    acts = activations[0].astype(np.float64)
    w = weights(request, acts, grads)
    cam = np.sum(w * acts, axis=-1)
    if request.params.get("relu", True):
        cam = np.maximum(cam, 0.0)
    return cam.astype(np.float32), {"layer_shape": list(acts.shape)}


# ------------------------------------------------------------------------------------------------
# Channel-weight steps
# ------------------------------------------------------------------------------------------------
def cam_weights(request: ExplainRequest, acts: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
    """CAM: the output layer's weights for the class (Zhou et al. 2016, Eq. in §2)."""
    bundle = request.bundle
    assert bundle.cam_head is not None
    dense = _layer_object(bundle.model, bundle.cam_head.dense_layer)
    kernel = np.asarray(dense.kernel, np.float64)
    if kernel.shape[1] == 1:  # binary: the single logit scores class 1, its negation class 0
        return kernel[:, 0] if request.target == 1 else -kernel[:, 0]
    return kernel[:, request.target]


def grad_cam_weights(request: ExplainRequest, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM: spatial mean of the gradients (Selvaraju et al. 2017, Eq. 1)."""
    return grads.mean(axis=(0, 1))


def grad_cam_plus_plus_weights(
    request: ExplainRequest, acts: np.ndarray, grads: np.ndarray
) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al. 2018, Eqs. 10 and 19).

    With the exponential of the score, higher derivatives are powers of the first, so
    α = g² / (2g² + Σ_ab A_ab g³) and w_k = Σ_ij α_ij ReLU(g_ij).
    """
    g2 = grads**2
    g3 = grads**3
    denominator = 2.0 * g2 + acts.sum(axis=(0, 1), keepdims=True) * g3
    alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=np.abs(denominator) > 1e-30)
    return (alpha * np.maximum(grads, 0.0)).sum(axis=(0, 1))


def layer_cam_weights(request: ExplainRequest, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Layer-CAM: a weight per position and channel, ReLU of the gradient (Jiang et al. 2021,
    Eq. 5)."""
    return np.maximum(grads, 0.0)


def score_cam_weights(
    request: ExplainRequest, acts: np.ndarray, grads: np.ndarray | None
) -> np.ndarray:
    """Score-CAM: each channel's weight is the rise in the class probability when the input is
    masked by that channel's upsampled, min-max normalised activation map (Wang et al. 2020,
    Eqs. 3–5): ``w_k = p_c(X ∘ H_k) − p_c(X_b)`` with a zero baseline ``X_b``."""
    bundle = request.bundle
    x = request.x[0]
    h, w = x.shape[:2]
    n_channels = acts.shape[-1]
    max_channels = int(request.params.get("max_channels", 0))
    channels = np.arange(n_channels)
    if 0 < max_channels < n_channels:  # keep the most active channels (a documented speed-up)
        channels = np.sort(np.argsort(-acts.mean(axis=(0, 1)))[:max_channels])
    batch_size = int(request.params.get("batch_size", 32))
    _, baseline_probs = bundle.runner.forward(np.zeros((1, *x.shape), np.float32))
    weights = np.zeros(n_channels)
    for start in range(0, len(channels), batch_size):
        part = channels[start : start + batch_size]
        masks = []
        for k in part:
            a = acts[:, :, k]
            span = a.max() - a.min()
            upsampled = resize_map((a - a.min()) / span if span > 0 else np.zeros_like(a), (h, w))
            masks.append(upsampled)
        masked = x[None] * np.stack(masks)[..., None]
        _, probs = bundle.runner.forward(masked.astype(np.float32), batch_size=batch_size)
        weights[part] = probs[:, request.target] - baseline_probs[0, request.target]
        request.report(
            (start + len(part)) / len(channels),
            f"Score-CAM: {start + len(part)}/{len(channels)} channels",
        )
    return weights


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
    weights: ChannelWeights,
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
    engines: tuple[str, ...] = ("native",),
) -> MethodSpec:
    def compute(request: ExplainRequest) -> tuple[np.ndarray, dict[str, Any]]:
        return cam_pipeline(request, weights, needs_gradients=needs_gradients)

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
            engines=engines,
            formula=formula,
            caveats=_CAM_CAVEAT + caveats,
            **kwargs,
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
    formula=r"L^c = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big),\ "
    r"\alpha^c_k = \frac{1}{Z}\sum_{i,j}\frac{\partial S_c}{\partial A^k_{ij}}",
    caveats="For a GAP → dense head, Grad-CAM on the last layer equals CAM divided by h·w.",
    engines=("native", "tf_explain"),
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
    formula=r"M^c = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\big(\tfrac{\partial S_c}"
    r"{\partial A^k}\big) \odot A^k\Big)",
    caveats="Most useful on earlier (higher-resolution) layers.",
)
_cam_method(
    "score_cam",
    "Score-CAM",
    score_cam_weights,
    needs_gradients=False,
    description="Each feature map, used as a mask on the input, is weighted by how much it "
    "raises the class probability. No gradients; one forward pass per channel.",
    reference="Wang et al., Score-CAM: Score-Weighted Visual Explanations for Convolutional "
    "Neural Networks, CVPR-W 2020",
    reference_url="https://arxiv.org/abs/1910.01279",
    cost="1 + channels forward passes (batched)",
    passes=lambda p, b: (
        1
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
    formula=r"w^c_k = p_c(X \circ H_k) - p_c(X_b),\ H_k = \mathrm{norm}(\mathrm{up}(A^k))",
    caveats="Cost grows with the number of channels; max_channels keeps the most active ones.",
    extra_params=(
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
        params=(RELU,),
        compute=_guided_grad_cam,
        uses_layer=True,
        formula=r"G^c = R_{\mathrm{guided}} \odot \mathrm{up}(L^c_{\mathrm{Grad\text{-}CAM}})",
        caveats="Inherits guided backprop's failure of the model-randomisation sanity check; "
        "the Grad-CAM factor is what carries class information.",
    )
)
