"""The model-parameter randomisation test (Adebayo et al., "Sanity checks for saliency maps",
NeurIPS 2018, §3.1).

An explanation of a decision should depend on what the model learnt. The test re-initialises the
model's weights, layer by layer from the output ("cascading randomisation", their Fig. 2), explains
the same image and class again with each randomised copy, and measures how similar the maps stay.
A map that barely changes once the weights are random is explaining the image, not the model:
Adebayo et al. found this for guided backpropagation and guided Grad-CAM, while vanilla gradients
and Grad-CAM changed.

Our protocol:

* **What is randomised.** A *block* is a layer that owns weights (Conv, Dense, ...), together with
  the normalisation layers (BatchNormalization, LayerNormalization, ...) that directly consume
  its output, like the named blocks of the paper's Inception v3 cascade. Blocks are ordered from
  the output back to the input; step k of the cascade randomises blocks 1..k (``"independent"``
  mode randomises block k alone). Every weight is redrawn from the layer's own initializer
  (Glorot for a Conv kernel, zeros for a bias, the identity state for a normalisation layer),
  seeded from ``seed`` and the weight's path.
* **Copies, never the user's model.** Each step uses ``keras.models.clone_model`` of the model
  (nested Functional/Sequential sub-models included) with the original weights copied in, then the
  step's blocks re-initialised; it is wrapped with :func:`~explainers.bundle_from_model` using the
  original bundle's preprocessing, class names and output. One copy per step serves every method,
  and the copies (with their compiled functions) are kept for later calls on the same bundle up to
  :data:`MAX_CACHED_PARAMETERS` weights, so testing a second image costs only the explanations.
* **Similarity.** Spearman rank correlation between the original map and the randomised one, at
  the resolution the method computes (``Explanation.model_attribution``), of the absolute maps
  (as in the paper, whose gradient visualisations are absolute values) and of the signed maps.
  If either map is constant the correlation is undefined and reported as NaN.
* **Verdict.** A method is *flagged* when, with every block randomised (the last cascade step), the
  rank correlation of its absolute maps is still above ``threshold`` (default 0.5): its map does
  not depend on the model's parameters. In ``"independent"`` mode: when it stays above the
  threshold whichever single block is randomised.

On the 5-block demo CNN (tests/test_sanity.py) vanilla gradients and Grad-CAM pass, as in the
paper, but guided backprop passes too (ρ ≈ 0.07 with every block random): it keeps its signed map
(ρ 0.25–0.4) while the upper four blocks are randomised, then loses it when the first 4×4
stride-2 convolution is, whose random kernels imprint a checkerboard over the whole map. The
paper's Inception v3 is far deeper; this shallow model does not reproduce the failure.
"""

from __future__ import annotations

import hashlib
import math
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import ParameterError, UnsupportedModelError
from .images import check_image_array

if TYPE_CHECKING:
    import keras

    from .compute import ProgressCallback
    from .explain import Explanation
    from .models import ModelBundle

RandomisationMode = Literal["cascading", "independent"]
_NOT_LEARNT = ("Normalization",)
_NORMALISATION = (
    "BatchNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "UnitNormalization",
    "RMSNormalization",
)


