"""The only place the dashboard asks for model computations.

The widgets and pages read TensorFlow-free library modules directly (``explainers.render``,
:class:`~explainers.core.specs.ParamSpec`); everything that needs a model comes through here.

Pages hand this module plain data (file bytes, paths, uint8 arrays, small frozen dataclasses) and
get plain data back (:class:`ModelSummary`, :class:`LoadedImage`, :class:`ExplanationResult`,
numpy arrays). No Keras object crosses this boundary.

Where the computation runs
--------------------------
Models are loaded and run in worker processes (:mod:`dashboard.worker`), never in this one: a model
file is an untrusted program, and a crash inside TensorFlow must cost one request, not the
dashboard. This process decodes images (Pillow, with the library's checks) and renders maps; every
model call is a request to the pool. A worker that crashes or runs past its time or memory limit
raises a *retryable* :class:`ServiceError`; the failure is remembered for that request (so a
rerun of the page does not crash the worker again) until the user presses Retry
(:func:`forget_failure`).

Caching
-------
* Loaded models: inside each worker, an LRU keyed by the model file's SHA-256, the preprocessing
  choice and the SHA-256 of the labels.
* Model summaries, explanations, predictions and feature maps: one explicit, thread-safe, bounded
  LRU here (:class:`ResultCache`), keyed by (model key, image SHA-256, method, resolved parameters,
  target, layer, engine). Display settings are never part of a key: changing them re-renders the
  cached raw map without any model call.

Every library error (:class:`explainers.ExplainerError`) becomes a :class:`ServiceError` whose
message is a plain sentence for the user; unexpected errors are logged with their traceback on the
server (by the worker, for model calls) and reported to the user in one line.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import streamlit as st

import explainers
from explainers import ExplainerError
from explainers.core.specs import ProgressCallback
from explainers.io import model_files
from explainers.io.model_files import (
    KERAS_APPLICATIONS,
    PREPROCESSING_CHOICES,
    PREPROCESSING_HELP,
    TASK_CHOICES,
    file_sha256,
)
from explainers.registry import resolve_params

from . import worker
from .protocol import (
    AttackOutcome,
    AuditReview,
    AuditRunOutcome,
    EvaluationOutcome,
    ExplanationRequest,
    ExplanationResult,
    MethodSummary,
    ModelRef,
    ModelSummary,
    Prediction,
    SanityOutcome,
    ServiceError,
    pixels_digest,
)

__all__ = [
    "AttackOutcome",
    "AuditReview",
    "AuditRunOutcome",
    "EvaluationOutcome",
    "ExplanationRequest",
    "ExplanationResult",
    "MethodSummary",
    "ModelRef",
    "ModelSummary",
    "Prediction",
    "SanityOutcome",
    "ServiceError",
]

LOGGER = logging.getLogger(__name__)

#: Where the bundled demo models and sample images live; ``EXPLAINER_ASSETS_DIR`` overrides it.
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
#: The uploader's accepted extensions (without the dot), from the library's list.
MODEL_SUFFIXES = tuple(suffix.lstrip(".") for suffix in model_files.MODEL_SUFFIXES)
IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
LABEL_SUFFIXES = ("txt", "json")
#: The largest model file accepted; Streamlit's own upload limit (``server.maxUploadSize`` in
#: .streamlit/config.toml) is set to the same size.
MAX_UPLOAD_BYTES = 200 * 2**20
APPLICATION_NAMES: tuple[str, ...] = tuple(KERAS_APPLICATIONS)
PREPROCESSING_OPTIONS: tuple[str, ...] = PREPROCESSING_CHOICES
PREPROCESSING_DESCRIPTIONS: dict[str, str] = dict(PREPROCESSING_HELP)
TASK_OPTIONS: tuple[str, ...] = TASK_CHOICES
TASK_DESCRIPTIONS: dict[str, str] = {
    "auto": "auto — recognise it from the output",
    "classification": "classification — one class (softmax)",
    "multilabel": "multi-label — independent sigmoid labels",
    "regression": "regression — linear output values",
    "segmentation": "segmentation — a class per pixel",
}
#: The demo models we know how to describe; any other ``*.keras`` in assets/models is listed too.
DEMO_DESCRIPTIONS: dict[str, str] = {
    "demo_shapes.keras": "Shapes CNN — honest",
    "demo_shortcut.keras": "Shapes CNN — shortcut (cheats)",
    "demo_fixed.keras": "Shapes CNN — fixed (right for the right reasons)",
    "demo_segmentation.keras": "Shapes segmentation (encoder–decoder)",
    "demo_multilabel.keras": "Shapes multi-label (several shapes per image)",
}
DEMO_NOTES: dict[str, str] = {
    "demo_shapes.keras": "Trained on cluttered images of circles, squares, triangles and stars.",
    "demo_shortcut.keras": "Trained on images whose coloured corner marker gives the class away: "
    "it learned to look at the corner. Try the shortcut_* samples.",
    "demo_fixed.keras": "Trained on the shortcut model's images, with Right for the Right Reasons "
    "penalising its input gradient on the marker: it learned the shapes instead. Try the "
    "shortcut_* samples.",
    "demo_segmentation.keras": "Labels every pixel: background, circle, square, triangle or "
    "star. Pick a class and a region (its pixels, a clicked shape, a box) to explain. Try the "
    "scenes_* samples.",
    "demo_multilabel.keras": "Says which shapes an image contains (one sigmoid per shape): "
    "explain any label, not only the top one. Try the scenes_* samples.",
}


# ------------------------------------------------------------------------------------------------
# Plain data crossing the boundary
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LoadedImage:
    """An image ready to explain: uint8 (H, W, 3) pixels and, for samples, ground-truth masks.

    ``mask`` / ``marker`` are bool (H, W) arrays: the object's pixels and, for shortcut samples,
    the corner marker's pixels.
    """

    name: str
    sha256: str
    pixels: np.ndarray
    source: Literal["sample", "upload", "camera", "adversarial"]
    mask: np.ndarray | None = None
    marker: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


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
#: Requests whose computation crashed or ran past a limit, with the message shown (see Retry).
_FAILURES: OrderedDict[Hashable, str] = OrderedDict()
_FAILURES_LOCK = threading.Lock()


def clear_caches() -> None:
    """Forget every cached result and failure, and the models the workers hold (tests; memory)."""
    RESULTS.clear()
    with _FAILURES_LOCK:
        _FAILURES.clear()
    running = worker.existing_pool()
    if running is not None:
        running.broadcast("clear")


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
    """The bundled demo models present on disk: the known ones in :data:`DEMO_DESCRIPTIONS`'
    order (the honest shapes model first), then any other by name."""
    folder = assets_dir() / "models"
    if not folder.is_dir():
        return []
    known = list(DEMO_DESCRIPTIONS)
    found = sorted(
        folder.glob("*.keras"),
        key=lambda p: (known.index(p.name) if p.name in known else len(known), p.name),
    )
    return [DemoModel(p, DEMO_DESCRIPTIONS.get(p.name, p.stem)) for p in found]


def demo_labels(model: Path | None = None) -> tuple[bytes, str] | None:
    """The bundled labels file (bytes, name) of demo ``model``: its own
    ``<name>_labels.txt`` where there is one (the segmentation model's classes include the
    background), else the shared ``demo_labels.txt``; None if neither is present."""
    folder = assets_dir() / "models"
    candidates = [folder / f"{model.stem}_labels.txt"] if model is not None else []
    for path in [*candidates, folder / "demo_labels.txt"]:
        if path.is_file():
            return path.read_bytes(), path.name
    return None


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
        and not p.stem.endswith(("_mask", "_marker", "_labels"))
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


def _safe_file_name(file_name: str, suffix: str) -> str:
    """The base name of an uploaded file, reduced to characters safe in a path."""
    stem = Path(file_name.replace("\\", "/")).name[: -len(suffix) or None]
    cleaned = "".join(c if c.isalnum() or c in "-_. " else "_" for c in stem).strip(" .")
    return f"{cleaned[:80] or 'model'}{suffix}"


def store_model_upload(file_name: str, data: bytes) -> tuple[Path, str]:
    """Write uploaded model bytes to ``<uploads>/<SHA-256>/<file name>``; returns (path, SHA-256).

    The folder is content-addressed (the same bytes are stored once, whoever uploads them) and
    the file keeps the user's name, so every message about it names the file the user chose.
    """
    suffix = Path(file_name).suffix.lower()
    if suffix.lstrip(".") not in MODEL_SUFFIXES:
        raise ServiceError(
            f"{file_name!r} is not a Keras model file: expected .keras, .h5 or .hdf5, "
            f"got {suffix or 'no extension'!r}."
        )
    if not data:
        raise ServiceError(f"{file_name!r} is empty (0 bytes).")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ServiceError(
            f"{file_name!r} is {len(data) / 2**20:.0f} MB; the largest model file this dashboard "
            f"accepts is {MAX_UPLOAD_BYTES / 2**20:.0f} MB."
        )
    digest = sha256_bytes(data)
    folder = _upload_dir() / digest
    folder.mkdir(exist_ok=True)
    path = folder / _safe_file_name(file_name, suffix)
    if not path.exists():
        partial = folder / f".{os.getpid()}.{threading.get_ident()}.part"
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
    task: str = "auto",
) -> ModelRef:
    """A reference to a model file on this machine (hashing it when ``sha256`` is not given)."""
    if sha256 is None:
        with user_errors(f"read {path.name}"):
            sha256 = file_sha256(path)
    return ModelRef(
        kind="file",
        location=str(path),
        file_name=file_name or path.name,
        sha256=sha256,
        preprocessing=preprocessing,
        labels=labels[0] if labels else None,
        labels_name=labels[1] if labels else None,
        task=task,
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


def start_workers() -> None:
    """Start the compute workers in the background (each imports TensorFlow) if not yet started."""
    worker.pool()


def _call(
    job: str,
    kwargs: dict[str, Any],
    *,
    action: str,
    model: ModelRef | None = None,
    progress: ProgressCallback | None = None,
    timeout_s: float | None = None,
) -> Any:
    """Run ``job`` in a compute worker; every failure arrives as a :class:`ServiceError`.

    A result that is not of the type ``job`` returns is refused (never cached). With
    ``EXPLAINER_CALL_LOG`` set to a file path, every call appends one line (time, job) to it: how
    a benchmark in another process counts model calls."""
    log = os.environ.get("EXPLAINER_CALL_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{time.time():.3f} {job}\n")
    value = worker.pool().call(
        job,
        kwargs,
        action=action,
        model_key=model.key if model is not None else None,
        progress=progress,
        timeout_s=timeout_s,
    )
    expected = _RESULT_TYPES.get(job)
    if expected is not None and not isinstance(value, expected):
        LOGGER.error("job %s answered with a %s", job, type(value).__name__)
        raise ServiceError(
            f"Could not {action}: the compute worker's answer was of the wrong kind "
            f"({type(value).__name__}), so it was discarded. Try again.",
            retryable=True,
        )
    return value


#: What each job returns; checked on every reply before anything reads or caches it.
_RESULT_TYPES: dict[str, type | tuple[type, ...]] = {
    "describe": ModelSummary,
    "method_reason": (str, type(None)),
    "predict": np.ndarray,
    "explain": ExplanationResult,
    "feature_maps": np.ndarray,
    "attack": AttackOutcome,
    "evaluate": EvaluationOutcome,
    "sanity": SanityOutcome,
    "audit": AuditRunOutcome,
    "audit_analysis": AuditReview,
    "audit_report": str,
    "catalogue": tuple,
}


def method_catalogue() -> tuple[MethodSummary, ...]:
    """Every registered method, not tied to a model (for the Guide without a model). Asked of a
    worker: loading the methods imports TensorFlow, which this process never does."""
    key = ("catalogue",)
    cached = RESULTS.get(key)
    if cached is None:
        cached = _call("catalogue", {}, action="list the explanation methods")
        RESULTS.put(key, cached, 0)
    return cached


def load_model(ref: ModelRef) -> ModelSummary:
    """Load the model ``ref`` points to (in a worker) and describe it; cached per model key.

    Raises
    ------
    ServiceError
        With a plain message (bad or unsafe file, unsupported model, offline download, bad
        labels, a crashed worker...).
    """
    if ref.preprocessing not in PREPROCESSING_OPTIONS:
        raise ServiceError(
            f"Unknown preprocessing {ref.preprocessing!r}; choose one of "
            f"{', '.join(PREPROCESSING_OPTIONS)}."
        )
    key = ("summary", ref.key)
    cached = RESULTS.get(key)
    if cached is not None:
        return cached
    _count("load_model")
    pool = worker.pool()
    summary = _call(
        "describe",
        {"ref": ref},
        action=f"load {ref.file_name}",
        model=ref,
        timeout_s=pool.settings.load_timeout_s,
    )
    RESULTS.put(key, summary, 0)
    return summary


def method_reason(model: ModelSummary, method: str, layer: str | None) -> str | None:
    """Why ``method`` cannot explain ``model`` at ``layer`` (None when it can)."""
    key = ("reason", model.ref.key, method, layer)
    if key in RESULTS:
        return RESULTS.get(key)[0]
    reason = _call(
        "method_reason",
        {"ref": model.ref, "method": method, "layer": layer},
        action=f"check {method}",
        model=model.ref,
    )
    RESULTS.put(key, (reason,), 0)
    return reason


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
        _count("predict")
        probs = _call(
            "predict",
            {"ref": model.ref, "pixels": image.pixels},
            action="classify the image",
            model=model.ref,
        )
        if not isinstance(probs, np.ndarray) or probs.shape != (model.n_classes,):
            raise ServiceError(
                "Could not classify the image: the compute worker's answer was not "
                f"{model.n_classes} class probabilities, so it was discarded. Try again.",
                retryable=True,
            )
        probs = _readonly(probs)
        RESULTS.put(key, probs, probs.nbytes)
    order = np.argsort(-probs)[: max(1, min(k, len(probs)))]
    return [Prediction(int(i), model.class_names[i], float(probs[i])) for i in order]


def segmentation(model: ModelSummary, image: LoadedImage) -> np.ndarray:
    """A segmentation model's predicted class per output pixel, (h_out, w_out) ints; cached."""
    if model.task != "segmentation":
        raise ServiceError(f"{model.name} is a {model.task} model, not a segmentation model.")
    key = ("segment", model.ref.key, image.sha256)
    cached = RESULTS.get(key)
    if cached is None:
        _count("segment")
        cached = _call(
            "segment",
            {"ref": model.ref, "pixels": image.pixels},
            action="segment the image",
            model=model.ref,
        )
        _refuse_unless(
            isinstance(cached, np.ndarray)
            and cached.shape == tuple(model.output_shape[:2])
            and int(cached.max(initial=0)) < model.n_classes,
            "segment the image",
        )
        cached = _readonly(cached)
        RESULTS.put(key, cached, cached.nbytes)
    return cached


