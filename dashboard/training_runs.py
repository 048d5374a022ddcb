"""The Training page's helpers, without Streamlit (and without TensorFlow): which training runs
the page may open, reading one back (cached per folder and version), its per-epoch numbers, the
overlays of its fixed images and the Plotly figures.

A training run is the folder :class:`explainers.callbacks.ExplanationCallback` writes (see that
module's docstring): ``manifest.json`` with ``"kind": "training"``, ``images.npy``, one Parquet
part per logged epoch under ``table/`` (columns ``epoch``, ``image``, ``target``,
``<method>__<statistic>``, ``metric__<name>`` …), ``maps/<method>.npy`` (float16, row = slot × N +
image) and ``masks/<kind>.npy``.

Why not :func:`explainers.callbacks.open_training_run`: that module imports Keras (it defines the
callback), and the Streamlit process never imports TensorFlow (``tests/test_ui_process.py``).
This module reads the same folder with the TensorFlow-free :func:`explainers.audit.store.open_run`
(manifest, maps, masks, its checks of a damaged folder) plus pyarrow for the training columns,
as ``TrainingRun`` does.

What the page may open: the runs bundled under ``assets/runs/`` and run folders under the data
root ``EXPLAINER_DATA_ROOT`` (a typed path is confined to it as on the Audit page:
:func:`dashboard.audits.resolve_in_root`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dashboard import audits
from dashboard.audits import AuditInputError
from explainers import render
from explainers.core.maps import resize_map

#: The runs shipped under ``assets/runs/`` that the page names, in the order it lists them:
#: folder → (title, what it shows). Any other run folder there is listed after them under its
#: own name.
BUNDLED_RUNS: dict[str, tuple[str, str]] = {
    "shortcut": (
        "Shortcut model (trained on marked images)",
        "demo_shortcut trained on images whose coloured corner marker gives the class away: "
        "watch its attention settle on the marker.",
    ),
    "fixed": (
        "Fixed model (the same images, right for the right reasons)",
        "demo_fixed trained on the same marked images with Right for the Right Reasons (the "
        "marker masks as what must not matter): watch its attention go to the shapes.",
    ),
}
#: Prefixes of the run keys the page's pickers hold.
BUNDLED, DATA = "bundled", "data"
#: How deep the data root is searched for training runs, and how many are listed.
SEARCH_DEPTH = 3
SEARCH_LIMIT = 200
#: How the page draws the overlays.
COLORMAP = "Jet"
CLIP_PERCENTILE = 99.0
SCALES = {
    "own": "Each map on its own",
    "shared": "One scale per image across epochs",
}
#: Colours of the attention lines: the object and the marker (as the dashboard's outlines are
#: white and magenta on the overlays, the chart uses a blue and that magenta).
OBJECT_COLOUR = "#2563eb"
MARKER_COLOUR = "#d61fd6"
#: Colours of the metric curves: training and validation.
TRAIN_COLOUR = "#2563eb"
VALIDATION_COLOUR = "#ea580c"
#: The second run of a comparison is drawn dashed.
DASHES = ("solid", "dash")
HOW_TO_MAKE = (
    "A training run is the folder that `explainers.callbacks.ExplanationCallback(images, "
    'run_dir="…")` writes while a model trains (manifest.json, images.npy, table/, maps/).'
)


class TrainingRunError(Exception):
    """A run the page cannot show: ``str(error)`` says what was wrong and what to do."""


class EmptyRunError(TrainingRunError):
    """A training run with no logged epoch yet (training has not reached the first one)."""


# ------------------------------------------------------------------------------------------------
# Which runs the page may open
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunChoice:
    """A run in the page's pickers: ``key`` (``bundled:<folder>`` or ``data:<relative path>``),
    its ``title`` and resolved ``path``."""

    key: str
    title: str
    path: Path
    note: str = ""


def _manifest_kind(folder: Path) -> str | None:
    """The ``kind`` of the run in ``folder`` ("training", or None for an audit or no run)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get("kind") if isinstance(manifest, dict) else None


