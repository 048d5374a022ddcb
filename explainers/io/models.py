"""Loading a Keras model into a :class:`ModelBundle`: the model plus what explaining it needs."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from explainers.core.graph import INPUT_NAME, LayerInfo, describe_layers, is_graph_model
from explainers.errors import ExplainerError, ModelLoadError, ParameterError, UnsupportedModelError
from explainers.io.model_files import (
    KERAS_APPLICATIONS,
    MODEL_SUFFIXES,
    PREPROCESSING_CHOICES,
    TASK_CHOICES,
    Preprocessing,
    PreprocessingChoice,
    TaskChoice,
    file_sha256,
)

if TYPE_CHECKING:
    import keras

    from explainers.core.runner import ModelRunner

#: What the explained output emits: ``softmax``/``sigmoid`` probabilities whose pre-activation
#: scores we can recover exactly, raw ``logits``, or ``probabilities`` we cannot undo (we then
#: explain their logarithm).
OutputKind = Literal["softmax", "sigmoid", "logits", "probabilities"]
#: What the model does with an image, as :func:`load_model` recognises it from the explained
#: output: one class of a softmax (or single-sigmoid/logit) vector, independent sigmoid labels,
#: a linear regression vector, or a per-pixel class map.
Task = Literal["classification", "multilabel", "regression", "segmentation"]
#: What :func:`load_model` can explain, for messages about outputs it cannot.
SUPPORTED_OUTPUTS = (
    "a class-score vector (batch, classes) from softmax, sigmoid or logits (classification or "
    "multi-label), a linear vector (batch, outputs) (regression: pass task='regression' unless "
    "the file was compiled with a regression loss), or a per-pixel class map (batch, height, "
    "width, classes) (segmentation)"
)
#: Loss names (lower case, without separators) that mark a linear output as a regression.
_REGRESSION_LOSSES = (
    "mse",
    "mae",
    "mape",
    "msle",
    "meansquarederror",
    "meanabsoluteerror",
    "meanabsolutepercentageerror",
    "meansquaredlogarithmicerror",
    "huber",
    "logcosh",
)

_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: Largest side used for models with a free (None) spatial input size.
MAX_FREE_INPUT_SIDE = 512
_DATA = Path(__file__).parent / "data"


@dataclass(frozen=True, eq=False)
class OutputView:
    """How a targeted bundle reads its scores (see :meth:`ModelRunner.bound`).

    ``kind`` is ``"classes"``, ``"lower"`` (a regression value, negated), ``"region_sum"`` or
    ``"region_mean"``; ``mask`` the region, float32 (h_out, w_out) on the segmentation output's
    grid; ``text`` says in words what is explained.
    """

    kind: str
    mask: np.ndarray | None = None
    text: str = ""


@dataclass(frozen=True)
class CamHead:
    """A ``feature layer → GlobalAveragePooling2D → Dense`` head, the structure CAM requires."""

    feature_layer: str
    pooling_layer: str
    dense_layer: str


@dataclass(frozen=True, eq=False)
class ModelBundle:
    """A loaded model with everything the explanation methods need to know about it.

    Immutable after construction (compiled functions are memoised in ``runner``, thread-safely), so
    one bundle can serve several dashboard sessions at once.
    """

    model: keras.Model
    name: str
    source: str
    sha256: str | None
    input_size: tuple[int | None, int | None]
    channels: int
    preprocessing: Preprocessing
    preprocessing_reason: str
    class_names: tuple[str, ...]
    output_index: int
    output_kind: OutputKind
    output_layer: str
    layers: tuple[LayerInfo, ...]
    cam_head: CamHead | None
    #: What the explained output does (see :data:`Task`) and its shape without the batch axis:
    #: (units,) for a vector, (height, width, classes) for a segmentation map.
    task: Task = "classification"
    output_shape: tuple[int, ...] = ()
    #: Set on a bundle made by :meth:`targeted`: the output view its runner reads scores through
    #: (a region of a segmentation map, a regression value's decrease), and the bundle it views.
    view: OutputView | None = None
    base: ModelBundle | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _outputs: dict[int, ModelBundle] = field(default_factory=dict, repr=False)

    # ----------------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_graph(self) -> bool:
        """Whether inner layers can be reached (needed by the CAM family and guided backprop)."""
        return bool(self.layers)

    @property
    def n_params(self) -> int:
        return int(self.model.count_params())

    def layer(self, path: str) -> LayerInfo:
        """The layer with this path (or unique bare name); raises ParameterError otherwise."""
        for info in self.layers:
            if info.path == path:
                return info
        matches = [info for info in self.layers if info.name == path and not info.is_model]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(self.spatial_layers[-5:]) or "none"
        raise ParameterError(
            f"no layer named {path!r} in model {self.name!r}; spatial layers near the output: "
            f"{known}"
        )

    @cached_property
    def spatial_layers(self) -> list[str]:
        """Paths of layers with a spatial (H, W, C) output, input side first (nested included)."""
        return [info.path for info in self.layers if info.is_spatial and not info.is_model]

    @property
    def default_layer(self) -> str | None:
        """The automatic layer choice for CAM methods: the last spatial layer before the output."""
        if self.cam_head is not None:
            return self.cam_head.feature_layer
        if self.task == "segmentation":
            return _segmentation_features(self.layers, self.output_layer)
        return self.spatial_layers[-1] if self.spatial_layers else None

    @cached_property
    def runner(self) -> ModelRunner:
        if self.base is not None and self.view is not None:
            tensors = () if self.view.mask is None else (self.view.mask.astype(np.float32),)
            return self.base.runner.bound(self.view.kind, tensors)
        from explainers.core.runner import ModelRunner

        return ModelRunner(self)

    @property
    def root(self) -> ModelBundle:
        """The loaded bundle this one views (itself when it is not a view)."""
        return self.base if self.base is not None else self

    def targeted(self, view: OutputView, class_names: tuple[str, ...] | None = None) -> ModelBundle:
        """A view of this model whose scores (and class probabilities) are the view's: what
        :func:`explainers.targets.bind` makes for a region or a regression direction. Every
        method, metric, sanity check and attack then explains the view's score by class index.
        Its runner shares this bundle's compiled functions."""
        from dataclasses import replace

        root = self.root
        return replace(
            root,
            view=view,
            base=root,
            class_names=class_names or root.class_names,
            _lock=threading.Lock(),
            _outputs={},
        )

    def for_output(self, index: int) -> ModelBundle:
        """This model explaining output ``index`` of a multi-output model (recognised anew:
        its task, kind and class count), memoised."""
        root = self.root
        if index == root.output_index:
            return root
        with root._lock:
            known = root._outputs.get(index)
        if known is None:
            known = bundle_from_model(
                root.model,
                preprocessing=root.preprocessing,
                output_index=index,
                name=f"{root.name} (output {index})",
                source=root.source,
                sha256=root.sha256,
            )
            with root._lock:
                root._outputs[index] = known
        return known

    def segment(self, image: np.ndarray) -> np.ndarray:
        """Per-pixel class probabilities, float32 (h_out, w_out, classes), of a segmentation
        model for one uint8 image of any size (at the model's input size)."""
        if self.task != "segmentation":
            raise ParameterError(f"{self.name!r} is a {self.task} model, not a segmentation model")
        _, probs = self.root.runner.predict(self.model_input(image))
        if not np.all(np.isfinite(probs)):
            raise ExplainerError(
                "the model's output for this image is not a number (NaN or inf); "
                "check the model and the preprocessing"
            )
        return probs[0]

    # ----------------------------------------------------------------------------------------
    def model_size_for(self, image_shape: tuple[int, ...]) -> tuple[int, int]:
        """(height, width) the image is resized to before entering the model."""
        height, width = self.input_size
        if height is not None and width is not None:
            return height, width
        h, w = int(image_shape[0]), int(image_shape[1])
        scale = min(1.0, MAX_FREE_INPUT_SIDE / max(h, w))
        return (height or max(1, round(h * scale)), width or max(1, round(w * scale)))

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize a uint8 (H, W, 3) image to the model's input size (antialiased bilinear)."""
        height, width = self.model_size_for(image.shape)
        if image.shape[:2] == (height, width):
            return image
        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) at model size → float32 (H, W, C) exactly as the model expects."""
        x = image.astype(np.float32)
        if self.channels == 1:
            # ITU-R 601-2 luma, the same weights Pillow's convert("L") uses.
            x = (x @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
        return apply_preprocessing(x, self.preprocessing)

    def model_input(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) at any size → float32 (1, h, w, C) model input."""
        return self.preprocess(self.resize(image))[None]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities, float64 (n_classes,), for one uint8 image of any size: label
        probabilities for multi-label models, the values for regression, and a segmentation
        model's per-pixel probabilities (h_out, w_out, classes) (a targeted view: its region's
        mean class probabilities)."""
        _, probs = self.runner.predict(self.model_input(image))
        if not np.all(np.isfinite(probs)):
            raise ExplainerError(
                "the model's output for this image is not a number (NaN or inf); "
                "check the model and the preprocessing"
            )
        return probs[0].astype(np.float64)

    def top_k(self, image: np.ndarray, k: int = 5) -> list[tuple[int, str, float]]:
        """The k most probable classes as (index, name, probability)."""
        probs = self.predict(image)
        order = np.argsort(-probs)[:k]
        return [(int(i), self.class_names[i], float(probs[i])) for i in order]


def apply_preprocessing(x: np.ndarray, mode: Preprocessing) -> np.ndarray:
    """Map float32 pixel values 0..255 (..., C) to the model's input range."""
    if mode == "0_1":
        return x / 255.0
    if mode == "-1_1":
        return x / 127.5 - 1.0
    if mode == "none":
        return x
    if mode == "caffe":
        if x.shape[-1] == 3:
            return x[..., ::-1] - _CAFFE_MEAN_BGR
        return x - _CAFFE_MEAN_BGR.mean()
    if mode == "torch":
        if x.shape[-1] == 3:
            return (x / 255.0 - _TORCH_MEAN) / _TORCH_STD
        return (x / 255.0 - _TORCH_MEAN.mean()) / _TORCH_STD.mean()
    raise ParameterError(f"unknown preprocessing {mode!r}; choose one of {PREPROCESSING_CHOICES}")