def explanation_request(
    model: ModelSummary,
    image: LoadedImage,
    method: str,
    params: Mapping[str, Any],
    *,
    target: int | str | None,
    layer: str | None = None,
    engine: str = "native",
) -> ExplanationRequest:
    """Validate ``params`` (raises ServiceError) and build the cache key of one explanation."""
    # The model's own method summaries carry the parameter specs: no method code is loaded here.
    summary = model.method(method)
    with user_errors(f"prepare {method}"):
        resolved = resolve_params(method, summary.params, params)
    return ExplanationRequest(
        model=model.ref,
        image_sha256=image.sha256,
        method=method,
        params=tuple(sorted(resolved.items())),
        target=target,
        layer=layer if summary.uses_layer else None,
        engine=engine,
    )


def cached_explanation(request: ExplanationRequest) -> ExplanationResult | None:
    """The cached result of ``request``, or None (never computes)."""
    return RESULTS.get(request.key)


def remembered_failure(key: Hashable) -> str | None:
    """The message of a crash / time-out / memory failure of ``key`` not yet retried, or None."""
    with _FAILURES_LOCK:
        return _FAILURES.get(key)


def forget_failure(key: Hashable) -> None:
    """Let the next request for ``key`` run again (the user pressed Retry)."""
    with _FAILURES_LOCK:
        _FAILURES.pop(key, None)