def bundled_runs(assets: Path) -> list[RunChoice]:
    """The training runs under ``assets/runs/`` (the known ones first, in their order)."""
    folder = Path(assets) / "runs"
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except OSError:
        return []
    known = [n for n in BUNDLED_RUNS if n in names]
    others = [n for n in names if n not in BUNDLED_RUNS and not n.startswith(".")]
    found = []
    for name in known + others:
        path = folder / name
        if _manifest_kind(path) != "training":
            continue
        title, note = BUNDLED_RUNS.get(name, (name, ""))
        found.append(RunChoice(f"{BUNDLED}:{name}", title, path.resolve(), note))
    return found


def data_root_runs(
    root: Path, depth: int = SEARCH_DEPTH, limit: int = SEARCH_LIMIT
) -> list[RunChoice]:
    """The training-run folders under the data root (up to ``depth`` levels down), as relative
    paths; hidden entries and links that leave the root are left out, and a run's own folders
    are not searched."""
    found: list[RunChoice] = []

    def visit(folder: Path, level: int) -> None:
        for entry, path in audits.visible_entries(folder, root):
            if len(found) >= limit:
                return
            if not entry.is_dir():
                continue
            kind = _manifest_kind(path)
            if kind == "training":
                relative = path.relative_to(root).as_posix()
                title = f"{relative} (data root)"
                found.append(RunChoice(f"{DATA}:{relative}", title, path.resolve()))
            elif kind is None and level < depth:
                visit(path, level + 1)

    visit(root, 1)
    return found


def resolve_typed(text: str) -> Path:
    """The folder a path typed on the page names under the data root, resolved; raises
    :class:`TrainingRunError` saying what to do (no data root, an absolute path, ``..``, a link
    out of the root, no such folder)."""
    root, problem = audits.data_root()
    if root is None:
        raise TrainingRunError(
            (problem or "No data root is configured.").replace(
                "can be audited from the web page", "can be opened from the web page"
            )
        )
    if not (text or "").strip():
        raise TrainingRunError(
            "Type the run folder's path relative to the data root (e.g. `runs/my_model`)."
        )
    try:
        path = audits.resolve_in_root(root, text)
    except AuditInputError as err:
        raise TrainingRunError(str(err).replace("dataset", "run folder")) from None
    if not path.is_dir():
        raise TrainingRunError(
            f"{text!r} is a file; give the run folder itself (the one holding manifest.json)."
        )
    return path


def choice_path(key: str, choices: Sequence[RunChoice]) -> Path:
    """The folder of a picker key, checked again: a bundled run must still be there, a data-root
    run must still lie inside the data root."""
    for choice in choices:
        if choice.key == key:
            if choice.key.startswith(f"{DATA}:"):
                root, problem = audits.data_root()
                if root is None or not audits.is_inside(choice.path, [root]):
                    raise TrainingRunError(
                        problem or f"{choice.title!r} is no longer inside the data root."
                    )
            return choice.path
    raise TrainingRunError("That run is no longer listed; pick another one.")


# ------------------------------------------------------------------------------------------------
# Reading a run
# ------------------------------------------------------------------------------------------------
def version(path: Path) -> tuple[int, ...]:
    """Changes whenever the callback commits an epoch or the run is started over: the
    modification times (ns) and sizes of its manifest and progress files and of its table
    folder."""
    stamp: list[int] = []
    for name in ("manifest.json", "progress.json", "table"):
        try:
            info = os.stat(path / name)
        except OSError:
            stamp += [0, 0]
        else:
            stamp += [info.st_mtime_ns, info.st_size]
    return tuple(stamp)


