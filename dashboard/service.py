"""The only place the dashboard pages reach the explainer library.

Pages hand this module plain data (file bytes, paths, uint8 arrays, small frozen dataclasses) and
get plain data back (:class:`ModelSummary`, :class:`LoadedImage`, :class:`ExplanationResult`,
numpy arrays). No Keras object crosses this boundary, so a later change can move the computation
into a worker process by re-implementing these functions, without touching a page.

Caching
-------
* Model bundles: ``st.cache_resource``, keyed by the model file's SHA-256, the preprocessing
  choice and the SHA-256 of the labels (the bundle is immutable and shared between sessions).
* Explanations, predictions and feature maps: one explicit, thread-safe, bounded LRU
  (:class:`ResultCache`), keyed by (model key, image SHA-256, method, resolved parameters, target,
  layer, engine). Display settings are never part of a key: changing them re-renders the cached
  raw map.

Every library error (:class:`explainers.ExplainerError`) is turned into a :class:`ServiceError`
whose message is a plain sentence for the user; unexpected errors are logged with their traceback
on the server and reported to the user in one line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import tempfile
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import streamlit as st

import explainers
from explainers import ExplainerError, ParamSpec
from explainers.graph import LayerInfo
from explainers.models import KERAS_APPLICATIONS, PREPROCESSING_CHOICES, PREPROCESSING_HELP

LOGGER = logging.getLogger(__name__)

#: Where the bundled demo models and sample images live; ``EXPLAINER_ASSETS_DIR`` overrides it.
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
MODEL_SUFFIXES = ("keras", "h5", "hdf5")
IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
LABEL_SUFFIXES = ("txt", "json")
APPLICATION_NAMES: tuple[str, ...] = tuple(KERAS_APPLICATIONS)
PREPROCESSING_OPTIONS: tuple[str, ...] = PREPROCESSING_CHOICES
PREPROCESSING_DESCRIPTIONS: dict[str, str] = dict(PREPROCESSING_HELP)
#: The demo models we know how to describe; any other ``*.keras`` in assets/models is listed too.
DEMO_DESCRIPTIONS: dict[str, str] = {
    "demo_shapes.keras": "Shapes CNN — honest",
    "demo_shortcut.keras": "Shapes CNN — shortcut (cheats)",
}
DEMO_NOTES: dict[str, str] = {
    "demo_shapes.keras": "Trained on cluttered images of circles, squares, triangles and stars.",
    "demo_shortcut.keras": "Trained on images whose coloured corner marker gives the class away: "
    "it learned to look at the corner. Try the shortcut_* samples.",
}
#: Methods that report progress while they run.
LONG_METHODS = frozenset({"occlusion", "score_cam", "smoothgrad", "integrated_gradients"})

ProgressCallback = Callable[[float, str], None]


class ServiceError(Exception):
    """A failure the user should read: ``str(error)`` is a complete, plain sentence."""


# ------------------------------------------------------------------------------------------------
# Plain data crossing the boundary
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """Everything needed to (re)load one model; plain, picklable data.

    ``location`` is a file path for ``kind="file"`` and a ``keras.applications`` name for
    ``kind="application"``. ``labels`` holds the bytes of an optional labels file.
    """

    kind: Literal["file", "application"]
    location: str
    file_name: str
    sha256: str
    preprocessing: str = "auto"
    labels: bytes | None = field(default=None, repr=False)
    labels_name: str | None = None

    @property
    def labels_sha256(self) -> str | None:
        return hashlib.sha256(self.labels).hexdigest() if self.labels is not None else None

    @property
    def key(self) -> tuple[str, str, str | None]:
        """The cache key of the loaded bundle: (model SHA-256, preprocessing, labels SHA-256)."""
        return (self.sha256, self.preprocessing, self.labels_sha256)


@dataclass(frozen=True)
class MethodSummary:
    """A registry entry as the UI needs it, seen against one model (or none)."""

    name: str
    label: str
    family: str
    description: str
    reference: str
    reference_url: str
    cost: str
    formula: str
    caveats: str
    params: tuple[ParamSpec, ...]
    uses_layer: bool
    engines: tuple[str, ...]
    applicable: bool
    reason: str | None

    @property
    def is_long(self) -> bool:
        return self.name in LONG_METHODS


@dataclass(frozen=True)
class ModelSummary:
    """What the pages know about a loaded model."""

    ref: ModelRef
    name: str
    source: str
    sha256: str
    input_size: tuple[int | None, int | None]
    channels: int
    preprocessing: str
    preprocessing_reason: str
    class_names: tuple[str, ...]
    output_kind: str
    output_layer: str
    n_params: int
    layers: tuple[LayerInfo, ...]
    spatial_layers: tuple[str, ...]
    default_layer: str | None
    cam_head: str | None
    methods: tuple[MethodSummary, ...]

    @property
    def n_layers(self) -> int:
        """Layers excluding nested sub-model wrappers (each layer counted once)."""
        return sum(1 for info in self.layers if not info.is_model) or len(self.layers)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def method(self, name: str) -> MethodSummary:
        for method in self.methods:
            if method.name == name:
                return method
        raise ServiceError(f"Unknown method {name!r}.")


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """An image ready to explain: uint8 (H, W, 3) pixels and, for samples, ground-truth masks.

    ``mask`` / ``marker`` are bool (H, W) arrays: the object's pixels and, for shortcut samples,
    the corner marker's pixels.
    """

    name: str
    sha256: str
    pixels: np.ndarray
    source: Literal["sample", "upload", "camera"]
    mask: np.ndarray | None = None
    marker: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


@dataclass(frozen=True)
class Prediction:
    index: int
    name: str
    probability: float


@dataclass(frozen=True)
class ExplanationRequest:
    """One explanation to compute. ``params`` are the method's resolved parameters, sorted."""

    model: ModelRef
    image_sha256: str
    method: str
    params: tuple[tuple[str, Any], ...]
    target: int | None
    layer: str | None
    engine: str = "native"

    @property
    def key(self) -> tuple[Hashable, ...]:
        return (
            "explanation",
            self.model.key,
            self.image_sha256,
            self.method,
            self.params,
            self.target,
            self.layer,
            self.engine,
        )


