"""Train the demo CNNs the dashboard embeds, from fixed seeds, and write their assets.

Run from the repository root::

    python assets/make_demo_models.py           # full run (about 30 min on 2 CPU cores)
    python assets/make_demo_models.py --quick   # small smoke run, writes to a temporary folder
    python assets/make_demo_models.py --story   # only the training story (below): keeps the
                                                # shipped demo_shapes.keras
    python assets/make_demo_models.py --tasks   # only the scene models (segmentation and
                                                # multi-label, below): keeps everything else

Outputs (full run):

- ``assets/models/demo_shapes.keras``: the honest model, trained on cluttered shape images.
- ``assets/models/demo_shortcut.keras``: the "Clever Hans" model, trained on shortcut images: a
  corner marker whose colour encodes the label, on images whose shape also gives the label. Both
  cues are perfect; the model takes the marker (the easier one) and ignores the shapes. It is
  trained with ``explainers.callbacks.ExplanationCallback`` on, which records Grad-CAM on 8 fixed
  images after every epoch into ``assets/runs/shortcut/``.
- ``assets/models/demo_fixed.keras``: the same architecture trained on the same shortcut images
  with Right for the Right Reasons (``explainers.training.ReasonTrainer``: the marker masks as
  what must not matter); its run in ``assets/runs/fixed/``.
- ``assets/models/demo_labels.txt``: one class name per line.
- ``assets/models/demo_segmentation.keras``: a U-Net-lite that labels every pixel of a *scene*
  (1-3 non-overlapping shapes of distinct classes, ``generate_scene_dataset``) as background or
  one of the four shapes; ``demo_segmentation_labels.txt`` names its 5 output channels.
- ``assets/models/demo_multilabel.keras``: ``build_model``'s network with 4 independent sigmoid
  outputs, trained on the same scenes for the set of classes present; labels in
  ``demo_multilabel_labels.txt``.
- ``assets/models/demo_models.json``: metrics, seeds, dataset sizes, epochs, timings, versions.
- ``assets/samples/*.png``: sample images with their object masks (and marker masks), and
  ``scenes_<i>.png`` with their label maps ``scenes_<i>_labels.png`` (8-bit grey, 0..4).

``--story`` retrains only ``demo_shortcut`` and ``demo_fixed`` (with their runs, the samples and
the JSON); ``demo_shapes.keras`` is loaded, not retrained. ``--tasks`` trains only the two scene
models and writes their label files, their ``scenes_*`` samples and the ``tasks`` entry of the
JSON (merged into the existing file).

All models take ``(96, 96, 3)`` float32 images scaled to [0, 1] (``image / 255``). The
classifiers end in ``last_conv`` (12 x 12 x 128, ReLU) -> ``gap`` -> ``dropout`` -> their dense
head (``predictions``, softmax; ``label_logits`` -> ``labels``, sigmoid, for the multi-label one),
so CAM applies to them; the segmentation model ends in ``seg_logits`` -> ``segmentation``
(per-pixel softmax).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

# Make ``explainers`` importable when run as ``python assets/make_demo_models.py``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import tensorflow as tf

import explainers
from explainers.callbacks import ExplanationCallback
from explainers.io.demo_data import (
    CLASS_NAMES,
    SEGMENTATION_CLASS_NAMES,
    ShapeSample,
    generate_dataset,
    generate_sample,
    generate_scene,
    generate_scene_dataset,
)
from explainers.training import ReasonTrainer

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 96
#: The shortcut training images: the drawn shape is the label's too (both cues are perfect, and
#: the model still takes the marker). Until 2026-12 it was 0.5 (half of the shapes another
#: class's), which left nothing a marker-free model could learn from: see assets/models/README.md.
SHAPE_AGREEMENT = 1.0
#: The "shortcut" test sets: the shape agrees with the marker half the time, so the images where
#: they disagree show which cue a model follows.
PROBE_SHAPE_AGREEMENT = 0.5

SEEDS = {
    "honest_train": 0,
    "honest_test": 1,
    "shortcut_train": 2,
    "shortcut_test": 3,
    "honest_samples": 100,
    "shortcut_samples": 200,
    "keras_honest": 10,
    "keras_shortcut": 20,
    "keras_fixed": 30,
    "callback_images": 300,
}

FULL = {
    "n_train_honest": 12000,
    "n_train_shortcut": 16000,
    "n_test": 2000,
    "epochs_honest": 12,
    "epochs_shortcut": 4,
}
QUICK = {
    "n_train_honest": 400,
    "n_train_shortcut": 400,
    "n_test": 200,
    "epochs_honest": 1,
    "epochs_shortcut": 1,
}

#: The training story: the shortcut recipe re-run with ExplanationCallback, and the fixed model.
STORY = {
    "callback_images": 8,
    "map_size": 32,
    "epochs_fixed": 20,
    "penalty": "rrr",
    "classes": "label",
    "penalty_mode": "batch_constant",
    "balance": 1.0,
}
QUICK_STORY = {**STORY, "epochs_fixed": 1}
#: Images per test set on which Grad-CAM's marker-versus-shape mass is measured.
N_GRAD_CAM = 400

BATCH_SIZE = 32
VALIDATION_SPLIT = 0.1
MODEL_NAMES = ("demo_shapes", "demo_shortcut", "demo_fixed")
LEARNING_RATE = 2e-3


def build_model(name: str, n_classes: int = len(CLASS_NAMES)) -> keras.Model:
    """Small CAM-compatible CNN: 96 x 96 x 3 -> ``last_conv`` (12 x 12 x 128) -> GAP -> dense.

    Down-sampling is done by 4 x 4 stride-2 convolutions (faster to train on a CPU than stride-1
    convolutions plus max pooling, and aligned with the image grid, see ``down``).  There is no
    1 x 1 stride-2 convolution: TF 2.21's oneDNN path crashes on its filter gradient.
    """
    layers = keras.layers

    def down(x: keras.KerasTensor, filters: int, index: int) -> keras.KerasTensor:
        # A 4 x 4 kernel with stride 2 pads symmetrically (1 px each side) under "same", so
        # output cell i is centred on input 2i + 0.5.  (3 x 3 stride 2 centres it on 2i + 1
        # and, compounded over three layers, shifts every 12 x 12 map 3.5 px up-left.)
        x = layers.Conv2D(
            filters, 4, strides=2, padding="same", use_bias=False, name=f"conv{index}"
        )(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{index}")(x)
        return layers.ReLU(name=f"relu{index}")(x)

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    x = down(inputs, 16, 1)  # 48 x 48
    x = down(x, 32, 2)  # 24 x 24
    x = down(x, 64, 3)  # 12 x 12: cell k is centred on input pixel 8k + 3.5
    x = layers.Conv2D(128, 3, padding="same", activation="relu", name="last_conv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name=name)

    # Start the first kernels zero-mean over space: they then respond to edges rather than to
    # each image's (random) background colour, which shortens the initial plateau a lot.
    stem = model.get_layer("conv1")
    kernel = stem.kernel.numpy()
    stem.kernel.assign(2.0 * (kernel - kernel.mean(axis=(0, 1), keepdims=True)))
    return model


def to_input(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> float32 in [0, 1], the models' input convention."""
    return images.astype(np.float32) / 255.0


