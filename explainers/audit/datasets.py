"""Where an audit's images come from: a sequence of :class:`AuditItem` records and a way to read
one (:meth:`AuditDataset.read_item`), for three kinds of source.

* :func:`image_folder`: one sub-folder per class (class names = the sorted sub-folder names).
  Files are found recursively under each class folder, in sorted order; files whose extension is
  not an image format's, hidden files and files outside a class folder are skipped and counted
  (``dataset.skipped``). A file with an image extension that does not decode is *not* skipped: it
  becomes an error row of the audit.
* :func:`manifest_dataset`: a CSV or Parquet table with columns ``path,label[,mask_path]``.
  Relative paths are relative to the manifest's folder. A label is a class name or a class index
  (all-integer labels are indices into the model's classes; otherwise every label is a name); an
  empty label means unlabelled. A mask is an image of the same size, white (> 127) on the object.
* :func:`demo_dataset`: the generated shapes of :mod:`explainers.io.demo_data`, made on demand
  (no files), with object and marker masks. ``"honest"``: no marker. ``"shortcut_half"``: the
  class-coloured corner marker on exactly half of the images (chosen deterministically, about
  half of each class), the same image without it on the other half; the label is the drawn
  shape's class everywhere (shape agreement 1).

Every dataset has a :meth:`~AuditDataset.fingerprint` (SHA-256 over ids, labels and file
sizes/mtimes, or over the generator's arguments) that a run folder records, so that resuming a run
on a changed dataset is refused. Only numpy, Pillow and (for Parquet) pyarrow: no TensorFlow.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from explainers.errors import ExplainerError, ImageError, ParameterError
from explainers.io.demo_data import CLASS_NAMES, generate_sample
from explainers.io.images import load_image

__all__ = [
    "DEMO_DATASETS",
    "IMAGE_SUFFIXES",
    "AuditDataset",
    "AuditItem",
    "DemoDataset",
    "FileDataset",
    "RunImages",
    "demo_dataset",
    "image_folder",
    "manifest_dataset",
    "open_dataset",
]

#: File extensions an image folder's files must have to be listed (others are skipped).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
#: Extensions read as a manifest table.
MANIFEST_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: Names accepted by :func:`demo_dataset`.
DEMO_DATASETS = ("honest", "shortcut_half")
#: Columns a manifest must have, and the optional one.
MANIFEST_COLUMNS = ("path", "label")
MASK_COLUMN = "mask_path"

Masks = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]


@dataclass(frozen=True)
class AuditItem:
    """One image of a dataset.

    ``index`` is its position (0..n-1, the run table's key); ``id`` a stable text name (a folder
    dataset's relative path, a manifest's path as written, ``<name>-<seed>-<index>`` for a demo);
    ``label`` an index into the dataset's ``class_names`` (or, when those are None, into the
    model's classes), None when unlabelled; ``path`` and ``mask_path`` absolute file paths, None
    for generated images and images without a mask."""

    index: int
    id: str
    label: int | None
    path: str | None
    mask_path: str | None


class AuditDataset(Sequence[AuditItem]):
    """A sequence of :class:`AuditItem` plus what is needed to read, describe and fingerprint it.

    Attributes
    ----------
    kind
        ``"folder"``, ``"manifest"`` or ``"demo"``.
    source
        Where it comes from: the folder or manifest path, or ``demo:<name>``.
    class_names
        Names of the label indices, or None when labels are already the model's class indices.
    has_object_masks, has_marker_masks
        Whether :meth:`read_item` can return an object mask / a marker mask (for some items).
    skipped
        ``(path, reason)`` of the files a folder scan left out.
    """

    kind: str = ""

    def __init__(
        self,
        *,
        source: str,
        items: Sequence[AuditItem],
        class_names: tuple[str, ...] | None,
        has_object_masks: bool,
        has_marker_masks: bool,
        skipped: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.source = source
        self.items: tuple[AuditItem, ...] = tuple(items)
        self.class_names = class_names
        self.has_object_masks = has_object_masks
        self.has_marker_masks = has_marker_masks
        self.skipped: tuple[tuple[str, str], ...] = tuple(skipped)
        self._fingerprint: str | None = None

    # Sequence ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> AuditItem: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[AuditItem]: ...
    def __getitem__(self, index: int | slice) -> AuditItem | Sequence[AuditItem]:
        return self.items[index]

    def __iter__(self) -> Iterator[AuditItem]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, {len(self)} images)"

    # Reading -----------------------------------------------------------------------------------
    def read_item(self, item: AuditItem | int) -> Masks:
        """``(image, object_mask, marker_mask)``: uint8 (H, W, 3), bool (H, W) or None, bool
        (H, W) or None. Raises :class:`~explainers.errors.ImageError` for an unreadable image or
        mask."""
        raise NotImplementedError

    def label_name(self, label: int | None) -> str | None:
        """The dataset's name of a label index (None when unlabelled or unnamed)."""
        if label is None or self.class_names is None:
            return None
        return self.class_names[label]

    # Identity ----------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """SHA-256 (hex) of what the dataset is: equal fingerprints mean the same images and
        labels (for files: the same ids, labels, sizes and modification times)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for part in self._fingerprint_parts():
                digest.update(json.dumps(part, sort_keys=True).encode())
                digest.update(b"\n")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _fingerprint_parts(self) -> Iterator[Any]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The dataset's entry of a run manifest (plain JSON data)."""
        return {
            "kind": self.kind,
            "source": self.source,
            "fingerprint": self.fingerprint(),
            "count": len(self),
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "has_object_masks": self.has_object_masks,
            "has_marker_masks": self.has_marker_masks,
            "skipped": len(self.skipped),
        }


