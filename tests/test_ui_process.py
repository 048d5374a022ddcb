"""The Streamlit process never imports TensorFlow or Keras: every model runs in a worker process.

A fresh interpreter runs the app with ``AppTest`` on the shipped demo model and visits every page
(computing on each), then reports which heavy modules it imported. Importing TensorFlow cost the
UI process about 4 s of start-up and hundreds of MB, for nothing: the models live in workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
from streamlit.testing.v1 import AppTest

at = AppTest.from_file("app.py", default_timeout=300)
at.run()
problems = []
images = {}
def check(where):
    images[where] = len(at.image)
    for element in [*at.exception, *at.error]:
        problems.append(f"{where}: {element.value}")
check("explain")
for page in ("compare", "robustness", "evaluate", "model", "guide"):
    at.switch_page(f"app_pages/{page}.py").run()
    check(page)
    if page == "evaluate":
        at.button(key="evaluate_sanity_run").click().run()
        check("sanity")
heavy = ("tensorflow", "keras", "tf_explain", "lime", "shap", "skimage", "h5py", "cv2")
print(json.dumps({
    "imported": sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in heavy}),
    "problems": problems,
    "images": images,
}))
"""


def test_the_ui_process_imports_no_tensorflow_on_any_page(tmp_path):
    if not (ROOT / "assets" / "models" / "demo_shapes.keras").exists():
        pytest.skip("the demo assets are not built")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["problems"] == []
    # The pages computed (in workers) and drew their pictures.
    for page in ("explain", "compare", "robustness", "sanity"):
        assert report["images"][page] > 0, report["images"]
    assert report["imported"] == [], f"the UI process imported {report['imported']}"
