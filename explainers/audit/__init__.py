"""Auditing a model on a whole dataset: explain every image, keep the numbers and small maps.

Five modules, lowest first:

* ``datasets``: where the images come from — an image folder with one sub-folder per class, a
  CSV/Parquet manifest (``path,label[,mask_path]``) or the generated demo shapes (with object and
  marker masks) — as :class:`AuditItem` records, a way to read one, and a fingerprint.
* ``store``: the run folder in standard formats — ``manifest.json``, ``progress.json``, a Parquet
  table in parts (one row per image), ``.npy`` memmaps of S×S maps and masks — and
  :func:`open_run` to read it back.
* ``run``: :func:`run_audit`, streaming (one chunk in memory) and resumable after a kill at any
  point; a bad image is an error row, never the end of the run.
* ``analysis``: per class, the mean map, SpRAy (spectral clustering of the maps, the number of
  clusters by eigengap, a 2-D embedding) and flags a reviewer can act on, each with its evidence;
  :func:`analyse_run` reads a run folder.
* ``report``: :func:`audit_report`, one self-contained HTML page of a run (provenance, accuracy
  and confusion matrix, class mean maps, SpRAy clusters with example images, flags with their
  evidence); :func:`write_report` writes it (``python -m explainers audit --report RUN``).

::

    from explainers import audit
    dataset = audit.demo_dataset("shortcut_half", n=200, seed=0)
    summary = audit.run_audit("assets/models/demo_shortcut.keras", dataset, "runs/shortcut",
                              methods=["grad_cam", "occlusion"],
                              labels="assets/models/demo_labels.txt")
    run = audit.open_run("runs/shortcut")
    run.table.to_pandas(), run.maps["grad_cam"], run.masks["marker"]
    review = audit.analyse_run(run, "grad_cam")
    [flag.evidence for flag in review.flags]
    audit.write_report("runs/shortcut")  # runs/shortcut/report.html

This package is a layer above :mod:`explainers.evaluation` (docs/ARCHITECTURE.md). Names are
imported when first used, so ``explainers.audit.open_run`` or ``demo_dataset`` cost no
TensorFlow import; ``run_audit`` does.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "AuditDataset": "datasets",
    "AuditItem": "datasets",
    "DEMO_DATASETS": "datasets",
    "demo_dataset": "datasets",
    "image_folder": "datasets",
    "manifest_dataset": "datasets",
    "open_dataset": "datasets",
    "AuditAnalysis": "analysis",
    "Flag": "analysis",
    "SprayResult": "analysis",
    "analyse": "analysis",
    "analyse_run": "analysis",
    "AuditRun": "store",
    "open_run": "store",
    "AuditSummary": "run",
    "map_statistics": "run",
    "run_audit": "run",
    "audit_report": "report",
    "write_report": "report",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in ("analysis", "datasets", "report", "store", "run"):
        value = import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from explainers.audit.analysis import AuditAnalysis, Flag, SprayResult, analyse, analyse_run
    from explainers.audit.datasets import (
        DEMO_DATASETS,
        AuditDataset,
        AuditItem,
        demo_dataset,
        image_folder,
        manifest_dataset,
        open_dataset,
    )
    from explainers.audit.report import audit_report, write_report
    from explainers.audit.run import AuditSummary, map_statistics, run_audit
    from explainers.audit.store import AuditRun, open_run

__all__ = [
    "DEMO_DATASETS",
    "AuditAnalysis",
    "AuditDataset",
    "AuditItem",
    "AuditRun",
    "AuditSummary",
    "Flag",
    "SprayResult",
    "analyse",
    "analyse_run",
    "audit_report",
    "demo_dataset",
    "image_folder",
    "manifest_dataset",
    "map_statistics",
    "open_dataset",
    "open_run",
    "run_audit",
    "write_report",
]