@dataclass(frozen=True, eq=False)
class ExplanationResult:
    """A computed explanation: the raw signed float32 (H, W) map at the image's resolution."""

    attribution: np.ndarray
    method: str
    method_label: str
    params: dict[str, Any]
    target: int
    target_label: str
    score: float
    layer: str | None
    engine: str
    seconds: float
    extras: dict[str, Any]


@dataclass(frozen=True)
class DemoModel:
    path: Path
    description: str

    @property
    def file_name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Sample:
    """A bundled sample image and its optional ground-truth masks."""

    path: Path
    mask_path: Path | None
    marker_path: Path | None

    @property
    def name(self) -> str:
        return self.path.stem


# ------------------------------------------------------------------------------------------------
# Counting compute calls (tests prove that display changes never recompute)
# ------------------------------------------------------------------------------------------------
_COUNTS: Counter[str] = Counter()
_COUNTS_LOCK = threading.Lock()


def _count(kind: str) -> None:
    with _COUNTS_LOCK:
        _COUNTS[kind] += 1


def compute_count(kind: str = "explain") -> int:
    """How many times the library really computed ``kind`` (``explain``, ``predict``,
    ``features``, ``load_model``), or ``explain:<method>`` for one method, since start or reset."""
    with _COUNTS_LOCK:
        if kind == "explain":
            return sum(n for k, n in _COUNTS.items() if k.startswith("explain:"))
        return _COUNTS[kind]


def reset_compute_count() -> None:
    with _COUNTS_LOCK:
        _COUNTS.clear()