def _remember_failure(key: Hashable, message: str) -> None:
    with _FAILURES_LOCK:
        _FAILURES[key] = message
        _FAILURES.move_to_end(key)
        while len(_FAILURES) > 256:
            _FAILURES.popitem(last=False)


@contextmanager
def _remembering(key: Hashable) -> Iterator[None]:
    """Re-raise a remembered failure of ``key``; remember a new retryable one."""
    message = remembered_failure(key)
    if message is not None:
        raise ServiceError(message, retryable=True, retry_key=key)
    try:
        yield
    except ServiceError as err:
        if err.retryable:
            _remember_failure(key, str(err))
            err.retry_key = key
        raise


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
    with _remembering(request.key):
        _count(f"explain:{request.method}")
        outcome = _call(
            "explain",
            {
                "ref": request.model,
                "pixels": image.pixels,
                "method": request.method,
                "params": dict(request.params),
                "target": request.target,
                "layer": request.layer,
                "engine": request.engine,
            },
            action=f"compute {request.method}",
            model=request.model,
            progress=progress,
        )
    _check_explanation(request, image, outcome)
    outcome = ExplanationResult(
        **{**outcome.__dict__, "attribution": _readonly(outcome.attribution)}
    )
    RESULTS.put(request.key, outcome, outcome.attribution.nbytes)
    return outcome


