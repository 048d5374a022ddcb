"""The run folder of an audit, in standard formats (JSON, Parquet, ``.npy``), written so that a
run killed at any moment (``kill -9``) resumes with nothing lost or duplicated.

::

    RUN/manifest.json              what was run: model, dataset, methods, map size, versions
    RUN/progress.json              {"done": k}: items 0..k-1 are committed
    RUN/table/part-00000000.parquet  one row per image, one file per committed chunk, named by
                                   the chunk's first index (8 digits)
    RUN/maps/<method>.npy          float16 (N, S, S): each image's raw signed map, resized to S×S
    RUN/masks/object.npy           uint8 (N, S, S): share of each cell inside the object mask
    RUN/masks/marker.npy           uint8 (N, S, S): share of each cell inside the marker mask
    RUN/.lock                      locked (flock) while a process writes the run

The table's columns (every one nullable; :func:`table_schema`): ``index`` (int64, 0..N-1, the key
shared with the rows of the ``.npy`` files), ``id``, ``path`` (None for generated images),
``label`` and ``label_name`` (the model's class index and name; None when unlabelled),
``prediction``, ``prediction_name``, ``probability`` (of the prediction), ``label_probability``,
``correct``, ``height`` and ``width`` (of the image as read), ``has_mask`` and ``has_marker`` (the
image has a non-empty object / marker mask), ``error`` (None unless reading the image, the
prediction or a method failed: the message, ``"<method>: <message>"`` for a method); then per
method ``<method>__peak_row``, ``__peak_col``, ``__entropy``, ``__spread``, ``__energy_in_mask``,
``__energy_in_marker``, ``__seconds`` (float64; defined in :mod:`explainers.audit.run`).

The commit point is ``progress.json``: a chunk's maps (and masks) are written into the memmaps
and flushed, then its Parquet part is written (temp file, then ``os.replace``), and only then is
``progress.json`` replaced the same way. A part or memmap row past ``done`` is a chunk that did
not commit; resuming deletes such parts and overwrites such rows. Map rows of failed images (or
methods) hold NaN; mask rows of unreadable images, 0. :func:`open_run` reads a run back, also
while it is being written: it sees the committed rows only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from explainers.errors import ParameterError

__all__ = [
    "BASE_COLUMNS",
    "FORMAT",
    "FORMAT_VERSION",
    "MASK_KINDS",
    "METHOD_COLUMNS",
    "AuditRun",
    "RunWriter",
    "manifest_differences",
    "method_column",
    "open_run",
    "part_name",
    "read_every_column",
    "table_schema",
]

FORMAT = "explainers-audit-run"
FORMAT_VERSION = 1
#: The masks a run may store, by file name under ``masks/``.
MASK_KINDS = ("object", "marker")
#: How a mask cell is stored (also written into the manifest).
MASK_ENCODING = "uint8: round(255 × the share of the cell's pixels inside the mask)"
#: Per-method statistics, one column each, named ``<method>__<statistic>``.
METHOD_COLUMNS = (
    "peak_row",
    "peak_col",
    "entropy",
    "spread",
    "energy_in_mask",
    "energy_in_marker",
    "seconds",
)
_PART = re.compile(r"^part-(\d{8,})\.parquet$")


def _base_fields() -> list[tuple[str, Any]]:
    import pyarrow as pa

    return [
        ("index", pa.int64()),
        ("id", pa.string()),
        ("path", pa.string()),
        ("label", pa.int64()),
        ("label_name", pa.string()),
        ("prediction", pa.int64()),
        ("prediction_name", pa.string()),
        ("probability", pa.float64()),
        ("label_probability", pa.float64()),
        ("correct", pa.bool_()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("has_mask", pa.bool_()),
        ("has_marker", pa.bool_()),
        ("error", pa.string()),
    ]


#: The columns every table has, before the per-method ones.
BASE_COLUMNS = (
    "index",
    "id",
    "path",
    "label",
    "label_name",
    "prediction",
    "prediction_name",
    "probability",
    "label_probability",
    "correct",
    "height",
    "width",
    "has_mask",
    "has_marker",
    "error",
)


def method_column(method: str, statistic: str) -> str:
    return f"{method}__{statistic}"


def table_schema(methods: Sequence[str]) -> Any:
    """The pyarrow schema of a run table with these methods (every column nullable)."""
    import pyarrow as pa

    fields = [pa.field(name, kind) for name, kind in _base_fields()]
    for method in methods:
        fields += [pa.field(method_column(method, s), pa.float64()) for s in METHOD_COLUMNS]
    return pa.schema(fields)


def part_name(start: int) -> str:
    return f"part-{start:08d}.parquet"


# ------------------------------------------------------------------------------------------------
# Small file helpers
# ------------------------------------------------------------------------------------------------
def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary file, sync it, and rename it over ``path``."""
    temporary = _temporary(path)
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ParameterError(
            f"{path.name} in the run folder {str(path.parent)!r} cannot be read ({error}); "
            "the folder is damaged: choose another folder"
        ) from error


