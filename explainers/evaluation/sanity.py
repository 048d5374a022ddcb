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
* **Verdict (cascading).** Adebayo et al.'s finding is that guided backprop's map survives
  randomisation of the *top* layers: its rank correlation with the original stays high while
  block after block is re-initialised from the output, whereas vanilla gradients and Grad-CAM
  change at once. Reading only the last step (every block random, the first convolution too)
  misses this, since at that point almost every map has decorrelated. So the verdict judges the
  whole cascade: ``held_through[m]`` counts the cascade steps, from the output side, after which
  the absolute-map ρ is still above ``threshold`` (default 0.5; the run stops at the first step
  at or below it, or with a NaN: a map that went flat did change), and a method is *flagged* as
  insensitive to the model's top layers when it holds through at least ``top_fraction``
  (default one half, rounded up) of the blocks tested — 3 of the demo model's 5. The count is
  reported per method ("stays above 0.5 through 1 of 5 blocks"), for the signed maps too.
* **Verdict (independent).** Flagged when ρ stays above the threshold whichever single block is
  randomised.

Measured on the bundled demo CNN (5 blocks: predictions, last_conv, conv3, conv2, conv1), with
the 8 bundled ``assets/samples/shapes_*.png`` images at seeds 0, 1 and 7 and 6 never-trained-on
images (``generate_dataset(6, 20_261_127 + 303)``, their labels as targets) at seeds 0 and 1:
36 runs, ρ after steps 1…5 as min–max over the runs.

================= ======= =============== =========== =========== =========== ===========
method            maps    1: predictions  2: +last    3: +conv3   4: +conv2   5: +conv1
================= ======= =============== =========== =========== =========== ===========
guided backprop   |map|   0.49–0.86       0.23–0.69   0.13–0.45   0.08–0.31   0.04–0.19
guided backprop   signed  0.63–0.91       0.50–0.79   0.41–0.68   0.25–0.54   −0.04–0.20
Grad-CAM          both    −0.45–0.76      −0.16–0.52  −0.25–0.37  −0.16–0.46  −0.18–0.59
vanilla gradients |map|   0.31–0.70       0.09–0.26   0.09–0.26   0.07–0.27   0.02–0.17
vanilla gradients signed  −0.53–0.53      −0.28–0.15  −0.05–0.06  −0.05–0.03  −0.03–0.03
================= ======= =============== =========== =========== =========== ===========

(Grad-CAM's maps are ReLU'd, so its two ρ agree; three runs have a flat last-step map, NaN.)
Seed 0 on the bundled samples alone, guided backprop's |map| ρ is 0.72–0.84, 0.23–0.59,
0.14–0.44, 0.10–0.31, 0.06–0.15. Guided backprop is the least sensitive of the three — its
signed map keeps ρ 0.41–0.68 with the top three blocks random, where vanilla gradients' is
≈ 0 — but its absolute map falls below 0.5 once ``last_conv`` is randomised: it holds through
1 of 5 blocks in 29 runs, 2 in 6 and 0 in 1 (Grad-CAM: 0 in 31, 1 in 4, 2 in 1; vanilla
gradients: 0 in 9, 1 in 27). By the paper's measure it is *not* insensitive to the top layers
of this shallow model, and no method is flagged on it.

