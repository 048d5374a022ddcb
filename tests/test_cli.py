"""The command line, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from .conftest import ROOT
from .models_zoo import functional_softmax, random_image


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "explainers", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m explainers ARGS`` in this process: the exit code, stdout and stderr. (Only
    ``test_explain_writes_overlay_and_raw_map`` starts ``python -m explainers`` as a user would;
    each such start imports TensorFlow again, about 10 s on two cores.)"""
    from explainers.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_methods_lists_every_method_with_parameters(capsys):
    code, out, err = in_process(capsys, "methods", "--json")
    assert code == 0, err
    methods = {m["name"]: m for m in json.loads(out)}
    assert len(methods) == 15
    steps = next(p for p in methods["integrated_gradients"]["params"] if p["name"] == "steps")
    assert steps["default"] == 32 and steps["low"] == 1


def test_methods_text_prints_bounds_as_typed(capsys):
    """Integer bounds print whole (a seed's range was shown as 0..2.14748e+09)."""
    code, out, err = in_process(capsys, "methods")
    assert code == 0, err
    assert "--param seed=0  (0..2147483647)" in out
    assert "e+0" not in out


def test_explain_writes_overlay_and_raw_map(tmp_path):
    model_path = tmp_path / "model.keras"
    functional_softmax().save(model_path)
    image_path = tmp_path / "image.png"
    Image.fromarray(random_image(40, 50)).save(image_path)
    out, npy = tmp_path / "heat.png", tmp_path / "raw.npy"
    result = run_cli(
        "explain",
        "--model",
        str(model_path),
        "--image",
        str(image_path),
        "--method",
        "occlusion",
        "--target",
        "1",
        "--param",
        "patch_size=8",
        "--param",
        "stride=4",
        "--out",
        str(out),
        "--npy",
        str(npy),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["target"] == 1 and summary["params"]["patch_size"] == 8
    assert summary["model_sha256"] and summary["shape"] == [40, 50]
    assert Image.open(out).size == (50, 40)
    raw = np.load(npy)
    assert raw.shape == (40, 50) and raw.dtype == np.float32
    assert summary["max"] == float(raw.max())


def test_bad_parameter_is_a_one_line_error(tmp_path, capsys):
    model_path = tmp_path / "model.keras"
    functional_softmax().save(model_path)
    image_path = tmp_path / "image.png"
    Image.fromarray(random_image(10, 10)).save(image_path)
    code, _, err = in_process(
        capsys,
        "explain",
        "--model",
        str(model_path),
        "--image",
        str(image_path),
        "--method",
        "integrated_gradients",
        "--param",
        "steps=-3",
        "--out",
        str(tmp_path / "x.png"),
    )
    assert code == 2
    assert "error: steps must be ≥ 1" in err
    assert "Traceback" not in err


def test_audit_runs_resumes_and_reports_flags(tmp_path, capsys):
    from explainers.cli import main

    from .conftest import DEMO_LABELS, SHORTCUT_MODEL

    command = [
        "audit",
        "--model",
        str(SHORTCUT_MODEL),
        "--labels",
        str(DEMO_LABELS),
        "--data",
        "demo:shortcut_half:24:1",
        "--out",
        str(tmp_path / "run"),
        "--chunk-size",
        "10",
    ]
    # In this process (the other CLI tests start `python -m explainers` as a user would; this
    # spares two TensorFlow imports).
    assert main(command) == 0
    first = capsys.readouterr()
    assert "24/24 images" in first.out and "24 computed now" in first.out
    assert "flags (grad_cam):" in first.out
    assert "images/s" in first.err and "left" in first.err  # the progress bar's rate, ETA
    # The same command again resumes: everything is done already.
    assert main([*command, "--quiet"]) == 0
    assert "0 computed now, 24 already done" in capsys.readouterr().out
    assert (tmp_path / "run" / "manifest.json").exists()


def test_audit_rejects_an_unknown_demo_dataset(tmp_path, capsys):
    from explainers.cli import main

    code = main(["audit", "--model", "x.keras", "--data", "demo:nope", "--out", str(tmp_path)])
    assert code == 2
    error = capsys.readouterr().err
    assert "demo:NAME[:N[:SEED]]" in error and "shortcut_half" in error
