"""Train the demo CNNs the dashboard embeds, from fixed seeds, and write their assets.

Run from the repository root::

    python assets/make_demo_models.py           # full run (about 30 min on 2 CPU cores)
    python assets/make_demo_models.py --quick   # small smoke run, writes to a temporary folder
    python assets/make_demo_models.py --story   # only the training story (below): keeps the
                                                # shipped demo_shapes.keras

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
- ``assets/models/demo_models.json``: metrics, seeds, dataset sizes, epochs, timings, versions.
- ``assets/samples/*.png``: sample images with their object masks (and marker masks).

``--story`` retrains only ``demo_shortcut`` and ``demo_fixed`` (with their runs, the samples and
the JSON); ``demo_shapes.keras`` is loaded, not retrained.

All models take ``(96, 96, 3)`` float32 images scaled to [0, 1] (``image / 255``) and end in
``last_conv`` (12 x 12 x 128, ReLU) -> ``gap`` -> ``dropout`` -> ``predictions`` (softmax), so
CAM applies to them.
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
    ShapeSample,
    generate_dataset,
    generate_sample,
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
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
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