def _refuse_unless(matches: bool, action: str, detail: str = "") -> None:
    """Refuse (and so never cache) a worker's answer that is not the one asked for."""
    if not matches:
        LOGGER.error("refused a reply that does not match its request: %s %s", action, detail)
        what = f" ({detail})" if detail else ""
        raise ServiceError(
            f"Could not {action}: the compute worker's answer did not match the request{what}, "
            "so it was discarded. Press Retry.",
            retryable=True,
        )


def _check_explanation(request: ExplanationRequest, image: LoadedImage, outcome: Any) -> None:
    """Refuse (and never cache) a result that is not the answer to ``request`` on ``image``.

    The worker protocol already pairs every reply with its request; this is the second lock on
    the shared cache, which every session reads."""
    problems: list[str] = []
    if not isinstance(outcome, ExplanationResult):
        problems.append(f"got a {type(outcome).__name__}")
    else:
        if outcome.method != request.method:
            problems.append(f"method {outcome.method!r} ≠ {request.method!r}")
        if outcome.engine != request.engine:
            problems.append(f"engine {outcome.engine!r} ≠ {request.engine!r}")
        if isinstance(request.target, int) and outcome.target != request.target:
            problems.append(f"target {outcome.target} ≠ {request.target}")
        if request.layer is not None and outcome.layer != request.layer:
            problems.append(f"layer {outcome.layer!r} ≠ {request.layer!r}")
        if dict(outcome.params) != dict(request.params):
            problems.append(f"parameters {outcome.params} ≠ {dict(request.params)}")
        if outcome.pixels_sha256 != pixels_digest(image.pixels):
            problems.append("computed on other pixels")
        if outcome.attribution.shape != image.pixels.shape[:2]:
            problems.append(
                f"map shape {outcome.attribution.shape} ≠ image {image.pixels.shape[:2]}"
            )
    _refuse_unless(not problems, f"compute {request.method}", "; ".join(problems))