def _committed(root: Path) -> int:
    progress = root / "progress.json"
    if not progress.exists():
        return 0
    done = read_json(progress).get("done")
    if not isinstance(done, int) or done < 0:
        raise ParameterError(f"{progress} does not hold a count of done items: {done!r}")
    return done


def _parts(root: Path) -> list[tuple[int, Path]]:
    folder = root / "table"
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _PART.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    return sorted(found)


def _check_format(manifest: Mapping[str, Any], root: Path) -> None:
    if manifest.get("format") != FORMAT:
        raise ParameterError(
            f"{str(root)!r} holds a manifest.json that is not an audit run's; choose another folder"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ParameterError(
            f"the run in {str(root)!r} has format version {manifest.get('format_version')!r}; "
            f"this library reads version {FORMAT_VERSION}: choose another folder"
        )


# ------------------------------------------------------------------------------------------------
# Comparing a run's manifest with the settings of a resumed run
# ------------------------------------------------------------------------------------------------
def manifest_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between a run folder's manifest and a new run's, among what decides the
    results: the model's SHA-256, preprocessing and class names, the dataset's fingerprint, the
    methods (names, resolved parameters, layers, engines), the map size and the target rule."""
    differences = []
    if old.get("model", {}).get("sha256") != new.get("model", {}).get("sha256"):
        differences.append(
            f"the model (SHA-256 {str(old.get('model', {}).get('sha256'))[:12]}… in the folder, "
            f"{str(new.get('model', {}).get('sha256'))[:12]}… now)"
        )
    for key, what in (("preprocessing", "preprocessing"), ("class_names", "class names")):
        before, now = old.get("model", {}).get(key), new.get("model", {}).get(key)
        if before != now:
            differences.append(f"the model's {what} ({before!r} in the folder, {now!r} now)")
    old_data, new_data = old.get("dataset", {}), new.get("dataset", {})
    if old_data.get("fingerprint") != new_data.get("fingerprint"):
        differences.append(
            f"the dataset ({old_data.get('source')!r}, {old_data.get('count')} images, "
            f"fingerprint {str(old_data.get('fingerprint'))[:12]}… in the folder; "
            f"{new_data.get('source')!r}, {new_data.get('count')} images, fingerprint "
            f"{str(new_data.get('fingerprint'))[:12]}… now)"
        )
    old_methods, new_methods = old.get("methods", {}), new.get("methods", {})
    if list(old_methods) != list(new_methods):
        differences.append(
            f"the methods ({', '.join(old_methods)} in the folder, {', '.join(new_methods)} now)"
        )
    else:
        for name in old_methods:
            if old_methods[name] != new_methods[name]:
                differences.append(
                    f"the settings of {name} ({json.dumps(old_methods[name], sort_keys=True)} in "
                    f"the folder, {json.dumps(new_methods[name], sort_keys=True)} now)"
                )
    for key, what in (("map_size", "the map size"), ("target", "the explained target")):
        if old.get(key) != new.get(key):
            differences.append(f"{what} ({old.get(key)!r} in the folder, {new.get(key)!r} now)")
    return differences


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
class RunWriter:
    """Open (create or resume) a run folder for writing and commit chunks to it.

    Use as a context manager. It holds an exclusive lock on ``RUN/.lock`` while open (released by
    the system if the process dies), so two processes never write one run.

    Parameters
    ----------
    root
        The run folder. Created when missing; an existing non-empty folder must hold a run.
    manifest
        The new run's manifest (plain JSON data; see :func:`explainers.audit.run.run_audit`).
    methods
        Method names, in column order.
    masks
        Which of :data:`MASK_KINDS` the dataset provides.
    resume
        True: continue the run in ``root`` (its manifest must match, see
        :func:`manifest_differences`). False: delete a run already in ``root`` and start over.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        manifest: Mapping[str, Any],
        *,
        total: int,
        map_size: int,
        methods: Sequence[str],
        masks: Sequence[str] = (),
        resume: bool = True,
    ) -> None:
        self.root = Path(root)
        self.total, self.map_size = int(total), int(map_size)
        self.methods, self.mask_kinds = tuple(methods), tuple(masks)
        self.schema = table_schema(self.methods)
        self._lock_file: Any = None
        self.maps: dict[str, np.memmap] = {}
        self.masks: dict[str, np.memmap] = {}
        self._prepare_folder()
        self._lock()
        try:
            self.manifest, self.done = self._start(dict(manifest), resume)
            self._open_arrays()
            self._remove_uncommitted()
            if not (self.root / "progress.json").exists():
                write_json_atomic(self.root / "progress.json", {"done": 0})
        except BaseException:
            self.close()
            raise

    # Opening -----------------------------------------------------------------------------------
    def _prepare_folder(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ParameterError(f"{str(self.root)!r} is a file; choose a folder for the run")
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / "manifest.json").exists():
            ours = {".lock", "table", "maps", "masks", "progress.json"}
            others = [
                e.name
                for e in self.root.iterdir()
                if e.name not in ours and not e.name.startswith(".manifest.json.")
            ]
            if others:
                raise ParameterError(
                    f"the folder {str(self.root)!r} is not empty and holds no audit run "
                    f"(found {', '.join(sorted(others)[:3])}); choose a new or empty folder"
                )

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        self._lock_file = open(self.root / ".lock", "a+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            raise ParameterError(
                f"another process is writing the run in {str(self.root)!r}; wait for it to "
                "finish or choose another folder"
            ) from None

    def _start(self, manifest: dict[str, Any], resume: bool) -> tuple[dict[str, Any], int]:
        path = self.root / "manifest.json"
        if path.exists():
            old = read_json(path)
            _check_format(old, self.root)
            if resume:
                differences = manifest_differences(old, manifest)
                if differences:
                    raise ParameterError(
                        f"the run in {str(self.root)!r} was made with other settings: "
                        + "; ".join(differences)
                        + ". Resume it with the same model, dataset, methods, parameters and "
                        "map size, or choose another folder for this run (or pass resume=False "
                        "to replace it)."
                    )
                return old, min(_committed(self.root), self.total)
            self._clear()
        for name in ("progress.json",):
            (self.root / name).unlink(missing_ok=True)
        write_json_atomic(path, manifest)
        return manifest, 0

    def _clear(self) -> None:
        """Delete a run's files (resume=False): only the names a run writes."""
        for name in ("table", "maps", "masks"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for name in ("progress.json", "manifest.json"):
            (self.root / name).unlink(missing_ok=True)

    def _open_arrays(self) -> None:
        from numpy.lib.format import open_memmap

        n, s = self.total, self.map_size
        wanted = [("maps", m, np.float16) for m in self.methods]
        wanted += [("masks", k, np.uint8) for k in self.mask_kinds]
        for folder, name, dtype in wanted:
            path = self.root / folder / f"{name}.npy"
            path.parent.mkdir(exist_ok=True)
            array = None
            if path.exists():
                with contextlib.suppress(ValueError, OSError):
                    array = open_memmap(path, mode="r+")
                if array is not None and (array.shape != (n, s, s) or array.dtype != dtype):
                    array = None
            if array is None:
                if self.done > 0:
                    raise ParameterError(
                        f"{folder}/{name}.npy in the run folder {str(self.root)!r} is missing or "
                        f"not a ({n}, {s}, {s}) {np.dtype(dtype).name} array although "
                        f"{self.done} images are committed: the run is damaged; choose another "
                        "folder"
                    )
                array = open_memmap(path, mode="w+", dtype=dtype, shape=(n, s, s))
            (self.maps if folder == "maps" else self.masks)[name] = array

    def _remove_uncommitted(self) -> None:
        """Parts of chunks that never committed, and temporary files of interrupted writes."""
        for start, path in _parts(self.root):
            if start >= self.done:
                path.unlink()
        for folder in (self.root, self.root / "table"):
            if folder.is_dir():
                for entry in folder.iterdir():
                    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                        entry.unlink(missing_ok=True)

    # Writing -----------------------------------------------------------------------------------
    def commit(
        self,
        start: int,
        rows: Sequence[Mapping[str, Any]],
        maps: Mapping[str, np.ndarray],
        masks: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Store the chunk of items ``start .. start + len(rows) - 1`` and mark it done."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if start != self.done:
            raise ValueError(f"chunks commit in order: expected start {self.done}, got {start}")
        end = start + len(rows)
        if end > self.total:
            raise ValueError(f"chunk {start}..{end} is past the run's {self.total} items")
        if [row["index"] for row in rows] != list(range(start, end)):
            raise ValueError("a chunk's rows must be its items, in order")
        for name, array in self.maps.items():
            array[start:end] = maps[name]
            array.flush()
        for name, array in self.masks.items():
            array[start:end] = (masks or {})[name]
            array.flush()
        table_folder = self.root / "table"
        table_folder.mkdir(exist_ok=True)
        part = table_folder / part_name(start)
        temporary = _temporary(part)
        pq.write_table(pa.Table.from_pylist(list(rows), schema=self.schema), temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, part)
        _fsync_directory(table_folder)
        write_json_atomic(self.root / "progress.json", {"done": end})
        self.done = end

    def committed_counts(self) -> dict[str, int]:
        """Rows, error rows, labelled rows and correct rows among the committed ones."""
        table = read_table(self.root, self.done, self.methods, columns=["error", "correct"])
        errors = table.column("error").null_count
        correct = table.column("correct")
        return {
            "rows": table.num_rows,
            "errors": table.num_rows - errors,
            "labelled": len(correct) - correct.null_count,
            "correct": int(sum(1 for v in correct.to_pylist() if v)),
        }

    def close(self) -> None:
        for array in (*self.maps.values(), *self.masks.values()):
            with contextlib.suppress(Exception):
                array.flush()
        self.maps, self.masks = {}, {}
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def read_every_column(root: Path, done: int) -> Any:
    """The rows with index < ``done`` of every table part, sorted by index, each part with the
    columns it has (a training run's parts add ``metric__*`` columns as Keras logs them;
    missing ones read as null). Raises what pyarrow raises on a damaged part."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tables = [pq.read_table(path) for _, path in _parts(Path(root))]
    table = pa.concat_tables(tables, promote_options="default")
    return table.filter(pc.less(table.column("index"), done)).sort_by("index")


def read_table(
    root: Path, done: int, methods: Sequence[str], columns: Sequence[str] | None = None
) -> Any:
    """The committed rows (index < done), sorted by index, as a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = table_schema(methods)
    if columns is not None:
        wanted = list(dict.fromkeys(["index", *columns]))
        schema = pa.schema([schema.field(name) for name in wanted])
    tables = [
        pq.read_table(path, columns=schema.names, schema=schema)
        for start, path in _parts(root)
        if start < done
    ]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    table = table.filter(pc.less(table.column("index"), done)).sort_by("index")
    indices = table.column("index").to_numpy()
    if len(indices) != done or (done and not np.array_equal(indices, np.arange(done))):
        raise ParameterError(
            f"the run in {str(root)!r} says {done} images are committed but its table holds "
            f"{len(indices)} rows (indices {', '.join(map(str, indices[:3]))}…): the table/ "
            "folder is damaged; choose another folder"
        )
    if columns is not None:
        table = table.select(list(columns))
    return table


@dataclass(frozen=True)
class AuditRun:
    """A run folder read back by :func:`open_run`.

    ``table``: pyarrow Table of the committed rows, sorted by index. ``maps``: method → read-only
    float16 memmap (done, S, S). ``masks``: ``"object"`` / ``"marker"`` → read-only uint8 memmap
    (done, S, S) (see :data:`MASK_ENCODING`), only those the dataset has.
    """

    path: Path
    manifest: dict[str, Any]
    done: int
    total: int
    table: Any
    maps: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    @property
    def methods(self) -> list[str]:
        return list(self.manifest["methods"])


def open_run(path: str | os.PathLike) -> AuditRun:
    """Read a run folder: manifest, committed table rows, maps and masks (read-only memmaps)."""
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise ParameterError(f"no audit run in {str(root)!r} (it has no manifest.json)")
    manifest = read_json(manifest_path)
    _check_format(manifest, root)
    total = int(manifest["dataset"]["count"])
    done = min(_committed(root), total)
    methods = list(manifest["methods"])
    table = read_table(root, done, methods)
    maps = {m: _read_array(root / "maps" / f"{m}.npy", done) for m in methods}
    masks = {
        kind: _read_array(root / "masks" / f"{kind}.npy", done)
        for kind in manifest.get("masks", {})
    }
    return AuditRun(root, manifest, done, total, table, maps, masks)


def _read_array(path: Path, done: int) -> np.ndarray:
    if not path.exists():
        raise ParameterError(f"{path} is missing: the run folder is damaged")
    return np.load(path, mmap_mode="r")[:done]