# ------------------------------------------------------------------------------------------------
# Recognising how a model wants its input
# ------------------------------------------------------------------------------------------------
# keras.applications families by distinctive layer names (from keras/src/applications/*.py),
# mapped to their preprocess_input mode. Checked in order: the first rule that matches wins.
_FAMILY_RULES: tuple[tuple[str, tuple[str, ...], Preprocessing], ...] = (
    ("DenseNet", ("pool2_conv", "conv2_block1_0_bn"), "torch"),
    ("ResNetV2", ("conv2_block1_preact_bn",), "-1_1"),
    ("ResNet", ("conv2_block1_1_conv", "conv1_conv"), "caffe"),
    ("VGG", ("block1_conv1", "block5_conv3"), "caffe"),
    ("MobileNetV2", ("block_1_expand",), "-1_1"),
    ("MobileNet", ("conv_dw_1",), "-1_1"),
    ("InceptionResNetV2", ("block35_1",), "-1_1"),
    ("InceptionV3", ("mixed0",), "-1_1"),
    ("Xception", ("block1_sepconv1",), "-1_1"),
    ("NASNet", ("normal_conv_1_0",), "-1_1"),
)
_SELF_SCALING = ("Rescaling", "Normalization")


def detect_preprocessing(layers: list[LayerInfo]) -> tuple[Preprocessing, str]:
    """Guess the preprocessing from the layer structure; returns (mode, human-readable reason)."""
    names = {info.name for info in layers}
    for info in layers:
        if info.class_name in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"):
            break
        if info.class_name in _SELF_SCALING:
            return "none", f"the model starts with its own {info.class_name} layer ({info.path})"
    for family, markers, mode in _FAMILY_RULES:
        if all(marker in names for marker in markers):
            return mode, f"recognised keras.applications {family} layers"
    return "0_1", "no known architecture or rescaling layer found; assuming inputs in [0, 1]"