# ------------------------------------------------------------------------------------------------
# Files: image folders and manifests
# ------------------------------------------------------------------------------------------------
class FileDataset(AuditDataset):
    """Images (and optional masks) read from files."""

    def __init__(self, kind: str, **kwargs: Any) -> None:
        super().__init__(has_marker_masks=False, **kwargs)
        self.kind = kind

    def read_item(self, item: AuditItem | int) -> Masks:
        if isinstance(item, int):
            item = self.items[item]
        if item.path is None:
            raise ImageError(f"image {item.id!r} has no file")
        image = load_image(item.path)
        mask = None
        if item.mask_path is not None:
            mask = read_mask(item.mask_path, image.shape[:2])
        return image, mask, None

    def _fingerprint_parts(self) -> Iterator[Any]:
        yield {"kind": self.kind, "class_names": self.class_names}
        for item in self.items:
            yield [item.id, item.label, _file_state(item.path), _file_state(item.mask_path)]


def _file_state(path: str | None) -> list[int] | None:
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return [-1, -1]  # missing: reading it will be that image's error row
    return [stat.st_size, stat.st_mtime_ns]


def read_mask(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    """A mask image as bool (H, W): True where its gray value is above 127. Its size must be
    ``shape`` (the image's (H, W)); raises ImageError otherwise or when it does not decode."""
    name = Path(path).name
    try:
        pixels = load_image(path)
    except ImageError as error:
        raise ImageError(f"the mask {name!r}: {error}") from error
    if pixels.shape[:2] != tuple(shape[:2]):
        raise ImageError(
            f"the mask {name!r} is {pixels.shape[1]}×{pixels.shape[0]} but its image is "
            f"{shape[1]}×{shape[0]}; a mask must have the image's size"
        )
    return pixels.astype(np.uint16).sum(axis=2) > 3 * 127


def image_folder(root: str | os.PathLike) -> FileDataset:
    """The images under ``root/<class name>/`` (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise ParameterError(f"no image folder at {str(root)!r}")
    root = root.resolve()
    skipped: list[tuple[str, str]] = []
    classes: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            skipped.append((entry.path, "hidden"))
        elif entry.is_dir():
            classes.append(entry.name)
        else:
            skipped.append((entry.path, "not in a class sub-folder"))
    if not classes:
        raise ParameterError(
            f"the folder {str(root)!r} has no class sub-folders: put each class's images in a "
            "sub-folder named after the class (e.g. cat/, dog/)"
        )
    items: list[AuditItem] = []
    for label, name in enumerate(classes):
        for path in _files_under(root / name, skipped):
            relative = path.relative_to(root).as_posix()
            items.append(AuditItem(len(items), relative, label, str(path), None))
    if not items:
        raise ParameterError(
            f"no image files under {str(root)!r} (looked for "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} in {len(classes)} class folders)"
        )
    return FileDataset(
        "folder",
        source=str(root),
        items=items,
        class_names=tuple(classes),
        has_object_masks=False,
        skipped=skipped,
    )


def _files_under(folder: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    """Image files under ``folder`` in sorted order of their relative paths; no symlinked
    folders are followed."""
    found: list[Path] = []
    for directory, subdirs, files in os.walk(folder):
        hidden = [d for d in subdirs if d.startswith(".")]
        skipped.extend((os.path.join(directory, d), "hidden") for d in hidden)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in files:
            path = Path(directory) / name
            if name.startswith("."):
                skipped.append((str(path), "hidden"))
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((str(path), "not an image file extension"))
            else:
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def manifest_dataset(path: str | os.PathLike) -> FileDataset:
    """The images listed in a CSV or Parquet manifest (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"no manifest file at {str(path)!r}")
    fmt = MANIFEST_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ParameterError(
            f"{path.name!r} is not a manifest: expected a .csv or .parquet file with columns "
            "path,label[,mask_path]"
        )
    columns = _read_table(path, fmt)
    missing = [name for name in MANIFEST_COLUMNS if name not in columns]
    if missing:
        raise ParameterError(
            f"the manifest {path.name!r} has no {' or '.join(repr(m) for m in missing)} column: "
            f"it needs columns path,label[,mask_path] (found: {', '.join(columns) or 'none'})"
        )
    folder = path.resolve().parent
    paths, labels = columns["path"], columns["label"]
    masks = columns.get(MASK_COLUMN, [None] * len(paths))
    label_indices, class_names = _labels(labels, path.name)
    items: list[AuditItem] = []
    seen: dict[str, int] = {}
    for row, (text, label, mask_text) in enumerate(zip(paths, label_indices, masks, strict=True)):
        text = "" if text is None else str(text).strip()
        if not text:
            raise ParameterError(f"row {row + 1} of the manifest {path.name!r} has an empty path")
        if text in seen:
            raise ParameterError(
                f"rows {seen[text] + 1} and {row + 1} of the manifest {path.name!r} both list "
                f"{text!r}; list each image once"
            )
        seen[text] = row
        mask_text = "" if mask_text is None else str(mask_text).strip()
        items.append(
            AuditItem(
                index=row,
                id=text,
                label=label,
                path=str(folder / text),
                mask_path=str(folder / mask_text) if mask_text else None,
            )
        )
    if not items:
        raise ParameterError(f"the manifest {path.name!r} lists no images")
    return FileDataset(
        "manifest",
        source=str(path.resolve()),
        items=items,
        class_names=class_names,
        has_object_masks=MASK_COLUMN in columns,
    )


def _read_table(path: Path, fmt: str) -> dict[str, list[Any]]:
    """Column name (stripped, lower case) → values."""
    if fmt == "csv":
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                reader = csv.reader(handle)
                header = next(reader, None)
                if header is None:
                    raise ParameterError(f"the manifest {path.name!r} is empty")
                names = [h.strip().lower() for h in header]
                rows = list(reader)
        except UnicodeDecodeError as error:
            raise ParameterError(f"the manifest {path.name!r} is not UTF-8 text") from error
        except csv.Error as error:
            raise ParameterError(f"the manifest {path.name!r} is not valid CSV ({error})") from None
        rows = [row for row in rows if any(cell.strip() for cell in row)]  # blank lines
        for number, row in enumerate(rows, start=1):
            if len(row) != len(names):
                raise ParameterError(
                    f"row {number} of the manifest {path.name!r} has {len(row)} fields; the "
                    f"header has {len(names)} ({', '.join(names)})"
                )
        return {name: [row[i] for row in rows] for i, name in enumerate(names)}
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError...
        raise ParameterError(f"the manifest {path.name!r} is not a readable Parquet file") from (
            error
        )
    return {name.strip().lower(): table.column(name).to_pylist() for name in table.column_names}


_INTEGER = re.compile(r"^\s*\d+\s*$")


def _labels(
    values: Sequence[Any], manifest: str
) -> tuple[list[int | None], tuple[str, ...] | None]:
    """Label indices and the class names they index (None: the indices are the model's)."""
    present = [(row, v) for row, v in enumerate(values) if v is not None and str(v).strip() != ""]
    for row, value in present:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ParameterError(
                f"row {row + 1} of the manifest {manifest!r} has label {value!r}: expected a "
                "class name or a class index"
            )
        if isinstance(value, int | float) and value < 0:
            raise ParameterError(
                f"row {row + 1} of the manifest {manifest!r} has label {value!r}: a class index "
                "is 0 or more"
            )
    labels: list[int | None] = [None] * len(values)
    if all(isinstance(v, int | float) or _INTEGER.match(str(v)) for _, v in present):
        for row, value in present:
            labels[row] = int(float(value)) if isinstance(value, float) else int(str(value))
        return labels, None
    names = tuple(sorted({str(v).strip() for _, v in present}))
    for row, value in present:
        labels[row] = names.index(str(value).strip())
    return labels, names


# ------------------------------------------------------------------------------------------------
# Generated demo images
# ------------------------------------------------------------------------------------------------
class DemoDataset(AuditDataset):
    """Shapes made on demand by :func:`explainers.io.demo_data.generate_sample`, image ``i``
    exactly as :func:`~explainers.io.demo_data.generate_dataset` ``(n, seed, size=size)`` draws
    it (with ``variant="shortcut", shape_agreement=1`` on the marked half)."""

    kind = "demo"

    def __init__(self, name: str, n: int, seed: int, size: int = 96) -> None:
        if name not in DEMO_DATASETS:
            raise ParameterError(
                f"unknown demo dataset {name!r}; choose one of {', '.join(DEMO_DATASETS)}"
            )
        if int(n) < 1:
            raise ParameterError(f"a demo dataset needs at least 1 image, got n={n}")
        if int(seed) < 0:
            raise ParameterError(f"the seed must be 0 or more, got {seed}")
        if int(size) < 32:
            raise ParameterError(f"demo images are at least 32 px, got size={size}")
        self.name, self.n, self.seed, self.size = name, int(n), int(seed), int(size)
        # As generate_dataset draws them: a class-balanced permutation of labels from the seed's
        # generator, then one independent child seed per image.
        rng = np.random.default_rng(np.random.SeedSequence(self.seed))
        labels = rng.permutation(np.arange(self.n) % len(CLASS_NAMES)).astype(np.int64)
        self.markers = np.zeros(self.n, bool)
        if name == "shortcut_half":
            # Every other image of a shuffled, class-sorted order: exactly n // 2 marked, about
            # half of each class.
            order = np.random.default_rng([self.seed, 0x6D61726B]).permutation(self.n)
            order = order[np.argsort(labels[order], kind="stable")]
            self.markers[order[1::2]] = True
        self.markers.setflags(write=False)
        items = [
            AuditItem(i, f"{name}-{self.seed}-{i:06d}", int(labels[i]), None, None)
            for i in range(self.n)
        ]
        super().__init__(
            source=f"demo:{name}",
            items=items,
            class_names=CLASS_NAMES,
            has_object_masks=True,
            has_marker_masks=name == "shortcut_half",
        )

    def generator_arguments(self) -> dict[str, Any]:
        return {
            "generator": "explainers.io.demo_data.generate_sample",
            "name": self.name,
            "n": self.n,
            "seed": self.seed,
            "size": self.size,
            "clutter": 1.0,
            "shape_agreement": 1.0,
        }

    def read_item(self, item: AuditItem | int) -> Masks:
        index = item if isinstance(item, int) else item.index
        label = self.items[index].label
        sample = generate_sample(
            np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(index,))),
            size=self.size,
            label=label,
            marker=bool(self.markers[index]),
            marker_label=label,
        )
        marker = sample.marker_mask if self.has_marker_masks else None
        return sample.image, sample.mask, marker

    def _fingerprint_parts(self) -> Iterator[Any]:
        yield self.generator_arguments()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "generator": self.generator_arguments()}


