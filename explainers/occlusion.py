"""Occlusion sensitivity (Zeiler & Fergus 2014): slide a patch over the image and record how much
the class probability drops. Patches go through the model in batches built lazily, so memory stays
at one batch whatever the image size."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .registry import ExplainRequest, MethodSpec, ParamSpec, batch_size_param, register

FILLS = ("gray", "black", "mean", "blur")


def patch_positions(size: int, patch: int, stride: int) -> list[int]:
    """Top-left offsets along one axis so that patches of ``patch`` px cover all ``size`` px."""
    patch = min(patch, size)
    positions = list(range(0, size - patch + 1, stride))
    if positions[-1] != size - patch:
        positions.append(size - patch)  # cover the far edge too
    return positions


def _fill_pixels(name: str, image: np.ndarray) -> np.ndarray:
    pixels = image.astype(np.float32)
    if name == "gray":
        return np.full_like(pixels, 127.5)
    if name == "black":
        return np.zeros_like(pixels)
    if name == "mean":
        return np.broadcast_to(pixels.mean(axis=(0, 1)), pixels.shape).copy()
    if name == "blur":
        radius = max(2.0, 0.05 * max(image.shape[:2]))
        return np.asarray(
            Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)), np.float32
        )
    raise ValueError(f"unknown fill {name!r}")


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
    batch_size = int(params["batch_size"])
    use_logit = params["score"] == "logit"
    filled = bundle.preprocess(_fill_pixels(params["fill"], request.image))
    corners = [
        (r, c) for r in patch_positions(h, patch, stride) for c in patch_positions(w, patch, stride)
    ]
    scores, probs = bundle.runner.forward(request.x)
    reference = (scores if use_logit else probs)[0, request.target]
    total = np.zeros((h, w), np.float64)
    count = np.zeros((h, w), np.float64)
    ph, pw = min(patch, h), min(patch, w)
    for start in range(0, len(corners), batch_size):
        part = corners[start : start + batch_size]
        batch = np.repeat(x[None], len(part), axis=0)
        for i, (r, c) in enumerate(part):
            batch[i, r : r + ph, c : c + pw] = filled[r : r + ph, c : c + pw]
        s, p = bundle.runner.forward(batch, batch_size=batch_size)
        drops = reference - (s if use_logit else p)[:, request.target]
        for (r, c), drop in zip(part, drops, strict=True):
            total[r : r + ph, c : c + pw] += drop
            count[r : r + ph, c : c + pw] += 1
        done = start + len(part)
        request.report(done / len(corners), f"occlusion: {done}/{len(corners)} patches")
    sensitivity = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return sensitivity.astype(np.float32), {"patches": len(corners)}


register(
    MethodSpec(
        name="occlusion",
        label="Occlusion",
        family="perturbation",
        description="Hide one patch at a time and measure how much the class probability drops.",
        reference="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, "
        "ECCV 2014",
        reference_url="https://arxiv.org/abs/1311.2901",
        cost="1 + one forward per patch position (batched)",
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
            batch_size_param(),
        ),
        compute=occlusion_map,
        engines=("native", "tf_explain"),
        formula=r"A(i,j) = \operatorname{mean}_{P \ni (i,j)} \big[p_c(x) - p_c(x_{P\to fill})\big]",
        caveats="Patch size sets the scale of what it can find: objects much smaller than the "
        "patch blur together; much larger ones survive any single patch. The fill itself is "
        "out of distribution for the model.",
    )
)
