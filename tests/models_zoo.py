"""Small deterministic Keras models of the shapes users bring, built in memory for the tests."""

from __future__ import annotations

import keras
import numpy as np


def seeded(seed: int = 0) -> None:
    keras.utils.set_random_seed(seed)


def functional_softmax(input_shape=(32, 32, 3), n_classes=3, seed=0) -> keras.Model:
    """Conv → pool → conv → GAP → Dense(softmax): the CAM-ready head."""
    seeded(seed)
    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out, name="functional_softmax")


def functional_logits(input_shape=(32, 32, 3), n_classes=3, seed=0) -> keras.Model:
    """Same body, no softmax: the model outputs logits."""
    seeded(seed)
    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inp, out, name="functional_logits")


def sequential_flatten(input_shape=(28, 28, 1), n_classes=4, seed=0) -> keras.Model:
    """Sequential, grayscale, with a Flatten → Dense head (no CAM) and a separate Softmax."""
    seeded(seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(n_classes, name="dense"),
            keras.layers.Softmax(name="softmax"),
        ],
        name="sequential_flatten",
    )


def nested_base(input_shape=(40, 48, 3), n_classes=3, seed=0) -> keras.Model:
    """The transfer-learning pattern: Sequential([base, GAP, Dense]) with a functional base."""
    seeded(seed)
    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv")(inp)
    x = keras.layers.MaxPooling2D(name="block1_pool")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="block2_conv")(x)
    x = keras.layers.ReLU(name="block2_relu")(x)
    base = keras.Model(inp, x, name="base")
    return keras.Sequential(
        [
            keras.Input(input_shape),
            base,
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dropout(0.2, name="dropout"),
            keras.layers.Dense(n_classes, activation="softmax", name="head"),
        ],
        name="nested_base",
    )


def with_rescaling(input_shape=(36, 36, 3), n_classes=3, seed=0) -> keras.Model:
    """Preprocessing inside the model: Rescaling(1/255) first, so it takes raw 0..255 pixels."""
    seeded(seed)
    inp = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out, name="with_rescaling")


def binary_sigmoid(input_shape=(24, 40, 3), seed=0) -> keras.Model:
    """Binary classifier with a single sigmoid unit, non-square input."""
    seeded(seed)
    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="prob")(x)
    return keras.Model(inp, out, name="binary_sigmoid")


def resnet_shortcut(input_shape=(60, 60, 8), n_classes=3, seed=0) -> keras.Model:
    """A ResNet-style block whose projection shortcut is a 1×1 stride-2 convolution — the shape
    whose eager filter gradient crashes TF 2.21's oneDNN CPU kernels."""
    seeded(seed)
    inp = keras.Input(input_shape)
    main = keras.layers.Conv2D(
        16, 3, strides=2, padding="same", activation="relu", name="main_conv"
    )(inp)
    shortcut = keras.layers.Conv2D(16, 1, strides=2, name="shortcut_conv")(inp)
    x = keras.layers.Add(name="add")([main, shortcut])
    x = keras.layers.ReLU(name="block_out")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out, name="resnet_shortcut")


ZOO = {
    "functional_softmax": functional_softmax,
    "functional_logits": functional_logits,
    "sequential_flatten": sequential_flatten,
    "nested_base": nested_base,
    "with_rescaling": with_rescaling,
    "binary_sigmoid": binary_sigmoid,
}


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def calibrate_batchnorm(model: keras.Model, x: np.ndarray) -> keras.Model:
    """Set every BatchNormalization's moving statistics to its input's on ``x`` (one replay of
    the graph): a random-weight MobileNetV2's activations otherwise shrink to about 1e-12 and
    every occlusion map is zero. Used by the incremental-occlusion tests and benchmark."""
    import tensorflow as tf

    from explainers.core.graph import replay
    from explainers.io.models import layer_object

    def before(path: str, args: tuple) -> None:
        layer = layer_object(model, path)
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, var = tf.nn.moments(args[0], axes=(0, 1, 2))
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(var)

    replay(model, [tf.constant(x, tf.float32)], lambda p, layer, out: out, before=before)
    return model