# ------------------------------------------------------------------------------------------------
# The bounded result cache
# ------------------------------------------------------------------------------------------------
class ResultCache:
    """A thread-safe LRU bounded by entry count and by the total bytes of its numpy arrays."""

    def __init__(self, max_entries: int = 128, max_bytes: int = 512 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._items and (
                len(self._items) > self.max_entries or self._bytes > self.max_bytes
            ):
                _, (_, size) = self._items.popitem(last=False)
                self._bytes -= size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


RESULTS = ResultCache()


def clear_caches() -> None:
    """Forget every cached result and loaded model (tests; freeing memory)."""
    RESULTS.clear()
    _cached_file_bundle.clear()
    _cached_application_bundle.clear()


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


# ------------------------------------------------------------------------------------------------
# Error translation
# ------------------------------------------------------------------------------------------------
@contextmanager
def user_errors(action: str) -> Iterator[None]:
    """Turn any failure inside the block into a :class:`ServiceError` with a plain message."""
    try:
        yield
    except ServiceError:
        raise
    except ExplainerError as err:
        raise ServiceError(str(err)) from err
    except MemoryError as err:
        raise ServiceError(f"Not enough memory to {action}. Try a smaller image or model.") from err
    except Exception as err:  # the user sees one sentence; the server log keeps the traceback
        LOGGER.exception("unexpected error while trying to %s", action)
        detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise ServiceError(
            f"Could not {action}: unexpected {type(err).__name__}"
            + (f" ({detail})" if detail else "")
            + "."
        ) from err


# ------------------------------------------------------------------------------------------------
# Bundled assets
# ------------------------------------------------------------------------------------------------
def assets_dir() -> Path:
    return Path(os.environ.get("EXPLAINER_ASSETS_DIR", ASSETS_DIR))


def demo_models() -> list[DemoModel]:
    """The bundled demo models present on disk, the honest shapes model first."""
    folder = assets_dir() / "models"
    if not folder.is_dir():
        return []
    found = sorted(folder.glob("*.keras"), key=lambda p: (p.name not in DEMO_DESCRIPTIONS, p.name))
    return [DemoModel(p, DEMO_DESCRIPTIONS.get(p.name, p.stem)) for p in found]


def demo_labels() -> tuple[bytes, str] | None:
    """The bundled demo labels file (bytes, name), if present."""
    path = assets_dir() / "models" / "demo_labels.txt"
    return (path.read_bytes(), path.name) if path.is_file() else None


def samples() -> list[Sample]:
    """Bundled sample images (masks excluded): the honest shapes first, then the shortcut
    samples, then the photos in ``samples/photos/`` (for ImageNet models)."""
    folder = assets_dir() / "samples"
    if not folder.is_dir():
        return []
    suffixes = {f".{s}" for s in IMAGE_SUFFIXES}
    images = [
        p
        for p in [*folder.glob("*"), *(folder / "photos").glob("*")]
        if p.is_file()
        and p.suffix.lower() in suffixes
        and not p.stem.endswith(("_mask", "_marker"))
    ]
    images.sort(key=lambda p: (p.parent != folder, not p.stem.startswith("shapes_"), p.stem))

    def sibling(path: Path, suffix: str) -> Path | None:
        candidate = path.with_name(f"{path.stem}_{suffix}.png")
        return candidate if candidate.is_file() else None

    return [Sample(p, sibling(p, "mask"), sibling(p, "marker")) for p in images]


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
def _upload_dir() -> Path:
    folder = Path(tempfile.gettempdir()) / "cnn-explainer-uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_model_upload(file_name: str, data: bytes) -> tuple[Path, str]:
    """Write uploaded model bytes to a content-addressed file; returns (path, SHA-256)."""
    suffix = Path(file_name).suffix.lower()
    if suffix.lstrip(".") not in MODEL_SUFFIXES:
        raise ServiceError(
            f"{file_name!r} is not a Keras model file: expected .keras, .h5 or .hdf5, "
            f"got {suffix or 'no extension'!r}."
        )
    if not data:
        raise ServiceError(f"{file_name!r} is empty (0 bytes).")
    digest = sha256_bytes(data)
    path = _upload_dir() / f"{digest}{suffix}"
    if not path.exists():
        partial = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}.part")
        partial.write_bytes(data)
        partial.replace(path)
    return path, digest


def file_model_ref(
    path: Path,
    *,
    file_name: str | None = None,
    sha256: str | None = None,
    preprocessing: str = "auto",
    labels: tuple[bytes, str] | None = None,
) -> ModelRef:
    """A reference to a model file on this machine (hashing it when ``sha256`` is not given)."""
    if sha256 is None:
        with user_errors(f"read {path.name}"):
            sha256 = explainers.models.file_sha256(path)
    return ModelRef(
        kind="file",
        location=str(path),
        file_name=file_name or path.name,
        sha256=sha256,
        preprocessing=preprocessing,
        labels=labels[0] if labels else None,
        labels_name=labels[1] if labels else None,
    )


def application_model_ref(
    name: str, *, preprocessing: str = "auto", labels: tuple[bytes, str] | None = None
) -> ModelRef:
    return ModelRef(
        kind="application",
        location=name,
        file_name=f"keras.applications.{name}",
        sha256=f"keras.applications:{name}:imagenet",
        preprocessing=preprocessing,
        labels=labels[0] if labels else None,
        labels_name=labels[1] if labels else None,
    )


@st.cache_resource(max_entries=6, show_spinner=False)
def _cached_file_bundle(
    key: tuple[str, str, str | None], _path: str, _name: str, _labels: bytes | None
) -> explainers.ModelBundle:
    _count("load_model")
    return explainers.load_model(_path, preprocessing=key[1], labels=_labels, name=_name)  # type: ignore[arg-type]


