"""What a compute worker can be asked to do; runs only inside a worker process.

Every job takes plain data (a :class:`~dashboard.protocol.ModelRef`, uint8 pixels, parameters)
and returns plain data (the types in :mod:`dashboard.protocol`, numpy arrays, builtins). Loaded
models are kept in a small LRU per worker, keyed by the model file's SHA-256, the preprocessing
choice and the labels' SHA-256, so a request never sees another model's state.

``EXPLAINER_WORKER_TEST_HOOKS=1`` in the worker's environment adds jobs that crash, hang or
allocate memory on purpose; the tests use them to prove the dashboard survives each.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

import explainers
from explainers import ExplainerError
from explainers.core.specs import ProgressCallback

from .audits import AuditInputError, open_spec
from .protocol import (
    AttackOutcome,
    AuditClassReview,
    AuditFlag,
    AuditReview,
    AuditRunOutcome,
    CurveData,
    EvaluationOutcome,
    ExplanationResult,
    MapEvaluation,
    MethodSummary,
    ModelRef,
    ModelSummary,
    Prediction,
    SanityOutcome,
    WorkerReply,
    pixels_digest,
    plain,
    summarise_method,
)

LOGGER = logging.getLogger(__name__)

MAX_MODELS = max(1, int(os.environ.get("EXPLAINER_MAX_MODELS", "3") or 3))
_BUNDLES: OrderedDict[tuple[str, str, str | None], explainers.ModelBundle] = OrderedDict()


def _trust_model_files() -> bool:
    """The operator's explicit opt-in to loading model files with custom code (off by default)."""
    try:
        from explainers.io.safety import trust_from_environment
    except ImportError:  # pragma: no cover - older library without the safety module
        return False
    return bool(trust_from_environment())


def bundle(ref: ModelRef) -> explainers.ModelBundle:
    """The loaded model ``ref`` names, from this worker's LRU or freshly loaded."""
    key = ref.key
    found = _BUNDLES.get(key)
    if found is not None:
        _BUNDLES.move_to_end(key)
        return found
    if ref.kind == "application":
        loaded = explainers.load_application(ref.location)
        if ref.preprocessing != "auto" or ref.labels is not None:
            loaded = explainers.bundle_from_model(
                loaded.model,
                preprocessing=ref.preprocessing,  # type: ignore[arg-type]
                labels=ref.labels,
                name=loaded.name,
                source=loaded.source,
            )
    else:
        options: dict[str, Any] = {}
        if _trust_model_files():
            options["trust"] = True
        loaded = explainers.load_model(
            ref.location,
            preprocessing=ref.preprocessing,  # type: ignore[arg-type]
            labels=ref.labels,
            name=ref.file_name,
            task=getattr(ref, "task", "auto"),  # type: ignore[arg-type]
            **options,
        )
        if loaded.sha256 is not None and loaded.sha256 != ref.sha256:
            raise ExplainerError(
                f"{ref.file_name!r} changed on disk since it was uploaded; upload it again"
            )
    _BUNDLES[key] = loaded
    while len(_BUNDLES) > MAX_MODELS:
        _BUNDLES.popitem(last=False)
    return loaded


# ------------------------------------------------------------------------------------------------
# Jobs
# ------------------------------------------------------------------------------------------------
def describe(ref: ModelRef) -> ModelSummary:
    loaded = bundle(ref)
    methods = tuple(summarise_method(info, loaded) for info in explainers.available_methods(loaded))
    return ModelSummary(
        ref=ref,
        name=loaded.name,
        source=loaded.source,
        sha256=ref.sha256 if ref.kind == "file" else "",
        input_size=loaded.input_size,
        channels=loaded.channels,
        preprocessing=loaded.preprocessing,
        preprocessing_reason=loaded.preprocessing_reason,
        class_names=tuple(loaded.class_names),
        output_kind=loaded.output_kind,
        output_layer=loaded.output_layer,
        n_params=int(loaded.n_params),
        layers=tuple(loaded.layers),
        spatial_layers=tuple(loaded.spatial_layers),
        default_layer=loaded.default_layer,
        cam_head=loaded.cam_head.feature_layer if loaded.cam_head else None,
        methods=methods,
        task=loaded.task,
        output_shape=tuple(int(d) for d in loaded.output_shape),
    )


def method_reason(ref: ModelRef, method: str, layer: str | None) -> str | None:
    return explainers.get_method(method).unavailable_reason(bundle(ref), layer)