On an untrained VGG-style CNN (six 3×3 ReLU convolutions with max pooling and a dense head,
7 blocks; ``vgg_style`` in tests/test_sanity.py, two bundled samples) guided backprop shows the
paper's failure: |map| ρ 0.93, 0.91, 0.87–0.88, 0.77–0.78, 0.71, 0.24–0.31, 0.07–0.11 — it
holds through 5 of 7 blocks and is flagged (4 needed), although the last step alone (≈ 0.1)
would have let it pass; vanilla gradients stay below 0.1 from the first step and Grad-CAM
holds through none (−0.32 and 0.23 after the first step). In 7 further runs on four models of
this family (seeds 0–3, GAP or dense heads), guided backprop's ρ after four blocks was
0.76–0.82. The rule comes from the paper's finding (a map that survives randomising the top
layers is insensitive to them), not from fitting these numbers.
"""

from __future__ import annotations

import hashlib
import math
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from explainers.errors import ParameterError, UnsupportedModelError
from explainers.io.images import check_image_array

if TYPE_CHECKING:
    import keras

    from explainers.core.specs import ProgressCallback
    from explainers.explanation import Explanation
    from explainers.io.models import ModelBundle

RandomisationMode = Literal["cascading", "independent"]
#: Default share of the cascade, from the output side, through which a method's map must stay
#: similar (ρ above the threshold) to be flagged: the top half of the weighted blocks.
TOP_FRACTION = 0.5
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
    seed
        Seed of the re-initialisation.
    held_through, signed_held_through
        ``{method: n}``. Cascading: how many steps, from the output side, the absolute (signed)
        maps' ρ stayed above ``threshold`` before it first fell to or below it (or became NaN),
        i.e. how many output-side blocks could be randomised while the map stayed similar.
        Independent: how many blocks, randomised alone, left ρ above ``threshold``.
    required
        Cascading: the ``held_through`` that flags a method, ``ceil(top_fraction × K)`` for the
        K blocks tested. Independent: K.
    top_fraction
        The share of the tested cascade a flagged method's map must survive.
    total_blocks
        Weighted blocks in the model (K is smaller when ``max_steps`` cut the cascade short).
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
    held_through: dict[str, int] = field(default_factory=dict)
    signed_held_through: dict[str, int] = field(default_factory=dict)
    required: int = 0
    top_fraction: float = TOP_FRACTION
    total_blocks: int = 0

    @property
    def passes(self) -> dict[str, bool]:
        """``{method: not flagged}``."""
        return {method: not flag for method, flag in self.flagged.items()}

    @property
    def final_correlations(self) -> dict[str, float]:
        """ρ of the absolute maps at the last step, per method (what a cascading verdict reads)."""
        return {method: values[-1] for method, values in self.correlations.items()}

    def verdict(self, method: str) -> str:
        """One sentence on ``method``'s result, with how long its map stayed similar."""
        values = self.correlations[method]
        n_steps = len(values)
        held = self.held_through[method]
        signed = self.signed_held_through[method]
        above = f"above {self.threshold:g}"
        if self.mode == "independent":
            lowest = int(np.nanargmin(values)) if not np.all(np.isnan(values)) else 0
            rho = _shown(values[lowest])
            count = f"{held} of the {n_steps} blocks randomised alone leave it {above}"
            if self.flagged[method]:
                return (
                    f"{method}: flagged — whichever single block is randomised, its map keeps a "
                    f"rank correlation {above} with the original (lowest {rho}, randomising "
                    f"{self.blocks[lowest].name}): it does not depend on any one block's "
                    "parameters"
                )
            return (
                f"{method}: passes — randomising {self.blocks[lowest].name} alone drops the rank "
                f"correlation with the original map to {rho} (≤ {self.threshold:g}); {count}"
            )
        signed_part = f"signed map: {signed} of {n_steps}"
        if self.flagged[method]:
            kept = ", ".join(_shown(v) for v in values[:held])
            return (
                f"{method}: flagged — its map stays similar to the original while the top "
                f"{held} of {n_steps} weighted blocks are randomised from the output (rank "
                f"correlation of the absolute maps {kept}, all {above}; {self.required} "
                f"suffice; {signed_part}): it is insensitive to the top layers' parameters"
            )
        if held == 0:
            where = f"as soon as {self.blocks[0].name} is randomised"
        else:
            where = f"once {self.blocks[held].name} is randomised too"
        return (
            f"{method}: passes — its rank correlation with the original drops to "
            f"{_shown(values[held])} (≤ {self.threshold:g}) {where}: it stays {above} through "
            f"{held} of {n_steps} weighted blocks randomised from the output (flagging needs "
            f"{self.required}; {signed_part})"
        )


def _shown(rho: float) -> str:
    return "undefined (a constant map)" if math.isnan(rho) else f"{rho:.2f}"


def steps_held(values: Sequence[float], threshold: float) -> int:
    """How many leading ``values`` are above ``threshold``: the output-side blocks a cascade
    randomised while the map stayed similar. NaN (a map gone flat, which did change) stops the
    run like a value at or below the threshold."""
    count = 0
    for value in values:
        if not value > threshold:  # False for NaN
            break
        count += 1
    return count