# ------------------------------------------------------------------------------------------------
# Class names
# ------------------------------------------------------------------------------------------------
def read_labels(source: str | os.PathLike | bytes, n_classes: int | None = None) -> list[str]:
    """Class names from a text file (one per line) or JSON (list, or {index: name}).

    JSON values may also be ``[wnid, name]`` pairs as in Keras' ``imagenet_class_index.json``.
    """
    if isinstance(source, bytes | bytearray):
        raw = bytes(source)
        label = "the labels file"
    else:
        path = Path(source)
        if not path.exists():
            raise ParameterError(f"no labels file at {str(path)!r}")
        raw = path.read_bytes()
        label = f"labels file {path.name!r}"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParameterError(f"{label} is not UTF-8 text") from exc
    stripped = text.strip()
    names: list[str]
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ParameterError(f"{label} looks like JSON but does not parse: {exc}") from exc
        if isinstance(data, dict):
            try:
                items = sorted(((int(k), v) for k, v in data.items()), key=lambda kv: kv[0])
            except ValueError as exc:
                raise ParameterError(f"{label}: JSON keys must be class indices 0..n-1") from exc
            if [k for k, _ in items] != list(range(len(items))):
                raise ParameterError(f"{label}: JSON keys must be the indices 0..{len(items) - 1}")
            values = [v for _, v in items]
        elif isinstance(data, list):
            values = data
        else:
            raise ParameterError(f"{label}: expected a JSON list or object of class names")
        names = [str(v[-1]) if isinstance(v, list) and v else str(v) for v in values]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ParameterError(f"{label} holds no class names")
    if n_classes is not None and len(names) != n_classes:
        raise ParameterError(
            f"{label} has {len(names)} class names but the model has {n_classes} classes"
        )
    return names