@dataclass(frozen=True)
class Block:
    """Layers re-initialised together: one weighted layer and the normalisations right after it."""

    name: str
    paths: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class SanityResult:
    """Outcome of the model-parameter randomisation test on one image.

    Attributes
    ----------
    methods
        The methods tested, in the order given.
    target
        The explained class (the same for the original and every randomised copy).
    mode
        ``"cascading"`` or ``"independent"``.
    blocks
        The block randomised at each step, output side first; ``blocks[k].name`` labels step k.
    randomised
        Layer paths re-initialised at each step (cumulative in cascading mode).
    correlations
        ``{method: (ρ_1, …, ρ_K)}``: Spearman correlation of the absolute maps with the original's
        absolute map after each step; NaN where a map is constant.
    signed_correlations
        The same for the signed maps.
    original_maps, maps
        The raw signed maps at the image's resolution, float32 (H, W): the original one, and one
        per step.
    flagged
        ``{method: bool}``; see ``rule``.
    threshold, rule
        The verdict's threshold and the rule in words.
    """

    methods: tuple[str, ...]
    target: int
    mode: str
    blocks: tuple[Block, ...]
    randomised: tuple[tuple[str, ...], ...]
    correlations: dict[str, tuple[float, ...]]
    signed_correlations: dict[str, tuple[float, ...]]
    original_maps: dict[str, np.ndarray]
    maps: dict[str, tuple[np.ndarray, ...]]
    flagged: dict[str, bool]
    threshold: float
    rule: str
    seed: int

    @property
    def passes(self) -> dict[str, bool]:
        """``{method: not flagged}``."""
        return {method: not flag for method, flag in self.flagged.items()}

    @property
    def final_correlations(self) -> dict[str, float]:
        """ρ of the absolute maps at the last step, per method (what a cascading verdict reads)."""
        return {method: values[-1] for method, values in self.correlations.items()}

    def verdict(self, method: str) -> str:
        """One sentence on ``method``'s result."""
        values = self.correlations[method]
        if self.mode == "independent":
            lowest = int(np.nanargmin(values)) if not np.all(np.isnan(values)) else 0
            rho, where = values[lowest], f"randomising {self.blocks[lowest].name} alone"
        else:
            rho, where = values[-1], f"with the top {len(self.blocks)} weighted block(s) randomised"
        shown = "undefined (a constant map)" if math.isnan(rho) else f"{rho:.2f}"
        if self.flagged[method]:
            return (
                f"{method}: flagged — {where}, its map still has rank correlation {shown} with "
                f"the original (> {self.threshold:g}): it does not depend on the model's parameters"
            )
        return (
            f"{method}: passes — {where}, the rank correlation with the original map drops to "
            f"{shown} (≤ {self.threshold:g})"
        )