def predict(ref: ModelRef, pixels: np.ndarray) -> np.ndarray:
    """One number per class, label or output: probabilities, a regression's values, and for a
    segmentation model the share of the output's pixels predicted as each class."""
    loaded = bundle(ref)
    if loaded.task == "segmentation":
        predicted = np.argmax(loaded.segment(pixels), axis=-1)
        counts = np.bincount(predicted.ravel(), minlength=loaded.n_classes)
        return (counts / max(1, predicted.size)).astype(np.float32)
    return np.asarray(loaded.predict(pixels), np.float32)


def segment(ref: ModelRef, pixels: np.ndarray) -> np.ndarray:
    """A segmentation model's predicted class per output pixel, uint16 (h_out, w_out)."""
    return np.argmax(bundle(ref).segment(pixels), axis=-1).astype(np.uint16)


def explain(
    ref: ModelRef,
    pixels: np.ndarray,
    method: str,
    params: dict[str, Any],
    target: int | str | None,
    layer: str | None,
    engine: str,
    progress: ProgressCallback,
) -> ExplanationResult:
    _crash_if_asked(method)
    result = explainers.explain(
        bundle(ref),
        pixels,
        method,
        target=target,
        layer=layer,
        engine=engine,
        progress=progress,
        **params,
    )
    return ExplanationResult(
        attribution=np.ascontiguousarray(result.attribution, np.float32),
        method=result.method,
        method_label=explainers.get_method(result.method).label,
        params=plain(dict(result.params)),
        target=int(result.target),
        target_label=str(result.label),
        score=float(result.score),
        layer=result.layer,
        engine=result.engine,
        seconds=float(result.seconds),
        extras=plain({k: v for k, v in result.extras.items() if k != "region"}),
        pixels_sha256=pixels_digest(pixels),
        region=(
            None
            if result.extras.get("region") is None
            else np.ascontiguousarray(result.extras["region"], bool)
        ),
    )


def feature_maps(ref: ModelRef, pixels: np.ndarray, layer: str) -> np.ndarray:
    loaded = bundle(ref)
    _, _, acts = loaded.runner.activations(loaded.model_input(pixels), layer)
    return np.ascontiguousarray(acts[0], np.float32)


def _predictions(rows: Any) -> tuple[Prediction, ...]:
    return tuple(Prediction(int(i), str(name), float(p)) for i, name, p in rows)


def attack(
    ref: ModelRef,
    pixels: np.ndarray,
    method: str,
    options: dict[str, Any],
    progress: ProgressCallback,
) -> AttackOutcome:
    result = explainers.attack(bundle(ref), pixels, method, progress=progress, **options)  # type: ignore[arg-type]
    return AttackOutcome(
        adversarial=np.ascontiguousarray(result.image, np.uint8),
        perturbation=np.ascontiguousarray(result.perturbation, np.float32),
        linf=float(result.linf),
        l2=float(result.l2),
        method=result.method,
        epsilon=float(result.epsilon),
        step_size=float(result.step_size),
        steps=int(result.steps),
        seed=int(result.seed),
        original_class=int(result.original_class),
        target=None if result.target is None else int(result.target),
        before=_predictions(result.before),
        after=_predictions(result.after),
        flipped=bool(result.flipped),
        reached_target=None if result.reached_target is None else bool(result.reached_target),
        success=bool(result.success),
        success_at_model_resolution=bool(result.success_at_model_resolution),
        losses=tuple(float(v) for v in result.losses),
    )


def _curve(curve: Any) -> CurveData:
    return CurveData(
        kind=str(curve.kind),
        fractions=np.asarray(curve.fractions, np.float64),
        probabilities=np.asarray(curve.probabilities, np.float64),
        auc=float(curve.auc),
    )


def evaluate(
    ref: ModelRef,
    pixels: np.ndarray,
    maps: dict[str, np.ndarray],
    target: int | str,
    mask: np.ndarray | None,
    options: dict[str, Any],
    progress: ProgressCallback,
) -> EvaluationOutcome:
    started = time.perf_counter()
    rows = explainers.evaluate_maps(
        bundle(ref), pixels, maps, target=target, mask=mask, progress=progress, **options
    )
    return EvaluationOutcome(
        target=target,
        rows=tuple(
            MapEvaluation(
                name=row.name,
                deletion=_curve(row.deletion),
                insertion=_curve(row.insertion),
                pointing=None if row.pointing is None else bool(row.pointing),
                energy=None if row.energy is None else float(row.energy),
            )
            for row in rows
        ),
        step=float(options.get("step", 0.02)),
        deletion_substrate=str(options.get("deletion_substrate", "blur")),
        insertion_substrate=str(options.get("insertion_substrate", "blur")),
        seconds=time.perf_counter() - started,
    )


