"""``run_audit``: explain every image of a dataset with one or more methods, streaming the results
into a run folder (:mod:`explainers.audit.store`) that survives being killed at any moment.

Memory stays flat: one image is read at a time, and one chunk's rows and S×S maps are held until
the chunk commits (maps and masks into the memmaps, a Parquet part, then ``progress.json``). A
failure of one image — unreadable, hostile, a model output that is not a number, a method that
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
* ``seconds``: wall time of the method on this image.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from explainers import __version__
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
from explainers.errors import ExplainerError, ParameterError
from explainers.explanation import explain
from explainers.io.models import ModelBundle, load_model
from explainers.registry import get_method

__all__ = [
    "AuditSummary",
    "MethodPlan",
    "cell_shares",
    "map_statistics",
    "resolve_methods",
    "run_audit",
    "stored_map",
]

ProgressCallback = Callable[[float, str], None]
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


def _audit_one(
    bundle: ModelBundle,
    dataset: AuditDataset,
    item: AuditItem,
    plans: Sequence[MethodPlan],
    mapping: list[int] | None,
    chunk: _Chunk,
    slot: int,
    map_size: int,
    columns: Sequence[str],
) -> dict[str, Any]:
    """Fill ``chunk``'s slot for ``item`` and return its row."""
    label = item.label if mapping is None or item.label is None else mapping[item.label]
    row: dict[str, Any] = dict.fromkeys(columns)
    row.update(
        index=item.index,
        id=item.id,
        path=item.path,
        label=label,
        label_name=bundle.class_names[label] if label is not None else None,
    )
    try:
        image, object_mask, marker_mask = dataset.read_item(item)
    except Exception as error:
        row["error"] = _message(error)
        return row
    row["height"], row["width"] = int(image.shape[0]), int(image.shape[1])
    masks = {"object": object_mask, "marker": marker_mask}
    for kind, mask in masks.items():
        present = mask is not None and bool(mask.any())
        row["has_mask" if kind == "object" else "has_marker"] = present
        if present and kind in chunk.masks:
            chunk.masks[kind][slot] = cell_shares(mask, map_size)
    try:
        probs = bundle.predict(image)
    except Exception as error:
        row["error"] = _message(error)
        return row
    prediction = int(np.argmax(probs))
    row.update(
        prediction=prediction,
        prediction_name=bundle.class_names[prediction],
        probability=float(probs[prediction]),
        label_probability=float(probs[label]) if label is not None else None,
        correct=prediction == label if label is not None else None,
    )
    errors = []
    for plan in plans:
        started = time.perf_counter()
        try:
            result = explain(
                bundle,
                image,
                plan.name,
                target=prediction,
                layer=plan.layer,
                engine=plan.engine,
                **plan.params,
            )
            stats = map_statistics(
                result.attribution,
                object_mask if row["has_mask"] else None,
                marker_mask if row["has_marker"] else None,
            )
            chunk.maps[plan.name][slot] = stored_map(result.attribution, map_size)
        except Exception as error:
            errors.append(f"{plan.name}: {_message(error)}")
        else:
            row.update({method_column(plan.name, k): v for k, v in stats.items()})
        row[method_column(plan.name, "seconds")] = time.perf_counter() - started
    row["error"] = "; ".join(errors) or None
    return row


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


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
    data = open_dataset(dataset)
    if isinstance(model, ModelBundle):
        bundle, model_path = model, model.source
    else:
        bundle, model_path = load_model(model, labels=labels), str(Path(model).resolve())
    plans = resolve_methods(bundle, methods, params)
    mapping, rule = label_mapping(data, bundle)
    manifest = build_manifest(bundle, model_path, data, plans, map_size, mapping, rule)
    names = [plan.name for plan in plans]
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
        columns = writer.schema.names
        counts = writer.committed_counts()
        if progress is not None:
            verb = "resuming at" if resumed_from else "starting:"
            progress(resumed_from / total, f"{verb} {resumed_from}/{total} images")
        computing_since = time.perf_counter()
        for start in range(resumed_from, total, chunk_size):
            end = min(start + chunk_size, total)
            size = end - start
            chunk = _Chunk(
                start=start,
                rows=[],
                maps={n: np.full((size, map_size, map_size), np.nan, np.float16) for n in names},
                masks={k: np.zeros((size, map_size, map_size), np.uint8) for k in writer.masks},
            )
            for slot, item in enumerate(data[start:end]):
                row = _audit_one(bundle, data, item, plans, mapping, chunk, slot, map_size, columns)
                chunk.rows.append(row)
                counts["errors"] += row["error"] is not None
                counts["labelled"] += row["correct"] is not None
                counts["correct"] += bool(row["correct"])
                if progress is not None:
                    done = start + slot + 1
                    rate = (done - resumed_from) / max(time.perf_counter() - computing_since, 1e-9)
                    progress(
                        done / total,
                        f"{done}/{total} images · {rate:.1f} images/s · about "
                        f"{_duration((total - done) / rate)} left",
                    )
            writer.commit(start, chunk.rows, chunk.maps, chunk.masks)
            if progress is not None:
                progress(end / total, f"committed {end}/{total} images")
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