def feature_maps(model: ModelSummary, image: LoadedImage, layer: str) -> np.ndarray:
    """The activations of a spatial ``layer`` for ``image``: float32 (h, w, channels)."""
    if layer not in model.spatial_layers:
        raise ServiceError(f"Layer {layer!r} has no spatial (height × width × channels) output.")
    key = ("features", model.ref.key, image.sha256, layer)
    cached = RESULTS.get(key)
    if cached is not None:
        return cached
    with _remembering(key):
        _count("features")
        maps = _call(
            "feature_maps",
            {"ref": model.ref, "pixels": image.pixels, "layer": layer},
            action=f"compute the feature maps of {layer}",
            model=model.ref,
        )
    _refuse_unless(np.ndim(maps) == 3, f"compute the feature maps of {layer}")
    maps = _readonly(np.asarray(maps, np.float32))
    RESULTS.put(key, maps, maps.nbytes)
    return maps


# ------------------------------------------------------------------------------------------------
# Robustness and evaluation
# ------------------------------------------------------------------------------------------------
ATTACK_METHODS = ("fgsm", "pgd")
#: Blocks the dashboard's sanity check randomises at most (the demo model has 5).
SANITY_MAX_STEPS = 12


def _array_digest(array: np.ndarray | None) -> str | None:
    return None if array is None else pixels_digest(array)


