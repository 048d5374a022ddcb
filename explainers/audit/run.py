"""``run_audit``: explain every image of a dataset with one or more methods, streaming the results
into a run folder (:mod:`explainers.audit.store`) that survives being killed at any moment.

Memory stays flat: one batch of images is in memory at a time (the next one read by a background
thread), and one chunk's rows and S×S maps are held until the chunk commits (maps and masks into
the memmaps, a Parquet part, then ``progress.json``). Images go through the model a batch at a
time: one forward pass per batch gives the predictions, and methods with a batched path
(:mod:`explainers.audit.batched`: CAM, Grad-CAM, Grad-CAM++, Layer-CAM) explain the whole batch,
each image for its own predicted class, in that same pass; the other methods call
:func:`explainers.explain` per image. With ``engine="ray"`` the batches run in Ray Data actors
(:mod:`explainers.audit.ray_engine`) and this process writes the same run folder. A failure of
one image — unreadable, hostile, a model output that is not a number, a method that
raises — becomes that image's error row; it never stops the run. An exception from the progress
callback (or Ctrl-C) stops it; the committed chunks stay, and calling again resumes.

Per-image statistics of each map (columns ``<method>__<statistic>``) are computed on the map at
the image's resolution (``Explanation.attribution``) and its positive part ``p = max(map, 0)``,
normalised to ``q = p / Σp``; all are null when the map has no positive value:

* ``peak_row``, ``peak_col``: centre of the pixel with the largest value, as a fraction (0..1) of
  the height and width;
* ``entropy``: ``-Σ q ln q / ln(H·W)``: 0 when one pixel holds all the mass, 1 when it is uniform;
* ``spread``: mean distance of the mass from its centroid, in units where the height and the
  width are 1 (0 for a point, about 0.38 for a uniform map, at most √2/2);
* ``energy_in_mask``, ``energy_in_marker``: ``Σ q`` inside the object / marker mask (null when the
  image has no such mask or it is empty);
* ``seconds``: wall time of the method on this image (for a batched method: its share of the
  batch's pass, the pass's time divided by the batch's images, plus this image's own resizing
  and statistics).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from explainers import __version__
from explainers.audit.batched import batched_method, explain_batch
from explainers.audit.datasets import AuditDataset, AuditItem, open_dataset
from explainers.audit.store import (
    FORMAT,
    FORMAT_VERSION,
    MASK_ENCODING,
    RunWriter,
    method_column,
    table_schema,
)
from explainers.core.maps import resize_map
from explainers.core.runner import resolve_batch_size
from explainers.errors import ExplainerError, ParameterError, UnsupportedModelError
from explainers.explanation import explain
from explainers.io.models import ModelBundle, load_model
from explainers.registry import get_method

__all__ = [
    "ENGINES",
    "AuditJob",
    "AuditSummary",
    "BatchRows",
    "MethodPlan",
    "audit_batch",
    "cell_shares",
    "map_statistics",
    "resolve_methods",
    "run_audit",
    "stored_map",
]

ProgressCallback = Callable[[float, str], None]
#: Where a run computes: this process, or Ray Data actors.
ENGINES = ("local", "ray")
#: Largest finite float16: stored maps are clipped to ±this rather than overflowing to ±inf.
FLOAT16_MAX = float(np.finfo(np.float16).max)
#: How long an error message in the table may be.
MAX_ERROR_CHARS = 500
#: What each run explains (recorded in the manifest): the model's top-1 class for the image.
TARGET = "prediction"
MAP_ENCODING = (
    "float16 (N, S, S): the raw signed map (Explanation.attribution, at the image's resolution) "
    "resized to S×S by explainers.core.maps.resize_map, clipped to ±65504; NaN rows: images or "
    "methods that failed"
)


@dataclass(frozen=True)
class MethodPlan:
    """One method as the run calls it: resolved parameters, layer (CAM family) and engine."""

    name: str
    params: dict[str, Any]
    layer: str | None
    engine: str

    def describe(self) -> dict[str, Any]:
        # Through JSON, so that the manifest and a resumed run compare like for like.
        return json.loads(
            json.dumps(
                {"params": self.params, "layer": self.layer, "engine": self.engine}, default=str
            )
        )


@dataclass(frozen=True)
class AuditSummary:
    """What a :func:`run_audit` call did. ``done``/``total``: committed images of the run;
    ``computed``: images this call computed (``resumed_from`` were committed before it);
    ``errors``, ``labelled``, ``correct``: counts over all committed rows; ``seconds`` and
    ``images_per_second``: this call's."""

    out: Path
    total: int
    done: int
    computed: int
    resumed_from: int
    errors: int
    labelled: int
    correct: int
    seconds: float
    images_per_second: float

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------
def resolve_methods(
    bundle: ModelBundle,
    methods: Sequence[str],
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[MethodPlan]:
    """Validate the methods and their parameters against the model before anything runs.

    ``params`` maps a method name to its parameters; ``"layer"`` and ``"engine"`` in there are
    :func:`~explainers.explain`'s arguments of those names. Raises ParameterError (unknown
    method, parameter or layer; a method listed twice; parameters for a method not run) or
    MethodNotApplicableError.
    """
    if isinstance(methods, str):
        methods = (methods,)
    methods = list(methods)
    if not methods:
        raise ParameterError("choose at least one method for the audit")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise ParameterError(f"{', '.join(repeated)} is listed more than once")
    params = dict(params or {})
    extra = sorted(set(params) - set(methods))
    if extra:
        raise ParameterError(
            f"parameters given for {', '.join(extra)}, which is not among the audit's methods "
            f"({', '.join(methods)})"
        )
    plans = []
    for name in methods:
        spec = get_method(name)
        given = dict(params.get(name) or {})
        layer = given.pop("layer", None)
        engine = str(given.pop("engine", "native"))
        if engine not in spec.engines:
            raise ParameterError(
                f"{spec.label} is not available in the {engine} engine "
                f"(engines: {', '.join(spec.engines)})"
            )
        resolved = spec.resolve_params(given)
        if layer is not None:
            if not spec.uses_layer:
                raise ParameterError(f"{spec.label} does not use a layer; leave the layer unset")
            layer = bundle.layer(str(layer)).path
        spec.check(bundle, layer)
        if spec.uses_layer and layer is None:
            layer = bundle.default_layer
        plans.append(MethodPlan(spec.name, resolved, layer, engine))
    return plans


def label_mapping(dataset: AuditDataset, bundle: ModelBundle) -> tuple[list[int] | None, str]:
    """How dataset labels become model class indices: (dataset class → model class, rule).

    Dataset class names are matched to the model's by name, or, for names that are integers, as
    indices; a dataset without class names already holds the model's indices. Raises
    ParameterError naming the classes the model does not have.
    """
    n = bundle.n_classes
    if dataset.class_names is None:
        too_large = sorted({i.label for i in dataset if i.label is not None and i.label >= n})
        if too_large:
            raise ParameterError(
                f"the dataset's labels include class index {too_large[0]}, but the model has "
                f"{n} classes (0..{n - 1})"
            )
        return None, "index"
    mapping, unknown = [], []
    for name in dataset.class_names:
        if name in bundle.class_names:
            mapping.append(bundle.class_names.index(name))
        elif name.isdigit() and int(name) < n:
            mapping.append(int(name))
        else:
            unknown.append(name)
    if unknown:
        raise ParameterError(
            f"the dataset's classes {', '.join(repr(u) for u in unknown[:5])} are not among the "
            f"model's classes ({', '.join(bundle.class_names[:8])}"
            f"{'…' if n > 8 else ''}): name the class folders or manifest labels after the "
            "model's classes (or their indices), or load the model with its labels file"
        )
    return mapping, "name"


def model_digest(bundle: ModelBundle) -> tuple[str, str]:
    """(SHA-256, what it is of): the model file's, or its weights' for an in-memory model."""
    if bundle.sha256:
        return bundle.sha256, "file"
    digest = hashlib.sha256()
    for weights in bundle.model.get_weights():
        array = np.ascontiguousarray(weights)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest(), "weights"


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"explainers": __version__}
    for package in ("tensorflow", "keras", "numpy", "pyarrow", "pillow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def build_manifest(
    bundle: ModelBundle,
    model_path: str,
    dataset: AuditDataset,
    plans: Sequence[MethodPlan],
    map_size: int,
    mapping: list[int] | None,
    mapping_rule: str,
) -> dict[str, Any]:
    sha256, sha256_of = model_digest(bundle)
    masks = {}
    if dataset.has_object_masks:
        masks["object"] = MASK_ENCODING
    if dataset.has_marker_masks:
        masks["marker"] = MASK_ENCODING
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "path": model_path,
            "name": bundle.name,
            "sha256": sha256,
            "sha256_of": sha256_of,
            "preprocessing": bundle.preprocessing,
            "input_size": list(bundle.input_size),
            "channels": bundle.channels,
            "class_names": list(bundle.class_names),
            "output_kind": bundle.output_kind,
        },
        "dataset": {
            **dataset.describe(),
            "labels": {"matched_by": mapping_rule, "dataset_to_model": mapping},
        },
        "methods": {plan.name: plan.describe() for plan in plans},
        "target": TARGET,
        "map_size": map_size,
        "maps": MAP_ENCODING,
        "masks": masks,
        "columns": table_schema([p.name for p in plans]).names,
        "versions": library_versions(),
    }


