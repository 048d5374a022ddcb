"""Plain data exchanged between the dashboard and its compute workers, and the safe way to read it.

Everything here is a frozen dataclass of builtins, tuples and numpy arrays: no Keras object, no
Streamlit object. The Streamlit process builds requests from these types, a worker process
(:mod:`dashboard.worker`) answers with them, and the pages read them.

Why a restricted unpickler: a worker process runs uploaded model files, which are untrusted. If a
hostile file ever got code running inside a worker, an ordinary ``pickle.loads`` of the worker's
reply would hand that code to the Streamlit process too. :func:`loads` only rebuilds the types
named in :data:`ALLOWED_GLOBALS` (these dataclasses, numpy arrays and scalars, a few builtins), so
a reply can carry data and nothing that runs.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from explainers.core.layers import LayerInfo
from explainers.registry import ParamSpec


class ServiceError(Exception):
    """A failure the user should read: ``str(error)`` is a complete, plain sentence.

    ``retryable`` marks failures of the computation itself (the worker crashed, ran past its time
    or memory limit), where the same request may succeed when tried again.
    """

    def __init__(
        self, message: str, *, retryable: bool = False, retry_key: Hashable | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        #: The cache key under which the service remembers this failure (see Retry).
        self.retry_key = retry_key


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
    #: What the output does (``explainers.io.model_files.TASK_CHOICES``); "auto" recognises it.
    task: str = "auto"

    @property
    def labels_sha256(self) -> str | None:
        return hashlib.sha256(self.labels).hexdigest() if self.labels is not None else None

    @property
    def key(self) -> tuple[str, ...]:
        """The cache key of the loaded bundle: (model SHA-256, preprocessing, labels SHA-256),
        and the task when the user chose one."""
        base = (self.sha256, self.preprocessing, self.labels_sha256)
        return base if self.task == "auto" else (*base, self.task)


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
    #: Engines this method has that refuse this model, with the reason: ((engine, reason), ...).
    refused_engines: tuple[tuple[str, str], ...] = ()
    #: The method reports progress while it runs (its spec says so): the page shows a bar.
    reports_progress: bool = False

    @property
    def usable_engines(self) -> tuple[str, ...]:
        refused = {engine for engine, _ in self.refused_engines}
        return tuple(e for e in self.engines if e not in refused)


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
    #: What the explained output does: classification, multilabel, regression, segmentation.
    task: str = "classification"
    #: The explained output's shape without the batch axis ((units,) or (h, w, classes)).
    output_shape: tuple[int, ...] = ()

    @property
    def unit_word(self) -> str:
        """What one output unit is called: class, label or output."""
        return {"multilabel": "label", "regression": "output"}.get(self.task, "class")

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
    #: A class index, or a target's text form (``explainers.targets.SYNTAX``): a region of a
    #: segmentation, a regression direction; None: the model's default.
    target: int | str | None
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
    #: :func:`pixels_digest` of the pixels the worker explained (checked before caching).
    pixels_sha256: str = ""
    #: A segmentation target's region, bool (h_out, w_out) on the output grid; None otherwise.
    region: np.ndarray | None = None

    @property
    def target_text(self) -> str:
        """What was explained, in words ("label square", "sum of circle's logits over …")."""
        facts = self.extras.get("target") or {}
        return str(facts.get("text") or self.target_label)

    @property
    def task(self) -> str:
        return str((self.extras.get("target") or {}).get("task", "classification"))


def pixels_digest(pixels: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes: names the exact pixels a result is for."""
    array = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class AttackOutcome:
    """An adversarial example (see :func:`explainers.attack`), as plain data.

    ``adversarial`` is uint8 (H, W, 3) at the original image's size; ``perturbation`` float32
    (H, W, 3) = adversarial − original in pixel levels (integers in [−ε, ε]).
    """

    adversarial: np.ndarray
    perturbation: np.ndarray
    linf: float
    l2: float
    method: str
    epsilon: float
    step_size: float
    steps: int
    seed: int
    original_class: int
    target: int | None
    before: tuple[Prediction, ...]
    after: tuple[Prediction, ...]
    flipped: bool
    reached_target: bool | None
    success: bool
    success_at_model_resolution: bool
    losses: tuple[float, ...]


@dataclass(frozen=True, eq=False)
class CurveData:
    """One deletion or insertion curve: float64 (n,) fractions in [0, 1] and probabilities."""

    kind: str
    fractions: np.ndarray
    probabilities: np.ndarray
    auc: float


@dataclass(frozen=True, eq=False)
class MapEvaluation:
    """One row of the Evaluate page's ranking: a method's (or the random map's) scores."""

    name: str
    deletion: CurveData
    insertion: CurveData
    pointing: bool | None
    energy: float | None


@dataclass(frozen=True, eq=False)
class EvaluationOutcome:
    """Deletion / insertion curves (Petsiuk et al. 2018) of several maps of one image."""

    target: int | str
    rows: tuple[MapEvaluation, ...]
    step: float
    deletion_substrate: str
    insertion_substrate: str
    seconds: float


@dataclass(frozen=True, eq=False)
class SanityOutcome:
    """The model-parameter randomisation test (Adebayo et al. 2018) of several methods.

    ``correlations[method]`` holds the Spearman correlation of the absolute maps after each step
    (``step_names[k]`` was randomised at step k, output side first); NaN where a map is constant.
    ``maps[method]`` holds the raw signed maps, float32 (H, W): the original, then one per step.
    """

    methods: tuple[str, ...]
    target: int
    mode: str
    step_names: tuple[str, ...]
    randomised: tuple[tuple[str, ...], ...]
    correlations: dict[str, tuple[float, ...]]
    signed_correlations: dict[str, tuple[float, ...]]
    maps: dict[str, tuple[np.ndarray, ...]]
    flagged: dict[str, bool]
    verdicts: dict[str, str]
    threshold: float
    rule: str
    seconds: float