@st.cache_resource(max_entries=2, show_spinner=False)
def _cached_application_bundle(
    name: str, preprocessing: str, labels_sha: str | None, _labels: bytes | None
) -> explainers.ModelBundle:
    _count("load_model")
    bundle = explainers.load_application(name)
    if preprocessing == "auto" and _labels is None:
        return bundle
    return explainers.bundle_from_model(
        bundle.model,
        preprocessing=preprocessing,  # type: ignore[arg-type]
        labels=_labels,
        name=bundle.name,
        source=bundle.source,
    )


def _bundle(ref: ModelRef) -> explainers.ModelBundle:
    if ref.kind == "application":
        return _cached_application_bundle(
            ref.location, ref.preprocessing, ref.labels_sha256, ref.labels
        )
    return _cached_file_bundle(ref.key, ref.location, ref.file_name, ref.labels)


def _summarise_method(info: explainers.MethodInfo) -> MethodSummary:
    spec = info.spec
    return MethodSummary(
        name=spec.name,
        label=spec.label,
        family=spec.family,
        description=spec.description,
        reference=spec.reference,
        reference_url=spec.reference_url,
        cost=spec.cost,
        formula=spec.formula,
        caveats=spec.caveats,
        params=tuple(spec.params),
        uses_layer=spec.uses_layer,
        engines=tuple(spec.engines),
        applicable=info.applicable,
        reason=info.reason,
    )


def method_catalogue() -> tuple[MethodSummary, ...]:
    """Every registered method, not tied to a model (for the Guide without a model)."""
    with user_errors("list the explanation methods"):
        return tuple(_summarise_method(info) for info in explainers.available_methods())


def load_model(ref: ModelRef) -> ModelSummary:
    """Load (or fetch from cache) the model ``ref`` points to and describe it.

    Raises
    ------
    ServiceError
        With a plain message (bad file, unsupported model, offline download, bad labels...).
    """
    if ref.preprocessing not in PREPROCESSING_OPTIONS:
        raise ServiceError(
            f"Unknown preprocessing {ref.preprocessing!r}; choose one of "
            f"{', '.join(PREPROCESSING_OPTIONS)}."
        )
    with user_errors(f"load {ref.file_name}"):
        bundle = _bundle(ref)
        methods = tuple(_summarise_method(info) for info in explainers.available_methods(bundle))
        return ModelSummary(
            ref=ref,
            name=bundle.name,
            source=bundle.source,
            sha256=ref.sha256 if ref.kind == "file" else "",
            input_size=bundle.input_size,
            channels=bundle.channels,
            preprocessing=bundle.preprocessing,
            preprocessing_reason=bundle.preprocessing_reason,
            class_names=bundle.class_names,
            output_kind=bundle.output_kind,
            output_layer=bundle.output_layer,
            n_params=bundle.n_params,
            layers=bundle.layers,
            spatial_layers=tuple(bundle.spatial_layers),
            default_layer=bundle.default_layer,
            cam_head=bundle.cam_head.feature_layer if bundle.cam_head else None,
            methods=methods,
        )


def method_reason(model: ModelSummary, method: str, layer: str | None) -> str | None:
    """Why ``method`` cannot explain ``model`` at ``layer`` (None when it can)."""
    with user_errors(f"check {method}"):
        return explainers.get_method(method).unavailable_reason(_bundle(model.ref), layer)


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------
def _read_mask(path: Path | None, shape: tuple[int, int]) -> np.ndarray | None:
    if path is None:
        return None
    try:
        mask = explainers.load_image(path)[:, :, 0] > 127
    except ExplainerError:
        return None
    return mask if mask.shape == shape else None


def load_image_bytes(
    name: str, data: bytes, source: Literal["upload", "camera"] = "upload"
) -> LoadedImage:
    """Decode an uploaded image (PNG, JPEG, WebP, BMP, GIF, TIFF)."""
    with user_errors(f"read the image {name}"):
        pixels = explainers.load_image(data)
    return LoadedImage(name, sha256_bytes(data), _readonly(pixels), source)


def load_sample(sample: Sample) -> LoadedImage:
    """A bundled sample with its object mask (and corner-marker mask, for shortcut samples)."""
    with user_errors(f"read the sample {sample.name}"):
        data = sample.path.read_bytes()
        pixels = explainers.load_image(data)
    shape = pixels.shape[:2]
    mask = _read_mask(sample.mask_path, shape)
    marker = _read_mask(sample.marker_path, shape)
    return LoadedImage(
        sample.name,
        sha256_bytes(data),
        _readonly(pixels),
        "sample",
        mask=None if mask is None else _readonly(mask),
        marker=None if marker is None else _readonly(marker),
    )