# ------------------------------------------------------------------------------------------------
# Per-image numbers
# ------------------------------------------------------------------------------------------------
def map_statistics(
    attribution: np.ndarray,
    object_mask: np.ndarray | None = None,
    marker_mask: np.ndarray | None = None,
) -> dict[str, float | None]:
    """The map statistics of the module docstring (all but ``seconds``) for a map (H, W) and
    optional bool masks of the same shape."""
    values = np.asarray(attribution, np.float64)
    height, width = values.shape
    stats: dict[str, float | None] = dict.fromkeys(
        ("peak_row", "peak_col", "entropy", "spread", "energy_in_mask", "energy_in_marker")
    )
    positive = np.where(values > 0, values, 0.0)
    total = float(positive.sum())
    if not (total > 0 and np.isfinite(total)):
        return stats
    row, col = divmod(int(np.argmax(values)), width)
    stats["peak_row"], stats["peak_col"] = (row + 0.5) / height, (col + 0.5) / width
    q = positive / total
    mass = q[q > 0]
    cells = height * width
    entropy = float(-(mass * np.log(mass)).sum() / np.log(cells)) if cells > 1 else 0.0
    stats["entropy"] = min(max(entropy, 0.0), 1.0)
    rows = (np.arange(height) + 0.5) / height
    cols = (np.arange(width) + 0.5) / width
    centre_row, centre_col = float(rows @ q.sum(axis=1)), float(cols @ q.sum(axis=0))
    distance = np.sqrt((rows[:, None] - centre_row) ** 2 + (cols[None, :] - centre_col) ** 2)
    stats["spread"] = float((q * distance).sum())
    for key, mask in (("energy_in_mask", object_mask), ("energy_in_marker", marker_mask)):
        if mask is not None and mask.any():
            if mask.shape != values.shape:
                raise ValueError(f"mask shape {mask.shape} is not the map's {values.shape}")
            stats[key] = min(float(q[mask].sum()), 1.0)
    return stats