def demo_dataset(name: str, n: int, seed: int = 0, *, size: int = 96) -> DemoDataset:
    """``n`` generated shapes images: ``"honest"`` or ``"shortcut_half"`` (module docstring)."""
    return DemoDataset(name, n, seed, size)


def open_dataset(source: AuditDataset | str | os.PathLike) -> AuditDataset:
    """A dataset as given, or read from a folder (:func:`image_folder`) or a ``.csv`` /
    ``.parquet`` manifest (:func:`manifest_dataset`)."""
    if isinstance(source, AuditDataset):
        return source
    path = Path(source)
    if path.is_dir():
        return image_folder(path)
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return manifest_dataset(path)
    if not path.exists():
        raise ParameterError(f"no image folder or manifest at {str(path)!r}")
    raise ParameterError(f"{path.name!r} is neither an image folder nor a .csv/.parquet manifest")


class RunImages:
    """A finished run's images read again, from its manifest and table (a run's ``manifest``
    and ``table`` with ``path``, ``height`` and ``width``: :class:`explainers.audit.AuditRun`):
    a demo dataset is regenerated and checked against the run's fingerprint; a file is read
    from its recorded path and checked against its recorded size. :meth:`read` raises
    :class:`~explainers.errors.ExplainerError` with the reason when an image cannot be had;
    the reason is lower-case, without a final stop, for the caller to wrap."""

    def __init__(self, run: Any) -> None:
        self.paths = run.table.column("path").to_pylist()
        self.sizes = list(
            zip(
                run.table.column("height").to_pylist(),
                run.table.column("width").to_pylist(),
                strict=True,
            )
        )
        dataset = run.manifest.get("dataset", {})
        self.kind = dataset.get("kind")
        self.demo: DemoDataset | None = None
        self.problem: str | None = None
        if self.kind == "demo":
            generator = dataset.get("generator") or {}
            try:
                demo = demo_dataset(
                    str(generator["name"]),
                    int(generator["n"]),
                    int(generator["seed"]),
                    size=int(generator.get("size", 96)),
                )
            except (KeyError, TypeError, ValueError, ParameterError) as error:
                self.problem = f"the demo dataset cannot be regenerated ({error})"
            else:
                if demo.fingerprint() != dataset.get("fingerprint"):
                    self.problem = (
                        "the regenerated demo dataset differs from the run's (its fingerprint "
                        "does not match)"
                    )
                else:
                    self.demo = demo

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(image uint8 (H, W, 3), object mask or None, marker mask or None)."""
        if self.kind == "demo":
            if self.demo is None:
                raise ExplainerError(str(self.problem))
            try:
                return self.demo.read_item(int(index))
            except Exception as error:  # a generator change
                raise ExplainerError(f"the image cannot be regenerated ({error})") from None
        path = self.paths[index]
        if not path:
            raise ExplainerError("the run records no file for this image")
        try:
            image = load_image(path)
        except Exception as error:
            raise ExplainerError(f"the image cannot be read any more: {error}") from None
        height, width = self.sizes[index]
        if height is not None and image.shape[:2] != (height, width):
            raise ExplainerError(
                f"the file is now {image.shape[1]}×{image.shape[0]} px, not the "
                f"{width}×{height} px of the run: it changed since"
            )
        return image, None, None