@dataclass(frozen=True, eq=False)
class TrainingView:
    """A training run read back, for display.

    ``epochs`` (E,) the logged Keras epochs (0-based), ``images`` uint8 (N, H, W, C) (a
    read-only memmap; :meth:`picture` gives one as RGB),
    ``maps[method]`` float16 (E, N, S, S) (read-only memmap views), ``masks[kind]`` uint8
    (N, S, S) cell shares (×255), ``columns[name]`` (E, N) per-image values of the table,
    ``metrics[name]`` (E,) the training metrics Keras logged (``loss``, ``val_accuracy`` …).
    """

    path: Path
    version: tuple[int, ...]
    manifest: Mapping[str, Any]
    epochs: np.ndarray
    images: np.ndarray
    maps: Mapping[str, np.ndarray]
    masks: Mapping[str, np.ndarray]
    columns: Mapping[str, np.ndarray]
    metrics: Mapping[str, np.ndarray]
    reserved_epochs: int
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def model_name(self) -> str:
        return str(self.manifest.get("model", {}).get("name") or "model")

    @property
    def methods(self) -> list[str]:
        return list(self.maps)

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def map_size(self) -> int:
        return int(self.manifest.get("map_size", 0))

    @property
    def every(self) -> int:
        return int(self.manifest.get("training", {}).get("every", 1) or 1)

    @property
    def still_writing(self) -> bool:
        """Whether the callback reserved room for more epochs than it logged: training is
        running (or stopped before ``on_train_end``)."""
        return self.reserved_epochs > len(self.epochs)

    @property
    def fingerprint(self) -> str:
        return str(self.manifest.get("dataset", {}).get("fingerprint", ""))

    def describe(self) -> str:
        methods = ", ".join(self.methods)
        target = "the given class" if self.manifest.get("target") == "given" else "top-1 class"
        last = int(self.epochs[-1]) + 1
        return (
            f"Model **{self.model_name}** · {self.n_images} fixed images · {len(self.epochs)} "
            f"logged epoch{'s' if len(self.epochs) != 1 else ''} (every {self.every}, up to "
            f"epoch {last}) · {methods} of the {target}"
        )

    def slot(self, epoch: int) -> int:
        """The slot of the last logged epoch at or before ``epoch`` (the first one before it)."""
        before = np.flatnonzero(self.epochs <= epoch)
        return int(before[-1]) if len(before) else 0

    def picture(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 RGB (H, W, 3)."""
        image = np.asarray(self.images[index], np.uint8)
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        return np.ascontiguousarray(image[..., :3])

    def column(self, name: str) -> np.ndarray | None:
        return self.columns.get(name)

    def attention(self, method: str) -> dict[str, np.ndarray]:
        """Per epoch, the mean over the images that have the mask of the share of the map's
        positive mass on the object (``"object"``) and on the marker (``"marker"``); only the
        kinds the run has masks (and values) for."""
        shares = {}
        for kind, statistic, flag in (
            ("object", "energy_in_mask", "has_mask"),
            ("marker", "energy_in_marker", "has_marker"),
        ):
            values = self.columns.get(f"{method}__{statistic}")
            present = self.columns.get(flag)
            if values is None or kind not in self.masks:
                continue
            values = np.asarray(values, np.float64)
            if present is not None:
                values = np.where(np.asarray(present, bool), values, np.nan)
            if not np.isfinite(values).any():
                continue
            with _quiet_nanmean():
                shares[kind] = np.nanmean(values, axis=1)
        return shares

    def area(self, kind: str) -> float | None:
        """The mean share of the image the object (or marker) covers, over the images that have
        one: what a map spread evenly would put on it."""
        cells = self.masks.get(kind)
        if cells is None:
            return None
        share = np.asarray(cells, np.float64).mean(axis=(1, 2)) / 255.0
        share = share[share > 0]
        return float(share.mean()) if len(share) else None


@contextlib.contextmanager
def _quiet_nanmean() -> Iterator[None]:
    """Silence numpy's "mean of empty slice" for epochs where no image has a value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _float_column(table: Any, name: str) -> np.ndarray:
    values = table.column(name).to_pylist()
    return np.array([np.nan if v is None else float(v) for v in values], np.float64)


def _read(path: Path, stamp: tuple[int, ...]) -> TrainingView:
    import pyarrow as pa

    from explainers.audit import store
    from explainers.errors import ExplainerError

    shown = path.name
    if not path.is_dir():
        raise TrainingRunError(f"{shown!r} is not a folder. {HOW_TO_MAKE}")
    if not (path / "manifest.json").is_file():
        raise TrainingRunError(
            f"{shown!r} is not a training run: it has no manifest.json. {HOW_TO_MAKE} Pick "
            "that folder itself."
        )
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TrainingRunError(
            f"The manifest.json of {shown!r} cannot be read ({err}); the folder is damaged or "
            "still being created. Pick another run."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != store.FORMAT:
        raise TrainingRunError(
            f"{shown!r} holds a manifest.json that is not a run's. {HOW_TO_MAKE}"
        )
    if manifest.get("kind") != "training":
        raise TrainingRunError(
            f"{shown!r} holds a dataset audit, not a training run: open it on the Audit page "
            "(Earlier runs), or pick a folder written by ExplanationCallback."
        )
    try:
        run = store.open_run(path)
    except ExplainerError as err:
        raise TrainingRunError(f"The run in {shown!r} cannot be read: {err}.") from None
    n = int(manifest.get("training", {}).get("images") or 0)
    if not (path / "images.npy").is_file():
        raise TrainingRunError(
            f"The run in {shown!r} has no images.npy: the folder is damaged (or the callback "
            "has not started yet). Pick another run."
        )
    images = np.load(path / "images.npy", mmap_mode="r")
    n = n or len(images)
    slots = run.done // n if n else 0
    if slots == 0:
        every = int(manifest.get("training", {}).get("every", 1) or 1)
        when = "after every epoch" if every == 1 else f"after every {every} epochs"
        raise EmptyRunError(
            f"The run in {shown!r} has no logged epoch yet: ExplanationCallback writes to it "
            f"{when} of training. Come back once training has passed the first one; the page "
            "reads the folder again whenever it changes (rerun the page: R)."
        )
    if images.ndim != 4 or len(images) != n:
        raise TrainingRunError(
            f"The images.npy of {shown!r} holds {images.shape}, not the {n} images the manifest "
            "names: the folder is damaged. Pick another run."
        )
    rows = slots * n
    try:
        table = store.read_every_column(path, rows)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise TrainingRunError(
            f"The table of the run in {shown!r} cannot be read ({err}); the folder is damaged."
        ) from None
    if table.num_rows != rows or "epoch" not in table.column_names:
        raise TrainingRunError(
            f"The run in {shown!r} says {rows} rows are committed but its table holds "
            f"{table.num_rows} (with{'out' if 'epoch' not in table.column_names else ''} an "
            "epoch column): the folder is damaged. Pick another run."
        )
    columns: dict[str, np.ndarray] = {}
    for name in table.column_names:
        kind = table.schema.field(name).type
        if pa.types.is_floating(kind) or pa.types.is_integer(kind):
            columns[name] = _float_column(table, name).reshape(slots, n)
        elif pa.types.is_boolean(kind):
            values = [bool(v) if v is not None else False for v in table.column(name).to_pylist()]
            columns[name] = np.array(values, bool).reshape(slots, n)
        else:
            values = ["" if v is None else str(v) for v in table.column(name).to_pylist()]
            columns[name] = np.array(values, object).reshape(slots, n)
    for name in ("epoch", "image"):
        columns[name] = columns[name].astype(np.int64)
    if not np.array_equal(columns["image"], np.tile(np.arange(n), (slots, 1))):
        raise TrainingRunError(
            f"The table of the run in {shown!r} does not hold its images in order: the folder "
            "is damaged. Pick another run."
        )
    prefix = "metric__"
    metrics = {}
    with _quiet_nanmean():
        for name, values in columns.items():
            if name.startswith(prefix):
                metrics[name[len(prefix) :]] = np.nanmean(values, axis=1)
    maps = {}
    for method, array in run.maps.items():
        maps[method] = np.asarray(array[:rows]).reshape(slots, n, *array.shape[1:])
    masks = {kind: np.asarray(array[:n]) for kind, array in run.masks.items()}
    if images.dtype != np.uint8 or images.shape[-1] not in (1, 3, 4):
        raise TrainingRunError(
            f"The images.npy of {shown!r} holds {images.dtype} {images.shape}, not uint8 "
            "(N, H, W, 1|3|4) images: the folder is damaged. Pick another run."
        )
    reserved = int(manifest.get("dataset", {}).get("count", rows)) // max(n, 1)
    return TrainingView(
        path=path,
        version=stamp,
        manifest=manifest,
        epochs=columns["epoch"][:, 0].copy(),
        images=images,
        maps=maps,
        masks=masks,
        columns=columns,
        metrics=metrics,
        reserved_epochs=max(reserved, slots),
    )


_VIEWS: OrderedDict[tuple[str, tuple[int, ...]], TrainingView] = OrderedDict()
_LOCK = threading.Lock()
#: Runs kept read (a run is small: its images, the maps as memmaps, a few hundred table rows).
CACHE_RUNS = 8


def open_view(path: str | os.PathLike) -> TrainingView:
    """The run in ``path`` read back, cached per folder and :func:`version` (a run that gains an
    epoch is read again). Raises :class:`TrainingRunError` saying what to do."""
    folder = Path(path)
    stamp = version(folder)
    key = (str(folder), stamp)
    with _LOCK:
        found = _VIEWS.get(key)
        if found is not None:
            _VIEWS.move_to_end(key)
            return found
    try:
        view = _read(folder, stamp)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise TrainingRunError(
            f"The run in {folder.name!r} cannot be read ({type(err).__name__}: {err}); the "
            "folder is damaged or was being rewritten. Pick another run, or rerun the page."
        ) from None
    with _LOCK:
        for old in [k for k in _VIEWS if k[0] == key[0]]:
            del _VIEWS[old]  # an earlier version of the same folder
        _VIEWS[key] = view
        while len(_VIEWS) > CACHE_RUNS:
            _VIEWS.popitem(last=False)
    return view


# ------------------------------------------------------------------------------------------------
# Pictures
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Look:
    """How the overlays are drawn: opacity, colour scale (``own`` or ``shared``), outlines."""

    alpha: float = 0.5
    scale: str = "own"
    outline_object: bool = False
    outline_marker: bool = False
    side: int = 192


def _mask_pixels(cells: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A stored S×S mask (cell shares ×255) as a bool mask of ``size`` (H, W) pixels."""
    return resize_map(np.asarray(cells, np.float32) / 255.0, size) >= 0.5


def image_scale(view: TrainingView, method: str, index: int) -> float:
    """One colour scale for one image's maps over all epochs: the largest of their own scales."""
    key = ("scale", method, int(index))
    found = view._cache.get(key)
    if found is None:
        values = np.asarray(view.maps[method][:, index], np.float32)
        found = max(
            (
                render.display_scale(np.nan_to_num(m), clip_percentile=CLIP_PERCENTILE)
                for m in values
                if np.isfinite(m).all()
            ),
            default=0.0,
        )
        view._cache[key] = found
    return float(found)


def overlay(view: TrainingView, method: str, slot: int, index: int, look: Look) -> np.ndarray:
    """Image ``index`` with its ``method`` map of logged epoch ``slot`` over it, uint8
    (side, side, 3); the image alone when the method failed on it that epoch (NaN map).
    Cached on the view."""
    from dashboard import visuals

    key = ("overlay", method, int(slot), int(index), look)
    found = view._cache.get(key)
    if found is not None:
        return found
    picture = visuals.fit(view.picture(index), look.side)
    values = np.asarray(view.maps[method][slot, index], np.float32)
    if np.isfinite(values).all():
        scale = image_scale(view, method, index) if look.scale == "shared" else None
        picture = render.overlay(
            picture,
            values,
            sign="positive",
            colormap=COLORMAP,
            alpha=look.alpha,
            clip_percentile=CLIP_PERCENTILE,
            scale=scale if scale else None,
        )
    picture = np.array(picture, np.uint8, copy=True)
    # Outlines thick enough to stay visible when eight overlays share a row (about 1/64 of the
    # picture: 3 px at 192 px).
    thickness = max(1, max(picture.shape[:2]) // 64)
    for kind, wanted, colour in (
        ("object", look.outline_object, visuals.MASK_COLOUR),
        ("marker", look.outline_marker, visuals.MARKER_COLOUR),
    ):
        cells = view.masks.get(kind)
        if wanted and cells is not None:
            region = _mask_pixels(cells[index], picture.shape[:2])
            picture[visuals.outline(region, thickness)] = colour
    picture.setflags(write=False)
    if len(view._cache) > 4096:
        view._cache.clear()
    view._cache[key] = picture
    return picture


def caption(view: TrainingView, method: str, slot: int, index: int) -> str:
    """What the model did with image ``index`` at logged epoch ``slot``: its label, the
    prediction with its probability, and the map's share on the object and the marker."""

    def text(name: str) -> str:
        values = view.columns.get(name)
        return "" if values is None else str(values[slot, index])

    label, predicted = text("label_name"), text("prediction_name")
    probability = view.columns.get("probability")
    p = "" if probability is None else f" {float(probability[slot, index]):.0%}"
    correct = view.columns.get("correct")
    mark = ""
    if correct is not None and label:
        mark = " ✓" if bool(correct[slot, index]) else " ✗"
    head = f"#{index} {label} → {predicted}{p}{mark}" if label else f"#{index} → {predicted}{p}"
    shares = []
    for kind, statistic in (("object", "energy_in_mask"), ("marker", "energy_in_marker")):
        values = view.columns.get(f"{method}__{statistic}")
        if values is not None and np.isfinite(values[slot, index]):
            shares.append(f"{kind} {float(values[slot, index]):.0%}")
    error = view.columns.get("error")
    if error is not None and error[slot, index]:
        shares.append("failed: " + str(error[slot, index])[:80])
    return head + (" · " + " · ".join(shares) if shares else "")


def next_epoch(epochs: Sequence[int], current: int) -> int | None:
    """The logged epoch after ``current`` (None at the last one): one step of the play button."""
    later = [int(e) for e in epochs if int(e) > int(current)]
    return min(later) if later else None


def epoch_label(epoch: int) -> str:
    """A logged Keras epoch as the page names it: 1-based, and 0 for the log an
    ``ExplanationCallback(before_training=True)`` writes before any update (epoch −1)."""
    return "0 (before training)" if int(epoch) < 0 else str(int(epoch) + 1)


def epoch_options(views: Sequence[TrainingView]) -> list[int]:
    """The epochs the slider offers: every epoch logged by any of the runs shown, in order."""
    return sorted({int(e) for view in views for e in view.epochs})


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def _x(view: TrainingView) -> list[int]:
    """Epochs as Keras prints them (1-based), for the charts' x axes."""
    return [int(e) + 1 for e in view.epochs]


def _figure(title: str, height: int, y_title: str, percent: bool) -> Any:
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.update_layout(
        title={"text": title, "font": {"size": 14}, "x": 0.0, "xanchor": "left"},
        height=height,
        margin={"l": 52, "r": 12, "t": 40, "b": 40},
        template="plotly_white",
        legend={"orientation": "h", "yanchor": "top", "y": -0.28, "x": 0.0, "font": {"size": 11}},
        hovermode="x unified",
        xaxis={"title": "epoch", "rangemode": "tozero"},
        yaxis={"title": y_title, "tickformat": ".0%" if percent else None, "rangemode": "tozero"},
    )
    return figure


def _mark_epoch(figure: Any, epoch: int | None) -> Any:
    if epoch is not None:
        figure.add_vline(
            x=int(epoch) + 1,
            line={"color": "#111827", "width": 2, "dash": "dot"},
            annotation={"text": f"epoch {int(epoch) + 1}", "font": {"size": 11}},
            annotation_position="top",
        )
    return figure


def _tidy_x(figure: Any, views: Sequence[TrainingView]) -> None:
    """The x axes from the first to the last logged epoch of the runs (1-based), a tick per
    epoch when there are few."""
    first = min((int(v.epochs[0]) + 1 for v in views), default=1)
    last = max((int(v.epochs[-1]) + 1 for v in views), default=1)
    step = 1 if last - first <= 20 else None
    figure.update_xaxes(range=[first - 0.5, last + 0.5], dtick=step)


def metric_groups(view: TrainingView) -> dict[str, list[str]]:
    """The run's metrics in three charts: ``loss`` (Keras' ``loss`` and ``val_loss``),
    ``accuracy`` (accuracies, in %) and ``other`` (the rest, e.g. a ReasonTrainer's
    cross-entropy, penalty and λ); validation metrics beside their training metric."""
    groups: dict[str, list[str]] = {"loss": [], "accuracy": [], "other": []}
    names = sorted(view.metrics, key=lambda n: (n.removeprefix("val_"), n.startswith("val_")))
    for name in names:
        base = name.removeprefix("val_")
        if "acc" in base:
            groups["accuracy"].append(name)
        elif base == "loss":
            groups["loss"].append(name)
        else:
            groups["other"].append(name)
    return groups


def legend_names(runs: Sequence[tuple[str, TrainingView]]) -> list[str]:
    """Short names of the runs for the charts' legends: their folders' names (``shortcut``,
    ``other``), or their titles when two folders share a name."""
    names = [view.path.name for _, view in runs]
    if len(set(names)) < len(names):
        return [title for title, _ in runs]
    return names


def _metric_title(name: str) -> str:
    return ("validation " if name.startswith("val_") else "training ") + name.removeprefix(
        "val_"
    ).replace("_", " ")


def metrics_figure(
    runs: Sequence[tuple[str, TrainingView]],
    group: str,
    epoch: int | None,
    height: int = 300,
) -> Any | None:
    """The ``group`` curves (see :func:`metric_groups`) of one or two runs (the second dashed),
    with a line at ``epoch``; None when no run logged such a metric."""
    import plotly.graph_objects as go

    if group == "other":
        return other_metrics_figure(runs, epoch, height)
    titles = {"loss": "Loss", "accuracy": "Accuracy"}
    percent = group == "accuracy"
    figure = _figure(titles[group], height, titles[group].lower(), percent)
    drawn = False
    tags = legend_names(runs)
    for number, (_, view) in enumerate(runs):
        names = metric_groups(view)[group]
        for name in names:
            values = view.metrics[name]
            if not np.isfinite(values).any():
                continue
            colour = VALIDATION_COLOUR if name.startswith("val_") else TRAIN_COLOUR
            label = _metric_title(name) + (f" · {tags[number]}" if len(runs) > 1 else "")
            figure.add_trace(
                go.Scatter(
                    x=_x(view),
                    y=values,
                    mode="lines+markers",
                    name=label,
                    line={"color": colour, "dash": DASHES[number % 2], "width": 2},
                    marker={"size": 6},
                    hovertemplate="%{y:.1%}" if percent else "%{y:.4g}",
                )
            )
            drawn = True
    if not drawn:
        return None
    if percent:
        figure.update_yaxes(range=[0, 1.02])
    _tidy_x(figure, [view for _, view in runs])
    return _mark_epoch(figure, epoch)


def other_metrics_figure(
    runs: Sequence[tuple[str, TrainingView]], epoch: int | None, height: int = 260
) -> Any | None:
    """The metrics that are neither a loss nor an accuracy (a ReasonTrainer's cross-entropy,
    penalty and λ …), one small chart each (their scales differ by orders of magnitude), the
    second run dashed; None when there are none."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    bases: list[str] = []
    for _, view in runs:
        for name in metric_groups(view)["other"]:
            if name.removeprefix("val_") not in bases:
                bases.append(name.removeprefix("val_"))
    if not bases:
        return None
    bases = bases[:6]
    figure = make_subplots(
        rows=1,
        cols=len(bases),
        subplot_titles=[b.replace("_", " ") for b in bases],
        horizontal_spacing=0.06,
    )
    tags = legend_names(runs)
    for number, (_, view) in enumerate(runs):
        for column, base in enumerate(bases, start=1):
            for name in (base, f"val_{base}"):
                values = view.metrics.get(name)
                if values is None or not np.isfinite(values).any():
                    continue
                validation = name.startswith("val_")
                figure.add_trace(
                    go.Scatter(
                        x=_x(view),
                        y=values,
                        mode="lines+markers",
                        name=("validation" if validation else "training")
                        + (f" · {tags[number]}" if len(runs) > 1 else ""),
                        legendgroup=f"{number}{validation}",
                        showlegend=column == 1,
                        line={
                            "color": VALIDATION_COLOUR if validation else TRAIN_COLOUR,
                            "dash": DASHES[number % 2],
                            "width": 2,
                        },
                        marker={"size": 5},
                        hovertemplate="%{y:.4g}",
                    ),
                    row=1,
                    col=column,
                )
    if not figure.data:
        return None
    figure.update_layout(
        height=height,
        margin={"l": 40, "r": 12, "t": 40, "b": 40},
        template="plotly_white",
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0.0, "font": {"size": 11}},
        hovermode="x unified",
    )
    _tidy_x(figure, [view for _, view in runs])
    if epoch is not None:
        figure.add_vline(
            x=int(epoch) + 1, line={"color": "#111827", "width": 2, "dash": "dot"}, row="all"
        )
    return figure


def attention_figure(
    runs: Sequence[tuple[str, TrainingView]],
    method: str,
    epoch: int | None,
    height: int = 300,
) -> Any | None:
    """Per epoch, the mean share of the map on the object and on the marker (the second run
    dashed), with the area each covers (dotted: what an evenly spread map would put there);
    None when no run has masks."""
    import plotly.graph_objects as go

    figure = _figure("Where the attention goes", height, "share of the map", True)
    drawn = False
    areas: dict[str, float] = {}
    tags = legend_names(runs)
    for number, (_, view) in enumerate(runs):
        if method not in view.maps:
            continue
        for kind, values in view.attention(method).items():
            colour = OBJECT_COLOUR if kind == "object" else MARKER_COLOUR
            where = "on the object" if kind == "object" else "on the marker"
            figure.add_trace(
                go.Scatter(
                    x=_x(view),
                    y=values,
                    mode="lines+markers",
                    name=where + (f" · {tags[number]}" if len(runs) > 1 else ""),
                    line={"color": colour, "dash": DASHES[number % 2], "width": 2.5},
                    marker={"size": 7},
                    hovertemplate="%{y:.1%}",
                )
            )
            drawn = True
            area = view.area(kind)
            if area is not None and kind not in areas:
                areas[kind] = area
    if not drawn:
        return None
    for kind, area in areas.items():
        colour = OBJECT_COLOUR if kind == "object" else MARKER_COLOUR
        figure.add_hline(
            y=area,
            line={"color": colour, "width": 1, "dash": "dot"},
            annotation={"text": f"{kind} area {area:.0%}", "font": {"size": 10, "color": colour}},
            annotation_position="bottom right",
        )
    top = max(
        [float(np.nanmax(t.y)) for t in figure.data if len(t.y)] + list(areas.values()) + [0.05]
    )
    figure.update_yaxes(range=[0, min(1.0, top * 1.15)])
    _tidy_x(figure, [view for _, view in runs])
    return _mark_epoch(figure, epoch)
