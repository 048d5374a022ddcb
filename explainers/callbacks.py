"""Explanations during training: a Keras 3 callback that explains fixed images every few epochs.

:class:`ExplanationCallback` keeps one :class:`~explainers.io.models.ModelBundle` for the model
being trained, so the library's compiled passes (``ModelRunner``) are traced once, on the first
logged epoch, and reused: they read the model's weights as variables, so every epoch's maps use
that epoch's weights without retracing (``tests/test_callbacks.py`` checks both with the runner's
tracing count and against a freshly built bundle).

At the end of every ``every``-th epoch it

* explains each image with each method (:func:`explainers.explain`; the target is the given one,
  else the model's current top-1 class, computed in one batched forward pass of the current
  weights),
* writes the overlays to TensorBoard (``tf.summary.image`` under ``explanations/<method>``,
  step = Keras' 0-based epoch, like Keras' own ``TensorBoard`` callback; with masks also the
  scalars ``explanations/<method>/energy_in_mask`` and ``…/energy_in_marker``), so
  ``tensorboard --logdir LOG_DIR`` shows the maps change, and
* appends the epoch to a run folder in the dataset audit's format (:mod:`explainers.audit.store`),
  readable by :func:`explainers.audit.open_run` and, with the training columns, by
  :func:`open_training_run`.

A method that fails is logged (``logging``, logger ``explainers.callbacks``) and skipped: its map
row holds NaN and the table row says why. Nothing the callback does stops training: any other
error is logged, the callback switches itself off and training goes on.

The run folder::

    RUN/manifest.json       the audit manifest plus "kind": "training" and a "training" section
                            (images, every, logged epochs, seconds per logged epoch)
    RUN/progress.json       {"done": rows}
    RUN/images.npy          uint8 (N, H, W, C): the explained images, so the folder stands alone
    RUN/table/part-*.parquet  one part per logged epoch, one row per image
    RUN/maps/<method>.npy   float16 (rows, S, S); row = slot × N + image, slot = logged epochs
                            before this one (the table's ``index``)
    RUN/masks/<kind>.npy    uint8 (rows, S, S) when masks are given (repeated every epoch)

Table columns: the audit's (:data:`explainers.audit.store.BASE_COLUMNS`, the per-method
``<method>__<statistic>`` from :func:`explainers.audit.run.map_statistics`, and ``seconds``),
then ``epoch`` (Keras' 0-based epoch; −1 for the ``before_training`` log), ``image``
(0..N-1), ``target`` (the explained class) and ``metric__<name>`` for every training metric
Keras logged that epoch (``loss``, ``accuracy``, ``val_loss`` …; none before training).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from explainers.audit.run import (
    MAP_ENCODING,
    MethodPlan,
    cell_shares,
    library_versions,
    map_statistics,
    resolve_methods,
    stored_map,
)
from explainers.audit.store import (
    FORMAT,
    FORMAT_VERSION,
    MASK_ENCODING,
    MASK_KINDS,
    method_column,
    open_run,
    part_name,
    read_every_column,
    table_schema,
    write_json_atomic,
)
from explainers.errors import ExplainerError, ParameterError, UnsupportedModelError
from explainers.explanation import explain
from explainers.io.models import ModelBundle, bundle_from_model
from explainers.render import overlay

__all__ = [
    "BEFORE_TRAINING",
    "TRAINING_COLUMNS",
    "ExplanationCallback",
    "TrainingRun",
    "open_training_run",
]

LOGGER = logging.getLogger("explainers.callbacks")
#: Columns a training run adds after the audit's, before the ``metric__<name>`` ones.
TRAINING_COLUMNS = ("epoch", "image", "target")
METRIC_PREFIX = "metric__"
#: The epoch a ``before_training`` log is recorded under (Keras' epochs count from 0).
BEFORE_TRAINING = -1
#: Longest error message kept in the table.
MAX_ERROR_CHARS = 500


def _message(error: BaseException) -> str:
    text = str(error) if isinstance(error, ExplainerError) else f"{type(error).__name__}: {error}"
    text = text.strip() or type(error).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _as_images(images: Any) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim == 3:  # one channel, no channel axis
        array = array[..., None]
    if array.ndim != 4 or array.shape[0] == 0:
        raise ParameterError(
            f"images must be an array (N, H, W, C) of N ≥ 1 images, got shape {array.shape}"
        )
    if array.dtype != np.uint8:
        if array.dtype.kind == "f" and np.nanmax(array) <= 1.0 + 1e-6 and np.nanmin(array) >= 0:
            array = np.rint(array * 255.0)
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array


class ExplanationCallback(keras.callbacks.Callback):
    """Explain fixed images every ``every`` epochs; write TensorBoard images and a run folder.

    Parameters
    ----------
    images
        The images to explain, (N, H, W, C), uint8 in 0..255 as :func:`explainers.explain` takes
        them (float arrays in 0..1 are scaled to 0..255); ``preprocessing`` turns them into model
        inputs.
    methods
        Registry names (:func:`explainers.available_methods`).
    targets
        Class index per image (N,), or None: each epoch explains the model's current top-1 class.
    every
        Explain after every ``every``-th epoch (epochs ``every - 1``, ``2·every - 1``, … 0-based),
        and always after the last one.
    log_dir
        TensorBoard log folder (None: no TensorBoard output).
    run_dir
        Run folder (None: none). An existing run in it is replaced when training starts; later
        ``fit`` calls with the same callback append to it.
    labels
        True class per image (N,), for the table's ``label``/``correct`` columns.
    masks
        ``{"object": (N, H, W) bool, "marker": (N, H, W) bool}`` (either may be missing): the
        table's energy-in-mask columns and the run's ``masks/``.
    params
        Per method its parameters (plus ``"layer"``/``"engine"``), as in
        :func:`explainers.audit.run_audit`.
    preprocessing, class_names
        How images become model inputs and the class names (:func:`explainers.bundle_from_model`).
    map_size
        S: the run folder's maps and masks are S×S.
    model
        The Keras model to explain, if not the one being trained (default: the trained model,
        or its ``explained_model`` when it wraps one, as :class:`explainers.training.ReasonTrainer`
        does).
    before_training
        Also explain once when the first ``fit`` starts, before any weight update: logged as
        epoch −1 (TensorBoard step −1; the Training page shows it as epoch 0, "before
        training"), without training metrics. It shows where the untrained model looks, so a
        shortcut learnt within the first epoch is seen forming.
    """

    def __init__(
        self,
        images: Any,
        methods: Sequence[str] = ("grad_cam",),
        targets: Sequence[int] | np.ndarray | None = None,
        every: int = 1,
        log_dir: str | os.PathLike | None = None,
        run_dir: str | os.PathLike | None = None,
        *,
        labels: Sequence[int] | np.ndarray | None = None,
        masks: Mapping[str, np.ndarray] | None = None,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        preprocessing: str = "auto",
        class_names: Sequence[str] | None = None,
        map_size: int = 32,
        model: keras.Model | None = None,
        before_training: bool = False,
    ) -> None:
        super().__init__()
        self.before_training = bool(before_training)
        self.images = _as_images(images)
        self.method_names = [methods] if isinstance(methods, str) else list(methods)
        if not self.method_names:
            raise ParameterError("choose at least one method")
        self.targets = None if targets is None else self._per_image(targets, "targets")
        self.labels = None if labels is None else self._per_image(labels, "labels")
        if int(every) < 1:
            raise ParameterError(f"every must be at least 1, got {every}")
        self.every = int(every)
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.masks: dict[str, np.ndarray] = {}
        for kind, mask in (masks or {}).items():
            if kind not in MASK_KINDS:
                raise ParameterError(f"unknown mask {kind!r}; masks are {', '.join(MASK_KINDS)}")
            array = np.asarray(mask).astype(bool)
            if array.shape != self.images.shape[:3]:
                raise ParameterError(
                    f"the {kind} masks have shape {array.shape}; the images need "
                    f"{self.images.shape[:3]}"
                )
            self.masks[kind] = array
        self.params = {k: dict(v) for k, v in (params or {}).items()}
        self.preprocessing = preprocessing
        self.class_names = None if class_names is None else list(class_names)
        if not 1 <= int(map_size) <= 1024:
            raise ParameterError(f"map_size must be 1..1024, got {map_size}")
        self.map_size = int(map_size)
        self.explained: keras.Model | None = model
        self.bundle: ModelBundle | None = None
        self.plans: list[MethodPlan] = []
        #: Wall time of each logged epoch's work (explaining, TensorBoard, run folder), seconds.
        self.epoch_seconds: list[float] = []
        #: Keras epochs logged so far.
        self.logged_epochs: list[int] = []
        #: ``(epoch, method, message)`` of every failure.
        self.failures: list[tuple[int, str, str]] = []
        self.disabled: str | None = None
        self._writer: Any = None
        self._run: _TrainingRunWriter | None = None
        #: Each mask as the run folder stores it (uint8 (N, S, S) cell shares).
        self.mask_cells = {
            kind: np.stack([cell_shares(m, self.map_size) for m in self.masks[kind]])
            for kind in self.masks
        }

    def _per_image(self, values: Any, name: str) -> np.ndarray:
        array = np.asarray(values).astype(np.int64).reshape(-1)
        if len(array) != len(self.images):
            raise ParameterError(f"{name} has {len(array)} entries for {len(self.images)} images")
        return array

    # Keras hooks ------------------------------------------------------------------------------
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._guard(self._begin)
        if (
            self.before_training
            and not self.logged_epochs
            and self.disabled is None
            and self.bundle is not None
        ):
            self._guard(self._log_epoch, BEFORE_TRAINING, {})

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.disabled is not None or self.bundle is None:
            return
        last = int((self.params_of_fit() or {}).get("epochs") or 0) - 1
        if (epoch + 1) % self.every != 0 and epoch != last:
            return
        self._guard(self._log_epoch, epoch, dict(logs or {}))

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.flush()
        if self._run is not None:
            self._guard(self._run.finish)

    def params_of_fit(self) -> Mapping[str, Any] | None:
        """Keras' ``fit`` parameters (epochs, steps), set on the callback by ``fit``."""
        return getattr(self, "params", None)

    # Work -------------------------------------------------------------------------------------
    def _guard(self, work: Any, *args: Any) -> None:
        """Run ``work``; an error is logged and switches the callback off, never stops fit."""
        try:
            work(*args)
        except Exception as error:
            self.disabled = _message(error)
            LOGGER.error(
                "ExplanationCallback switched off: %s (training continues)",
                self.disabled,
                exc_info=True,
            )

    def _target_model(self) -> keras.Model:
        if self.explained is not None:
            return self.explained
        trained = self.model
        inner = getattr(trained, "explained_model", None)
        return inner if isinstance(inner, keras.Model) else trained

    def _begin(self) -> None:
        if self.bundle is None:
            self.bundle = bundle_from_model(
                self._target_model(),
                preprocessing=self.preprocessing,  # type: ignore[arg-type]
                labels=self.class_names,
                name=self._target_model().name,
            )
            if self.bundle.task != "classification":
                raise UnsupportedModelError(
                    f"ExplanationCallback explains a classifier's classes; "
                    f"{self.bundle.name!r} is a {self.bundle.task} model"
                )
            self.plans = []
            for name in self.method_names:
                try:
                    self.plans += resolve_methods(
                        self.bundle,
                        [name],
                        {name: self.params[name]} if name in self.params else {},
                    )
                except Exception as error:
                    self._fail(-1, name, error)
            if not self.plans:
                raise ParameterError("none of the methods applies to this model")
        if self.log_dir is not None and self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        if self.run_dir is not None and self._run is None:
            self._run = _TrainingRunWriter(self, self.run_dir)
        if self._run is not None:
            epochs = int((self.params_of_fit() or {}).get("epochs") or 1)
            before = self.before_training and not self.logged_epochs
            self._run.reserve(-(-epochs // self.every) + 1 + int(before))

    def _fail(self, epoch: int, method: str, error: BaseException) -> str:
        message = _message(error)
        self.failures.append((epoch, method, message))
        LOGGER.warning("%s failed at epoch %d and is skipped: %s", method, epoch, message)
        return message

    def _log_epoch(self, epoch: int, logs: dict[str, Any]) -> None:
        started = time.perf_counter()
        bundle = self.bundle
        assert bundle is not None
        # One batched forward pass of the current weights (not the runner's per-input memo).
        inputs = np.stack([bundle.preprocess(bundle.resize(image)) for image in self.images])
        _, probs = bundle.runner.forward(inputs.astype(np.float32))
        predictions = probs.argmax(axis=1)
        targets = self.targets if self.targets is not None else predictions
        n, size = len(self.images), self.map_size
        maps = {p.name: np.full((n, size, size), np.nan, np.float16) for p in self.plans}
        overlays: dict[str, list[np.ndarray]] = {p.name: [] for p in self.plans}
        rows = []
        for i, image in enumerate(self.images):
            row = self._row(epoch, i, image, int(targets[i]), predictions[i], probs[i])
            errors = []
            for plan in self.plans:
                method_started = time.perf_counter()
                try:
                    result = explain(
                        bundle,
                        image,
                        plan.name,
                        target=int(targets[i]),
                        layer=plan.layer,
                        engine=plan.engine,
                        **plan.params,
                    )
                    stats = map_statistics(
                        result.attribution,
                        self.masks["object"][i] if row["has_mask"] else None,
                        self.masks["marker"][i] if row["has_marker"] else None,
                    )
                    maps[plan.name][i] = stored_map(result.attribution, size)
                    if self._writer is not None:
                        overlays[plan.name].append(overlay(image, result.attribution, alpha=0.5))
                except Exception as error:
                    errors.append(f"{plan.name}: {self._fail(epoch, plan.name, error)}")
                    if self._writer is not None:
                        overlays[plan.name].append(np.zeros((*image.shape[:2], 3), np.uint8))
                else:
                    row.update({method_column(plan.name, k): v for k, v in stats.items()})
                row[method_column(plan.name, "seconds")] = time.perf_counter() - method_started
            row["error"] = "; ".join(errors) or None
            for name, value in logs.items():
                with contextlib.suppress(TypeError, ValueError):
                    row[METRIC_PREFIX + name] = float(value)
            rows.append(row)
        if self._writer is not None:
            self._summaries(epoch, rows, overlays)
        seconds = time.perf_counter() - started
        self.epoch_seconds.append(seconds)
        self.logged_epochs.append(epoch)
        if self._run is not None:
            self._run.commit(epoch, rows, maps, seconds)

    def _row(
        self,
        epoch: int,
        index: int,
        image: np.ndarray,
        target: int,
        prediction: int,
        probs: np.ndarray,
    ) -> dict[str, Any]:
        assert self.bundle is not None
        names = self.bundle.class_names
        label = None if self.labels is None else int(self.labels[index])
        row: dict[str, Any] = {
            "id": f"epoch{epoch}-image{index}",
            "path": None,
            "label": label,
            "label_name": names[label] if label is not None and label < len(names) else None,
            "prediction": int(prediction),
            "prediction_name": names[int(prediction)],
            "probability": float(probs[prediction]),
            "label_probability": float(probs[label]) if label is not None else None,
            "correct": bool(prediction == label) if label is not None else None,
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "has_mask": bool(self.masks["object"][index].any())
            if "object" in self.masks
            else False,
            "has_marker": bool(self.masks["marker"][index].any())
            if "marker" in self.masks
            else False,
            "error": None,
            "epoch": int(epoch),
            "image": index,
            "target": target,
        }
        return row

    def _summaries(
        self, epoch: int, rows: list[dict[str, Any]], overlays: dict[str, list[np.ndarray]]
    ) -> None:
        import tensorflow as tf

        with self._writer.as_default(step=epoch):
            for plan in self.plans:
                pictures = overlays[plan.name]
                if pictures:
                    tf.summary.image(
                        f"explanations/{plan.name}",
                        np.stack(pictures),
                        max_outputs=len(pictures),
                        description=f"{plan.name} overlays of the {len(pictures)} fixed images "
                        "(target: " + ("given" if self.targets is not None else "top-1") + ")",
                    )
                for statistic in ("energy_in_mask", "energy_in_marker"):
                    values = [row.get(method_column(plan.name, statistic)) for row in rows]
                    values = [v for v in values if v is not None and math.isfinite(v)]
                    if values:
                        tf.summary.scalar(
                            f"explanations/{plan.name}/{statistic}", float(np.mean(values))
                        )
        self._writer.flush()


class _TrainingRunWriter:
    """The run folder of one callback: created at the first ``fit``, one part per logged epoch."""

    def __init__(self, callback: ExplanationCallback, root: Path) -> None:
        self.callback = callback
        self.root = root
        self.n = len(callback.images)
        self.size = callback.map_size
        self.methods = [plan.name for plan in callback.plans]
        self.mask_kinds = [k for k in MASK_KINDS if k in callback.masks]
        self.capacity = 0  # logged-epoch slots the arrays hold
        self.done = 0  # rows committed
        self.metrics: list[str] = []
        self._prepare()

    # Files ------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise ParameterError(f"{str(root)!r} is a file; choose a folder for the run")
        root.mkdir(parents=True, exist_ok=True)
        ours = {"manifest.json", "progress.json", "images.npy", "table", "maps", "masks", ".lock"}
        others = [e.name for e in root.iterdir() if e.name not in ours]
        if others:
            raise ParameterError(
                f"the folder {str(root)!r} holds other files ({', '.join(sorted(others)[:3])}); "
                "choose a new or empty folder for the run"
            )
        for name in ("table", "maps", "masks"):
            shutil.rmtree(root / name, ignore_errors=True)
        for name in ("manifest.json", "progress.json", "images.npy"):
            (root / name).unlink(missing_ok=True)
        np.save(root / "images.npy", self.callback.images)
        write_json_atomic(root / "progress.json", {"done": 0})

    def _manifest(self) -> dict[str, Any]:
        callback = self.callback
        bundle = callback.bundle
        assert bundle is not None
        images = callback.images
        digest = hashlib.sha256(images.tobytes() + repr(images.shape).encode()).hexdigest()
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": "training",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": {
                "path": None,
                "name": bundle.name,
                "sha256": None,
                "sha256_of": "the weights change every epoch",
                "preprocessing": bundle.preprocessing,
                "input_size": list(bundle.input_size),
                "channels": bundle.channels,
                "class_names": list(bundle.class_names),
                "output_kind": bundle.output_kind,
            },
            "dataset": {
                "kind": "training-callback",
                "source": "images.npy",
                "count": self.capacity * self.n,
                "fingerprint": digest,
                "labels": {"matched_by": "index", "dataset_to_model": None},
            },
            "methods": {plan.name: plan.describe() for plan in callback.plans},
            "target": "given" if callback.targets is not None else "prediction",
            "map_size": self.size,
            "maps": MAP_ENCODING + "; row = logged-epoch slot × images + image",
            "masks": dict.fromkeys(self.mask_kinds, MASK_ENCODING),
            "columns": [*self._schema().names],
            "versions": library_versions(),
            "training": {
                "images": self.n,
                "every": callback.every,
                "epochs_logged": list(callback.logged_epochs),
                "seconds_per_logged_epoch": [round(s, 4) for s in callback.epoch_seconds],
                "failures": [list(f) for f in callback.failures],
            },
        }

    def _schema(self) -> Any:
        import pyarrow as pa

        fields = list(table_schema(self.methods))
        fields += [pa.field("epoch", pa.int64()), pa.field("image", pa.int64())]
        fields += [pa.field("target", pa.int64())]
        fields += [pa.field(METRIC_PREFIX + m, pa.float64()) for m in self.metrics]
        return pa.schema(fields)

    def reserve(self, slots: int) -> None:
        """Make the arrays hold at least ``slots`` more logged epochs (keeping what is there)."""
        from numpy.lib.format import open_memmap

        wanted = self.done // self.n + max(1, slots)
        if wanted <= self.capacity:
            return
        rows = wanted * self.n
        arrays = [("maps", m, np.float16) for m in self.methods]
        arrays += [("masks", k, np.uint8) for k in self.mask_kinds]
        for folder, name, dtype in arrays:
            path = self.root / folder / f"{name}.npy"
            path.parent.mkdir(exist_ok=True)
            fill = np.nan if dtype == np.float16 else 0
            grown = self.root / folder / f".{name}.npy.{os.getpid()}.tmp"
            array = open_memmap(grown, mode="w+", dtype=dtype, shape=(rows, self.size, self.size))
            array[:] = fill
            if path.exists():
                old = np.load(path, mmap_mode="r")
                array[: len(old)] = old
                del old
            if folder == "masks":
                array[:] = np.tile(self.callback.mask_cells[name], (wanted, 1, 1))
            array.flush()
            del array
            os.replace(grown, path)
        self.capacity = wanted
        write_json_atomic(self.root / "manifest.json", self._manifest())

    def commit(
        self, epoch: int, rows: list[dict[str, Any]], maps: dict[str, np.ndarray], seconds: float
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.done + self.n > self.capacity * self.n:
            self.reserve(1)
        start = self.done
        for offset, row in enumerate(rows):
            row["index"] = start + offset
        known = set(self.metrics)
        for row in rows:
            for key in row:
                if key.startswith(METRIC_PREFIX) and key[len(METRIC_PREFIX) :] not in known:
                    self.metrics.append(key[len(METRIC_PREFIX) :])
                    known.add(key[len(METRIC_PREFIX) :])
        from numpy.lib.format import open_memmap

        for name in self.methods:
            array = open_memmap(self.root / "maps" / f"{name}.npy", mode="r+")
            array[start : start + self.n] = maps[name]
            array.flush()
            del array
        schema = self._schema()
        table = pa.Table.from_pylist(
            [{k: row.get(k) for k in schema.names} for row in rows], schema
        )
        folder = self.root / "table"
        folder.mkdir(exist_ok=True)
        part = folder / part_name(start)
        temporary = folder / f".{part.name}.{os.getpid()}.tmp"
        pq.write_table(table, temporary)
        os.replace(temporary, part)
        self.done = start + self.n
        write_json_atomic(self.root / "manifest.json", self._manifest())
        write_json_atomic(self.root / "progress.json", {"done": self.done})
        del epoch, seconds

    def finish(self) -> None:
        """Trim the arrays to the committed rows, so that the run reads as complete."""
        from numpy.lib.format import open_memmap

        if self.capacity * self.n == self.done:
            return
        arrays = [("maps", m, np.float16) for m in self.methods]
        arrays += [("masks", k, np.uint8) for k in self.mask_kinds]
        for folder, name, dtype in arrays:
            path = self.root / folder / f"{name}.npy"
            old = np.load(path, mmap_mode="r")
            trimmed = self.root / folder / f".{name}.npy.{os.getpid()}.tmp"
            array = open_memmap(trimmed, mode="w+", dtype=dtype, shape=(self.done, *old.shape[1:]))
            array[:] = old[: self.done]
            array.flush()
            del array, old
            os.replace(trimmed, path)
        self.capacity = self.done // self.n
        write_json_atomic(self.root / "manifest.json", self._manifest())


# ------------------------------------------------------------------------------------------------
# Reading a training run back
# ------------------------------------------------------------------------------------------------
class TrainingRun:
    """A callback's run folder read back: ``audit`` (the :class:`explainers.audit.AuditRun`:
    manifest, maps, masks), ``table`` (pyarrow, every column including ``epoch``, ``image``,
    ``target`` and ``metric__*``), ``images`` (uint8 (N, H, W, C)) and ``epochs`` (the logged
    Keras epochs, in order)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.audit = open_run(self.path)
        if self.audit.manifest.get("kind") != "training":
            raise ParameterError(f"{str(self.path)!r} holds a dataset audit, not a training run")
        has_parts = any((self.path / "table").glob("part-*.parquet"))
        self.table = read_every_column(self.path, self.audit.done) if has_parts else None
        self.images = np.load(self.path / "images.npy")
        self.manifest = self.audit.manifest
        self.epochs: list[int] = list(self.manifest["training"]["epochs_logged"])

    @property
    def n_images(self) -> int:
        return len(self.images)

    def maps(self, method: str) -> np.ndarray:
        """float16 (logged epochs, N, S, S)."""
        array = self.audit.maps[method]
        return np.asarray(array).reshape(-1, self.n_images, *array.shape[1:])

    def column(self, name: str) -> np.ndarray:
        """A table column as an array (logged epochs, N)."""
        assert self.table is not None
        values = self.table.column(name).to_numpy(zero_copy_only=False)
        return values.reshape(-1, self.n_images)


def open_training_run(path: str | os.PathLike) -> TrainingRun:
    """Read an :class:`ExplanationCallback` run folder (see the module docstring)."""
    return TrainingRun(path)
