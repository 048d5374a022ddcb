"""A method that lives only in the tests, to prove that adding a method is one file.

Importing this module registers ``test_centre_prior``; nothing else in the repository names it.
``tests/test_one_file_method.py`` loads it through ``EXPLAINERS_METHOD_MODULES`` and finds it in
``available_methods()``, the CLI and the dashboard's Compare page.

The map is a centre prior scaled by the target's probability, ``p_c · exp(−d² / (2 (s·r)²))``
with ``d`` the distance of a pixel from the image centre, ``r`` the half-diagonal and ``s`` the
``spread`` parameter: cheap, deterministic, and easy to check by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from explainers.core.specs import ExplainRequest, MethodSpec, ParamSpec, register

NAME = "test_centre_prior"
LABEL = "Test centre prior"


def centre_prior(request: ExplainRequest) -> tuple[np.ndarray, dict[str, Any]]:
    h, w = request.x.shape[1:3]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    distance2 = (rows - (h - 1) / 2) ** 2 + (cols - (w - 1) / 2) ** 2
    radius = float(np.hypot(h, w)) / 2
    spread = float(request.params["spread"]) * radius
    request.report(0.5, "one forward pass")
    _, probs = request.bundle.runner.forward(request.x)
    p = float(probs[0, request.target])
    request.report(1.0, "done")
    return (p * np.exp(-distance2 / (2 * spread**2))).astype(np.float32), {"probability": p}


register(
    MethodSpec(
        name=NAME,
        label=LABEL,
        family="perturbation",
        description="Test double: a centre prior scaled by the class probability.",
        reference="tests/throwaway_method.py",
        reference_url="",
        cost="1 forward",
        passes=lambda p, b: (1, 0),
        params=(
            ParamSpec(
                "spread",
                "float",
                0.5,
                "Width of the prior, a fraction of the half-diagonal.",
                low=0.05,
                high=5.0,
                step=0.05,
            ),
        ),
        compute=centre_prior,
        explains="probability",
        units="probability × centre weight",
        effect="largest",
        reports_progress=True,
        fast_params={"spread": 0.25},
    )
)
