"""Occlusion sensitivity (Zeiler & Fergus 2014): slide a patch over the image and record how much
the class probability drops. Each batch of occluded images is built from its patch corners inside
the runner's compiled forward, so memory stays at one batch whatever the image size and no Python
runs per patch.

``mode`` chooses how the occluded inputs are scored: ``"full"`` re-runs the whole model per patch;
``"incremental"`` (Krypton, Nakandala et al. 2019; :mod:`explainers.core.incremental`) runs the
clean image once and recomputes, per patch, only each layer's region the patch can have changed:
the same map to float round-off, for a fraction of the multiply-adds; ``"approximate"`` also caps
every layer's recomputed region at ``threshold`` of its map (faster, not exact); ``"auto"`` (the
default) is incremental where the model supports it and it saves work, else full. A mode that
cannot run falls back to full re-inference and says why in the result's extras
(``fallback_reason``)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import tensorflow as tf

from explainers import tf_explain_engine
from explainers.core import incremental
from explainers.core.fills import fill_pixels
from explainers.core.runner import MAX_AUTO_BATCH, batch_size_param, resolve_batch_size
from explainers.core.specs import ExplainRequest, MethodSpec, ParamSpec, register

#: The fills occlusion offers (:data:`explainers.core.fills.FILLS`).
FILLS = ("gray", "black", "mean", "blur")
#: How the occluded inputs are scored (see the module docstring).
MODES = ("auto", "incremental", "full", "approximate")
#: ``"auto"`` runs incrementally only where that recomputes at most this fraction of a full
#: pass's multiply-adds …
AUTO_MAX_FLOPS_RATIO = 0.75
#: … and the model costs at least this many multiply-adds per image: on smaller models the
#: cropping's extra operations cost more than the arithmetic saved.
AUTO_MIN_MACS = 5e6


def patch_positions(size: int, patch: int, stride: int) -> list[int]:
    """Top-left offsets along one axis so that patches of ``patch`` px cover all ``size`` px."""
    patch = min(patch, size)
    positions = list(range(0, size - patch + 1, stride))
    if positions[-1] != size - patch:
        positions.append(size - patch)  # cover the far edge too
    return positions


def occluded_inputs(
    corners: tf.Tensor, x: tf.Tensor, fill: tf.Tensor, patch: tf.Tensor
) -> tf.Tensor:
    """Copies of x, float32 (B, h, w, C), each with one patch replaced by the fill.

    ``corners`` (B, 2) are the patches' top-left (row, column) offsets and ``patch`` (2,) their
    (height, width); every patch lies inside the image. Built inside the runner's compiled
    forward from the corners alone: B copies of x, then the B × ph × pw patch pixels scattered in
    (a masked ``where`` over the whole batch costs 2–3× more on CPU). No Python per patch.
    """
    n = tf.shape(corners)[0]
    offset_rows, offset_cols = tf.meshgrid(tf.range(patch[0]), tf.range(patch[1]), indexing="ij")
    rows = corners[:, 0, None, None] + offset_rows[None]  # (B, ph, pw)
    cols = corners[:, 1, None, None] + offset_cols[None]
    items = tf.broadcast_to(tf.range(n)[:, None, None], tf.shape(rows))
    pixels = tf.stack([rows, cols], axis=-1)  # (B, ph, pw, 2)
    copies = tf.broadcast_to(x[None], tf.concat([[n], tf.shape(x)], axis=0))
    return tf.tensor_scatter_nd_update(
        copies, tf.concat([items[..., None], pixels], axis=-1), tf.gather_nd(fill, pixels)
    )


def box_sums(
    shape: tuple[int, int], corners: np.ndarray, size: tuple[int, int], values: np.ndarray
) -> np.ndarray:
    """Σ_k values_k · 1[pixel in box k], float64 (h, w), for boxes of one ``size`` at ``corners``.

    A summed-area (difference array) construction: ±value at each box's four corners, then a
    cumulative sum along both axes; O(boxes + pixels) with no loop over boxes.
    """
    h, w = shape
    ph, pw = size
    diff = np.zeros((h + 1, w + 1), np.float64)
    r, c = corners[:, 0], corners[:, 1]
    np.add.at(diff, (r, c), values)
    np.add.at(diff, (r, c + pw), -values)
    np.add.at(diff, (r + ph, c), -values)
    np.add.at(diff, (r + ph, c + pw), values)
    return diff.cumsum(axis=0).cumsum(axis=1)[:h, :w]


def _incremental_plan(
    request: ExplainRequest, corners: np.ndarray, size: tuple[int, int]
) -> tuple[incremental.Plan | None, str | None]:
    """The plan for the requested mode, or None and why occlusion runs full passes instead."""
    mode = request.params["mode"]
    if mode == "full":
        return None, None
    geometry = incremental.Geometry(tuple(request.x.shape[1:]), size, corners)
    threshold = float(request.params["threshold"]) if mode == "approximate" else None
    try:
        plan = incremental.plan_for(request.bundle, geometry, threshold)
    except incremental.Unsupported as exc:
        return None, str(exc)
    except Exception as exc:  # never a wrong map, nor a failed one: the full passes are exact
        return None, f"incremental inference failed to plan this model: {type(exc).__name__}: {exc}"
    if mode == "auto":
        if plan.flops_ratio > AUTO_MAX_FLOPS_RATIO:
            return None, (
                f"incremental inference would recompute {plan.flops_ratio:.0%} of a full pass's "
                "multiply-adds per patch; full passes are as fast"
            )
        if plan.full_macs < AUTO_MIN_MACS:
            return None, (
                f"the model is small ({plan.full_macs / 1e6:.1f} M multiply-adds per image): "
                "full passes are faster than cropping"
            )
    return plan, None


def incremental_batch_size(batch_size: int, shape: tuple[int, ...]) -> int:
    """Patches per incremental call: the given batch size, or automatic: 4× the automatic
    full-pass batch (32 at 224 px), at most 64. The cropped layers work on small windows, so a
    larger batch amortises their per-call overhead; measured on two cores (MobileNetV2 at
    224 px: 32 patches per call 1.3× faster than 8, ResNet50 indifferent)."""
    if batch_size:
        return int(batch_size)
    return max(1, min(2 * MAX_AUTO_BATCH, 4 * resolve_batch_size(0, shape)))


def occlusion_map(request: ExplainRequest) -> tuple[np.ndarray, dict[str, Any]]:
    """Mean score drop over all patches covering each pixel, float32 (h, w) at model resolution.

    Positive where hiding the pixels lowers the class score, negative where it raises it.
    """
    params = request.params
    bundle = request.bundle
    x = request.x[0]
    h, w = x.shape[:2]
    patch = int(params["patch_size"])
    stride = int(params["stride"]) or patch
    use_logit = params["score"] == "logit"
    filled = bundle.preprocess(fill_pixels(params["fill"], request.image))
    rows, cols = patch_positions(h, patch, stride), patch_positions(w, patch, stride)
    corners = np.array([(r, c) for r in rows for c in cols], np.int32).reshape(-1, 2)
    ph, pw = min(patch, h), min(patch, w)
    scores, probs = bundle.runner.predict(request.x)  # memoised: explain() predicted it already
    reference = (scores if use_logit else probs)[0, request.target]
    started = time.perf_counter()
    plan, fallback = _incremental_plan(request, corners, (ph, pw))
    caches = None
    if plan is not None:
        try:
            caches = plan.prepare(request.x)
        except Exception as exc:  # a model the planner misjudged: the full passes are exact
            plan, fallback = (
                None,
                (
                    f"incremental inference failed to compile for this model: "
                    f"{type(exc).__name__}: {exc}"
                ),
            )
    facts: dict[str, Any] = {}
    if plan is not None:
        mode = "approximate" if plan.threshold is not None else "incremental"
        s, p = plan.run(
            request.x,
            filled,
            batch_size=incremental_batch_size(params["batch_size"], x.shape),
            progress=request.progress,
            message=f"occlusion patches ({mode})",
            caches=caches,
        )
        facts = {
            "occlusion_mode": mode,
            "incremental_flops_ratio": round(plan.flops_ratio, 4),
            "theoretical_speedup": round(1.0 / max(plan.flops_ratio, 1e-6), 2),
        }
        if plan.threshold is not None:
            facts["approximate_threshold"] = plan.threshold
    else:
        s, p = bundle.runner.built_forward(
            occluded_inputs,
            (corners,),
            (
                tf.constant(x, tf.float32),
                tf.constant(filled, tf.float32),
                tf.constant([ph, pw], tf.int32),
            ),
            batch_size=resolve_batch_size(params["batch_size"], x.shape),
            progress=request.progress,
            message="occlusion patches",
        )
        facts = {"occlusion_mode": "full"}
        if fallback is not None:
            facts["fallback_reason"] = fallback
    facts["occlusion_seconds"] = round(time.perf_counter() - started, 4)
    occluded = (s if use_logit else p)[:, request.target].astype(np.float64)
    drops = float(reference) - occluded
    total = box_sums((h, w), corners, (ph, pw), drops)
    count = box_sums((h, w), corners, (ph, pw), np.ones(len(corners)))
    # Counts are exact small integers; the totals' round-off is ~1e-16 relative.
    sensitivity = np.divide(total, count, out=np.zeros_like(total), where=count > 0.5)
    # The explained score's range over the clean and occluded inputs, for explain()'s checks
    # (a probability saturated at 1 in float32 gives every patch a drop of exactly 0).
    observed = [float(min(reference, occluded.min())), float(max(reference, occluded.max()))]
    extras = {"patches": len(corners), **facts, "_diagnostics": {"observed_range": observed}}
    return sensitivity.astype(np.float32), extras


register(
    MethodSpec(
        name="occlusion",
        label="Occlusion",
        family="perturbation",
        description="Hide one patch at a time and measure how much the class probability drops.",
        reference="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, "
        "ECCV 2014",
        reference_url="https://arxiv.org/abs/1311.2901",
        cost="1 + one forward per patch position (batched); incremental mode recomputes only "
        "the region each patch changes",
        tf_explain=tf_explain_engine.OCCLUSION,
        score_param="score",
        perturbation="occluded patch",
        units="drop in the {score} when a patch over the pixel is hidden (mean)",
        effect="largest",
        reports_progress=True,
        fast_params={"patch_size": 8, "stride": 8},
        passes=lambda p, b: (
            1
            + (
                len(
                    patch_positions(
                        b.model_size_for((224, 224))[0],
                        int(p["patch_size"]),
                        int(p["stride"]) or int(p["patch_size"]),
                    )
                )
                * len(
                    patch_positions(
                        b.model_size_for((224, 224))[1],
                        int(p["patch_size"]),
                        int(p["stride"]) or int(p["patch_size"]),
                    )
                )
                if b is not None
                else 0
            ),
            0,
        ),
        params=(
            ParamSpec(
                "patch_size",
                "int",
                16,
                "Side of the square patch, in model-input pixels.",
                low=1,
                high=512,
                step=1,
            ),
            ParamSpec(
                "stride",
                "int",
                8,
                "Step between patches (0 = patch size).",
                low=0,
                high=512,
                step=1,
            ),
            ParamSpec(
                "fill",
                "choice",
                "gray",
                "What the patch shows instead of the image.",
                choices=FILLS,
            ),
            ParamSpec(
                "score",
                "choice",
                "probability",
                "Measure the drop in probability or in the pre-softmax logit.",
                choices=("probability", "logit"),
                advanced=True,
            ),
            ParamSpec(
                "mode",
                "choice",
                "auto",
                "How each occluded image is scored: 'full' re-runs the whole model; "
                "'incremental' reuses the clean image's activations and recomputes only what the "
                "patch can change (the same map, faster); 'approximate' also caps each layer's "
                "recomputed region at the threshold (faster still, not exact); 'auto' is "
                "incremental where the model supports it and it saves work, else full.",
                choices=MODES,
                advanced=True,
            ),
            ParamSpec(
                "threshold",
                "float",
                0.5,
                "Approximate mode only: the largest part of each layer's map (as a fraction of its "
                "side) recomputed per patch; changes beyond it are ignored. 1 = exact.",
                low=0.05,
                high=1.0,
                step=0.05,
                advanced=True,
            ),
            batch_size_param(),
        ),
        compute=occlusion_map,
        formula=r"A(i,j) = \operatorname{mean}_{P \ni (i,j)} \big[p_c(x) - p_c(x_{P\to fill})\big]",
        caveats="Patch size sets the scale of what it can find: objects much smaller than the "
        "patch blur together; much larger ones survive any single patch. The fill itself is "
        "out of distribution for the model.",
    )
)
