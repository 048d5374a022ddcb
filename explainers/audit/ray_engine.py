"""The audit on Ray Data: model actors compute the batches, the calling process writes the run.

``run_audit(..., engine="ray")`` sends the run's not-yet-committed items through
``Dataset.map_batches`` with a callable class, :class:`AuditActor`, on a fixed pool of actors
(``compute=ray.data.ActorPoolStrategy(size=...)``). Each actor loads the model once, in its
``__init__``, with TensorFlow's thread pools set to the CPUs the actor reserved, and runs the
same batched passes as the local engine (:func:`explainers.audit.run.audit_batch`, handed in by
the caller); it returns
each batch's table rows, S×S maps and mask shares. The driver gathers rows back into chunks and
commits them with the same :class:`~explainers.audit.store.RunWriter`, so the run folder —
manifest, table, maps, resumption — is the local engine's.

Model files are programs: the driver reads the file's bytes once, inspects them with
:func:`explainers.io.safety.inspect_model_file` (through :func:`explainers.load_model`, which
refuses before Keras reads anything) and hashes them, and only then creates actors; each actor
receives the bytes and the SHA-256 and refuses to load bytes that do not hash to it (and its
own :func:`~explainers.load_model` inspects them again). A model given as a
:class:`~explainers.io.models.ModelBundle` is saved to a ``.keras`` file first and that file is
inspected and sent.

Images are read by the actors (:meth:`AuditDataset.read_item`), so on a cluster image files
must be at the same paths on every node (a shared file system); generated demo sets need
nothing. Every node needs this package and ``ray[data]`` installed.

Ray is imported only here, only when the engine is used; without it the run stops with an
:class:`~explainers.errors.ExplainerError` that says how to install it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explainers.audit.datasets import AuditDataset, AuditItem
from explainers.errors import ExplainerError, ModelLoadError, UnsafeModelError
from explainers.io.models import ModelBundle, load_model

if TYPE_CHECKING:  # run.py imports this module when the engine is chosen, not the reverse
    from explainers.audit.run import AuditJob, BatchRows

#: ``compute(bundle, dataset, items, job) -> BatchRows``: :func:`explainers.audit.run.audit_batch`,
#: handed in by the caller (so that this module does not import ``run``, which imports it).
BatchCompute = Callable[[ModelBundle, AuditDataset, Sequence[AuditItem], "AuditJob"], "BatchRows"]
#: One finished batch: its table rows, maps per method and mask shares per kind, (n, S, S) each.
Finished = tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, np.ndarray]]

__all__ = ["AuditActor", "ModelPayload", "model_payload", "ray_batches", "verified_model_file"]

#: The ``ray[data]`` release this engine is written and tested against.
RAY_REQUIREMENT = "ray[data]==2.60.0"


def import_ray() -> Any:
    """``ray`` (with ``ray.data``), or an ExplainerError saying how to install it."""
    try:
        import ray
        import ray.data  # the engine needs Ray Data, not only Ray Core
    except ImportError as error:
        raise ExplainerError(
            f"the audit's Ray engine needs Ray Data, which is not installed ({error}). Install "
            f'it with: python3 -m pip install "{RAY_REQUIREMENT}" — or use engine="local" '
            "(--engine local)."
        ) from None
    return ray


@dataclass(frozen=True)
class ModelPayload:
    """What an actor needs to load the model the driver inspected: the file's bytes, their
    SHA-256, the file name's suffix and the bundle's settings (preprocessing, class names,
    output, display name)."""

    data: bytes
    sha256: str
    suffix: str
    preprocessing: str
    class_names: tuple[str, ...]
    output_index: int
    name: str


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_payload(
    model: ModelBundle | str | os.PathLike, labels: Any = None
) -> tuple[ModelBundle, str, ModelPayload]:
    """(bundle, the manifest's model path, payload) for the driver.

    A path: its bytes are read once; those bytes, written to a private file, are what
    :func:`explainers.load_model` inspects and loads here and what the actors receive, so the
    SHA-256 in the manifest, the inspected file and the actors' file are one and the same. A
    bundle: saved as ``.keras``, and the saved file is inspected before it goes anywhere.
    """
    from explainers.io.safety import inspect_model_file

    with tempfile.TemporaryDirectory(prefix="explainers-ray-") as folder:
        if isinstance(model, ModelBundle):
            bundle, model_path = model, model.source
            saved = Path(folder) / "model.keras"
            model.model.save(saved)
            inspect_model_file(saved)
            data = saved.read_bytes()
        else:
            path = Path(model)
            if not path.is_file():
                raise ModelLoadError(f"no model file at {str(path)!r}")
            inspect_model_file(path)  # size and structure before the bytes are read in
            data = path.read_bytes()
            copy = Path(folder) / f"model{path.suffix.lower()}"
            copy.write_bytes(data)
            bundle = load_model(copy, labels=labels, name=path.name)
            model_path = str(path.resolve())
    payload = ModelPayload(
        data=data,
        sha256=_sha256(data),
        suffix=".keras" if isinstance(model, ModelBundle) else Path(model).suffix.lower(),
        preprocessing=bundle.preprocessing,
        class_names=tuple(bundle.class_names),
        output_index=bundle.output_index,
        name=bundle.name,
    )
    return bundle, model_path, payload


def verified_model_file(payload: ModelPayload, folder: str | os.PathLike) -> Path:
    """Write the payload's bytes into ``folder`` after checking their SHA-256; raises
    UnsafeModelError when they are not the bytes the driver inspected."""
    actual = _sha256(payload.data)
    if actual != payload.sha256:
        raise UnsafeModelError(
            f"the model bytes this worker received hash to {actual[:12]}…, not to the "
            f"{payload.sha256[:12]}… the driver inspected; refusing to load them"
        )
    path = Path(folder) / f"model{payload.suffix}"
    path.write_bytes(payload.data)
    return path


def _set_threads(threads: int) -> None:
    """TensorFlow's thread pools sized to the actor's CPUs (before TensorFlow starts)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already running in this process: keep its pools
        pass


class AuditActor:
    """A Ray Data callable class: loads the model once, then audits batches of item indices.

    ``__call__`` takes a batch ``{"data": int64 (B,)}`` of item indices and returns ``{"index",
    "row" (JSON text of each table row), "map:<method>" float16 (B, S, S), "mask:<kind>" uint8
    (B, S, S)}``.
    """

    def __init__(
        self,
        payload: Any,
        dataset: AuditDataset,
        job: AuditJob,
        compute: BatchCompute | None = None,
        threads: int = 1,
    ) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        if not isinstance(payload, ModelPayload):  # an ObjectRef handed over unresolved
            import ray

            payload = ray.get(payload)
        _set_threads(max(1, int(threads)))
        with tempfile.TemporaryDirectory(prefix="explainers-actor-") as folder:
            path = verified_model_file(payload, folder)
            self.bundle = load_model(
                path,
                preprocessing=payload.preprocessing,  # type: ignore[arg-type]
                labels=list(payload.class_names),
                output_index=payload.output_index,
                name=payload.name,
            )
        self.dataset, self.job, self.compute = dataset, job, compute

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices = [int(i) for i in batch["data"]]
        assert self.compute is not None
        items = [self.dataset[i] for i in indices]
        result = self.compute(self.bundle, self.dataset, items, self.job)
        out: dict[str, np.ndarray] = {
            "index": np.asarray(indices, np.int64),
            "row": np.array([json.dumps(row) for row in result.rows], dtype=object),
        }
        for name, maps in result.maps.items():
            out[f"map:{name}"] = maps
        for kind, masks in result.masks.items():
            out[f"mask:{kind}"] = masks
        return out


def _rows_of(batch: dict[str, np.ndarray], job: AuditJob) -> Finished:
    """An actor's output batch back as (rows, maps, masks)."""
    rows = [json.loads(str(text)) for text in batch["row"]]
    indices = [int(i) for i in batch["index"]]
    if [row["index"] for row in rows] != indices:
        raise RuntimeError("an actor's rows do not match its indices")
    maps = {
        plan.name: np.asarray(batch[f"map:{plan.name}"], np.float16).reshape(
            len(rows), job.map_size, job.map_size
        )
        for plan in job.plans
    }
    masks = {
        kind: np.asarray(batch[f"mask:{kind}"], np.uint8).reshape(
            len(rows), job.map_size, job.map_size
        )
        for kind in job.mask_kinds
    }
    return rows, maps, masks


def ray_batches(
    payload: ModelPayload,
    dataset: AuditDataset,
    job: AuditJob,
    start: int,
    chunk_size: int,
    batch_size: int,
    *,
    compute: BatchCompute,
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
) -> Iterator[Finished]:
    """The run's items from ``start`` on, computed by a pool of :class:`AuditActor` running
    ``compute`` on each batch.

    Joins ``address`` (or the Ray already initialised in this process, or starts a local one,
    shut down again at the end). Blocks are one batch each (``chunk_size`` is kept for the
    signature; the caller regroups rows into chunks by index).
    """
    total = len(dataset)
    if start >= total:
        return
    ray = import_ray()
    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started_here = True
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    try:
        cpus_per_actor = float(cpus_per_actor)
        if cpus_per_actor <= 0:
            raise ExplainerError(f"cpus_per_actor must be positive, got {cpus_per_actor}")
        cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        size = int(actors) if actors else max(1, int(cluster_cpus // cpus_per_actor))
        if size < 1:
            raise ExplainerError(f"actors must be at least 1, got {actors}")
        # Results come back in item order: the driver holds at most a few chunks.
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        # One batch per block: the pool hands each free actor the next batch, so no actor idles
        # while another finishes a long block (chunk-sized blocks of 64 left 2 actors at 0.5×
        # of the local engine on 320 images; batch-sized ones ran at 1.0-1.5×, same machine).
        # The caller regroups the rows into chunks by index.
        step = max(1, int(batch_size))
        blocks = [
            np.arange(first, min(first + step, total), dtype=np.int64)
            for first in range(start, total, step)
        ]
        # from_numpy names the column "data"; no rename, which would be a separate Ray task
        # needing a CPU of its own (it hangs when the actors hold every CPU).
        items = ray.data.from_numpy(blocks)
        results = items.map_batches(
            AuditActor,
            fn_constructor_kwargs={
                "payload": payload,
                "dataset": dataset,
                "job": job,
                "compute": compute,
                "threads": max(1, round(cpus_per_actor)),
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=cpus_per_actor,
        )
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            yield _rows_of(batch, job)
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        if started_here:
            ray.shutdown()