def sanity(
    ref: ModelRef,
    pixels: np.ndarray,
    methods: tuple[str, ...],
    target: int,
    options: dict[str, Any],
    progress: ProgressCallback,
) -> SanityOutcome:
    started = time.perf_counter()
    result = explainers.model_randomisation_test(
        bundle(ref), pixels, list(methods), target=target, progress=progress, **options
    )
    return SanityOutcome(
        methods=tuple(result.methods),
        target=int(result.target),
        mode=str(result.mode),
        step_names=tuple(block.name for block in result.blocks),
        randomised=tuple(tuple(step) for step in result.randomised),
        correlations={m: tuple(float(v) for v in vs) for m, vs in result.correlations.items()},
        signed_correlations={
            m: tuple(float(v) for v in vs) for m, vs in result.signed_correlations.items()
        },
        maps={
            m: tuple(np.asarray(v, np.float32) for v in (result.original_maps[m], *result.maps[m]))
            for m in result.methods
        },
        flagged={m: bool(v) for m, v in result.flagged.items()},
        verdicts={m: result.verdict(m) for m in result.methods},
        threshold=float(result.threshold),
        rule=str(result.rule),
        seconds=time.perf_counter() - started,
    )


def audit(
    ref: ModelRef,
    dataset: dict[str, Any],
    out: str,
    methods: tuple[str, ...],
    map_size: int,
    chunk_size: int,
    resume: bool,
    progress: ProgressCallback,
) -> AuditRunOutcome:
    """Explain every image of ``dataset`` (a :attr:`dashboard.audits.DatasetChoice.spec`, whose
    files are checked again here against the folders the page may read) into the run folder
    ``out`` (:func:`explainers.audit.run_audit`: resumable, cancelled at a progress call)."""
    from explainers import audit as library

    try:
        data = open_spec(dataset)
    except AuditInputError as err:
        raise ExplainerError(str(err)) from None
    summary = library.run_audit(
        bundle(ref),
        data,
        out,
        methods=list(methods),
        map_size=int(map_size),
        chunk_size=int(chunk_size),
        progress=progress,
        resume=bool(resume),
    )
    return AuditRunOutcome(
        out=str(out),
        total=int(summary.total),
        done=int(summary.done),
        computed=int(summary.computed),
        resumed_from=int(summary.resumed_from),
        errors=int(summary.errors),
        labelled=int(summary.labelled),
        correct=int(summary.correct),
        seconds=float(summary.seconds),
    )


def audit_analysis(run: str, method: str, group_by: str) -> AuditReview:
    """Class mean maps, SpRAy and flags of a run folder's committed images
    (:func:`explainers.audit.analyse_run`), as plain data."""
    from explainers import audit as library

    started = time.perf_counter()
    opened = library.open_run(run)
    review = library.analyse_run(opened, method, group_by=group_by)  # type: ignore[arg-type]
    classes = []
    for analysed in review.classes.values():
        spray = analysed.spray
        classes.append(
            AuditClassReview(
                class_index=int(analysed.class_index),
                class_name=str(analysed.class_name),
                images=np.asarray(spray.images, np.int64),
                clusters=np.asarray(spray.labels, np.int64),
                embedding=np.asarray(spray.embedding, np.float32),
                embedding_kind=str(spray.embedding_kind),
                n_clusters=int(spray.n_clusters),
                sizes=np.asarray(spray.sizes, np.int64),
                cluster_mean_maps=np.asarray(spray.mean_maps, np.float32),
                mean_map=np.asarray(analysed.mean_map, np.float32),
            )
        )
    flags = tuple(
        AuditFlag(
            kind=str(flag.kind),
            class_index=int(flag.class_index),
            cluster=None if flag.cluster is None else int(flag.cluster),
            images=np.asarray(flag.images, np.int64),
            evidence=str(flag.evidence),
            values={str(k): float(v) for k, v in flag.values.items()},
        )
        for flag in review.flags
    )
    return AuditReview(
        run=str(run),
        done=int(opened.done),
        method=str(method),
        group_by=str(review.group_by),
        class_names=tuple(str(n) for n in review.class_names),
        classes=tuple(sorted(classes, key=lambda c: c.class_index)),
        skipped={int(k): str(v) for k, v in review.skipped.items()},
        mean_maps=np.asarray(review.mean_maps, np.float32),
        failed=np.asarray(review.failed, np.int64),
        flags=flags,
        seconds=time.perf_counter() - started,
    )


def audit_report(run: str, method: str, group_by: str) -> str:
    """The run's self-contained HTML report (:func:`explainers.audit.audit_report`)."""
    from explainers import audit as library

    return str(library.audit_report(run, method, group_by=group_by))