def stored_map(attribution: np.ndarray, size: int) -> np.ndarray:
    """A map as a run stores it: resized to size×size (``resize_map``), float16."""
    small = resize_map(attribution, (size, size))
    return np.clip(small, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)


def cell_shares(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool mask (H, W) as a run stores it: uint8 (size, size), round(255 × the share of each
    cell's pixels inside the mask) (an exact area average: Pillow's box filter)."""
    image = Image.fromarray(np.asarray(mask, np.float32))
    shares = np.asarray(image.resize((size, size), Image.Resampling.BOX), np.float32)
    return np.clip(np.rint(shares * 255.0), 0, 255).astype(np.uint8)


def _message(error: BaseException) -> str:
    text = str(error) if isinstance(error, ExplainerError) else f"{type(error).__name__}: {error}"
    text = text.strip() or type(error).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


@dataclass
class _Chunk:
    """One chunk's results, the only ones held in memory."""

    start: int
    rows: list[dict[str, Any]]
    maps: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]


#: What a row's error says when the model's output for the image is not a number (the words of
#: :meth:`~explainers.io.models.ModelBundle.predict`, which the single-image path raises).
NOT_A_NUMBER = (
    "the model's output for this image is not a number (NaN or inf); "
    "check the model and the preprocessing"
)