# ------------------------------------------------------------------------------------------------
# Computation
# ------------------------------------------------------------------------------------------------
def predictions(model: ModelSummary, image: LoadedImage, k: int = 5) -> list[Prediction]:
    """The ``k`` most probable classes, best first."""
    key = ("predict", model.ref.key, image.sha256)
    probs = RESULTS.get(key)
    if probs is None:
        with user_errors("classify the image"):
            _count("predict")
            probs = _readonly(_bundle(model.ref).predict(image.pixels))
        RESULTS.put(key, probs, probs.nbytes)
    order = np.argsort(-probs)[: max(1, min(k, len(probs)))]
    return [Prediction(int(i), model.class_names[i], float(probs[i])) for i in order]


def explanation_request(
    model: ModelSummary,
    image: LoadedImage,
    method: str,
    params: Mapping[str, Any],
    *,
    target: int | None,
    layer: str | None = None,
    engine: str = "native",
) -> ExplanationRequest:
    """Validate ``params`` (raises ServiceError) and build the cache key of one explanation."""
    with user_errors(f"prepare {method}"):
        spec = explainers.get_method(method)
        resolved = spec.resolve_params(params)
    return ExplanationRequest(
        model=model.ref,
        image_sha256=image.sha256,
        method=method,
        params=tuple(sorted(resolved.items())),
        target=target,
        layer=layer if spec.uses_layer else None,
        engine=engine,
    )


def cached_explanation(request: ExplanationRequest) -> ExplanationResult | None:
    """The cached result of ``request``, or None (never computes)."""
    return RESULTS.get(request.key)


def explain(
    request: ExplanationRequest, image: LoadedImage, progress: ProgressCallback | None = None
) -> ExplanationResult:
    """Compute (or fetch) one explanation. ``progress(fraction, message)`` is called while a
    long method runs. Raises :class:`ServiceError` with a plain message."""
    if image.sha256 != request.image_sha256:
        raise ServiceError("The image changed while the explanation was being prepared.")
    cached = RESULTS.get(request.key)
    if cached is not None:
        return cached
    label = request.method
    with user_errors(f"compute {request.method}"):
        spec = explainers.get_method(request.method)
        label = spec.label
        _count(f"explain:{request.method}")
        result = explainers.explain(
            _bundle(request.model),
            image.pixels,
            request.method,
            target=request.target,
            layer=request.layer,
            engine=request.engine,
            progress=progress,
            **dict(request.params),
        )
    outcome = ExplanationResult(
        attribution=_readonly(result.attribution),
        method=result.method,
        method_label=label,
        params=dict(result.params),
        target=result.target,
        target_label=result.label,
        score=result.score,
        layer=result.layer,
        engine=result.engine,
        seconds=result.seconds,
        extras=dict(result.extras),
    )
    RESULTS.put(request.key, outcome, outcome.attribution.nbytes)
    return outcome


def feature_maps(model: ModelSummary, image: LoadedImage, layer: str) -> np.ndarray:
    """The activations of a spatial ``layer`` for ``image``: float32 (h, w, channels)."""
    if layer not in model.spatial_layers:
        raise ServiceError(f"Layer {layer!r} has no spatial (height × width × channels) output.")
    key = ("features", model.ref.key, image.sha256, layer)
    cached = RESULTS.get(key)
    if cached is not None:
        return cached
    with user_errors(f"compute the feature maps of {layer}"):
        _count("features")
        bundle = _bundle(model.ref)
        _, _, acts = bundle.runner.activations(bundle.model_input(image.pixels), layer)
    maps = _readonly(np.asarray(acts[0], np.float32))
    RESULTS.put(key, maps, maps.nbytes)
    return maps


def streamlit_progress(container: Any, label: str) -> tuple[ProgressCallback, Callable[[], None]]:
    """A progress callback that drives an ``st.progress`` bar in ``container`` (an
    ``st.empty()`` slot), and a function that removes the bar.

    The library calls ``progress(fraction, message)`` from the thread that computes; in this
    process that is the script thread, so updating the element directly is safe. (A worker-process
    version would forward the same calls through a queue.)"""
    bar = container.progress(0.0, text=f"{label}: starting…")

    def progress(fraction: float, message: str) -> None:
        # The library's messages usually name their method already ("occlusion: 12/121 patches").
        text = message if ":" in message else f"{label}: {message}"
        bar.progress(min(1.0, max(0.0, float(fraction))), text=text)

    return progress, container.empty


def versions() -> dict[str, str]:
    """Versions worth recording in a report."""
    import keras
    import tensorflow as tf

    return {
        "explainers": explainers.__version__,
        "TensorFlow": tf.__version__,
        "Keras": keras.__version__,
        "Streamlit": st.__version__,
        "NumPy": np.__version__,
        "Python": platform.python_version(),
    }