def loaded_models() -> tuple[tuple[str, str, str | None], ...]:
    """The keys of the models this worker holds, most recently used last."""
    return tuple(_BUNDLES)


def catalogue() -> tuple[MethodSummary, ...]:
    """Every registered method, not tied to a model (the Guide page without a model)."""
    return tuple(summarise_method(info) for info in explainers.available_methods())


def ping() -> str:
    return "pong"


def clear() -> None:
    _BUNDLES.clear()


# Test-only hooks: each breaks the worker in one of the ways the dashboard must survive.
def _test_hooks() -> bool:
    return os.environ.get("EXPLAINER_WORKER_TEST_HOOKS") == "1"


def _crash_if_asked(method: str) -> None:
    """With test hooks on, abort the worker when the file named by ``EXPLAINER_TEST_CRASH_FILE``
    holds this method's name: a stand-in for TensorFlow crashing inside one method."""
    path = os.environ.get("EXPLAINER_TEST_CRASH_FILE")
    if _test_hooks() and path and os.path.isfile(path):
        with open(path) as handle:
            if handle.read().strip() == method:
                os.abort()


def _test_abort() -> None:
    os.abort()


def _test_sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def _test_progress(seconds: float, tag: str, progress: ProgressCallback) -> str:
    """Report progress every 10 ms for ``seconds``, then return ``tag``: a cancellable job."""
    steps = max(1, int(seconds / 0.01))
    for step in range(steps):
        progress(step / steps, f"test: {step}/{steps}")
        time.sleep(0.01)
    return tag


def _test_sleep_after_progress(seconds: float, progress: ProgressCallback) -> str:
    """One progress call, then a long step that never checks for cancellation."""
    progress(0.0, "test: one long step")
    time.sleep(seconds)
    return "slept"


def _test_stray_reply(tag: str, request_id: int, progress: Any) -> str:
    """Send a result that claims to answer request ``request_id``, then answer with "own"."""
    progress.send_stray(WorkerReply("result", request_id=int(request_id), value=tag))
    return "own"


def _test_allocate(megabytes: int) -> int:
    block = np.ones(int(megabytes) * 2**20 // 8, np.float64)  # touched, so it is resident
    time.sleep(5)
    return int(block.nbytes)


JOBS: dict[str, Callable[..., Any]] = {
    "describe": describe,
    "method_reason": method_reason,
    "predict": predict,
    "segment": segment,
    "explain": explain,
    "feature_maps": feature_maps,
    "attack": attack,
    "evaluate": evaluate,
    "sanity": sanity,
    "audit": audit,
    "audit_analysis": audit_analysis,
    "audit_report": audit_report,
    "catalogue": catalogue,
    "ping": ping,
    "clear": clear,
}
TEST_JOBS: dict[str, Callable[..., Any]] = {
    "test_abort": _test_abort,
    "test_sleep": _test_sleep,
    "test_allocate": _test_allocate,
    "test_progress": _test_progress,
    "test_sleep_after_progress": _test_sleep_after_progress,
    "test_stray_reply": _test_stray_reply,
}
#: Jobs that accept a ``progress`` callback.
WITH_PROGRESS = frozenset(
    {
        "explain",
        "attack",
        "evaluate",
        "sanity",
        "audit",
        "test_progress",
        "test_sleep_after_progress",
        "test_stray_reply",
    }
)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run(job: str, kwargs: dict[str, Any], progress: ProgressCallback) -> WorkerReply:
    """Run one job and wrap its outcome (or its error, as a plain sentence) in a reply."""
    table = dict(JOBS)
    if _test_hooks():
        table.update(TEST_JOBS)
    try:
        function = table[job]
    except KeyError:
        return WorkerReply("error", error_kind="unexpected", message=f"unknown job {job!r}")
    if job in WITH_PROGRESS:
        kwargs = {**kwargs, "progress": progress}
    try:
        value = function(**kwargs)
    except ExplainerError as err:
        return WorkerReply(
            "error",
            error_kind="explainer",
            message=str(err),
            loaded=tuple(_BUNDLES),
            rss_bytes=_rss(),
        )
    except MemoryError:
        return WorkerReply("error", error_kind="memory", loaded=tuple(_BUNDLES), rss_bytes=_rss())
    except Exception as err:
        traceback.print_exc()  # the server's log keeps the details; the user gets one line
        detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        message = f"unexpected {type(err).__name__}" + (f" ({detail})" if detail else "")
        return WorkerReply(
            "error",
            error_kind="unexpected",
            message=message,
            loaded=tuple(_BUNDLES),
            rss_bytes=_rss(),
        )
    return WorkerReply("result", value=value, loaded=tuple(_BUNDLES), rss_bytes=_rss())