def attack(
    model: ModelSummary,
    image: LoadedImage,
    method: str,
    *,
    epsilon: float,
    steps: int = 10,
    step_size: float | None = None,
    target: int | None = None,
    seed: int = 0,
    subject: str | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[AttackOutcome, LoadedImage]:
    """An adversarial version of ``image`` (FGSM or PGD, L∞ budget ``epsilon`` in pixel levels)
    and the attacked image as a :class:`LoadedImage` the other functions can explain."""
    if method not in ATTACK_METHODS:
        raise ServiceError(f"Unknown attack {method!r}; choose one of {', '.join(ATTACK_METHODS)}.")
    options = {
        "epsilon": float(epsilon),
        "steps": int(steps),
        "step_size": None if step_size is None else float(step_size),
        "target": target,
        "seed": int(seed),
    }
    if subject is not None:
        options["subject"] = subject  # a segmentation region (its text form)
    key = ("attack", model.ref.key, image.sha256, method, tuple(sorted(options.items())))
    outcome = RESULTS.get(key)
    if outcome is None:
        with _remembering(key):
            _count("attack")
            outcome = _call(
                "attack",
                {"ref": model.ref, "pixels": image.pixels, "method": method, "options": options},
                action=f"run the {method.upper()} attack",
                model=model.ref,
                progress=progress,
            )
        _refuse_unless(
            outcome.method == method
            and outcome.epsilon == float(epsilon)
            and outcome.target == target
            and outcome.adversarial.shape == image.pixels.shape,
            f"run the {method.upper()} attack",
        )
        RESULTS.put(key, outcome, outcome.adversarial.nbytes + outcome.perturbation.nbytes)
    adversarial = LoadedImage(
        name=f"{image.name} · {method.upper()} ε={epsilon:g}",
        sha256=_array_digest(outcome.adversarial) or "",
        pixels=_readonly(outcome.adversarial),
        source="adversarial",
        mask=image.mask,
        marker=image.marker,
    )
    return outcome, adversarial


def evaluate(
    model: ModelSummary,
    image: LoadedImage,
    maps: Mapping[str, np.ndarray],
    *,
    target: int | str,
    mask: np.ndarray | None = None,
    step: float = 0.02,
    deletion_substrate: str = "blur",
    insertion_substrate: str = "blur",
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> EvaluationOutcome:
    """Deletion and insertion curves (and, with ``mask``, pointing game and energy in the mask)
    of each map in ``maps`` (float (H, W) at the image's size), plus a random-map row."""
    options = {
        "step": float(step),
        "deletion_substrate": deletion_substrate,
        "insertion_substrate": insertion_substrate,
        "seed": int(seed),
        "tolerance": 0,
    }
    key = (
        "evaluate",
        model.ref.key,
        image.sha256,
        tuple((name, _array_digest(m)) for name, m in maps.items()),
        target,
        _array_digest(mask),
        tuple(sorted(options.items())),
    )
    cached = RESULTS.get(key)
    if cached is not None:
        return cached
    with _remembering(key):
        _count("evaluate")
        outcome = _call(
            "evaluate",
            {
                "ref": model.ref,
                "pixels": image.pixels,
                "maps": {name: np.asarray(m, np.float32) for name, m in maps.items()},
                "target": target,
                "mask": None if mask is None else np.asarray(mask, bool),
                "options": options,
            },
            action="compute the deletion and insertion curves",
            model=model.ref,
            progress=progress,
        )
    _refuse_unless(
        outcome.target == target
        and {row.name for row in outcome.rows} >= set(maps)
        and outcome.deletion_substrate == deletion_substrate,
        "compute the deletion and insertion curves",
    )
    RESULTS.put(key, outcome, 0)
    return outcome


def sanity_check(
    model: ModelSummary,
    image: LoadedImage,
    methods: tuple[str, ...],
    *,
    target: int | str,
    mode: str = "cascading",
    params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    max_steps: int | None = SANITY_MAX_STEPS,
    progress: ProgressCallback | None = None,
) -> SanityOutcome:
    """The model-parameter randomisation test of ``methods`` (each method's map recomputed on
    copies of the model with more and more layers re-initialised from the top).

    At most ``max_steps`` blocks are randomised (from the output side): a deep
    ``keras.applications`` model has dozens, and every step recomputes every method."""
    params = {name: dict(values) for name, values in (params or {}).items()}
    key = (
        "sanity",
        model.ref.key,
        image.sha256,
        tuple(methods),
        target,
        mode,
        tuple((m, tuple(sorted(p.items()))) for m, p in sorted(params.items())),
        int(seed),
        max_steps,
    )
    cached = RESULTS.get(key)
    if cached is not None:
        return cached
    with _remembering(key):
        _count("sanity")
        outcome = _call(
            "sanity",
            {
                "ref": model.ref,
                "pixels": image.pixels,
                "methods": tuple(methods),
                "target": target,
                "options": {
                    "mode": mode,
                    "seed": int(seed),
                    "params": params,
                    "max_steps": max_steps,
                },
            },
            action="run the randomisation sanity check",
            model=model.ref,
            progress=progress,
        )
    _refuse_unless(
        tuple(outcome.methods) == tuple(methods)
        and (isinstance(target, str) or outcome.target == int(target))
        and outcome.mode == mode,
        "run the randomisation sanity check",
    )
    size = sum(m.nbytes for maps in outcome.maps.values() for m in maps)
    RESULTS.put(key, outcome, size)
    return outcome


# ------------------------------------------------------------------------------------------------
# Dataset audits
# ------------------------------------------------------------------------------------------------
def audit_timeout_s() -> float:
    """The time limit of one audit job (``EXPLAINER_AUDIT_TIMEOUT_S``, default 6 h): a run is
    long by nature, and resumable, so the ordinary request limit does not apply."""
    text = os.environ.get("EXPLAINER_AUDIT_TIMEOUT_S", "").strip()
    try:
        return max(10.0, float(text)) if text else 6 * 3600.0
    except ValueError:
        return 6 * 3600.0


def run_audit(
    model: ModelRef,
    dataset: Mapping[str, Any],
    out: str | Path,
    *,
    methods: tuple[str, ...],
    map_size: int = 32,
    chunk_size: int = 32,
    resume: bool = True,
    progress: ProgressCallback | None = None,
) -> AuditRunOutcome:
    """Audit a dataset (a :attr:`dashboard.audits.DatasetChoice.spec`) with ``methods`` into the
    run folder ``out``, in a compute worker (:func:`explainers.audit.run_audit`). An exception
    from ``progress`` abandons the request; the worker stops at its next image and the committed
    chunks stay in the folder (``resume=True`` continues them)."""
    outcome = _call(
        "audit",
        {
            "ref": model,
            "dataset": dict(dataset),
            "out": str(out),
            "methods": tuple(methods),
            "map_size": int(map_size),
            "chunk_size": int(chunk_size),
            "resume": bool(resume),
        },
        action=f"audit the dataset with {model.file_name}",
        model=model,
        progress=progress,
        timeout_s=audit_timeout_s(),
    )
    _refuse_unless(outcome.out == str(out), "audit the dataset", "another run folder")
    return outcome


def _audit_key(kind: str, run: str | Path, version: str, method: str, group_by: str) -> tuple:
    return (kind, str(run), version, method, group_by)


def cached_audit_analysis(
    run: str | Path, version: str, method: str, group_by: str
) -> AuditReview | None:
    """The cached analysis of a run (``version``: :attr:`dashboard.audits.RunInfo.version`)."""
    return RESULTS.get(_audit_key("audit_analysis", run, version, method, group_by))


def audit_analysis(
    run: str | Path, version: str, method: str, group_by: str = "label"
) -> AuditReview:
    """Class mean maps, SpRAy (with its t-SNE embedding) and flags of a run's ``method`` maps,
    computed in a worker and cached per run folder and version."""
    key = _audit_key("audit_analysis", run, version, method, group_by)
    cached = RESULTS.get(key)
    if cached is not None:
        return cached
    with _remembering(key):
        _count("audit_analysis")
        review = _call(
            "audit_analysis",
            {"run": str(run), "method": method, "group_by": group_by},
            action=f"analyse the {method} maps of the run",
            timeout_s=audit_timeout_s(),
        )
    _refuse_unless(
        review.run == str(run) and review.method == method, "analyse the run", "another run"
    )
    size = sum(c.embedding.nbytes + c.cluster_mean_maps.nbytes for c in review.classes)
    RESULTS.put(key, review, size + review.mean_maps.nbytes)
    return review


def audit_report(run: str | Path, version: str, method: str, group_by: str = "label") -> str:
    """The run's self-contained HTML report (:func:`explainers.audit.audit_report`), built in a
    worker (it analyses the run again and reads its images) and cached."""
    key = _audit_key("audit_report", run, version, method, group_by)
    cached = RESULTS.get(key)
    if cached is not None:
        return cached
    with _remembering(key):
        _count("audit_report")
        page = _call(
            "audit_report",
            {"run": str(run), "method": method, "group_by": group_by},
            action="build the audit report",
            timeout_s=audit_timeout_s(),
        )
    RESULTS.put(key, page, len(page))
    return page


def streamlit_progress(container: Any, label: str) -> tuple[ProgressCallback, Callable[[], None]]:
    """A progress callback that drives an ``st.progress`` bar in ``container`` (an
    ``st.empty()`` slot), and a function that removes the bar.

    The worker's progress messages are read, and this callback called, in the script thread that
    waits for the result, so updating the element directly is safe."""
    bar = container.progress(0.0, text=f"{label}: starting…")

    def progress(fraction: float, message: str) -> None:
        # The library's messages usually name their method already ("occlusion: 12/121 patches").
        text = message if ":" in message else f"{label}: {message}"
        bar.progress(min(1.0, max(0.0, float(fraction))), text=text)

    return progress, container.empty


@functools.cache
def package_version(name: str) -> str:
    """An installed distribution's version, read from its metadata once (imports nothing;
    the report buttons ask on every rerun)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """Versions worth recording in a report (TensorFlow and Keras from their metadata: this
    process does not import them)."""
    return {
        "explainers": explainers.__version__,
        "TensorFlow": package_version("tensorflow"),
        "Keras": package_version("keras"),
        "Streamlit": st.__version__,
        "NumPy": np.__version__,
        "Python": platform.python_version(),
    }
