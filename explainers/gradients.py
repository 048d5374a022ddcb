"""Gradient-based attributions: vanilla gradients, gradient × input, Integrated Gradients, guided
backprop, and SmoothGrad as a noise wrapper around any of them.

Every method here is an *input-space attribution* ``(N, h, w, C) → (N, h, w, C)`` computed from the
runner's one compiled, batched gradient function; the registered method reduces it to a signed
(h, w) map by summing over channels, which keeps sums (and so IG's completeness) intact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .compute import ProgressCallback
from .registry import ExplainRequest, MethodSpec, ParamSpec, batch_size_param, register

#: ``attribution(request, x, progress) -> (N, h, w, C)`` for inputs x of shape (N, h, w, C).
InputAttribution = Callable[[ExplainRequest, np.ndarray, ProgressCallback | None], np.ndarray]


def _gradients(
    request: ExplainRequest, x: np.ndarray, progress: ProgressCallback | None, guided: bool = False
) -> np.ndarray:
    _, grads = request.bundle.runner.input_gradients(
        x,
        request.target,
        guided=guided,
        batch_size=int(request.params.get("batch_size", 32)),
        progress=progress,
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
    if name == "black":
        return np.zeros(image.shape, np.float32)
    if name == "white":
        return np.full(image.shape, 255.0, np.float32)
    if name == "gray":
        return np.full(image.shape, 127.5, np.float32)
    if name == "blur":
        radius = max(2.0, 0.05 * max(image.shape[:2]))
        return np.asarray(
            Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)), np.float32
        )
    if name == "uniform_noise":
        return np.random.default_rng(seed).uniform(0, 255, image.shape).astype(np.float32)
    raise ValueError(f"unknown baseline {name!r}")


def integrated_gradients_batch(
    request: ExplainRequest,
    x: np.ndarray,
    progress: ProgressCallback | None = None,
    *,
    steps: int | None = None,
    rule: str | None = None,
    baseline: str | None = None,
) -> np.ndarray:
    """(x − x′) ⊙ Σ_k w_k ∂S_c/∂x(x′ + α_k (x − x′)) for each input (Sundararajan et al. 2017)."""
    params = request.params
    steps = int(steps or params.get("steps", 32))
    rule = rule or params.get("rule", "gauss_legendre")
    baseline = baseline or params.get("baseline", "black")
    alphas, weights = quadrature(rule, steps)
    seed = int(params.get("seed", 0))
    x_ref = request.bundle.preprocess(baseline_pixels(baseline, request.image, seed))
    out = np.empty_like(x)
    for i, xi in enumerate(x):
        path = x_ref + alphas[:, None, None, None].astype(np.float32) * (xi - x_ref)
        sub = None
        if progress is not None:

            def sub(f: float, msg: str, i: int = i) -> None:
                progress((i + f) / len(x), f"integrated gradients: sample {i + 1}/{len(x)}")

        grads = _gradients(request, path.astype(np.float32), sub)
        out[i] = (xi - x_ref) * np.tensordot(weights, grads, axes=1)
    return out


# ------------------------------------------------------------------------------------------------
# SmoothGrad
# ------------------------------------------------------------------------------------------------
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
    """
    params = request.params
    base = SMOOTHABLE[params["base"]]
    n = int(params["n_samples"])
    sigma = float(params["noise_level"]) * float(x.max() - x.min() or 1.0)
    rng = np.random.default_rng(int(params["seed"]))
    noisy = x[0][None] + rng.normal(0.0, sigma, (n, *x.shape[1:])).astype(np.float32)
    attributions = base(request, noisy.astype(np.float32), progress)
    if params["squared"]:
        attributions = attributions**2
    return attributions.mean(axis=0, keepdims=True)


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
    scores, _ = request.bundle.runner.forward(np.stack([request.x[0], x_ref]))
    delta = float(scores[0, request.target] - scores[1, request.target])
    total = float(values.sum())
    extras = {
        "score_input": float(scores[0, request.target]),
        "score_baseline": float(scores[1, request.target]),
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
        params=(batch_size_param(),),
        compute=_as_map(vanilla_gradients),
        engines=("native", "tf_explain"),
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
        params=(batch_size_param(),),
        compute=_as_map(gradient_x_input),
        engines=("native", "tf_explain"),
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
        engines=("native", "tf_explain"),
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
        engines=("native", "tf_explain"),
        formula=r"\hat A(x) = \frac{1}{n}\sum_{k=1}^{n} A\big(x + \mathcal{N}(0, \sigma^2)\big)",
        caveats="Cost grows linearly with n_samples. With guided backprop as the base it inherits "
        "guided backprop's failure of the randomisation sanity check.",
    )
)