@dataclass(frozen=True)
class AuditJob:
    """What every batch of a run needs besides the model and the dataset (plain, picklable data:
    the Ray engine sends it to its actors)."""

    plans: tuple[MethodPlan, ...]
    mapping: list[int] | None
    map_size: int
    mask_kinds: tuple[str, ...]
    columns: tuple[str, ...]


@dataclass
class BatchRows:
    """Finished rows of consecutive items ``start .. start + len(rows) - 1``: the table rows, the
    S×S float16 maps per method and uint8 mask shares per kind, each (n, S, S)."""

    start: int
    rows: list[dict[str, Any]]
    maps: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]


@dataclass
class _Prepared:
    """One item read and made ready for the model: its row so far, the image and masks, the
    model input (for batched passes) — or the row's error."""

    row: dict[str, Any]
    image: np.ndarray | None = None
    object_mask: np.ndarray | None = None
    marker_mask: np.ndarray | None = None
    x: np.ndarray | None = None
    cells: dict[str, np.ndarray] | None = None


def _prepare(
    bundle: ModelBundle, dataset: AuditDataset, item: AuditItem, job: AuditJob, stack: bool
) -> _Prepared:
    """Read ``item`` (image, masks), fill its row's identity columns and, with ``stack``, build
    its model input. A failure is the row's error."""
    label = item.label if job.mapping is None or item.label is None else job.mapping[item.label]
    row: dict[str, Any] = dict.fromkeys(job.columns)
    row.update(
        index=item.index,
        id=item.id,
        path=item.path,
        label=label,
        label_name=bundle.class_names[label] if label is not None else None,
    )
    prepared = _Prepared(row=row, cells={})
    try:
        image, object_mask, marker_mask = dataset.read_item(item)
    except Exception as error:
        row["error"] = _message(error)
        return prepared
    row["height"], row["width"] = int(image.shape[0]), int(image.shape[1])
    for kind, mask in (("object", object_mask), ("marker", marker_mask)):
        present = mask is not None and bool(mask.any())
        row["has_mask" if kind == "object" else "has_marker"] = present
        if present and kind in job.mask_kinds:
            assert prepared.cells is not None and mask is not None
            prepared.cells[kind] = cell_shares(mask, job.map_size)
    prepared.image, prepared.object_mask, prepared.marker_mask = image, object_mask, marker_mask
    if stack:
        try:
            prepared.x = bundle.model_input(image)[0].astype(np.float32, copy=False)
        except Exception as error:
            row["error"] = _message(error)
    return prepared


