"""Superpixel surrogates: LIME (Ribeiro et al. 2016) and Kernel SHAP (Lundberg & Lee 2017).

Both methods explain the model through *interpretable features* z ∈ {0, 1}^K, one per superpixel:
z_k = 1 shows superpixel k as it is, z_k = 0 replaces it with a fill. They share the segmentation,
the fill and the batched model calls here, and differ only in how they weight the sampled
coalitions and fit the surrogate:

* LIME fits a ridge regression with an exponential kernel on the cosine distance to the full
  image (the ``lime`` package's ``LimeImageExplainer``);
* Kernel SHAP weights coalitions with the Shapley kernel, so the regression's solution is the
  Shapley values of the superpixels, which add up to f(x) − f(all hidden) (the ``shap`` package's
  ``KernelExplainer``).

``lime``, ``shap`` and ``skimage`` are imported inside the compute functions: importing
``explainers`` stays cheap, and the rest of the library works without them.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from explainers.core.fills import check_fill, fill_pixels
from explainers.core.runner import batch_size_param, chunks, resolve_batch_size
from explainers.core.specs import ExplainRequest, MethodSpec, ParamSpec, register
from explainers.errors import ParameterError

SEGMENTATIONS = ("slic", "quickshift")
#: What a hidden superpixel shows: a blurred copy (the default), mid-gray, black, or its own mean
#: colour (``lime``'s default). The mean colour removes texture and edges but keeps colour, so a
#: flat-coloured object survives its own hiding: on the demo model (10 fresh images, LIME with
#: 1000 samples) it put 19 % of the positive weight on the object and pointed at it in 6 of 10
#: images, against 49 % and 10 of 10 with the blurred fill (gray: 52 %, 10 of 10, but a worse
#: surrogate fit, R² 0.44 against 0.74).
FILLS = ("blur", "gray", "black", "superpixel_mean")


# ------------------------------------------------------------------------------------------------
# Shared: segmentation, fills, batched evaluation of coalitions
# ------------------------------------------------------------------------------------------------
def segment_superpixels(
    image: np.ndarray, method: str, n_segments: int, kernel_size: float, seed: int
) -> np.ndarray:
    """Superpixel labels, int64 (h, w), numbered 0 … K−1 without gaps.

    ``image`` is uint8 (h, w, 3). ``slic`` aims at ``n_segments`` compact superpixels (Achanta et
    al. 2012), in its SLICO form, which adapts the colour/space trade-off per superpixel: plain
    SLIC with a fixed compactness collapses a noisy or highly textured image into one or two
    segments. ``quickshift`` (Vedaldi & Soatto 2008, LIME's default, with LIME's ratio 0.2 and
    max_dist 200) finds as many superpixels as the image has colour modes at scale ``kernel_size``.
    """
    import skimage.segmentation

    if method == "slic":
        labels = skimage.segmentation.slic(
            image, n_segments=int(n_segments), slic_zero=True, start_label=0, channel_axis=-1
        )
    elif method == "quickshift":
        labels = skimage.segmentation.quickshift(
            image.astype(np.float64) / 255.0,
            ratio=0.2,
            kernel_size=float(kernel_size),
            max_dist=200.0,
            rng=int(seed),
            channel_axis=-1,
        )
    else:
        raise ValueError(f"unknown segmentation {method!r}; expected one of {SEGMENTATIONS}")
    # Consecutive labels 0..K-1: both packages index features by label.
    _, consecutive = np.unique(labels, return_inverse=True)
    return consecutive.reshape(labels.shape).astype(np.int64)


def _hidden_pixels(image: np.ndarray, segments: np.ndarray, name: str) -> np.ndarray:
    """What hidden superpixels show, float32 (h, w, 3) in 0..255, for uint8 ``image``."""
    check_fill(name, FILLS)
    return fill_pixels(name, image, segments=segments)


def compose(
    coalitions: np.ndarray, segments: np.ndarray, shown: np.ndarray, hidden: np.ndarray
) -> np.ndarray:
    """Images for binary coalitions: (B, K) → (B, h, w, C), float32.

    Superpixel k of image b shows ``shown`` where ``coalitions[b, k]`` is true, else ``hidden``;
    ``shown`` and ``hidden`` are (h, w, C) in any one space (pixels or model input).
    """
    keep = np.asarray(coalitions, bool)[:, segments]  # (B, h, w)
    return np.where(keep[..., None], shown[None], hidden[None]).astype(np.float32)


def coalition_inputs(
    coalitions: tf.Tensor, segments: tf.Tensor, shown: tf.Tensor, hidden: tf.Tensor
) -> tf.Tensor:
    """:func:`compose` inside the runner's compiled forward: (B, K) coalitions (1 = shown) →
    model inputs (B, h, w, C), from the two (h, w, C) images and the (h, w) superpixel labels.
    The perturbed images exist only in the graph."""
    keep = tf.gather(coalitions, segments, axis=1) > 0.5  # (B, h, w)
    return tf.where(keep[..., None], shown[None], hidden[None])


class _Coalitions:
    """Class probabilities of coalitions of one image's superpixels, through the model.

    The images are composed in the model's input space (every preprocessing here is per pixel,
    so composing then preprocessing equals preprocessing then composing) inside the compiled
    forward pass: no image-sized NumPy work per sample.
    """

    def __init__(self, request: ExplainRequest, segments: np.ndarray, fill: np.ndarray) -> None:
        self.runner = request.bundle.runner
        self.target = request.target
        #: The target class probability's range over every coalition evaluated (explain()'s
        #: checks: a probability flat to float32 precision leaves the weights meaningless).
        self.observed: list[float] | None = None
        self.shared = (
            tf.constant(segments, tf.int32),
            tf.constant(request.x[0], tf.float32),
            tf.constant(request.bundle.preprocess(fill), tf.float32),
        )

    def probabilities(self, coalitions: np.ndarray) -> np.ndarray:
        """float64 (B, n_classes) for coalitions (B, K), truthy where a superpixel is shown, in
        one model call per batch the caller chose."""
        _, probs = self.runner.built_forward(
            coalition_inputs,
            (np.asarray(coalitions, np.float32),),
            self.shared,
            batch_size=max(1, len(coalitions)),
        )
        if len(probs):
            column = probs[:, self.target]
            low, high = float(column.min()), float(column.max())
            if self.observed is not None:
                low, high = min(low, self.observed[0]), max(high, self.observed[1])
            self.observed = [low, high]
        return probs.astype(np.float64)


def _superpixels_and_fill(request: ExplainRequest) -> tuple[np.ndarray, np.ndarray]:
    params = request.params
    method = str(params["segmentation"])
    segments = segment_superpixels(
        request.image,
        method,
        int(params["n_segments"]),
        float(params["kernel_size"]),
        int(params["seed"]),
    )
    if segments.max() < 1:
        hint = "raise n_segments" if method == "slic" else "lower kernel_size or use slic"
        raise ParameterError(
            f"{method} found a single superpixel in this {segments.shape[0]}×{segments.shape[1]} "
            f"image, so nothing can be localised; {hint}"
        )
    return segments, _hidden_pixels(request.image, segments, str(params["fill"]))


def _segmentation_params(fill_default: str) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec(
            "segmentation",
            "choice",
            "slic",
            "How the image is cut into superpixels (the features the explanation weighs).",
            choices=SEGMENTATIONS,
        ),
        ParamSpec(
            "n_segments",
            "int",
            50,
            "SLIC: approximate number of superpixels.",
            low=2,
            high=1000,
            step=1,
            title="Superpixels (SLIC)",
        ),
        ParamSpec(
            "kernel_size",
            "float",
            2.0,
            "Quickshift: scale of the colour-density kernel in pixels; larger, fewer superpixels.",
            low=0.5,
            high=20.0,
            step=0.5,
            advanced=True,
            title="Kernel size (quickshift)",
        ),
        ParamSpec(
            "fill",
            "choice",
            fill_default,
            "What a hidden superpixel shows.",
            choices=FILLS,
        ),
    )


def _seed_param(help_text: str) -> ParamSpec:
    return ParamSpec("seed", "int", 0, help_text, low=0, high=2**31 - 1, advanced=True)


# ------------------------------------------------------------------------------------------------
# LIME
# ------------------------------------------------------------------------------------------------
def _batched_lime_explainer(
    coalitions: _Coalitions, report: Callable[[int, int], None], seed: int
) -> Any:
    """A ``lime_image.LimeImageExplainer`` whose neighbourhood is built a batch at a time.

    lime's own ``data_labels`` copies the image and loops over superpixels for every sample and
    draws a tqdm bar on stderr; this override keeps its sampling exactly (one ``randint`` draw of
    the whole (n_samples, K) design from the explainer's ``RandomState``, first row all ones) but
    evaluates each batch of coalitions with ``coalitions`` (images composed with our fill inside
    the compiled forward), and reports progress.
    """
    from lime.lime_image import LimeImageExplainer

    class BatchedLimeImageExplainer(LimeImageExplainer):
        def data_labels(
            self,
            image: np.ndarray,
            fudged_image: np.ndarray,
            segments: np.ndarray,
            classifier_fn: Callable[[np.ndarray], np.ndarray],
            num_samples: int,
            batch_size: int = 10,
        ) -> tuple[np.ndarray, np.ndarray]:
            n_features = np.unique(segments).shape[0]
            data = self.random_state.randint(0, 2, num_samples * n_features).reshape(
                (num_samples, n_features)
            )
            data[0, :] = 1  # the first sample is the image itself
            labels = []
            for part in chunks(num_samples, batch_size):
                labels.append(coalitions.probabilities(data[part]))
                report(part.stop, num_samples)
            return data, np.concatenate(labels)

    return BatchedLimeImageExplainer(random_state=seed)


def lime_map(request: ExplainRequest) -> tuple[np.ndarray, dict[str, Any]]:
    """LIME weights of the target class painted on their superpixels, float32 (h, w).

    Signed: a superpixel's value is its coefficient in the local linear surrogate of the class
    probability (the change in probability for showing it rather than the fill). Superpixels not
    among the ``n_features`` selected by lime (its forward selection for ≤ 6 features, largest
    weights otherwise) are 0.
    """
    params = request.params
    n_samples = int(params["n_samples"])
    batch_size = resolve_batch_size(params["batch_size"], request.x[0].shape)
    seed = int(params["seed"])
    segments, hidden = _superpixels_and_fill(request)
    n_superpixels = int(segments.max()) + 1
    n_features = int(params["n_features"]) or n_superpixels

    def report(done: int, total: int) -> None:
        request.report(done / total, f"LIME: {done}/{total} samples")

    def unused_classifier(images: np.ndarray) -> np.ndarray:
        raise AssertionError("the batched explainer evaluates coalitions itself")

    coalitions = _Coalitions(request, segments, hidden)
    explainer = _batched_lime_explainer(coalitions, report, seed)
    explanation = explainer.explain_instance(
        request.image,
        unused_classifier,
        labels=(request.target,),
        top_labels=None,
        num_features=n_features,
        num_samples=n_samples,
        batch_size=batch_size,
        segmentation_fn=lambda image: segments,
        random_seed=seed,
    )
    weights = np.zeros(n_superpixels, np.float64)
    for feature, weight in explanation.local_exp[request.target]:
        weights[int(feature)] = weight
    extras = {
        "superpixels": n_superpixels,
        "surrogate_r2": float(explanation.score),
        "surrogate_intercept": float(explanation.intercept[request.target]),
        "surrogate_prediction": float(np.ravel(explanation.local_pred)[0]),
        "_diagnostics": {"observed_range": coalitions.observed},
    }
    return weights[segments].astype(np.float32), extras


register(
    MethodSpec(
        name="lime",
        label="LIME",
        family="perturbation",
        description="Switch superpixels on and off at random, then fit a weighted linear model "
        "of the class probability; each superpixel shows its weight.",
        reference='Ribeiro, Singh & Guestrin, "Why Should I Trust You?": Explaining the '
        "Predictions of Any Classifier, KDD 2016",
        reference_url="https://arxiv.org/abs/1602.04938",
        cost="n_samples forwards (batched) + a ridge fit",
        passes=lambda p, b: (int(p["n_samples"]), 0),
        explains="probability",
        perturbation="superpixel coalition",
        units="change in probability for showing the superpixel (surrogate weight)",
        effect="largest",
        reports_progress=True,
        fast_params={"n_samples": 40, "n_segments": 16},
        params=(
            ParamSpec(
                "n_samples",
                "int",
                1000,
                "Perturbed images the surrogate is fitted on (lime's default: 1000).",
                low=10,
                high=20_000,
                step=50,
                title="Samples",
            ),
            ParamSpec(
                "n_features",
                "int",
                0,
                "Superpixels given a weight (0 = all); with ≤ 6, lime picks them by forward "
                "selection, else by the largest weights.",
                low=0,
                high=1000,
                step=1,
                title="Superpixels shown",
            ),
            *_segmentation_params("blur"),
            _seed_param("Random seed of the samples (and of quickshift)."),
            batch_size_param(),
        ),
        compute=lime_map,
        formula=r"\min_{g}\ \sum_{z} \pi_x(z)\,\big(p_c(h_x(z)) - g(z)\big)^2 + \lambda\|w\|^2,\ "
        r"g(z) = w_0 + \sum_k w_k z_k,\ \pi_x(z) = e^{-d_{\cos}(z, \mathbf{1})^2/(2\sigma^2)},\ "
        r"\sigma = 0.25",
        caveats="Explains a local linear surrogate, not the model: check surrogate_r2 in the "
        "result. The map depends on the segmentation (objects smaller than a superpixel cannot "
        "be resolved) and on the fill (lime's own default, each superpixel's mean colour, hides "
        "shape and texture but not colour). Different seeds give somewhat different weights.",
    )
)


# ------------------------------------------------------------------------------------------------
# Kernel SHAP
# ------------------------------------------------------------------------------------------------
# shap's KernelExplainer draws its coalitions from NumPy's global generator; we seed it for the
# call and restore it after, one call at a time so that concurrent explanations stay reproducible.
_GLOBAL_RNG_LOCK = threading.Lock()


def kernel_shap_map(request: ExplainRequest) -> tuple[np.ndarray, dict[str, Any]]:
    """Shapley values of the superpixels for the target class probability, float32 (h, w).

    Signed; summed over the map's superpixels (one value each, spread over its pixels as a
    constant) they add up to p_c(x) − p_c(all superpixels hidden), exactly (shap enforces this
    efficiency constraint in its weighted least-squares solve).

    Why ``shap.KernelExplainer`` over superpixels rather than ``shap.Explainer`` with an
    ``Image`` masker (the Partition explainer): the latter computes Owen values over a fixed
    hierarchy of axis-aligned pixel rectangles, a different quantity from Kernel SHAP's Shapley
    values; Kernel SHAP on superpixels weighs the same features as LIME, so the two maps can be
    compared side by side; and KernelExplainer needs nothing but a NumPy function of binary
    coalitions (no numba-compiled masker, nothing tied to Keras 3), and enumerates every coalition
    when there are few superpixels, giving exact Shapley values (which the tests check by brute
    force). Its one drawback, sampling from NumPy's global generator, is handled by seeding and
    restoring that generator under a lock.
    """
    with warnings.catch_warnings():
        # shap's plotting colours call matplotlib APIs that announce their own deprecation
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap

    params = request.params
    batch_size = resolve_batch_size(params["batch_size"], request.x[0].shape)
    segments, hidden_pixels = _superpixels_and_fill(request)
    n_superpixels = int(segments.max()) + 1
    evaluator = _Coalitions(request, segments, hidden_pixels)
    # Enough coalitions to determine K weights; at most all 2^K − 2 proper ones (then the values
    # are exact and shap enumerates them instead of sampling).
    n_coalitions = max(int(params["max_evals"]), 2 * n_superpixels + 2)
    if n_superpixels <= 30:
        n_coalitions = min(n_coalitions, 2**n_superpixels - 2)
    total = n_coalitions + 2  # plus f(all hidden) and f(x)
    done = 0

    def probability(coalitions: np.ndarray) -> np.ndarray:
        nonlocal done
        out = np.empty(len(coalitions), np.float64)
        for part in chunks(len(coalitions), batch_size):
            out[part] = evaluator.probabilities(coalitions[part] > 0.5)[:, request.target]
            done += part.stop - part.start
            request.report(done / total, f"Kernel SHAP: {min(done, total)}/{total} coalitions")
        return out

    with _GLOBAL_RNG_LOCK:
        state = np.random.get_state()
        np.random.seed(int(params["seed"]))
        try:
            explainer = shap.KernelExplainer(probability, np.zeros((1, n_superpixels)))
            values = explainer.shap_values(
                np.ones((1, n_superpixels)), nsamples=n_coalitions, l1_reg=False, silent=True
            )
        finally:
            np.random.set_state(state)
    phi = np.asarray(values, np.float64).reshape(n_superpixels)
    base = float(np.ravel(explainer.expected_value)[0])  # p_c with every superpixel hidden
    score = float(np.ravel(explainer.fx)[0])  # p_c(x)
    extras = {
        "superpixels": n_superpixels,
        "coalitions": n_coalitions,
        "base_value": base,
        "score_value": score,
        "shap_sum": float(phi.sum()),
        "efficiency_gap": float(phi.sum()) - (score - base),
        "_diagnostics": {"observed_range": evaluator.observed},
    }
    return phi[segments].astype(np.float32), extras


register(
    MethodSpec(
        name="kernel_shap",
        label="Kernel SHAP",
        family="perturbation",
        description="Shapley values of superpixels: each superpixel's average contribution to "
        "the class probability over coalitions of the others, estimated by a Shapley-kernel "
        "weighted regression.",
        reference="Lundberg & Lee, A Unified Approach to Interpreting Model Predictions, "
        "NeurIPS 2017",
        reference_url="https://arxiv.org/abs/1705.07874",
        cost="max_evals forwards (batched; at least 2 × superpixels + 2, at most 2^superpixels)",
        passes=lambda p, b: (int(p["max_evals"]) + 2, 0),
        explains="probability",
        perturbation="superpixel coalition",
        units="probability (Shapley value of the pixel's superpixel)",
        effect="largest",
        reports_progress=True,
        fast_params={"max_evals": 40, "n_segments": 16},
        params=(
            ParamSpec(
                "max_evals",
                "int",
                1000,
                "Coalitions evaluated (raised to 2 × superpixels + 2 if lower; with few "
                "superpixels all 2^K − 2 are enumerated and the values are exact).",
                low=10,
                high=20_000,
                step=50,
                title="Evaluations",
            ),
            *_segmentation_params("blur"),
            _seed_param("Random seed of the sampled coalitions (and of quickshift)."),
            batch_size_param(),
        ),
        compute=kernel_shap_map,
        formula=r"\phi_k = \sum_{S \subseteq K \setminus \{k\}} \frac{|S|!\,(|K|-|S|-1)!}{|K|!}"
        r"\big[p_c(h_x(S \cup \{k\})) - p_c(h_x(S))\big],\ "
        r"\sum_k \phi_k = p_c(x) - p_c(h_x(\varnothing))",
        caveats="Values are relative to the fill (what 'absent' means): a different fill gives "
        "different values. With more superpixels than evaluations allow to enumerate, the "
        "values are a sampled estimate that changes with the seed. Superpixels cannot resolve "
        "detail finer than themselves.",
    )
)