# ------------------------------------------------------------------------------------------------
# Rank correlation
# ------------------------------------------------------------------------------------------------
def rank_average(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, ties sharing their average rank (float64)."""
    values = np.asarray(values, np.float64).ravel()
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    del unique
    first = np.cumsum(counts) - counts  # 0-based position of each distinct value's first copy
    return (first + (counts + 1) / 2.0)[inverse.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two same-shape arrays (ties: average ranks); NaN if either is
    constant."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ParameterError(f"cannot correlate maps of shapes {a.shape} and {b.shape}")
    ra = rank_average(a)
    rb = rank_average(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if denominator == 0:
        return float("nan")
    return float(ra @ rb) / denominator


# ------------------------------------------------------------------------------------------------
# Model surgery on copies
# ------------------------------------------------------------------------------------------------
def weighted_blocks(bundle: ModelBundle) -> list[Block]:
    """The model's randomisable blocks, output side first (see the module docstring)."""
    if not bundle.is_graph:
        raise UnsupportedModelError(
            "the randomisation test needs a Functional or Sequential model whose layers can be "
            "reached and cloned; this model is subclassed"
        )
    from .models import _layer_object

    blocks: list[Block] = []
    owner: dict[str, int] = {}  # layer path -> index of its block
    for info in bundle.layers:
        # Normalization holds preprocessing statistics, not weights the training learnt.
        if info.is_model or info.n_params == 0 or info.class_name in _NOT_LEARNT:
            continue
        layer = _layer_object(bundle.model, info.path)
        if not layer.weights:
            continue
        if info.class_name in _NORMALISATION and len(info.inputs) == 1:
            source = info.inputs[0]
            if source in owner:
                index = owner[source]
                blocks[index] = Block(blocks[index].name, (*blocks[index].paths, info.path))
                owner[info.path] = index
                continue
        owner[info.path] = len(blocks)
        blocks.append(Block(info.path, (info.path,)))
    if not blocks:
        raise UnsupportedModelError("the model has no layer with weights to randomise")
    return blocks[::-1]


def _derived_seed(seed: int, path: str) -> int:
    return (zlib.crc32(path.encode()) ^ (int(seed) * 0x9E3779B1)) & 0x7FFFFFFF


def _initializer_for(layer: Any, variable_name: str, shape: tuple[int, ...]) -> Any:
    """The layer's own initializer for one of its weights, or a sensible default.

    Keras names a weight's initializer after the weight (``kernel`` → ``kernel_initializer``,
    ``gamma`` → ``gamma_initializer``) except for depthwise/separable convolutions
    (``kernel``/``depthwise_kernel`` → ``depthwise_initializer``).
    """
    import keras

    candidates = [
        f"{variable_name}_initializer",
        f"{variable_name.removesuffix('_kernel')}_initializer",
    ]
    if variable_name == "kernel":
        candidates.append("depthwise_initializer")
    for attribute in candidates:
        initializer = getattr(layer, attribute, None)
        if initializer is not None:
            return keras.initializers.get(initializer)
    if variable_name.endswith("variance"):
        return keras.initializers.Ones()
    return keras.initializers.GlorotUniform() if len(shape) >= 2 else keras.initializers.Zeros()


def _seeded(initializer: Any, seed: int) -> Any:
    config = initializer.get_config()
    if "seed" in config:
        config = {**config, "seed": seed}
        return type(initializer).from_config(config)
    return initializer


def reinitialise(model: keras.Model, paths: Sequence[str], seed: int) -> None:
    """Redraw every weight of the layers at ``paths`` in ``model`` (a copy!) from their
    initializers, seeded from ``seed`` and each weight's path."""
    from .models import _layer_object

    for path in paths:
        layer = _layer_object(model, path)
        for variable in layer.weights:
            name = variable.path.rsplit("/", 1)[-1]
            shape = tuple(int(d) for d in variable.shape)
            initializer = _seeded(
                _initializer_for(layer, name, shape), _derived_seed(seed, f"{path}/{name}")
            )
            variable.assign(np.asarray(initializer(shape, dtype=variable.dtype)))


def randomised_copy(
    bundle: ModelBundle, paths: Sequence[str], seed: int = 0, name: str | None = None
) -> ModelBundle:
    """A bundle of a clone of ``bundle.model`` with the layers at ``paths`` re-initialised.

    The clone has the same architecture, layer names and (other) weights; the user's model is
    only read (``get_weights``).
    """
    import keras

    from .models import bundle_from_model

    try:
        clone = keras.models.clone_model(bundle.model)
        clone.set_weights(bundle.model.get_weights())
    except Exception as exc:  # Keras raises many types for layers it cannot rebuild from config
        raise UnsupportedModelError(
            f"the model could not be copied for the randomisation test ({type(exc).__name__}: "
            f"{str(exc)[:200]}); it needs a Functional or Sequential model whose layers can be "
            "rebuilt from their config"
        ) from exc
    reinitialise(clone, paths, seed)
    return bundle_from_model(
        clone,
        preprocessing=bundle.preprocessing,
        labels=list(bundle.class_names),
        output_index=bundle.output_index,
        name=name or f"{bundle.name} (randomised)",
        source=bundle.source,
    )


#: Most weights (summed over the copies) kept per bundle between calls: 50 M floats, 200 MB.
MAX_CACHED_PARAMETERS = 50_000_000
_COPIES: weakref.WeakKeyDictionary[ModelBundle, OrderedDict[tuple[Any, ...], ModelBundle]] = (
    weakref.WeakKeyDictionary()
)
_COPIES_LOCK = threading.Lock()


def _weights_digest(model: keras.Model) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.digest()


def _cached_copy(
    bundle: ModelBundle, digest: bytes, paths: tuple[str, ...], seed: int, name: str
) -> ModelBundle:
    """:func:`randomised_copy`, memoised per bundle (least recently used first out).

    Keyed by the digest of the original's weights too, so a model changed in place since the last
    call gets fresh copies. Copies hold no reference to ``bundle``; they go when it goes.
    """
    key = (digest, paths, int(seed))
    with _COPIES_LOCK:
        copies = _COPIES.setdefault(bundle, OrderedDict())
        hit = copies.get(key)
        if hit is not None:
            copies.move_to_end(key)
            return hit
    copy = randomised_copy(bundle, paths, seed, name=name)
    with _COPIES_LOCK:
        copies[key] = copy
        while len(copies) > 1 and sum(c.n_params for c in copies.values()) > (
            MAX_CACHED_PARAMETERS
        ):
            copies.popitem(last=False)
    return copy


# ------------------------------------------------------------------------------------------------
# The test
# ------------------------------------------------------------------------------------------------
def model_randomisation_test(
    bundle: ModelBundle,
    image: np.ndarray,
    methods: str | Sequence[str],
    *,
    target: int | str | None = None,
    mode: RandomisationMode = "cascading",
    max_steps: int | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> SanityResult:
    """Run the model-parameter randomisation test of ``methods`` on ``image``.

    Parameters
    ----------
    bundle
        From :func:`explainers.load_model`; a Functional or Sequential model. It is not modified.
    image
        uint8 (H, W, 3) of any size.
    methods
        One registry name or several; all are explained with the same randomised copies.
    target
        Class index or name; None: the top-1 class of the original model. The randomised copies
        explain the same class.
    mode
        ``"cascading"`` (default; blocks 1..k randomised at step k, from the output) or
        ``"independent"`` (block k alone).
    max_steps
        Stop after this many steps (default: all blocks). In cascading mode the verdict then reads
        a partly randomised model; leave it None for the full test.
    params
        ``{method: {parameter: value}}`` passed to :func:`explainers.explain` for that method.
    threshold
        Flag a method whose absolute-map rank correlation at the last step exceeds this, in
        (−1, 1].
    seed
        Seed of the re-initialisation.
    progress
        Optional ``callback(fraction, message)``.

    Raises
    ------
    UnsupportedModelError
        For a subclassed model or one that cannot be cloned.
    ParameterError
        For bad arguments; :class:`~explainers.MethodNotApplicableError` if a method cannot
        explain this model.
    """
    from .explain import explain

    method_list = (methods,) if isinstance(methods, str) else tuple(methods)
    if not method_list:
        raise ParameterError("give at least one method to test")
    if len(set(method_list)) != len(method_list):
        raise ParameterError(f"methods are repeated: {', '.join(method_list)}")
    if mode not in ("cascading", "independent"):
        raise ParameterError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    if not -1 < float(threshold) <= 1:
        raise ParameterError(f"threshold must be in (-1, 1], got {threshold!r}")
    params = dict(params or {})
    unknown = set(params) - set(method_list)
    if unknown:
        raise ParameterError(
            f"params given for {', '.join(sorted(unknown))}, which are not among the tested "
            f"methods ({', '.join(method_list)})"
        )
    image = check_image_array(image)
    blocks = weighted_blocks(bundle)
    if max_steps is not None:
        if isinstance(max_steps, bool) or int(max_steps) < 1:
            raise ParameterError(f"max_steps must be at least 1, got {max_steps!r}")
        blocks = blocks[: int(max_steps)]

    originals: dict[str, Explanation] = {}
    for method in method_list:
        originals[method] = explain(bundle, image, method, target=target, **params.get(method, {}))
    target_index = originals[method_list[0]].target

    digest = _weights_digest(bundle.model)
    total = len(blocks) * len(method_list)
    randomised: list[tuple[str, ...]] = []
    correlations: dict[str, list[float]] = {m: [] for m in method_list}
    signed: dict[str, list[float]] = {m: [] for m in method_list}
    maps: dict[str, list[np.ndarray]] = {m: [] for m in method_list}
    for step, block in enumerate(blocks):
        if mode == "cascading":
            paths = tuple(p for b in blocks[: step + 1] for p in b.paths)
        else:
            paths = block.paths
        randomised.append(paths)
        # One copy per step, shared by every method and kept for the next call on this bundle
        # (cloning and tracing the copy's compiled functions dominate the cost).
        copy = _cached_copy(
            bundle, digest, paths, seed, f"{bundle.name} (randomised to {block.name})"
        )
        for m_index, method in enumerate(method_list):
            original = originals[method]
            result = explain(
                copy,
                image,
                method,
                target=target_index,
                layer=original.layer,
                **params.get(method, {}),
            )
            reference = original.model_attribution
            candidate = result.model_attribution
            correlations[method].append(spearman(np.abs(reference), np.abs(candidate)))
            signed[method].append(spearman(reference, candidate))
            maps[method].append(result.attribution)
            if progress is not None:
                done = step * len(method_list) + m_index + 1
                progress(done / total, f"step {step + 1}/{len(blocks)} ({block.name}): {method}")

    # NaN (a constant map) compares False: a map that went flat did change.
    if mode == "cascading":
        # The fully (or, with max_steps, most) randomised copy is the one that decides.
        flagged = {m: bool(values[-1] > threshold) for m, values in correlations.items()}
        rule = (
            f"flagged when the Spearman correlation of the absolute maps with "
            f"{'every' if max_steps is None else f'the top {len(blocks)}'} weighted block(s) "
            f"randomised is above {threshold:g}"
        )
    else:
        # Independent randomisation: flagged when no single block's weights change the map.
        flagged = {
            m: all(value > threshold for value in values) for m, values in correlations.items()
        }
        rule = (
            f"flagged when the Spearman correlation of the absolute maps stays above "
            f"{threshold:g} whichever single block is randomised"
        )
    return SanityResult(
        methods=method_list,
        target=target_index,
        mode=mode,
        blocks=tuple(blocks),
        randomised=tuple(randomised),
        correlations={m: tuple(v) for m, v in correlations.items()},
        signed_correlations={m: tuple(v) for m, v in signed.items()},
        original_maps={m: originals[m].attribution for m in method_list},
        maps={m: tuple(v) for m, v in maps.items()},
        flagged=flagged,
        threshold=float(threshold),
        rule=rule,
        seed=int(seed),
    )