def _finish_row(
    bundle: ModelBundle,
    prepared: _Prepared,
    job: AuditJob,
    maps: dict[str, np.ndarray],
    slot: int,
    predicted: tuple[np.ndarray, int] | None,
    batched: Mapping[str, tuple[np.ndarray, float]],
) -> None:
    """Fill the row's prediction and per-method columns and ``maps[...][slot]``.

    ``predicted``: (probabilities, explained class) from a batched pass, or None to predict
    this image alone. ``batched``: per method computed in a batched pass, (its raw map at the
    model's resolution, its share of the pass's seconds); the other methods call
    :func:`explainers.explain` on the image.
    """
    row, image = prepared.row, prepared.image
    assert image is not None
    if predicted is None:
        try:
            probs = bundle.predict(image)
        except Exception as error:
            row["error"] = _message(error)
            return
        prediction = int(np.argmax(probs))
    else:
        probs, prediction = predicted
        if not np.all(np.isfinite(probs)):
            row["error"] = NOT_A_NUMBER
            return
    label = row["label"]
    row.update(
        prediction=prediction,
        prediction_name=bundle.class_names[prediction],
        probability=float(probs[prediction]),
        label_probability=float(probs[label]) if label is not None else None,
        correct=prediction == label if label is not None else None,
    )
    object_mask = prepared.object_mask if row["has_mask"] else None
    marker_mask = prepared.marker_mask if row["has_marker"] else None
    errors = []
    for plan in job.plans:
        started = time.perf_counter()
        shared_seconds = 0.0
        try:
            if plan.name in batched:
                raw, shared_seconds = batched[plan.name]
                if not np.all(np.isfinite(raw)):
                    raise ExplainerError(
                        f"{get_method(plan.name).label} produced non-finite values for this "
                        "model and image"
                    )
                attribution = resize_map(raw, image.shape[:2])
            else:
                attribution = explain(
                    bundle,
                    image,
                    plan.name,
                    target=prediction,
                    layer=plan.layer,
                    engine=plan.engine,
                    **plan.params,
                ).attribution
            stats = map_statistics(attribution, object_mask, marker_mask)
            maps[plan.name][slot] = stored_map(attribution, job.map_size)
        except Exception as error:
            errors.append(f"{plan.name}: {_message(error)}")
        else:
            row.update({method_column(plan.name, k): v for k, v in stats.items()})
        row[method_column(plan.name, "seconds")] = time.perf_counter() - started + shared_seconds
    row["error"] = "; ".join(errors) or None


def stackable(bundle: ModelBundle) -> bool:
    """Whether images become model inputs of one shape (a fixed input size): then predictions
    come from one forward per batch and the batched methods run per batch."""
    return None not in tuple(bundle.input_size)


def prepare_batch(
    bundle: ModelBundle, dataset: AuditDataset, items: Sequence[AuditItem], job: AuditJob
) -> list[_Prepared]:
    """Read and ready a batch of items (:func:`audit_batch`'s first half; thread-safe)."""
    stack = stackable(bundle)
    return [_prepare(bundle, dataset, item, job, stack) for item in items]


def compute_batch(bundle: ModelBundle, prepared: Sequence[_Prepared], job: AuditJob) -> BatchRows:
    """The rows, maps and masks of a prepared batch (:func:`audit_batch`'s second half).

    With a fixed model input size, the readable images go through the model together: the
    first batched method's pass (:mod:`explainers.audit.batched`) gives every image's
    probabilities, its predicted class and its map; further batched methods explain the same
    classes; without one, a batched forward pass gives the predictions. Methods without a
    batched path call :func:`explainers.explain` per image. A batched pass that raises is
    redone image by image, so an exception stays the row's own.
    """
    n, size = len(prepared), job.map_size
    names = [plan.name for plan in job.plans]
    maps = {name: np.full((n, size, size), np.nan, np.float16) for name in names}
    masks = {kind: np.zeros((n, size, size), np.uint8) for kind in job.mask_kinds}
    for slot, item in enumerate(prepared):
        for kind, cells in (item.cells or {}).items():
            masks[kind][slot] = cells
    ok = [slot for slot, item in enumerate(prepared) if item.row["error"] is None]
    predicted: dict[int, tuple[np.ndarray, int]] = {}
    batched: dict[int, dict[str, tuple[np.ndarray, float]]] = {slot: {} for slot in ok}
    if ok and stackable(bundle):
        try:
            x = np.stack([prepared[slot].x for slot in ok])  # type: ignore[misc]
            targets = None
            for plan in job.plans:
                if not batched_method(bundle, plan.name, plan.engine):
                    continue
                started = time.perf_counter()
                result = explain_batch(bundle, x, plan.name, plan.layer, plan.params, targets)
                share = (time.perf_counter() - started) / len(ok)
                if targets is None:
                    targets = result.targets
                    for j, slot in enumerate(ok):
                        predicted[slot] = (result.probs[j], int(result.targets[j]))
                for j, slot in enumerate(ok):
                    batched[slot][plan.name] = (result.maps[j], share)
            if targets is None:
                _, probs = bundle.runner.forward(x, batch_size=len(x))
                for j, slot in enumerate(ok):
                    row_probs = probs[j].astype(np.float64)
                    # np.argmax of NaN is 0; such a row becomes an error row anyway.
                    predicted[slot] = (row_probs, int(np.argmax(row_probs)))
        except Exception:
            predicted, batched = {}, {slot: {} for slot in ok}
    for slot in ok:
        _finish_row(bundle, prepared[slot], job, maps, slot, predicted.get(slot), batched[slot])
    start = int(prepared[0].row["index"]) if prepared else 0
    return BatchRows(start, [item.row for item in prepared], maps, masks)