def blocks_required(n_blocks: int, top_fraction: float) -> int:
    """Cascade steps a map must survive to be flagged: ``ceil(top_fraction × n_blocks)``, at
    least 1 (rounded before the ceiling so that 0.6 × 5 is 3, not 4)."""
    return max(1, math.ceil(round(top_fraction * n_blocks, 9)))


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
    from explainers.io.models import layer_object

    blocks: list[Block] = []
    owner: dict[str, int] = {}  # layer path -> index of its block
    for info in bundle.layers:
        # Normalization holds preprocessing statistics, not weights the training learnt.
        if info.is_model or info.n_params == 0 or info.class_name in _NOT_LEARNT:
            continue
        layer = layer_object(bundle.model, info.path)
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
    from explainers.io.models import layer_object

    for path in paths:
        layer = layer_object(model, path)
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

    from explainers.io.models import bundle_from_model

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
        task=bundle.task,
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
    top_fraction: float = TOP_FRACTION,
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
        Stop after this many steps (default: all blocks). In cascading mode the verdict then
        judges the top ``max_steps`` blocks only (``top_fraction`` of them).
    params
        ``{method: {parameter: value}}`` passed to :func:`explainers.explain` for that method.
    threshold
        The rank correlation of absolute maps, in (−1, 1], above which a map counts as still
        similar to the original.
    top_fraction
        Cascading mode: flag a method whose map stays similar (ρ above ``threshold``) through at
        least this share of the tested blocks, from the output side, rounded up (default: the
        top half, 3 of 5 blocks). In (0, 1]; 1 flags only maps that survive every step.
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
    from explainers.explanation import explain
    from explainers.targets import fixed_target

    method_list = (methods,) if isinstance(methods, str) else tuple(methods)
    if not method_list:
        raise ParameterError("give at least one method to test")
    if len(set(method_list)) != len(method_list):
        raise ParameterError(f"methods are repeated: {', '.join(method_list)}")
    if mode not in ("cascading", "independent"):
        raise ParameterError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    if not -1 < float(threshold) <= 1:
        raise ParameterError(f"threshold must be in (-1, 1], got {threshold!r}")
    if isinstance(top_fraction, bool) or not 0 < float(top_fraction) <= 1:
        raise ParameterError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    params = dict(params or {})
    unknown = set(params) - set(method_list)
    if unknown:
        raise ParameterError(
            f"params given for {', '.join(sorted(unknown))}, which are not among the tested "
            f"methods ({', '.join(method_list)})"
        )
    image = check_image_array(image)
    if bundle.view is not None:
        raise ParameterError(
            "pass the loaded model's bundle and the target (explainers.targets.Target), not a "
            "targeted view: the randomised copies are made from the model"
        )
    blocks = weighted_blocks(bundle)
    total_blocks = len(blocks)
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
                target=fixed_target(original),
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
    n_steps = len(blocks)
    if mode == "cascading":
        # The whole cascade decides (Adebayo et al.: guided backprop's map survives randomising
        # the top layers), not the last step, where nearly every map has decorrelated.
        held = {m: steps_held(v, threshold) for m, v in correlations.items()}
        signed_held = {m: steps_held(v, threshold) for m, v in signed.items()}
        required = blocks_required(n_steps, float(top_fraction))
        flagged = {m: held[m] >= required for m in method_list}
        share = "half" if float(top_fraction) == 0.5 else f"{float(top_fraction):.0%}"
        tested = (
            f"{required} of the {n_steps} weighted blocks"
            if n_steps == total_blocks
            else f"{required} of the {n_steps} output-side blocks tested; the model has "
            f"{total_blocks}"
        )
        rule = (
            f"cascading randomisation from the output side; a method is flagged as insensitive to "
            f"the model's top layers when the Spearman rank correlation of its absolute map with "
            f"the original stays above {threshold:g} while the top {share} of the cascade "
            f"({tested}) is randomised, as Adebayo et al. (2018) found for guided backprop; each "
            f"verdict says through how many blocks the map stayed similar"
        )
    else:
        # Independent randomisation: flagged when no single block's weights change the map.
        held = {m: sum(bool(v > threshold) for v in values) for m, values in correlations.items()}
        signed_held = {m: sum(bool(v > threshold) for v in vs) for m, vs in signed.items()}
        required = n_steps
        flagged = {m: held[m] == n_steps for m in method_list}
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
        held_through=held,
        signed_held_through=signed_held,
        required=required,
        top_fraction=float(top_fraction),
        total_blocks=total_blocks,
    )