def default_class_names(n_classes: int) -> list[str]:
    """ImageNet names for 1000-class models, otherwise ``class 0 .. class n-1``."""
    if n_classes == 1000:
        return (_DATA / "imagenet_classes.txt").read_text().splitlines()
    return [f"class {i}" for i in range(n_classes)]


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
def load_model(
    path: str | os.PathLike,
    *,
    preprocessing: PreprocessingChoice = "auto",
    labels: str | os.PathLike | bytes | list[str] | None = None,
    output_index: int | None = None,
    name: str | None = None,
    trust: bool = False,
    max_bytes: int | None = None,
    task: TaskChoice = "auto",
) -> ModelBundle:
    """Load a ``.keras`` or legacy ``.h5``/``.hdf5`` Keras model file into a :class:`ModelBundle`.

    The file is inspected by :func:`explainers.io.safety.inspect_model_file` before Keras reads a
    byte of it: files with Lambda layers, serialised functions, classes from outside Keras, unsafe
    archive entries, decompression bombs or impossible weight shapes are refused with an
    :class:`~explainers.errors.UnsafeModelError` that says what was found and where.

    Parameters
    ----------
    path
        The model file. Loaded with Keras' ``safe_mode`` and without custom objects.
    preprocessing
        How uint8 pixels become model inputs; ``"auto"`` detects it
        (see :func:`detect_preprocessing`).
    labels
        Class names: a labels file (txt, one per line, or JSON), its bytes, or a list.
    output_index
        Which output to explain for multi-output models (default: the first with a class vector).
    name
        Display name (default: the file name).
    trust
        An operator's decision, never a user's: skip the checks for code and custom objects and
        load with Keras ``safe_mode=False``, so a Lambda layer's bytecode runs. The archive
        structure, size and weights checks still apply. The dashboard reads it from
        ``EXPLAINER_TRUST_MODEL_FILES`` (see :func:`explainers.io.safety.trust_from_environment`).
    max_bytes
        Largest file size accepted (default :data:`explainers.io.safety.DEFAULT_MAX_BYTES`, 1 GiB).
    task
        What the explained output does (:data:`TASK_CHOICES`); ``"auto"`` recognises it: a
        per-pixel map is segmentation, several sigmoid units multi-label, a linear vector a
        regression when the file was compiled with a regression loss (MSE, MAE, Huber, …) and
        class logits otherwise. An output none of these fit (a detection head's boxes, a
        sequence) is refused with a message that says what is supported.
    """
    from explainers.io.safety import DEFAULT_MAX_BYTES, inspect_model_file

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"no model file at {str(path)!r}")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise ModelLoadError(
            f"{path.name!r} is not a Keras model file: expected a .keras, .h5 or .hdf5 file, "
            f"got {path.suffix or 'no extension'!r}"
        )
    # Our inspection first: Keras deserialises nothing from a file that has not passed it.
    inspect_model_file(path, max_bytes=max_bytes or DEFAULT_MAX_BYTES, trust=trust)
    import keras

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=not trust)
    except Exception as exc:  # Keras raises many types (ValueError, OSError, TypeError...)
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{path.name!r} could not be loaded as a Keras model ({detail}). Save the model with "
            "model.save('name.keras') in Keras 3 and upload that file."
        ) from exc
    return bundle_from_model(
        model,
        preprocessing=preprocessing,
        labels=labels,
        output_index=output_index,
        name=name or path.name,
        source=path.name,
        sha256=file_sha256(path),
        task=task,
        declared_loss=_declared_loss(path),
    )


