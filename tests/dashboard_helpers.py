"""Small, fast stand-ins for the demo assets, shared by the page and browser tests.

``build_assets(folder)`` writes a tiny CAM-compatible model as ``models/tiny_standin.keras`` (with
``demo_labels.txt``) and two sample images (one with an object mask) under ``samples/``, in the
layout the dashboard expects; ``EXPLAINER_ASSETS_DIR`` then points the app at it. The stand-in's
name is deliberately not a real demo model's, so no test can pass for the demo model while running
the stand-in; being the only model in the folder, it is the dashboard's default. The real demo
models are trained separately; tests/test_shipped_models.py runs them.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

APP = Path(__file__).resolve().parents[1] / "app.py"
CLASS_NAMES = ("circle", "square", "triangle")
MODEL_SIDE = 32
SAMPLE_SIDE = 48
#: The stand-in model's file name under ``models/`` (not a real asset's name).
STANDIN_MODEL = "tiny_standin.keras"


def tiny_cam_model(seed: int = 0):
    """Conv → GAP → Dense softmax on 32×32×3 inputs (CAM applies: a GAP → dense head)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((MODEL_SIDE, MODEL_SIDE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny_cam")


def tiny_flatten_model(seed: int = 1):
    """Conv → pool → Flatten → Dense softmax: no GAP head, so CAM does not apply to it."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((MODEL_SIDE, MODEL_SIDE, 3), name="image")
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.MaxPooling2D(4, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny_flatten")


def tiny_nested_model(seed: int = 2):
    """A functional model whose convolutions live in a nested ``backbone`` sub-model."""
    import keras

    keras.utils.set_random_seed(seed)
    backbone = keras.Sequential(
        [
            keras.Input((MODEL_SIDE, MODEL_SIDE, 3)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem_conv"),
            keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="block_conv"),
        ],
        name="backbone",
    )
    inputs = keras.Input((MODEL_SIDE, MODEL_SIDE, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(inputs))
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny_nested")


def sample_image(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 48×48 RGB picture of one shape on a noisy background, and its bool mask."""
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 120, (SAMPLE_SIDE, SAMPLE_SIDE, 3), dtype=np.uint8)
    picture = Image.fromarray(background)
    mask = Image.new("L", picture.size, 0)
    box = (12, 10, 36, 34)
    for canvas, fill in ((ImageDraw.Draw(picture), (230, 60, 200)), (ImageDraw.Draw(mask), 255)):
        if kind == "circle":
            canvas.ellipse(box, fill=fill)
        else:
            canvas.rectangle(box, fill=fill)
    return np.asarray(picture), np.asarray(mask) > 0


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def build_assets(folder: Path) -> Path:
    """Write the tiny demo assets under ``folder`` and return it."""
    models, samples = folder / "models", folder / "samples"
    models.mkdir(parents=True, exist_ok=True)
    samples.mkdir(parents=True, exist_ok=True)
    tiny_cam_model().save(models / STANDIN_MODEL)
    (models / "demo_labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    for index, kind in enumerate(("circle", "square")):
        rgb, mask = sample_image(kind, seed=index)
        (samples / f"shapes_{kind}_1.png").write_bytes(png_bytes(rgb))
        if kind == "circle":
            mask_rgb = np.repeat(mask[:, :, None], 3, axis=2).astype(np.uint8) * 255
            (samples / f"shapes_{kind}_1_mask.png").write_bytes(png_bytes(mask_rgb))
    return folder


def join_all(threads: list[threading.Thread], timeout: float) -> None:
    """Join every thread within ``timeout`` seconds in all; a thread still running fails (a
    plain ``join(timeout)`` returns silently and would let a hung session pass)."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"still running after {timeout:.0f} s: {stuck}"