def _batches(images: np.ndarray, labels: np.ndarray, seed: int, augment: bool) -> tf.data.Dataset:
    """Shuffled float batches; ``augment`` applies the 8 flips/transposes of the square.

    The four shape classes are closed under these symmetries, and so is the honest data's
    distribution (backgrounds and distractors are isotropic), so they multiply the data for free.
    They are *not* used for the shortcut data: they would move the corner marker.
    """

    def prepare(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(x, tf.float32) / 255.0
        if augment:
            x = tf.image.random_flip_left_right(x, seed=seed)
            x = tf.image.random_flip_up_down(x, seed=seed + 1)
            transpose = tf.random.uniform([tf.shape(x)[0], 1, 1, 1], seed=seed + 2) < 0.5
            x = tf.where(transpose, tf.transpose(x, [0, 2, 1, 3]), x)
        return x, y

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(BATCH_SIZE).map(prepare).prefetch(2)


def train(
    name: str,
    data: dict[str, np.ndarray],
    epochs: int,
    seed: int,
    *,
    augment: bool,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> tuple[keras.Model, dict[str, object]]:
    """Train a fresh model on ``data`` and return it (uncompiled copy) with its training log.

    The last ``VALIDATION_SPLIT`` of the (already shuffled) images are held out for validation.
    """
    keras.utils.set_random_seed(seed)
    model = build_model(name)
    n_val = round(len(data["labels"]) * VALIDATION_SPLIT)
    n_fit = len(data["labels"]) - n_val
    train_batches = _batches(data["images"][:n_fit], data["labels"][:n_fit], seed, augment)
    validation = (to_input(data["images"][n_fit:]), data["labels"][n_fit:])
    steps = int(np.ceil(n_fit / BATCH_SIZE)) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=max(steps, 1))
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(
        train_batches,
        epochs=epochs,
        validation_data=validation,
        shuffle=False,
        verbose=2,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - start
    # Rebuild on the same layers without the optimizer, so the saved file stays small.
    exported = keras.Model(model.inputs, model.outputs, name=name)
    log = {
        "epochs": epochs,
        "augmentation": "flips and transposes" if augment else "none",
        "train_seconds": round(seconds, 1),
        "final_train_accuracy": round(float(history.history["accuracy"][-1]), 4),
        "final_val_accuracy": round(float(history.history["val_accuracy"][-1]), 4),
        "val_accuracy_per_epoch": [round(float(v), 4) for v in history.history["val_accuracy"]],
    }
    return exported, log


def predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Softmax probabilities ``(N, n_classes)`` for uint8 images."""
    return model.predict(to_input(images), batch_size=256, verbose=0)


def evaluate(model: keras.Model, sets: dict[str, dict[str, np.ndarray]]) -> dict[str, object]:
    """Accuracy against the label (= marker class) and against the drawn shape, per test set."""
    report: dict[str, object] = {}
    for set_name, data in sets.items():
        predicted = predict(model, data["images"]).argmax(axis=1)
        entry = {
            "accuracy": round(float(np.mean(predicted == data["labels"])), 4),
            "shape_accuracy": round(float(np.mean(predicted == data["shape_labels"])), 4),
        }
        conflict = data["labels"] != data["shape_labels"]
        if conflict.any():
            # On images whose marker and shape disagree: who does the model follow?
            entry["conflict_n"] = int(conflict.sum())
            entry["conflict_follows_marker"] = round(
                float(np.mean(predicted[conflict] == data["labels"][conflict])), 4
            )
            entry["conflict_follows_shape"] = round(
                float(np.mean(predicted[conflict] == data["shape_labels"][conflict])), 4
            )
        report[set_name] = entry
    return report


def save_png(array: np.ndarray, path: Path) -> None:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path, optimize=True)


def write_samples(
    honest: keras.Model, shortcut: keras.Model, folder: Path, per_class: int = 2
) -> list[dict[str, object]]:
    """Write confidently and correctly classified sample images with their masks.

    Honest samples ``shapes_<class>_<k>.png`` (``<k>`` counts from 0) with ``_mask.png``: no
    marker, classified by the honest model.  Shortcut samples ``shortcut_<class>_0.png`` with
    ``_mask.png`` (object) and ``_marker.png`` (marker), where ``<class>`` is the label the marker
    encodes: one whose shape agrees with the marker and one whose shape is another class (the
    shortcut model follows the marker, the honest model the shape).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for pattern in ("shapes_*.png", "shortcut_*.png"):  # leave any other files alone
        for old in folder.glob(pattern):
            old.unlink()
    manifest: list[dict[str, object]] = []

    rng = np.random.default_rng(SEEDS["honest_samples"])
    for label, class_name in enumerate(CLASS_NAMES):
        candidates = [generate_sample(rng, size=IMAGE_SIZE, label=label) for _ in range(64)]
        p_honest, p_shortcut = _probabilities(honest, shortcut, candidates)
        score = np.where(p_honest.argmax(1) == label, p_honest[:, label], -1.0)
        for k, index in enumerate(_first_good(score, per_class)):
            stem = f"shapes_{class_name}_{k}"
            save_png(candidates[index].image, folder / f"{stem}.png")
            save_png(candidates[index].mask, folder / f"{stem}_mask.png")
            manifest.append(
                _sample_entry(stem, candidates[index], p_honest[index], p_shortcut[index])
            )

    rng = np.random.default_rng(SEEDS["shortcut_samples"])
    # (marker class, shape class): a circle with its own marker; a star with the triangle marker.
    for marker_label, shape_label in ((0, 0), (2, 3)):
        candidates = [
            generate_sample(
                rng, size=IMAGE_SIZE, label=shape_label, marker=True, marker_label=marker_label
            )
            for _ in range(64)
        ]
        p_honest, p_shortcut = _probabilities(honest, shortcut, candidates)
        both_right = (p_shortcut.argmax(1) == marker_label) & (p_honest.argmax(1) == shape_label)
        score = np.where(both_right, p_shortcut[:, marker_label], -1.0)
        (index,) = _first_good(score, 1)
        stem = f"shortcut_{CLASS_NAMES[marker_label]}_0"
        save_png(candidates[index].image, folder / f"{stem}.png")
        save_png(candidates[index].mask, folder / f"{stem}_mask.png")
        save_png(candidates[index].marker_mask, folder / f"{stem}_marker.png")
        manifest.append(_sample_entry(stem, candidates[index], p_honest[index], p_shortcut[index]))
    return manifest


def _probabilities(
    honest: keras.Model, shortcut: keras.Model, samples: list[ShapeSample]
) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([sample.image for sample in samples])
    return predict(honest, images), predict(shortcut, images)


def _first_good(score: np.ndarray, count: int, good: float = 0.9) -> list[int]:
    """Indices of the first ``count`` scores >= ``good``, topped up with the best of the rest."""
    chosen = [int(i) for i in np.flatnonzero(score >= good)[:count]]
    if len(chosen) < count:
        print(f"warning: only {len(chosen)} of {count} candidates reached score {good}")
        rest = [int(i) for i in np.argsort(-score, kind="stable") if i not in chosen]
        chosen += rest[: count - len(chosen)]
    return chosen


def _sample_entry(
    stem: str, sample: ShapeSample, p_honest: np.ndarray, p_shortcut: np.ndarray
) -> dict[str, object]:
    return {
        "file": f"{stem}.png",
        "shape": CLASS_NAMES[sample.label],
        "marker": None if sample.marker_label is None else CLASS_NAMES[sample.marker_label],
        "demo_shapes_prediction": CLASS_NAMES[int(p_honest.argmax())],
        "demo_shapes_probability": round(float(p_honest.max()), 4),
        "demo_shortcut_prediction": CLASS_NAMES[int(p_shortcut.argmax())],
        "demo_shortcut_probability": round(float(p_shortcut.max()), 4),
    }


# ------------------------------------------------------------------------------------------------
# The training story: explanations during training, and a model trained for the right reasons
# ------------------------------------------------------------------------------------------------
def story_images() -> dict[str, np.ndarray]:
    """The fixed images the callback explains every epoch: shortcut images (marker = label)."""
    return generate_dataset(
        STORY["callback_images"],
        SEEDS["callback_images"],
        size=IMAGE_SIZE,
        variant="shortcut",
        shape_agreement=SHAPE_AGREEMENT,
    )


def explanation_callback(
    images: dict[str, np.ndarray], run_dir: Path, model: keras.Model | None = None
) -> ExplanationCallback:
    return ExplanationCallback(
        images["images"],
        methods=("grad_cam",),
        run_dir=run_dir,
        labels=images["labels"],
        masks={"object": images["masks"], "marker": images["marker_masks"]},
        preprocessing="0_1",
        class_names=CLASS_NAMES,
        map_size=STORY["map_size"],
        model=model,
        before_training=True,
    )


def train_shortcut(
    data: dict[str, np.ndarray], epochs: int, runs_dir: Path
) -> tuple[keras.Model, dict[str, object]]:
    """The shortcut model, trained with the callback on (Grad-CAM on the story images after every
    epoch, into ``runs/shortcut``)."""
    shutil.rmtree(runs_dir / "shortcut", ignore_errors=True)
    callback = explanation_callback(story_images(), runs_dir / "shortcut")
    model, log = train(
        "demo_shortcut", data, epochs, SEEDS["keras_shortcut"], augment=False, callbacks=[callback]
    )
    log["callback_seconds_per_epoch"] = [round(s, 3) for s in callback.epoch_seconds]
    log["callback_failures"] = len(callback.failures)
    log.update(run_attention(runs_dir / "shortcut"))
    return model, log


def run_attention(run_dir: Path) -> dict[str, object]:
    """Per logged epoch, the mean share of positive Grad-CAM mass on the marker and on the shape
    over the run's images (its table's ``grad_cam__energy_in_marker`` / ``_in_mask``)."""
    from explainers.callbacks import open_training_run

    table = open_training_run(run_dir).table.to_pydict()
    epochs = sorted(set(table["epoch"]))
    out: dict[str, list[float]] = {"logged_epochs": epochs}
    for name, column in (("marker", "energy_in_marker"), ("object", "energy_in_mask")):
        values = np.asarray(table[f"grad_cam__{column}"], np.float64)
        out[f"grad_cam_energy_in_{name}_per_epoch"] = [
            round(float(np.nanmean(values[np.asarray(table["epoch"]) == e])), 4) for e in epochs
        ]
    return out


def _masked_batches(data: dict[str, np.ndarray], seed: int) -> tf.data.Dataset:
    """Shuffled ``(x, y, marker mask)`` batches with the 8 flips/transposes of the square, applied
    to the image and its mask together (the marker moves to another corner; its mask with it)."""

    def prepare(x: tf.Tensor, y: tf.Tensor, m: tf.Tensor) -> tuple[tf.Tensor, ...]:
        both = tf.concat([tf.cast(x, tf.float32) / 255.0, tf.cast(m, tf.float32)[..., None]], -1)
        both = tf.image.random_flip_left_right(both, seed=seed)
        both = tf.image.random_flip_up_down(both, seed=seed + 1)
        transpose = tf.random.uniform([tf.shape(both)[0], 1, 1, 1], seed=seed + 2) < 0.5
        both = tf.where(transpose, tf.transpose(both, [0, 2, 1, 3]), both)
        return both[..., :3], y, both[..., 3]

    dataset = tf.data.Dataset.from_tensor_slices(
        (data["images"], data["labels"], data["marker_masks"])
    )
    dataset = dataset.shuffle(len(data["labels"]), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(BATCH_SIZE).map(prepare).prefetch(2)


def train_fixed(
    data: dict[str, np.ndarray], epochs: int, runs_dir: Path
) -> tuple[keras.Model, dict[str, object]]:
    """``build_model`` trained on the shortcut data with Right for the Right Reasons: cross-entropy
    plus λ‖marker mask ⊙ ∂ log p_y/∂x‖² (STORY's ``classes``: the label's log-probability; the
    paper's Σ_k log p_k has a blind spot, see ReasonTrainer), the penalty's pass normalising by
    each batch's BatchNorm statistics held constant (STORY's ``penalty_mode``), λ measured on the
    first batches so that both terms are equal there (Ross et al. 2017, §3); flips and
    transposes move the marker to any corner, with its mask. The callback records Grad-CAM every
    epoch into ``runs/fixed``."""
    shutil.rmtree(runs_dir / "fixed", ignore_errors=True)
    seed = SEEDS["keras_fixed"]
    keras.utils.set_random_seed(seed)
    model = build_model("demo_fixed")
    n_val = round(len(data["labels"]) * VALIDATION_SPLIT)
    n_fit = len(data["labels"]) - n_val
    fit_part = {k: v[:n_fit] for k, v in data.items()}
    validation = (
        to_input(data["images"][n_fit:]),
        data["labels"][n_fit:],
        data["marker_masks"][n_fit:].astype(np.float32),
    )
    steps = int(np.ceil(n_fit / BATCH_SIZE)) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=max(steps, 1))
    trainer = ReasonTrainer(
        model,
        STORY["penalty"],
        lam="auto",
        balance=STORY["balance"],
        classes=STORY["classes"],
        penalty_mode=STORY["penalty_mode"],
    )
    trainer.compile(optimizer=keras.optimizers.Adam(schedule), metrics=["accuracy"])
    callback = explanation_callback(story_images(), runs_dir / "fixed", model=model)
    start = time.perf_counter()
    history = trainer.fit(
        _masked_batches(fit_part, seed),
        epochs=epochs,
        validation_data=validation,
        batch_size=BATCH_SIZE,
        shuffle=False,
        verbose=2,
        callbacks=[callback],
    )
    seconds = time.perf_counter() - start
    exported = keras.Model(model.inputs, model.outputs, name="demo_fixed")
    logs = history.history
    log = {
        "epochs": epochs,
        "augmentation": "flips and transposes of image and mask together",
        "penalty": STORY["penalty"],
        "classes": STORY["classes"],
        "penalty_mode": STORY["penalty_mode"],
        "calibration": trainer.calibration,
        "lambda": trainer.lam,
        "train_seconds": round(seconds, 1),
        "callback_seconds_per_epoch": [round(s, 3) for s in callback.epoch_seconds],
        "final_train_accuracy": round(float(logs["accuracy"][-1]), 4),
        "final_val_accuracy": round(float(logs["val_accuracy"][-1]), 4),
        "val_accuracy_per_epoch": [round(float(v), 4) for v in logs["val_accuracy"]],
        "cross_entropy_per_epoch": [round(float(v), 4) for v in logs["cross_entropy"]],
        "penalty_per_epoch": [float(f"{v:.4g}") for v in logs["penalty"]],
    }
    log.update(run_attention(runs_dir / "fixed"))
    return exported, log


def grad_cam_marker_below_shape(model: keras.Model, data: dict[str, np.ndarray]) -> float:
    """Share of images whose positive Grad-CAM mass (for the label) on the marker is below the
    mass on the shape (the definition of tests/test_demo.py, inverted)."""
    bundle = explainers.bundle_from_model(model, preprocessing="0_1", labels=list(CLASS_NAMES))
    below = []
    for image, mask, marker, label in zip(
        data["images"], data["masks"], data["marker_masks"], data["labels"], strict=True
    ):
        result = explainers.explain(bundle, image, "grad_cam", target=int(label))
        positive = np.maximum(result.attribution, 0)
        below.append(bool(positive[marker].sum() < positive[mask].sum()))
    return round(float(np.mean(below)), 4)


# ------------------------------------------------------------------------------------------------
# Beyond one-class classification: segmentation and multi-label models, trained on scenes
# ------------------------------------------------------------------------------------------------
#: Seeds of the scene models (none shared with ``SEEDS``' data seeds).
TASK_SEEDS = {
    "scenes_train": 4,
    "scenes_test": 5,
    "scenes_samples": 400,
    "keras_segmentation": 40,
    "keras_multilabel": 50,
}
TASKS_FULL = {"n_train": 12000, "n_test": 1000, "epochs_segmentation": 6, "epochs_multilabel": 20}
TASKS_QUICK = {"n_train": 320, "n_test": 100, "epochs_segmentation": 1, "epochs_multilabel": 1}
#: Shapes per training and test scene (inclusive), and per sample scene.
SCENE_SHAPES = (1, 3)
SAMPLE_SCENE_SHAPES = (2, 3)
N_SCENE_SAMPLES = 6
TASK_MODEL_NAMES = ("demo_segmentation", "demo_multilabel")


def build_segmentation_model(name: str = "demo_segmentation") -> keras.Model:
    """U-Net-lite: 96 x 96 x 3 -> per-pixel softmax over ``SEGMENTATION_CLASS_NAMES`` (5).

    Encoder: ``build_model``'s three 4 x 4 stride-2 stages (48, 24, 12 px), each followed by a
    3 x 3 convolution.  Decoder: bilinear ``UpSampling2D`` x 2, concatenation with the encoder's
    map of that size (the input image itself at 96 px) and a 3 x 3 convolution, three times.  It
    ends in ``seg_logits`` (1 x 1 convolution, linear) -> ``segmentation`` (softmax).
    """
    layers = keras.layers

    def conv(x: keras.KerasTensor, filters: int, tag: str, kernel: int = 3, strides: int = 1):
        x = layers.Conv2D(
            filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{tag}_conv"
        )(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{tag}_bn")(x)
        return layers.ReLU(name=f"{tag}_relu")(x)

    def up(x: keras.KerasTensor, skip: keras.KerasTensor, filters: int, tag: str):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{tag}_up")(x)
        x = layers.Concatenate(name=f"{tag}_concat")([x, skip])
        return conv(x, filters, tag)

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    e1 = conv(conv(inputs, 16, "down1", 4, 2), 16, "enc1")  # 48 x 48
    e2 = conv(conv(e1, 32, "down2", 4, 2), 32, "enc2")  # 24 x 24
    e3 = conv(conv(e2, 64, "down3", 4, 2), 64, "enc3")  # 12 x 12
    x = up(e3, e2, 32, "dec2")  # 24 x 24
    x = up(x, e1, 16, "dec1")  # 48 x 48
    x = up(x, inputs, 16, "dec0")  # 96 x 96
    x = layers.Conv2D(len(SEGMENTATION_CLASS_NAMES), 1, name="seg_logits")(x)
    outputs = layers.Activation("softmax", name="segmentation")(x)
    model = keras.Model(inputs, outputs, name=name)
    _zero_mean_stem(model.get_layer("down1_conv"))
    return model


def build_multilabel_model(name: str = "demo_multilabel") -> keras.Model:
    """``build_model``'s network with a multi-label head: ``last_conv`` (12 x 12 x 128) -> ``gap``
    -> ``dropout`` -> ``label_logits`` (Dense 4, linear) -> ``labels`` (sigmoid)."""
    layers = keras.layers
    backbone = build_model(name)
    x = backbone.get_layer("dropout").output
    x = layers.Dense(len(CLASS_NAMES), name="label_logits")(x)
    outputs = layers.Activation("sigmoid", name="labels")(x)
    return keras.Model(backbone.inputs, outputs, name=name)


def _zero_mean_stem(layer: keras.layers.Layer) -> None:
    """Make the first kernels zero-mean over space (as in ``build_model``)."""
    kernel = layer.kernel.numpy()
    layer.kernel.assign(2.0 * (kernel - kernel.mean(axis=(0, 1), keepdims=True)))


def _segmentation_batches(images: np.ndarray, label_maps: np.ndarray, seed: int) -> tf.data.Dataset:
    """Shuffled ``(x, label map)`` batches with the 8 flips/transposes of the square applied to
    the image and its label map together."""

    def prepare(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        both = tf.concat([tf.cast(x, tf.float32) / 255.0, tf.cast(y, tf.float32)[..., None]], -1)
        both = tf.image.random_flip_left_right(both, seed=seed)
        both = tf.image.random_flip_up_down(both, seed=seed + 1)
        transpose = tf.random.uniform([tf.shape(both)[0], 1, 1, 1], seed=seed + 2) < 0.5
        both = tf.where(transpose, tf.transpose(both, [0, 2, 1, 3]), both)
        return both[..., :3], tf.cast(tf.round(both[..., 3]), tf.int32)

    dataset = tf.data.Dataset.from_tensor_slices((images, label_maps))
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(BATCH_SIZE).map(prepare).prefetch(2)


def train_task(
    kind: str, data: dict[str, np.ndarray], epochs: int, seed: int
) -> tuple[keras.Model, dict[str, object]]:
    """Train ``demo_segmentation`` (``kind="segmentation"``: per-pixel cross-entropy on the label
    maps) or ``demo_multilabel`` (``"multilabel"``: binary cross-entropy on the multi-hot
    vectors) on the scenes ``data``, with flips and transposes; the last ``VALIDATION_SPLIT``
    held out.  Returns the uncompiled model and its training log."""
    keras.utils.set_random_seed(seed)
    n_val = round(len(data["images"]) * VALIDATION_SPLIT)
    n_fit = len(data["images"]) - n_val
    images = data["images"]
    if kind == "segmentation":
        model = build_segmentation_model()
        targets = data["label_maps"]
        batches = _segmentation_batches(images[:n_fit], targets[:n_fit], seed)
        loss = "sparse_categorical_crossentropy"
        metrics = [
            keras.metrics.MeanIoU(
                len(SEGMENTATION_CLASS_NAMES), sparse_y_pred=False, name="mean_iou"
            ),
            "accuracy",
        ]
        tracked = ("mean_iou", "accuracy")
    elif kind == "multilabel":
        model = build_multilabel_model()
        targets = data["multi_hot"]
        batches = _batches(images[:n_fit], targets[:n_fit], seed, augment=True)
        loss = "binary_crossentropy"
        metrics = [
            keras.metrics.AUC(
                curve="PR", multi_label=True, num_labels=len(CLASS_NAMES), name="pr_auc"
            ),
            keras.metrics.BinaryAccuracy(name="binary_accuracy"),
        ]
        tracked = ("pr_auc", "binary_accuracy")
    else:
        raise ValueError(f"unknown task {kind!r}")
    validation = (to_input(images[n_fit:]), targets[n_fit:])
    steps = int(np.ceil(n_fit / BATCH_SIZE)) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=max(steps, 1))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=metrics)
    start = time.perf_counter()
    history = model.fit(
        batches, epochs=epochs, validation_data=validation, shuffle=False, verbose=2
    )
    seconds = time.perf_counter() - start
    exported = keras.Model(model.inputs, model.outputs, name=model.name)
    logs = history.history
    log: dict[str, object] = {
        "epochs": epochs,
        "loss": loss,
        "augmentation": "flips and transposes"
        + (" of image and label map together" if kind == "segmentation" else ""),
        "train_seconds": round(seconds, 1),
        "val_loss_per_epoch": [round(float(v), 4) for v in logs["val_loss"]],
    }
    for metric in tracked:
        log[f"final_train_{metric}"] = round(float(logs[metric][-1]), 4)
        log[f"val_{metric}_per_epoch"] = [round(float(v), 4) for v in logs[f"val_{metric}"]]
    return exported, log


def segmentation_iou(predicted: np.ndarray, truth: np.ndarray) -> dict[str, object]:
    """Per-class IoU (pixels of all images pooled), their mean, and the mean over shape classes,
    for ``(N, H, W)`` integer maps."""
    iou = {}
    for k, name in enumerate(SEGMENTATION_CLASS_NAMES):
        p, t = predicted == k, truth == k
        union = np.logical_or(p, t).sum()
        iou[name] = float(np.logical_and(p, t).sum() / union) if union else float("nan")
    values = list(iou.values())
    return {
        "iou": {k: round(v, 4) for k, v in iou.items()},
        "mean_iou": round(float(np.nanmean(values)), 4),
        "mean_iou_shapes": round(float(np.nanmean(values[1:])), 4),
        "pixel_accuracy": round(float(np.mean(predicted == truth)), 4),
    }


def multilabel_ap(probabilities: np.ndarray, multi_hot: np.ndarray) -> dict[str, object]:
    """Per-label average precision, its macro mean, and exact-match / per-label accuracy at 0.5."""
    from sklearn.metrics import average_precision_score

    ap = average_precision_score(multi_hot, probabilities, average=None)
    decided = probabilities >= 0.5
    return {
        "average_precision": {n: round(float(v), 4) for n, v in zip(CLASS_NAMES, ap, strict=True)},
        "mean_average_precision": round(float(np.mean(ap)), 4),
        "exact_match_at_0.5": round(float(np.mean(np.all(decided == (multi_hot > 0.5), 1))), 4),
        "label_accuracy_at_0.5": round(float(np.mean(decided == (multi_hot > 0.5))), 4),
    }


def evaluate_tasks(
    segmentation: keras.Model, multilabel: keras.Model, test: dict[str, np.ndarray]
) -> dict[str, dict[str, object]]:
    predicted = predict(segmentation, test["images"]).argmax(-1)
    probabilities = predict(multilabel, test["images"])
    return {
        "demo_segmentation": segmentation_iou(predicted, test["label_maps"]),
        "demo_multilabel": multilabel_ap(probabilities, test["multi_hot"]),
    }


def write_scene_samples(
    segmentation: keras.Model, multilabel: keras.Model, folder: Path
) -> list[dict[str, object]]:
    """Write ``N_SCENE_SAMPLES`` scenes with 2-3 shapes on which both models are right:
    ``scenes_<i>.png`` and ``scenes_<i>_labels.png`` (the label map, 8-bit grey, values 0..4).

    Right means: the multi-label model's set of labels at 0.5 is the scene's, no absent class is
    predicted by the segmentation model, and every shape present has a segmentation IoU of at
    least 0.9 (the first such candidates in drawing order).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("scenes_*.png"):
        old.unlink()
    rng = np.random.default_rng(TASK_SEEDS["scenes_samples"])
    candidates = [
        generate_scene(rng, size=IMAGE_SIZE, n_shapes=SAMPLE_SCENE_SHAPES) for _ in range(64)
    ]
    images = np.stack([c.image for c in candidates])
    maps = predict(segmentation, images).argmax(-1)
    probabilities = predict(multilabel, images)
    score = np.full(len(candidates), -1.0)
    for i, scene in enumerate(candidates):
        present = [label + 1 for label in scene.shape_labels]
        ious = [
            np.logical_and(maps[i] == k, scene.label_map == k).sum()
            / np.logical_or(maps[i] == k, scene.label_map == k).sum()
            for k in present
        ]
        spurious = set(np.unique(maps[i])) - {0, *present}
        labels_right = np.array_equal(probabilities[i] >= 0.5, scene.multi_hot > 0.5)
        if labels_right and not spurious:
            score[i] = min(ious)
    manifest = []
    for i, index in enumerate(_first_good(score, N_SCENE_SAMPLES)):
        scene = candidates[index]
        save_png(scene.image, folder / f"scenes_{i}.png")
        save_png(scene.label_map, folder / f"scenes_{i}_labels.png")
        metrics = segmentation_iou(maps[index][None], scene.label_map[None])
        manifest.append(
            {
                "file": f"scenes_{i}.png",
                "labels_file": f"scenes_{i}_labels.png",
                "shapes": [CLASS_NAMES[label] for label in sorted(scene.shape_labels)],
                "demo_multilabel_probabilities": {
                    name: round(float(p), 4)
                    for name, p in zip(CLASS_NAMES, probabilities[index], strict=True)
                },
                "demo_segmentation_iou": {
                    CLASS_NAMES[label]: metrics["iou"][CLASS_NAMES[label]]
                    for label in sorted(scene.shape_labels)
                },
            }
        )
    return manifest


def run_tasks(config: dict[str, int], models_dir: Path, samples_dir: Path) -> dict[str, object]:
    """Train, save and evaluate ``demo_segmentation`` and ``demo_multilabel``, write their label
    files and samples; returns their ``tasks`` entry of ``demo_models.json``."""
    start = time.perf_counter()
    train_data = generate_scene_dataset(
        config["n_train"], seed=TASK_SEEDS["scenes_train"], size=IMAGE_SIZE, n_shapes=SCENE_SHAPES
    )
    test = generate_scene_dataset(
        config["n_test"], seed=TASK_SEEDS["scenes_test"], size=IMAGE_SIZE, n_shapes=SCENE_SHAPES
    )
    data_seconds = time.perf_counter() - start
    print(f"generated scenes in {data_seconds:.1f} s", flush=True)

    paths = {name: models_dir / f"{name}.keras" for name in TASK_MODEL_NAMES}
    logs = {}
    for name, kind, seed_name in (
        ("demo_segmentation", "segmentation", "keras_segmentation"),
        ("demo_multilabel", "multilabel", "keras_multilabel"),
    ):
        model, logs[name] = train_task(
            kind, train_data, config[f"epochs_{kind}"], TASK_SEEDS[seed_name]
        )
        model.save(paths[name])
    (models_dir / "demo_segmentation_labels.txt").write_text(
        "\n".join(SEGMENTATION_CLASS_NAMES) + "\n"
    )
    (models_dir / "demo_multilabel_labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")

    # Evaluate the files as saved, the way the app and the tests load them.
    loaded = {name: keras.saving.load_model(path, compile=False) for name, path in paths.items()}
    metrics = evaluate_tasks(loaded["demo_segmentation"], loaded["demo_multilabel"], test)
    samples = write_scene_samples(
        loaded["demo_segmentation"], loaded["demo_multilabel"], samples_dir
    )
    architecture = {
        "demo_segmentation": "U-Net-lite: three 4x4 stride-2 conv stages (48, 24, 12 px; 16, 32, "
        "64 channels), each followed by a 3x3 conv; decoder: bilinear UpSampling2D x2, concatenate "
        "the encoder map of that size (the input image at 96 px), 3x3 conv (32, 16, 16 channels), "
        "three times; seg_logits (1x1 conv, 5) -> segmentation (softmax). BatchNorm + ReLU after "
        "every 3x3/4x4 conv.",
        "demo_multilabel": "build_model's network (conv1-3 4x4 stride 2, last_conv 12x12x128, gap, "
        "dropout 0.2) with label_logits (Dense 4) -> labels (sigmoid).",
    }
    outputs = {
        "demo_segmentation": "(96, 96, 5) per-pixel softmax over demo_segmentation_labels.txt",
        "demo_multilabel": "(4,) independent sigmoid probabilities over demo_multilabel_labels.txt",
    }
    label_files = {
        "demo_segmentation": "demo_segmentation_labels.txt",
        "demo_multilabel": "demo_multilabel_labels.txt",
    }
    return {
        "quick": config is TASKS_QUICK,
        "data": "generate_scene_dataset: 1-3 shapes of distinct classes per scene, 16-30 % of the "
        "side, never overlapping, on the standard cluttered background (clutter 1)",
        "input": {
            "shape": [IMAGE_SIZE, IMAGE_SIZE, 3],
            "dtype": "float32",
            "preprocessing": "image / 255 (RGB, values in [0, 1])",
        },
        "seeds": TASK_SEEDS,
        "dataset_sizes": {
            "train": config["n_train"],
            "validation_split": VALIDATION_SPLIT,
            "test": config["n_test"],
            "image_size": IMAGE_SIZE,
            "shapes_per_scene": list(SCENE_SHAPES),
        },
        "batch_size": BATCH_SIZE,
        "optimizer": f"Adam, cosine decay from {LEARNING_RATE}",
        "data_generation_seconds": round(data_seconds, 1),
        **{
            name: {
                "architecture": architecture[name],
                "output": outputs[name],
                "class_names": list(
                    SEGMENTATION_CLASS_NAMES if name == "demo_segmentation" else CLASS_NAMES
                ),
                "labels_file": label_files[name],
                "parameters": int(loaded[name].count_params()),
                "file_bytes": paths[name].stat().st_size,
                "training": logs[name],
                "metrics": {
                    "test_set": f"{config['n_test']} scenes, seed scenes_test",
                    **metrics[name],
                },
            }
            for name in TASK_MODEL_NAMES
        },
        "samples": samples,
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (not for release)")
    parser.add_argument(
        "--out", type=Path, default=None, help="assets folder (default: assets/, or a temp folder)"
    )
    parser.add_argument(
        "--story",
        action="store_true",
        help="only the training story: retrain demo_shortcut (with its run) and demo_fixed (with "
        "its run), rewrite the samples and demo_models.json; demo_shapes.keras is kept",
    )
    parser.add_argument(
        "--tasks",
        action="store_true",
        help="only the scene models: train demo_segmentation and demo_multilabel, write their "
        "label files and scenes_* samples, and merge their 'tasks' entry into demo_models.json; "
        "every other model, sample and entry is kept",
    )
    args = parser.parse_args(argv)
    if args.story and args.tasks:
        parser.error("--story and --tasks are exclusive")
    config = QUICK if args.quick else FULL
    tasks_config = TASKS_QUICK if args.quick else TASKS_FULL
    story = QUICK_STORY if args.quick else STORY
    if args.out is not None:
        out = args.out
    elif args.quick:
        out = Path("/tmp") / "demo_models_quick"
    else:
        out = REPO_ROOT / "assets"
    models_dir, samples_dir, runs_dir = out / "models", out / "samples", out / "runs"
    models_dir.mkdir(parents=True, exist_ok=True)
    json_path = models_dir / "demo_models.json"
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    # Deterministic kernels, so a rerun on the same machine reproduces the reported numbers.
    tf.config.experimental.enable_op_determinism()
    if args.tasks:
        previous["tasks"] = run_tasks(tasks_config, models_dir, samples_dir)
        json_path.write_text(json.dumps(previous, indent=2) + "\n")
        print(json.dumps({n: previous["tasks"][n]["metrics"] for n in TASK_MODEL_NAMES}, indent=2))
        print(f"wrote {out}")
        return

    n_test = config["n_test"]
    start = time.perf_counter()
    honest_train = (
        None
        if args.story
        else generate_dataset(config["n_train_honest"], SEEDS["honest_train"], size=IMAGE_SIZE)
    )
    shortcut_train = generate_dataset(
        config["n_train_shortcut"],
        SEEDS["shortcut_train"],
        size=IMAGE_SIZE,
        variant="shortcut",
        shape_agreement=SHAPE_AGREEMENT,
    )
    test_sets = {
        "honest": generate_dataset(n_test, SEEDS["honest_test"], size=IMAGE_SIZE),
        "honest_with_marker": generate_dataset(
            n_test, SEEDS["honest_test"], size=IMAGE_SIZE, marker=True
        ),
        "shortcut": generate_dataset(
            n_test,
            SEEDS["shortcut_test"],
            size=IMAGE_SIZE,
            variant="shortcut",
            shape_agreement=PROBE_SHAPE_AGREEMENT,
        ),
        "shortcut_without_marker": generate_dataset(
            n_test,
            SEEDS["shortcut_test"],
            size=IMAGE_SIZE,
            variant="shortcut",
            shape_agreement=PROBE_SHAPE_AGREEMENT,
            marker=False,
        ),
    }
    data_seconds = time.perf_counter() - start
    print(f"generated datasets in {data_seconds:.1f} s", flush=True)

    paths = {name: models_dir / f"{name}.keras" for name in MODEL_NAMES}
    if args.story:
        honest_log = previous["training"]["demo_shapes"]
    else:
        assert honest_train is not None
        honest, honest_log = train(
            "demo_shapes",
            honest_train,
            config["epochs_honest"],
            SEEDS["keras_honest"],
            augment=True,
        )
        honest.save(paths["demo_shapes"])
    shortcut, shortcut_log = train_shortcut(shortcut_train, config["epochs_shortcut"], runs_dir)
    shortcut.save(paths["demo_shortcut"])
    fixed, fixed_log = train_fixed(shortcut_train, int(story["epochs_fixed"]), runs_dir)
    fixed.save(paths["demo_fixed"])
    (models_dir / "demo_labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")

    # Evaluate the files as saved, exactly as the app will load them.
    loaded = {name: keras.saving.load_model(path) for name, path in paths.items()}
    metrics = {name: evaluate(model, test_sets) for name, model in loaded.items()}
    samples = write_samples(loaded["demo_shapes"], loaded["demo_shortcut"], samples_dir)
    marked = {k: v[:N_GRAD_CAM] for k, v in test_sets["honest_with_marker"].items()}
    below = {name: grad_cam_marker_below_shape(model, marked) for name, model in loaded.items()}

    report = {
        "quick": args.quick,
        "class_names": list(CLASS_NAMES),
        "input": {
            "shape": [IMAGE_SIZE, IMAGE_SIZE, 3],
            "dtype": "float32",
            "preprocessing": "image / 255 (RGB, values in [0, 1])",
        },
        "cam": {"target_layer": "last_conv", "pooling_layer": "gap", "dense_layer": "predictions"},
        "shape_agreement": {
            "train_shortcut": SHAPE_AGREEMENT,
            "test_shortcut": PROBE_SHAPE_AGREEMENT,
        },
        "seeds": SEEDS,
        "dataset_sizes": {
            "train_honest": config["n_train_honest"],
            "train_shortcut": config["n_train_shortcut"],
            "validation_split": VALIDATION_SPLIT,
            "test": n_test,
            "image_size": IMAGE_SIZE,
        },
        "training": {
            "batch_size": BATCH_SIZE,
            "optimizer": f"Adam, cosine decay from {LEARNING_RATE}",
            "demo_shapes": honest_log,
            "demo_shortcut": shortcut_log,
            "demo_fixed": fixed_log,
            "data_generation_seconds": round(data_seconds, 1),
        },
        "test_sets": {
            "honest": "honest images, no marker (seed honest_test)",
            "honest_with_marker": "same images plus a marker that agrees with the shape",
            "shortcut": "shortcut images: marker = label, shape agrees with "
            f"p={PROBE_SHAPE_AGREEMENT} (a probe: who does the model follow when they disagree?)",
            "shortcut_without_marker": "the same shortcut images with the marker left out",
        },
        "metrics": metrics,
        "grad_cam_marker_below_shape": {
            "test_set": f"honest_with_marker, first {N_GRAD_CAM} images, target = label",
            **below,
        },
        "story": {
            "settings": story,
            "callback_images": f"{STORY['callback_images']} shortcut images, seed callback_images",
            "runs": {"shortcut": "runs/shortcut", "fixed": "runs/fixed"},
        },
        "file_bytes": {name: path.stat().st_size for name, path in paths.items()},
        "parameters": {name: int(model.count_params()) for name, model in loaded.items()},
        "samples": samples,
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    # The scene models: trained by a full run, kept from the previous JSON by --story.
    tasks = (
        previous.get("tasks") if args.story else run_tasks(tasks_config, models_dir, samples_dir)
    )
    if tasks is not None:
        report["tasks"] = tasks
    # What was tried before the shortcut data had agreeing shapes (assets/models/README.md).
    history = previous.get("story", {}).get("earlier_attempts") or previous.get("story", {}).get(
        "rrr_attempts"
    )
    if history:
        report["story"]["earlier_attempts"] = history
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("metrics", "grad_cam_marker_below_shape")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
