"""TF 2.21's oneDNN CPU kernels segfault in the eager filter gradient of some 1×1 stride-2
convolutions (ResNet projection shortcuts). A crash kills the process, so every method runs in a
child process here: the test fails (instead of killing pytest) if any code path hits it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from .conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import explainers
    from tests.models_zoo import resnet_shortcut

    model = resnet_shortcut()
    bundle = explainers.bundle_from_model(model, preprocessing="0_1")
    image = np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    done = []
    for info in explainers.available_methods(bundle):
        params = {"smoothgrad": {"n_samples": 4}, "integrated_gradients": {"steps": 8}}
        result = explainers.explain(bundle, image, info.name, **params.get(info.name, {}))
        assert np.isfinite(result.attribution).all(), info.name
        done.append(info.name)
    for layer in bundle.spatial_layers:
        explainers.explain(bundle, image, "grad_cam", layer=layer)
    print("OK", len(done))
    """
)


def test_no_method_crashes_on_a_projection_shortcut():
    # The reported crash used 8 input channels; an image model takes 3, same 60×60 geometry.
    script = SCRIPT.replace("resnet_shortcut()", "resnet_shortcut(input_shape=(60, 60, 3))")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert "OK 15" in result.stdout