def load_application(name: str, *, weights: str | None = "imagenet") -> ModelBundle:
    """A ``keras.applications`` architecture by name, with ImageNet weights by default.

    The weights are downloaded on first use and cached by Keras; without internet access this
    raises :class:`ModelLoadError` saying so. ``weights=None`` gives random weights (no download).
    """
    if name not in KERAS_APPLICATIONS:
        raise ParameterError(
            f"unknown architecture {name!r}; choose one of {', '.join(KERAS_APPLICATIONS)}"
        )
    import keras

    constructor = getattr(keras.applications, name)
    try:
        model = constructor(weights=weights)
    except Exception as exc:
        text = str(exc)
        offline = any(
            word in text
            for word in ("URL fetch failure", "urlopen", "Name or service", "resolve", "Errno")
        )
        if offline:
            raise ModelLoadError(
                f"The ImageNet weights for {name} could not be downloaded: this machine has no "
                "internet access. Upload a saved .keras or .h5 model file instead, or place the "
                "weights in ~/.keras/models/."
            ) from exc
        raise ModelLoadError(f"{name} could not be built ({text[:300]})") from exc
    return bundle_from_model(model, name=f"{name} ({weights or 'random'} weights)", source=name)


def _input_spec(model: keras.Model) -> tuple[int | None, int | None, int]:
    inputs = getattr(model, "inputs", None)
    if inputs is None:
        raise UnsupportedModelError(
            "the model has no defined input shape (a subclassed model that was never built); "
            "build it or save it as a Functional/Sequential model"
        )
    if len(inputs) != 1:
        raise UnsupportedModelError(
            f"the model has {len(inputs)} inputs; these methods explain single-image models only"
        )
    shape = tuple(inputs[0].shape)
    if len(shape) != 4:
        raise UnsupportedModelError(
            f"expected an image input of shape (batch, height, width, channels), got {shape}: "
            "this does not look like an image model"
        )
    _, height, width, channels = shape
    if channels not in (1, 3):
        raise UnsupportedModelError(
            f"expected an input with 1 (grayscale) or 3 (RGB) channels last, got shape {shape}"
        )
    return height, width, int(channels)


def _activation_name(layer: Any) -> str | None:
    class_name = type(layer).__name__
    if class_name == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", None)


def _output_kind(
    layers: list[LayerInfo], model: keras.Model, output_layer: str, probe_output: np.ndarray
) -> OutputKind:
    info = next(i for i in layers if i.path == output_layer)
    layer = layer_object(model, output_layer)
    activation = _activation_name(layer)
    strippable = info.class_name in ("Dense", "Conv2D", "Activation", "Softmax")
    if activation in ("softmax", "sigmoid") and strippable:
        return activation  # type: ignore[return-value]
    if activation in ("linear", None) and info.class_name in ("Dense", "Conv2D", "Activation"):
        return "logits"
    values = probe_output
    looks_like_probabilities = bool(
        np.all(values >= 0) and np.all(values <= 1) and np.allclose(values.sum(-1), 1, atol=1e-3)
    )
    return "probabilities" if looks_like_probabilities else "logits"


def layer_object(model: keras.Model, path: str) -> Any:
    layer: Any = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer


def _segmentation_features(layers: tuple[LayerInfo, ...], output_layer: str) -> str | None:
    """The layer feeding a segmentation model's per-pixel classifier: walk back from the output
    through activation layers and one convolution (the classifier itself). Seg-Grad-CAM on the
    classifier's own output would only restate the prediction."""
    by_path = {info.path: info for info in layers}
    info = by_path.get(output_layer)
    while info is not None and info.class_name in ("Activation", "Softmax") and info.inputs:
        info = by_path.get(info.inputs[0])
    if info is not None and info.class_name == "Conv2D" and info.inputs:
        info = by_path.get(info.inputs[0])
    if info is None or info.path == INPUT_NAME or not info.is_spatial:
        spatial = [i.path for i in layers if i.is_spatial and not i.is_model]
        return spatial[-2] if len(spatial) > 1 else (spatial[-1] if spatial else None)
    return info.path