def audit_batch(
    bundle: ModelBundle, dataset: AuditDataset, items: Sequence[AuditItem], job: AuditJob
) -> BatchRows:
    """Everything a run stores for consecutive ``items``: read, predict, explain, measure."""
    return compute_batch(bundle, prepare_batch(bundle, dataset, items, job), job)


def batch_plan(start: int, total: int, chunk_size: int, batch_size: int) -> list[range]:
    """Consecutive batches of at most ``batch_size`` items from ``start`` to ``total``, never
    across a chunk boundary (chunks begin at multiples of ``chunk_size`` past ``start``)."""
    plan = []
    for chunk in range(start, total, chunk_size):
        end = min(chunk + chunk_size, total)
        plan += [range(b, min(b + batch_size, end)) for b in range(chunk, end, batch_size)]
    return plan


def _prefetched(
    batches: Sequence[range], prepare: Callable[[range], list[_Prepared]], depth: int = 2
) -> Iterator[list[_Prepared]]:
    """``prepare(batch)`` for each batch, run ahead by a background thread (reading and
    decoding the next batches while the model computes; at most ``depth`` batches wait)."""
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for batch in batches:
                value: Any = prepare(batch)
                while not stop.is_set():
                    try:
                        ready.put(value, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as error:  # handed to the consumer, raised there
            ready.put(error)
            return
        ready.put(done)

    thread = threading.Thread(target=work, name="audit-reader", daemon=True)
    thread.start()
    try:
        while True:
            value = ready.get()
            if value is done:
                return
            if isinstance(value, BaseException):
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.1)
        thread.join()


