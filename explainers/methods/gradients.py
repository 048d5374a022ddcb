"""Gradient-based attributions: vanilla gradients, gradient × input, Integrated Gradients, guided
backprop, and SmoothGrad as a noise wrapper around any of them.

Every method here is an *input-space attribution* ``(N, h, w, C) → (N, h, w, C)`` computed from the
runner's one compiled, batched gradient function; the registered method reduces it to a signed
(h, w) map by summing over channels, which keeps sums (and so IG's completeness) intact.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from explainers import tf_explain_engine
from explainers.core.fills import check_fill, fill_pixels
from explainers.core.maps import effect_size
from explainers.core.runner import Transform, batch_size_param, chunks, resolve_batch_size
from explainers.core.specs import ExplainRequest, MethodSpec, ParamSpec, ProgressCallback, register

#: ``attribution(request, x, progress) -> (N, h, w, C)`` for inputs x of shape (N, h, w, C).
InputAttribution = Callable[[ExplainRequest, np.ndarray, ProgressCallback | None], np.ndarray]


def _batch_size(request: ExplainRequest) -> int:
    return resolve_batch_size(request.params.get("batch_size"), request.x.shape[1:])


def _gradients(
    request: ExplainRequest, x: np.ndarray, progress: ProgressCallback | None, guided: bool = False
) -> np.ndarray:
    _, grads = request.bundle.runner.input_gradients(
        x, request.target, guided=guided, batch_size=_batch_size(request), progress=progress
    )
    return grads


def vanilla_gradients(request: ExplainRequest, x: np.ndarray, progress=None) -> np.ndarray:
    """∂S_c/∂x (Simonyan et al. 2014, Eq. 2 without the absolute value)."""
    return _gradients(request, x, progress)


def gradient_x_input(request: ExplainRequest, x: np.ndarray, progress=None) -> np.ndarray:
    """x ⊙ ∂S_c/∂x on the preprocessed input (Shrikumar et al. 2016)."""
    return x * _gradients(request, x, progress)


def guided_backprop(request: ExplainRequest, x: np.ndarray, progress=None) -> np.ndarray:
    """Gradients with every ReLU passing only positive gradients (Springenberg et al. 2015)."""
    return _gradients(request, x, progress, guided=True)


# ------------------------------------------------------------------------------------------------
# Integrated Gradients
# ------------------------------------------------------------------------------------------------
QUADRATURE_RULES = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "trapezoid",
    "gauss_legendre",
)
BASELINES = ("black", "white", "gray", "blur", "uniform_noise")


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points α_k in [0, 1] and weights w_k with Σ w_k g(α_k) ≈ ∫₀¹ g(α) dα.

    The IG paper (Sundararajan et al. 2017, Eq. 3) uses the right Riemann sum; the trapezoid and
    Gauss–Legendre rules reach the same completeness error with fewer gradient evaluations.
    """
    m = int(steps)
    if rule == "riemann_left":
        return np.arange(m) / m, np.full(m, 1.0 / m)
    if rule == "riemann_right":
        return np.arange(1, m + 1) / m, np.full(m, 1.0 / m)
    if rule == "riemann_middle":
        return (np.arange(m) + 0.5) / m, np.full(m, 1.0 / m)
    if rule == "trapezoid":
        if m < 2:
            return np.array([0.5]), np.array([1.0])
        weights = np.full(m, 1.0 / (m - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, m), weights
    if rule == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(m)
        return (nodes + 1) / 2, weights / 2
    raise ValueError(f"unknown quadrature rule {rule!r}")


def baseline_pixels(name: str, image: np.ndarray, seed: int = 0) -> np.ndarray:
    """The IG reference image in pixel space, float32 (h, w, 3) in 0..255."""
    check_fill(name, BASELINES, "baseline")
    return fill_pixels(name, image, seed=seed)


def path_points(alphas: tf.Tensor, x: tf.Tensor, x_ref: tf.Tensor) -> tf.Tensor:
    """Points x′ + α_k (x − x′) on the straight path, float32 (K, h, w, C), for α (K,).

    Built inside the runner's compiled gradient function, so the K path images never exist in
    NumPy.
    """
    return x_ref[None] + alphas[:, None, None, None] * (x - x_ref)[None]


def integrated_gradients_batch(
    request: ExplainRequest,
    x: np.ndarray,
    progress: ProgressCallback | None = None,
    *,
    steps: int | None = None,
    rule: str | None = None,
    baseline: str | None = None,
) -> np.ndarray:
    """(x − x′) ⊙ Σ_k w_k ∂S_c/∂x(x′ + α_k (x − x′)) for each input (Sundararajan et al. 2017).

    The weighted sum over the path runs in the compiled gradient function (one batch of path
    points per model call); only the (h, w, C) sum comes back per batch.
    """
    params = request.params
    steps = int(steps or params.get("steps", 32))
    rule = rule or params.get("rule", "gauss_legendre")
    baseline = baseline or params.get("baseline", "black")
    alphas, weights = quadrature(rule, steps)
    seed = int(params.get("seed", 0))
    x_ref = request.bundle.preprocess(baseline_pixels(baseline, request.image, seed))
    x_ref_t = tf.constant(x_ref, tf.float32)
    out = np.empty_like(x)
    for i, xi in enumerate(x):
        sub = None
        if progress is not None:

            def sub(f: float, msg: str, i: int = i) -> None:
                progress((i + f) / len(x), f"integrated gradients: sample {i + 1}/{len(x)}")

        _, summed = request.bundle.runner.built_gradients(
            path_points,
            request.target,
            weights.astype(np.float32),
            (alphas.astype(np.float32),),
            (tf.constant(xi, tf.float32), x_ref_t),
            batch_size=_batch_size(request),
            progress=sub,
            message="integrated gradients",
        )
        out[i] = (xi - x_ref) * summed
    return out


# ------------------------------------------------------------------------------------------------
# SmoothGrad
# ------------------------------------------------------------------------------------------------
#: Noisy samples drawn per generator call. Sample i's noise is row i % NOISE_BLOCK of block
#: i // NOISE_BLOCK, so it does not depend on how the samples are batched.
NOISE_BLOCK = 16
#: Blocks of standard normal noise kept for reuse (they depend only on seed, block and shape).
NOISE_CACHE_BYTES = 64 * 2**20
_noise_blocks: OrderedDict[tuple[int, int, tuple[int, ...]], tf.Tensor] = OrderedDict()
_noise_lock = threading.Lock()


def _noise_block(seed: int, block: int, shape: tuple[int, ...]) -> tf.Tensor:
    key = (seed, block, shape)
    with _noise_lock:
        hit = _noise_blocks.get(key)
        if hit is not None:
            _noise_blocks.move_to_end(key)
            return hit
    # TensorFlow's counter-based (Philox) stateless generator: the same block for the same
    # (seed, block) on every machine and in every process.
    values = tf.random.stateless_normal((NOISE_BLOCK, *shape), seed=[seed, block])
    block_bytes = NOISE_BLOCK * int(np.prod(shape)) * 4
    with _noise_lock:
        _noise_blocks[key] = values
        # Keep as many of the most recent blocks as fit in the budget (maybe none).
        while len(_noise_blocks) * block_bytes > NOISE_CACHE_BYTES or any(
            int(np.prod(k[2])) != int(np.prod(shape)) for k in _noise_blocks
        ):
            _noise_blocks.popitem(last=False)
            if not _noise_blocks:
                break
    return values


def standard_noise(seed: int, start: int, stop: int, shape: tuple[int, ...]) -> tf.Tensor:
    """N(0, 1) noise for samples ``start`` … ``stop − 1``, float32 (stop − start, *shape).

    The noise depends only on (seed, sample index, shape), not on the image or the batching, so
    its blocks are drawn once and kept (LRU, at most :data:`NOISE_CACHE_BYTES`): a second
    SmoothGrad with the same seed, on any image, draws nothing. Drawing costs about as much as
    a few forward passes of a small model (≈ 20 ns per value on two CPU cores).
    """
    shape = tuple(int(d) for d in shape)
    first, last = start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK
    blocks = [_noise_block(seed, block, shape) for block in range(first, last + 1)]
    values = blocks[0] if len(blocks) == 1 else tf.concat(blocks, axis=0)
    offset = start - first * NOISE_BLOCK
    return values[offset : offset + stop - start]


def noisy_inputs(noise: tf.Tensor, x: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """x + σ · noise for standard normal ``noise`` (B, h, w, C): float32 (B, h, w, C)."""
    return x[None] + sigma * noise


#: Bases SmoothGrad can average, with how the runner computes each from a batch of noisy copies:
#: (guided ReLUs, what is summed). Integrated Gradients is a path per copy, handled separately.
_NOISE_BASES: dict[str, tuple[bool, Transform]] = {
    "vanilla_gradients": (False, "gradient"),
    "gradient_x_input": (False, "gradient_x_input"),
    "guided_backprop": (True, "gradient"),
}


SMOOTHABLE: dict[str, InputAttribution] = {
    "vanilla_gradients": vanilla_gradients,
    "gradient_x_input": gradient_x_input,
    "integrated_gradients": lambda req, x, progress=None: integrated_gradients_batch(
        req,
        x,
        progress,
        steps=int(req.params.get("base_steps", 16)),
        rule="gauss_legendre",
        baseline="black",
    ),
    "guided_backprop": guided_backprop,
}


def smoothgrad_attribution(request: ExplainRequest, x: np.ndarray, progress=None) -> np.ndarray:
    """Mean of the base attribution over noisy copies x + N(0, σ²) (Smilkov et al. 2017).

    σ = noise_level × (max(x) − min(x)) of the model input, as the paper recommends (10–20%).
    With ``squared`` the attributions are squared before averaging (SmoothGrad², Hooker et al.).
    Returns float32 (1, h, w, C).
    """
    params = request.params
    n = int(params["n_samples"])
    seed = int(params["seed"])
    sigma = float(params["noise_level"]) * float(x.max() - x.min() or 1.0)
    shape = x.shape[1:]
    x0 = tf.constant(x[0], tf.float32)
    sigma_t = tf.constant(sigma, tf.float32)
    squared = bool(params["squared"])
    if params["base"] not in _NOISE_BASES:  # Integrated Gradients: a path per noisy copy
        noisy = (x0[None] + sigma_t * standard_noise(seed, 0, n, shape)).numpy()
        attributions = SMOOTHABLE[params["base"]](request, noisy, progress)
        if squared:
            attributions = attributions**2
        return attributions.mean(axis=0, keepdims=True)
    guided, transform = _NOISE_BASES[params["base"]]
    batch_size = _batch_size(request)
    weights = np.full(n, 1.0 / n, np.float32)
    total = np.zeros(shape, np.float64)
    for part in chunks(n, batch_size):
        _, summed = request.bundle.runner.built_gradients(
            noisy_inputs,
            request.target,
            weights[part],
            (standard_noise(seed, part.start, part.stop, shape),),
            (x0, sigma_t),
            guided=guided,
            transform=transform,
            squared=squared,
            batch_size=batch_size,
        )
        total += summed
        if progress is not None:
            progress(part.stop / n, f"SmoothGrad: {part.stop}/{n} samples")
    return total[None].astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------------
def _as_map(attribution: InputAttribution) -> Callable[[ExplainRequest], tuple[np.ndarray, dict]]:
    def compute(request: ExplainRequest) -> tuple[np.ndarray, dict[str, Any]]:
        values = attribution(request, request.x, request.progress)
        return values[0].sum(axis=-1), {}

    return compute


def _integrated_gradients_compute(request: ExplainRequest) -> tuple[np.ndarray, dict[str, Any]]:
    values = integrated_gradients_batch(request, request.x, request.progress)[0]
    x_ref = request.bundle.preprocess(
        baseline_pixels(request.params["baseline"], request.image, request.params["seed"])
    )
    # Both end points' scores come from the runner's prediction memo: explain() has usually
    # predicted the input already, and a fixed baseline (black, gray, …) is predicted once.
    runner = request.bundle.runner
    score_input = float(runner.predict(request.x)[0][0, request.target])
    score_baseline = float(runner.predict(x_ref[None].astype(np.float32))[0][0, request.target])
    delta = score_input - score_baseline
    total = float(values.sum())
    extras = {
        "score_input": score_input,
        "score_baseline": score_baseline,
        "attribution_sum": total,
        "completeness_gap": total - delta,
        "completeness_relative_error": abs(total - delta) / max(abs(delta), 1e-12),
    }
    return values.sum(axis=-1), extras


_SIGNED_NOTE = (
    "Signed: positive values raise the class score. The map is summed over colour channels."
)

register(
    MethodSpec(
        name="vanilla_gradients",
        label="Vanilla gradients",
        family="gradient",
        description="How much each pixel's small change moves the class score: ∂score/∂pixel.",
        reference="Simonyan, Vedaldi & Zisserman, Deep Inside Convolutional Networks, ICLR-W 2014",
        reference_url="https://arxiv.org/abs/1312.6034",
        cost="1 forward + 1 backward",
        passes=lambda p, b: (1, 1),
        tf_explain=tf_explain_engine.VANILLA_GRADIENTS,
        units="gradient of the {score}: {score} per unit of model input, summed over channels",
        effect="first_order",
        params=(batch_size_param(),),
        compute=_as_map(vanilla_gradients),
        formula=r"A(x) = \frac{\partial S_c(x)}{\partial x}",
        caveats="Noisy and local: it shows sensitivity, not contribution. Saturated units give "
        "zero gradient even when they matter. " + _SIGNED_NOTE,
    )
)
register(
    MethodSpec(
        name="gradient_x_input",
        label="Gradient × input",
        family="gradient",
        description="The gradient weighted by the (preprocessed) input value: a first-order "
        "contribution of each pixel.",
        reference="Shrikumar et al., Not Just a Black Box, arXiv 2016",
        reference_url="https://arxiv.org/abs/1605.01713",
        cost="1 forward + 1 backward",
        passes=lambda p, b: (1, 1),
        tf_explain=tf_explain_engine.GRADIENT_X_INPUT,
        units="{score} contributions, summed over colour channels",
        effect="total",
        params=(batch_size_param(),),
        compute=_as_map(gradient_x_input),
        formula=r"A(x) = x \odot \frac{\partial S_c(x)}{\partial x}",
        caveats="Depends on the preprocessing: pixels that preprocess to 0 get no attribution. "
        + _SIGNED_NOTE,
    )
)
register(
    MethodSpec(
        name="integrated_gradients",
        label="Integrated Gradients",
        family="gradient",
        description="Gradients averaged along the straight path from a baseline image to the "
        "input, times the difference; attributions add up to score(input) − score(baseline).",
        reference="Sundararajan, Taly & Yan, Axiomatic Attribution for Deep Networks, ICML 2017",
        reference_url="https://arxiv.org/abs/1703.01365",
        cost="steps × (forward + backward) + 2 forwards",
        passes=lambda p, b: (int(p["steps"]) + 2, int(p["steps"])),
        tf_explain=tf_explain_engine.INTEGRATED_GRADIENTS,
        units="{score} contributions, summed over colour channels",
        effect="total",
        reports_progress=True,
        fast_params={"steps": 4},
        params=(
            ParamSpec(
                "steps", "int", 32, "Gradient evaluations along the path.", low=1, high=1024, step=1
            ),
            ParamSpec(
                "baseline",
                "choice",
                "black",
                "The reference image meaning 'no signal'.",
                choices=BASELINES,
            ),
            ParamSpec(
                "rule",
                "choice",
                "gauss_legendre",
                "Quadrature for the path integral; Gauss–Legendre is most accurate per step.",
                choices=QUADRATURE_RULES,
                advanced=True,
            ),
            ParamSpec(
                "seed",
                "int",
                0,
                "Random seed of the uniform-noise baseline.",
                low=0,
                high=2**31 - 1,
                advanced=True,
            ),
            batch_size_param(),
        ),
        compute=_integrated_gradients_compute,
        formula=r"A_i(x) = (x_i - x'_i)\int_0^1 \frac{\partial S_c(x' + \alpha (x - x'))}"
        r"{\partial x_i}\, d\alpha",
        caveats="The result depends on the baseline: features equal to the baseline get zero "
        "attribution (a black baseline ignores black pixels). Check the completeness gap. "
        + _SIGNED_NOTE,
    )
)
register(
    MethodSpec(
        name="guided_backprop",
        label="Guided backpropagation",
        family="gradient",
        description="Gradients where every ReLU passes back only positive signals: sharp, "
        "edge-like maps.",
        reference="Springenberg et al., Striving for Simplicity: The All Convolutional Net, "
        "ICLR-W 2015",
        reference_url="https://arxiv.org/abs/1412.6806",
        cost="1 forward + 1 backward",
        passes=lambda p, b: (1, 1),
        units="guided gradient of the {score}: {score} per unit of model input, summed over "
        "channels",
        effect="first_order",
        params=(batch_size_param(),),
        compute=_as_map(guided_backprop),
        requirement=lambda b, layer: (
            None
            if b.is_graph
            else "guided backprop needs to reach the model's ReLUs (subclassed models are opaque)"
        ),
        formula=r"R^{l} = \mathbb{1}[f^{l} > 0]\,\mathbb{1}[R^{l+1} > 0]\, R^{l+1}",
        caveats="Fails the model-randomisation sanity check (Adebayo et al. 2018): its maps look "
        "almost the same for a model with random weights — it reconstructs the image more than "
        "it explains the decision. Only ReLU/ReLU6 units are modified.",
    )
)


def _smoothgrad_units(params: Mapping[str, Any], score: str, wrapped: str) -> str:
    if params.get("squared"):
        return f"squared {wrapped}, averaged over noisy copies"
    return wrapped


def _smoothgrad_effect(
    raw: np.ndarray, x: np.ndarray, params: Mapping[str, Any], wrapped: str | None
) -> tuple[float, str] | None:
    """The wrapped method's measure; squared maps hold mean g², and Σ|g| ≤ √n ‖g‖₂."""
    if wrapped is None:
        return None
    if params.get("squared"):
        cells = raw.shape[0] * raw.shape[1]
        total = float(np.sqrt(cells * np.abs(raw.astype(np.float64)).sum()))
        return effect_size(wrapped, raw, x, total=total)
    return effect_size(wrapped, raw, x)


register(
    MethodSpec(
        name="smoothgrad",
        label="SmoothGrad",
        family="gradient",
        description="Average of a gradient method over noisy copies of the input; removes "
        "speckle noise from gradient maps.",
        reference="Smilkov et al., SmoothGrad: removing noise by adding noise, ICML-W 2017",
        reference_url="https://arxiv.org/abs/1706.03825",
        cost="n_samples × the base method",
        tf_explain=tf_explain_engine.SMOOTHGRAD,
        wraps_param="base",
        units=_smoothgrad_units,
        effect=_smoothgrad_effect,
        reports_progress=True,
        fast_params={"n_samples": 3},
        passes=lambda p, b: (
            (
                int(p["n_samples"])
                * (int(p["base_steps"]) if p["base"] == "integrated_gradients" else 1),
            )
            * 2
        ),
        params=(
            ParamSpec(
                "base",
                "choice",
                "vanilla_gradients",
                "The gradient method to smooth.",
                choices=tuple(SMOOTHABLE),
            ),
            ParamSpec(
                "n_samples",
                "int",
                20,
                "Noisy copies averaged.",
                low=1,
                high=500,
                step=1,
                title="Noisy samples",
            ),
            ParamSpec(
                "noise_level",
                "float",
                0.15,
                "Noise σ as a fraction of the input's value range (paper: 0.1–0.2).",
                low=0.0,
                high=1.0,
                step=0.01,
            ),
            ParamSpec(
                "squared",
                "bool",
                False,
                "Square each attribution before averaging (SmoothGrad²; unsigned).",
            ),
            ParamSpec(
                "base_steps",
                "int",
                16,
                "Path steps when the base is Integrated Gradients (black baseline).",
                low=1,
                high=256,
                step=1,
                advanced=True,
            ),
            ParamSpec(
                "seed", "int", 0, "Random seed of the noise.", low=0, high=2**31 - 1, advanced=True
            ),
            batch_size_param(),
        ),
        compute=_as_map(smoothgrad_attribution),
        requirement=lambda b, layer: None,
        formula=r"\hat A(x) = \frac{1}{n}\sum_{k=1}^{n} A\big(x + \mathcal{N}(0, \sigma^2)\big)",
        caveats="Cost grows linearly with n_samples. With guided backprop as the base it inherits "
        "guided backprop's failure of the randomisation sanity check.",
    )
)