def _find_cam_head(layers: list[LayerInfo], output_layer: str) -> CamHead | None:
    """Follow the output back through ``Dense ← [Dropout] ← GlobalAveragePooling2D ← feature``."""
    by_path = {info.path: info for info in layers}

    def resolve(path: str) -> LayerInfo | None:
        info = by_path.get(path)
        while info is not None and info.is_model and info.same_as:
            info = by_path.get(info.same_as)
        return info

    dense = resolve(output_layer)
    # A separate softmax/sigmoid layer after the Dense (Dense → Activation): the runner explains
    # the Dense's output (the logit), whose weights CAM reads.
    while dense is not None and dense.class_name in ("Activation", "Softmax") and dense.inputs:
        dense = resolve(dense.inputs[0])
    if dense is None or dense.class_name != "Dense" or len(dense.inputs) != 1:
        return None
    node = resolve(dense.inputs[0])
    while node is not None and node.class_name in ("Dropout", "SpatialDropout2D") and node.inputs:
        node = resolve(node.inputs[0])
    if node is None or node.class_name != "GlobalAveragePooling2D" or len(node.inputs) != 1:
        return None
    feature = resolve(node.inputs[0])
    if feature is None or feature.path == INPUT_NAME or not feature.is_spatial:
        return None
    return CamHead(feature_layer=feature.path, pooling_layer=node.path, dense_layer=dense.path)


def bundle_from_model(
    model: keras.Model,
    *,
    preprocessing: PreprocessingChoice = "auto",
    labels: str | os.PathLike | bytes | list[str] | None = None,
    output_index: int | None = None,
    name: str | None = None,
    source: str = "<in memory>",
    sha256: str | None = None,
    task: TaskChoice = "auto",
    declared_loss: str | None = None,
) -> ModelBundle:
    """Wrap an in-memory Keras model (see :func:`load_model` for the parameters).

    ``declared_loss`` is the loss the model was compiled with, where known (a file's compile
    config; a compiled in-memory model's ``loss`` is read when it is not given).
    """
    if task not in TASK_CHOICES:
        raise ParameterError(f"unknown task {task!r}; choose one of {', '.join(TASK_CHOICES)}")
    if preprocessing not in PREPROCESSING_CHOICES:
        raise ParameterError(
            f"unknown preprocessing {preprocessing!r}; choose one of "
            f"{', '.join(PREPROCESSING_CHOICES)}"
        )
    height, width, channels = _input_spec(model)
    probe_hw = (height or 64, width or 64)
    probe = np.zeros((1, *probe_hw, channels), np.float32)
    if is_graph_model(model):
        layers, output_paths = describe_layers(model, probe)
        outputs = model(probe, training=False)
    else:
        layers, output_paths = [], []
        outputs = model(probe, training=False)
    listed = outputs if isinstance(outputs, list | tuple) else [outputs]
    flat_outputs = [np.asarray(o) for o in listed]
    usable = [i for i, o in enumerate(flat_outputs) if _explainable_shape(o.shape)]
    if output_index is None:
        if not usable:
            shapes = ", ".join(str(tuple(o.shape[1:])) for o in flat_outputs)
            raise UnsupportedModelError(
                f"the model's output has shape {shapes} (without the batch axis), which these "
                f"methods cannot explain (a detection head's boxes, a sequence, …). Supported: "
                f"{SUPPORTED_OUTPUTS}."
            )
        output_index = usable[0]
    elif not 0 <= output_index < len(flat_outputs) or output_index not in usable:
        raise ParameterError(
            f"output_index {output_index} is not an output these methods can explain; the "
            f"explainable outputs are {usable} of {len(flat_outputs)}. Supported: "
            f"{SUPPORTED_OUTPUTS}."
        )
    output_vector = flat_outputs[output_index]
    n_units = int(output_vector.shape[-1])
    if layers:
        output_layer = output_paths[output_index]
        by_path = {info.path: info for info in layers}
        while by_path[output_layer].is_model and by_path[output_layer].same_as:
            output_layer = by_path[output_layer].same_as  # the nested model's own last layer
        output_kind = _output_kind(layers, model, output_layer, output_vector)
    else:
        output_layer = ""
        output_kind = "logits"
        if np.all(output_vector >= 0) and np.allclose(output_vector.sum(-1), 1, atol=1e-3):
            output_kind = "probabilities"
    if declared_loss is None:
        declared_loss = _loss_name(getattr(model, "loss", None))
    task = _detect_task(output_vector, output_kind, task, declared_loss)
    n_classes = 2 if n_units == 1 and task in ("classification", "segmentation") else n_units
    if labels is None:
        class_names = (
            [f"output {i}" for i in range(n_classes)]
            if task == "regression"
            else default_class_names(n_classes)
        )
    elif isinstance(labels, list | tuple):
        class_names = [str(v) for v in labels]
        if len(class_names) != n_classes:
            raise ParameterError(
                f"{len(class_names)} class names given but the model has {n_classes} classes"
            )
    else:
        class_names = read_labels(labels, n_classes)
    if preprocessing == "auto":
        mode, reason = detect_preprocessing(layers)
    else:
        mode, reason = preprocessing, "chosen by the user"
    return ModelBundle(
        model=model,
        name=name or model.name,
        source=source,
        sha256=sha256,
        input_size=(height, width),
        channels=channels,
        preprocessing=mode,
        preprocessing_reason=reason,
        class_names=tuple(class_names),
        output_index=output_index,
        output_kind=output_kind,
        output_layer=output_layer,
        layers=tuple(layers),
        cam_head=_find_cam_head(layers, output_layer) if layers else None,
        task=task,
        output_shape=tuple(int(d) for d in output_vector.shape[1:]),
    )


