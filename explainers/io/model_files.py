"""Facts about model files and choices that need no Keras: file suffixes, hashing, the
preprocessing vocabulary and the ``keras.applications`` names. The dashboard process reads these
without importing TensorFlow; :mod:`explainers.io.models` (worker side) uses the same ones."""

from __future__ import annotations

import hashlib
import os
from typing import Literal, get_args

Preprocessing = Literal["0_1", "-1_1", "caffe", "torch", "none"]
PreprocessingChoice = Literal["auto", "0_1", "-1_1", "caffe", "torch", "none"]
PREPROCESSING_CHOICES: tuple[str, ...] = get_args(PreprocessingChoice)
PREPROCESSING_HELP: dict[str, str] = {
    "auto": "recognise keras.applications families, else 0–1",
    "0_1": "pixels / 255 → [0, 1]",
    "-1_1": "pixels / 127.5 − 1 → [−1, 1] (MobileNet, Inception, Xception)",
    "caffe": "RGB→BGR, minus ImageNet mean, no scaling (VGG, ResNet50)",
    "torch": "[0, 1], minus ImageNet mean, divided by std (DenseNet)",
    "none": "raw 0–255 floats (model rescales itself)",
}

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


KERAS_APPLICATIONS: dict[str, str] = {
    "MobileNetV2": "mobilenet_v2",
    "ResNet50": "resnet",
    "VGG16": "vgg16",
    "DenseNet121": "densenet",
    "EfficientNetB0": "efficientnet",
    "InceptionV3": "inception_v3",
    "Xception": "xception",
}

#: What a model's explained output does (:data:`explainers.io.models.Task`), or ``"auto"``.
TaskChoice = Literal["auto", "classification", "multilabel", "regression", "segmentation"]
TASK_CHOICES: tuple[str, ...] = (
    "auto",
    "classification",
    "multilabel",
    "regression",
    "segmentation",
)