@dataclass(frozen=True)
class AuditRunOutcome:
    """What one audit job did (:func:`explainers.audit.run_audit`'s summary, as plain data).
    ``done``/``total``: committed images of the run; ``computed``: images this job computed."""

    out: str
    total: int
    done: int
    computed: int
    resumed_from: int
    errors: int
    labelled: int
    correct: int
    seconds: float


@dataclass(frozen=True, eq=False)
class AuditClassReview:
    """SpRAy on one class of an audit run (:func:`explainers.audit.analyse_run`), as plain data.

    ``images``: int (n,) the run's indices of the analysed images; ``clusters``: int (n,) the
    cluster of each (0 = the largest); ``embedding``: float32 (n, 2) their 2-D coordinates
    (t-SNE, or two spectral coordinates for a small class: ``embedding_kind``);
    ``cluster_mean_maps``: float32 (k, S, S) per cluster the mean normalised positive map;
    ``mean_map``: float32 (S, S) the class's."""

    class_index: int
    class_name: str
    images: np.ndarray
    clusters: np.ndarray
    embedding: np.ndarray
    embedding_kind: str
    n_clusters: int
    sizes: np.ndarray
    cluster_mean_maps: np.ndarray
    mean_map: np.ndarray


@dataclass(frozen=True, eq=False)
class AuditFlag:
    """One finding of an audit analysis (:class:`explainers.audit.Flag`): ``images`` int (m,)
    the run's indices of the images concerned; ``cluster`` None for a per-class finding."""

    kind: str
    class_index: int
    cluster: int | None
    images: np.ndarray
    evidence: str
    values: dict[str, float]


@dataclass(frozen=True, eq=False)
class AuditReview:
    """The analysis of an audit run's maps of one method: per class the mean map and SpRAy,
    the classes skipped (with the reason), the failed images and the flags."""

    run: str
    done: int
    method: str
    group_by: str
    class_names: tuple[str, ...]
    classes: tuple[AuditClassReview, ...]
    skipped: dict[int, str]
    mean_maps: np.ndarray
    failed: np.ndarray
    flags: tuple[AuditFlag, ...]
    seconds: float

    def class_review(self, class_index: int) -> AuditClassReview | None:
        for review in self.classes:
            if review.class_index == class_index:
                return review
        return None

    def flags_of(self, class_index: int, cluster: int | None = None) -> list[AuditFlag]:
        """The flags of one class (of one cluster when ``cluster`` is given)."""
        return [
            f
            for f in self.flags
            if f.class_index == class_index and (cluster is None or f.cluster == cluster)
        ]


def summarise_method(info: Any, bundle: Any = None) -> MethodSummary:
    """A :class:`explainers.MethodInfo` as plain data (its spec holds functions, which must not
    cross the process boundary). With the loaded ``bundle`` (in a worker), engines that refuse
    the model are listed with their reason."""
    spec = info.spec
    refused: list[tuple[str, str]] = []
    if bundle is not None and "tf_explain" in spec.engines:
        from explainers.tf_explain_engine import unavailable_reason

        reason = unavailable_reason(spec, bundle)
        if reason:
            refused.append(("tf_explain", reason))
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
        refused_engines=tuple(refused),
        reports_progress=spec.reports_progress,
    )


def plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python numbers and unknown objects into text, so
    that it crosses the boundary as data (dicts, lists, tuples and arrays are kept)."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value if value.dtype.kind in "biuf" else value.astype(str)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    return str(value)


# ------------------------------------------------------------------------------------------------
# Reading a worker's reply without running anything it might contain
# ------------------------------------------------------------------------------------------------
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        # numpy arrays, dtypes and scalars (module names for numpy 1.x and 2.x)
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        # our plain data
        (LayerInfo.__module__, "LayerInfo"),
        (ParamSpec.__module__, "ParamSpec"),
        *((__name__, name) for name in ("ModelRef", "MethodSummary", "ModelSummary")),
        *((__name__, name) for name in ("Prediction", "ExplanationResult", "WorkerReply")),
        *((__name__, name) for name in ("AttackOutcome", "EvaluationOutcome", "SanityOutcome")),
        *((__name__, name) for name in ("CurveData", "MapEvaluation")),
        *(
            (__name__, name)
            for name in ("AuditRunOutcome", "AuditClassReview", "AuditFlag", "AuditReview")
        ),
    }
)


class UnsafeReplyError(Exception):
    """A worker's reply named a type outside :data:`ALLOWED_GLOBALS`."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeReplyError(f"a worker reply referred to {module}.{name}: not allowed")
        return super().find_class(module, name)


def dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only the plain-data types this module names."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


@dataclass(frozen=True)
class WorkerReply:
    """One message from a worker: ``kind`` is "ready", "progress", "result", "error" or
    "cancelled" (the parent abandoned the request and the job stopped at its next progress call).

    ``request_id`` echoes the id of the request the message belongs to (0 for "ready"): the parent
    drops any message whose id is not the one it is waiting for, so a late reply can never be read
    as the answer to another request. ``error_kind`` (for errors): "explainer" (a library error
    whose message is for the user), "memory", or "unexpected". ``loaded`` lists the model keys the
    worker holds in memory.
    """

    kind: Literal["ready", "progress", "result", "error", "cancelled"]
    request_id: int = 0
    value: Any = None
    fraction: float = 0.0
    message: str = ""
    error_kind: str = ""
    loaded: tuple[tuple[str, str, str | None], ...] = ()
    rss_bytes: int = 0