def local_batches(
    bundle: ModelBundle,
    dataset: AuditDataset,
    job: AuditJob,
    start: int,
    chunk_size: int,
    batch_size: int,
) -> Iterator[BatchRows]:
    """The run's remaining items in this process, batch by batch, the next batch read by a
    background thread while the current one computes."""
    plan = batch_plan(start, len(dataset), chunk_size, batch_size)

    def prepare(batch: range) -> list[_Prepared]:
        return prepare_batch(bundle, dataset, dataset[batch.start : batch.stop], job)

    for prepared in _prefetched(plan, prepare):
        yield compute_batch(bundle, prepared, job)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def audit_batch_size(bundle: ModelBundle, batch_size: int | None, chunk_size: int) -> int:
    """Images per batched pass: ``batch_size``, or automatic (about 400 000 input pixels: 8
    images at 224 px, 32 at 96 px), never more than a chunk."""
    if batch_size is not None and int(batch_size) < 1:
        raise ParameterError(f"batch_size must be at least 1, got {batch_size}")
    height, width = bundle.input_size
    shape = (height or 224, width or 224, bundle.channels)
    return max(1, min(resolve_batch_size(batch_size, shape), chunk_size))


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def run_audit(
    model: ModelBundle | str | os.PathLike,
    dataset: AuditDataset | str | os.PathLike,
    out: str | os.PathLike,
    methods: Sequence[str] = ("grad_cam",),
    params: Mapping[str, Mapping[str, Any]] | None = None,
    map_size: int = 32,
    chunk_size: int = 64,
    progress: ProgressCallback | None = None,
    resume: bool = True,
    *,
    labels: str | os.PathLike | list[str] | None = None,
    engine: str = "local",
    address: str | None = None,
    batch_size: int | None = None,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
) -> AuditSummary:
    """Explain every image of ``dataset`` with ``methods`` into the run folder ``out``.

    Parameters
    ----------
    model
        A :class:`~explainers.io.models.ModelBundle`, or a model file, loaded with
        :func:`explainers.load_model` (inspected before Keras reads it) and ``labels``.
    dataset
        An :class:`~explainers.audit.datasets.AuditDataset`, an image folder or a manifest.
    out
        The run folder (layout: :mod:`explainers.audit.store`). New or empty, or holding a run.
    methods, params
        Registry names, and per method its parameters (plus ``"layer"``/``"engine"``), all
        validated before the first image (:func:`resolve_methods`).
    map_size
        S: maps and masks are stored S×S.
    chunk_size
        Images per commit: the most a kill can lose, and the most held in memory.
    progress
        ``callback(fraction, message)`` after every image and commit: images done / total, the
        rate and the time left. Raising from it stops the run (committed chunks stay).
    resume
        True: continue a run already in ``out`` (the same model SHA-256, dataset fingerprint,
        methods, parameters and map size, else ParameterError); a complete run returns at once.
        False: delete the run in ``out`` and start over.
    labels
        The class names file (or list) for a model given as a path.
    engine
        ``"local"``: this process, a batch at a time (:mod:`explainers.audit.batched`), the
        next batch read by a background thread. ``"ray"``: Ray Data actors, each loading the
        model once (:mod:`explainers.audit.ray_engine`; needs ``ray[data]``); this process
        writes the same run folder. Both give the same table and maps (to float32 rounding).
    address
        With ``engine="ray"``: the cluster to join (``ray start --head`` prints it; ``"auto"``
        finds a local one). None: an already initialised Ray, else a new local one.
    batch_size
        Images per batched pass; None: automatic (about 400 000 input pixels, at most a
        chunk). It changes speed and memory, not results (rows are independent).
    actors, cpus_per_actor
        With ``engine="ray"``: how many model actors (default: the cluster's CPUs divided by
        ``cpus_per_actor``) and the CPUs each one reserves (its TensorFlow threads).

    Returns
    -------
    AuditSummary
    """
    started = time.perf_counter()
    map_size, chunk_size = int(map_size), int(chunk_size)
    if not 1 <= map_size <= 1024:
        raise ParameterError(f"map_size must be 1..1024 cells, got {map_size}")
    if chunk_size < 1:
        raise ParameterError(f"chunk_size must be at least 1, got {chunk_size}")
    if engine not in ENGINES:
        raise ParameterError(f"unknown audit engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if address is not None and engine != "ray":
        raise ParameterError("address is the Ray cluster's: it needs engine='ray'")
    data = open_dataset(dataset)
    payload = None
    if engine == "ray":
        # The Ray engine's actors load exactly the bytes inspected and hashed here.
        from explainers.audit.ray_engine import model_payload

        bundle, model_path, payload = model_payload(model, labels)
    elif isinstance(model, ModelBundle):
        bundle, model_path = model, model.source
    else:
        bundle, model_path = load_model(model, labels=labels), str(Path(model).resolve())
    if bundle.task != "classification":
        raise UnsupportedModelError(
            f"the dataset audit explains single-label classifiers (each image's top class, "
            f"checked against its label); {bundle.name!r} is a {bundle.task} model. Explain its "
            "images one at a time with a target (explainers.explain(..., target=...); the "
            "dashboard's Explain page)."
        )
    plans = resolve_methods(bundle, methods, params)
    mapping, rule = label_mapping(data, bundle)
    manifest = build_manifest(bundle, model_path, data, plans, map_size, mapping, rule)
    names = [plan.name for plan in plans]
    batch = audit_batch_size(bundle, batch_size, chunk_size)
    total = len(data)
    with RunWriter(
        out,
        manifest,
        total=total,
        map_size=map_size,
        methods=names,
        masks=list(manifest["masks"]),
        resume=resume,
    ) as writer:
        resumed_from = writer.done
        job = AuditJob(
            tuple(plans), mapping, map_size, writer.mask_kinds, tuple(writer.schema.names)
        )
        counts = writer.committed_counts()
        if progress is not None:
            verb = "resuming at" if resumed_from else "starting:"
            progress(resumed_from / total, f"{verb} {resumed_from}/{total} images")
        if engine == "ray":
            from explainers.audit.ray_engine import ray_batches

            assert payload is not None
            source = _as_batches(
                ray_batches(
                    payload,
                    data,
                    job,
                    resumed_from,
                    chunk_size,
                    batch,
                    compute=audit_batch,
                    address=address,
                    actors=actors,
                    cpus_per_actor=cpus_per_actor,
                )
            )
        else:
            source = local_batches(bundle, data, job, resumed_from, chunk_size, batch)
        computing_since = time.perf_counter()
        pending = _Pending(job, chunk_size, resumed_from, total)
        try:
            for result in source:
                for row in result.rows:
                    counts["errors"] += row["error"] is not None
                    counts["labelled"] += row["correct"] is not None
                    counts["correct"] += bool(row["correct"])
                pending.add(result)
                if progress is not None:
                    received = pending.received
                    rate = (received - resumed_from) / max(
                        time.perf_counter() - computing_since, 1e-9
                    )
                    for done in range(received - len(result.rows) + 1, received + 1):
                        progress(
                            done / total,
                            f"{done}/{total} images · {rate:.1f} images/s · about "
                            f"{_duration((total - done) / rate)} left",
                        )
                for chunk in pending.ready():
                    writer.commit(chunk.start, chunk.rows, chunk.maps, chunk.masks)
                    if progress is not None:
                        end = chunk.start + len(chunk.rows)
                        progress(end / total, f"committed {end}/{total} images")
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        done = writer.done
    seconds = time.perf_counter() - started
    computed = done - resumed_from
    return AuditSummary(
        out=Path(out),
        total=total,
        done=done,
        computed=computed,
        resumed_from=resumed_from,
        errors=counts["errors"],
        labelled=counts["labelled"],
        correct=counts["correct"],
        seconds=seconds,
        images_per_second=computed / seconds if seconds > 0 else 0.0,
    )


def _as_batches(finished: Iterator[Any]) -> Iterator[BatchRows]:
    """The Ray engine's (rows, maps, masks) as :class:`BatchRows` (closing it when closed)."""
    try:
        for rows, maps, masks in finished:
            yield BatchRows(int(rows[0]["index"]) if rows else 0, rows, maps, masks)
    finally:
        close = getattr(finished, "close", None)
        if close is not None:
            close()


class _Pending:
    """Finished rows waiting for their chunk to complete; hands out whole chunks in order.

    Rows may arrive in any grouping (the Ray engine's batches need not follow chunks); each
    chunk commits once all its rows are here, so the run folder is the same whatever the
    engine or batch size.
    """

    def __init__(self, job: AuditJob, chunk_size: int, start: int, total: int) -> None:
        self.job, self.chunk_size, self.total = job, chunk_size, total
        self.next_start = start
        self.rows: dict[int, tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]]
        self.rows = {}
        self.received = start

    def add(self, result: BatchRows) -> None:
        for j, row in enumerate(result.rows):
            index = int(row["index"])
            if index < self.next_start or index >= self.total or index in self.rows:
                raise RuntimeError(f"row {index} arrived twice or out of the run's range")
            self.rows[index] = (
                row,
                {name: array[j] for name, array in result.maps.items()},
                {kind: array[j] for kind, array in result.masks.items()},
            )
        self.received += len(result.rows)

    def ready(self) -> Iterator[_Chunk]:
        while self.next_start < self.total:
            start = self.next_start
            end = min(start + self.chunk_size, self.total)
            if any(i not in self.rows for i in range(start, end)):
                return
            entries = [self.rows.pop(i) for i in range(start, end)]
            size = self.job.map_size
            chunk = _Chunk(
                start=start,
                rows=[entry[0] for entry in entries],
                maps={
                    plan.name: np.stack([e[1][plan.name] for e in entries])
                    if entries
                    else np.empty((0, size, size), np.float16)
                    for plan in self.job.plans
                },
                masks={
                    kind: np.stack([e[2][kind] for e in entries]) for kind in self.job.mask_kinds
                },
            )
            self.next_start = end
            yield chunk