def _explainable_shape(shape: tuple[int, ...]) -> bool:
    """A vector (batch, units) or a per-pixel map (batch, h, w, classes) with h·w > 1."""
    if len(shape) == 2:
        return True
    return len(shape) == 4 and int(shape[1]) * int(shape[2]) > 1


def _detect_task(
    output: np.ndarray, kind: OutputKind, requested: TaskChoice, loss: str | None
) -> Task:
    """The task of an explainable output (see :data:`Task`), checked against ``requested``."""
    if output.ndim == 4:
        if requested not in ("auto", "segmentation"):
            raise ParameterError(
                f"the model's output is a per-pixel map {tuple(output.shape[1:])}, which is a "
                f"segmentation output, not {requested}; use task='auto' or 'segmentation'"
            )
        return "segmentation"
    if requested == "segmentation":
        raise ParameterError(
            f"task='segmentation' needs a per-pixel output (batch, height, width, classes); this "
            f"model's output is a vector {tuple(output.shape[1:])}"
        )
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if kind == "sigmoid" and output.shape[-1] > 1:
        return "multilabel"
    if kind == "logits" and loss is not None and loss in _REGRESSION_LOSSES:
        return "regression"
    return "classification"


def _loss_name(loss: Any) -> str | None:
    """A compile config's loss as a lower-case name without separators ("meansquarederror"),
    or None when there is none or there are several."""
    if isinstance(loss, dict):
        loss = loss.get("class_name") or (loss.get("config") or {}).get("name")
    elif loss is not None and not isinstance(loss, str):
        loss = getattr(loss, "name", None) or getattr(loss, "__name__", None)
    if not isinstance(loss, str):
        return None
    return "".join(ch for ch in loss.lower() if ch.isalnum())


def _declared_loss(path: Path) -> str | None:
    """The loss a saved model was compiled with (``.keras``: ``config.json``'s
    ``compile_config``; ``.h5``: the ``training_config`` attribute), or None. Reads JSON only,
    after the file passed inspection."""
    try:
        if path.suffix.lower() == ".keras":
            import zipfile

            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
            compile_config = config.get("compile_config") or {}
        else:
            import h5py

            with h5py.File(path, "r") as handle:
                raw = handle.attrs.get("training_config")
            if raw is None:
                return None
            compile_config = json.loads(raw if isinstance(raw, str) else raw.decode("utf-8"))
        return _loss_name(compile_config.get("loss"))
    except Exception:  # no compile config, or one we cannot read: recognise by structure only
        return None
