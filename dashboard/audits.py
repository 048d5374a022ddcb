"""The Audit page's helpers, without Streamlit: where datasets and runs live, what the web page may
read, unpacking an uploaded zip safely, the list of earlier runs, the numbers of a run's table,
its pictures, and the charts.

What the web page may read
--------------------------
A dataset comes from one of three places, and nothing else on the machine is readable from the
page:

* a generated demo dataset (no files);
* a folder (or a CSV/Parquet manifest) under the data root, ``EXPLAINER_DATA_ROOT``: a path typed
  on the page must be relative, without ``..``; it is resolved (symbolic links followed) and must
  stay inside the root, and so must every image and mask file the dataset lists
  (:func:`resolve_in_root`, :func:`outside_files`);
* a zip uploaded on the page, unpacked under ``<audit root>/uploads/`` by :func:`extract_zip`:
  limits on the upload's size, on the number of files and on the total uncompressed size (the
  sizes the archive declares *and* the bytes actually written), no entry may leave the folder
  (zip-slip: absolute names, ``..``, links), and files that are not images are skipped and
  counted.

Runs are written under the audit root, ``EXPLAINER_AUDIT_ROOT`` (default
``~/.cache/cnn-explainer/audits``, or ``$XDG_CACHE_HOME/cnn-explainer/audits``), one folder per
(model, dataset, methods, map size): starting the same audit again resumes it.

The worker imports this module too (:func:`open_spec` builds the dataset a job runs on and checks
the confinement again there).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import stat
import threading
import time
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from explainers import render
from explainers.core.maps import resize_map

ENV_DATA_ROOT = "EXPLAINER_DATA_ROOT"
ENV_AUDIT_ROOT = "EXPLAINER_AUDIT_ROOT"
#: Image file extensions a dataset folder's files must have (the library's list).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MANIFEST_SUFFIXES = frozenset({".csv", ".parquet", ".pq"})
#: The generated demo datasets, with what they are for.
DEMO_DATASETS: dict[str, str] = {
    "shortcut_half": "Shapes — half with a class-coloured corner marker (the shortcut's cue)",
    "honest": "Shapes — no marker",
}
DEMO_MAX_IMAGES = 20_000
#: Colours of the SpRAy clusters (cluster 0 = the largest), repeated past ten.
CLUSTER_COLOURS = (
    "#2563eb",
    "#e8590c",
    "#2f9e44",
    "#c2255c",
    "#7048e8",
    "#0c8599",
    "#e67700",
    "#5c940d",
    "#862e9c",
    "#495057",
)
FLAG_TITLES = {
    "fixed_location": "Attention at a fixed place",
    "outside_object": "Evidence off the object",
    "misclassified": "Misclassified images",
    "confident_error": "Confident mistakes",
}


class AuditInputError(Exception):
    """A choice on the Audit page that cannot be used: ``str(error)`` says what was wrong and
    what to do."""


# ------------------------------------------------------------------------------------------------
# Where things live
# ------------------------------------------------------------------------------------------------
def audit_root() -> Path:
    """The folder the runs are written to (created when missing)."""
    text = os.environ.get(ENV_AUDIT_ROOT, "").strip()
    if text:
        folder = Path(text).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
        folder = Path(cache) / "cnn-explainer" / "audits"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AuditInputError(
            f"The audit runs cannot be stored in {str(folder)!r} ({err.strerror or err}). Set "
            f"{ENV_AUDIT_ROOT} to a writable folder before starting the dashboard."
        ) from None
    if not os.access(folder, os.W_OK):
        raise AuditInputError(
            f"The folder {str(folder)!r} for the audit runs is not writable. Set "
            f"{ENV_AUDIT_ROOT} to a writable folder before starting the dashboard."
        )
    return folder.resolve()


def uploads_root() -> Path:
    """Where uploaded zips are unpacked (one folder per zip, named by its SHA-256)."""
    folder = audit_root() / "uploads"
    folder.mkdir(exist_ok=True)
    return folder


#: How to set the data root, for the page's message.
DATA_ROOT_HELP = (
    f"Set the environment variable {ENV_DATA_ROOT} to the folder that holds your datasets before "
    f"starting the dashboard, e.g. `{ENV_DATA_ROOT}=/srv/datasets streamlit run app.py`. Only "
    "folders under it can be audited from the web page; give each dataset one sub-folder per "
    "class (cat/, dog/, …) or a CSV/Parquet manifest (path,label[,mask_path])."
)


def data_root() -> tuple[Path | None, str | None]:
    """(the resolved data root, None), or (None, what to do) when it is unset or unusable."""
    text = os.environ.get(ENV_DATA_ROOT, "").strip()
    if not text:
        return None, f"No data root is configured. {DATA_ROOT_HELP}"
    folder = Path(text).expanduser()
    if not folder.is_dir():
        return None, (
            f"The data root {text!r} ({ENV_DATA_ROOT}) is not a folder on the server. "
            f"{DATA_ROOT_HELP}"
        )
    return folder.resolve(), None


def readable_roots() -> tuple[Path, ...]:
    """The folders whose files the page may read: the data root (when set) and the uploads."""
    roots = [uploads_root()]
    root, _ = data_root()
    if root is not None:
        roots.insert(0, root)
    return tuple(roots)


# ------------------------------------------------------------------------------------------------
# Confinement
# ------------------------------------------------------------------------------------------------
def is_inside(path: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> bool:
    """Whether ``path``, with every symbolic link resolved, lies inside one of ``roots``."""
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError):  # a link loop
        return False
    return any(real.is_relative_to(Path(root).resolve()) for root in roots)


_DRIVE = re.compile(r"^[A-Za-z]:")


def resolve_in_root(root: Path, relative: str) -> Path:
    """The folder or manifest ``relative`` names under ``root``, resolved.

    Raises :class:`AuditInputError` for an empty, absolute or ``~`` path, a ``..`` part, a path
    that leads outside the root through a symbolic link, or one that does not exist."""
    text = (relative or "").strip()
    if not text:
        raise AuditInputError("Type or pick a folder under the data root.")
    posix = text.replace("\\", "/")
    if posix.startswith(("/", "~")) or _DRIVE.match(posix):
        raise AuditInputError(
            f"{text!r} is an absolute path. Give the folder relative to the data root "
            f"(e.g. `shapes/train`): nothing outside {str(root)!r} can be read from this page."
        )
    if ".." in PurePosixPath(posix).parts:
        raise AuditInputError(
            f"{text!r} contains '..'. Give a folder inside the data root, without '..'."
        )
    candidate = root.joinpath(*PurePosixPath(posix).parts)
    if not is_inside(candidate, [root]):
        raise AuditInputError(
            f"{text!r} leads outside the data root (through a symbolic link), so it cannot be "
            "read from this page. Copy the dataset under the data root instead."
        )
    resolved = candidate.resolve()
    if not resolved.exists():
        raise AuditInputError(
            f"There is no folder or manifest {text!r} under the data root. Check the spelling "
            "or pick one of the folders listed."
        )
    return resolved


def visible_entries(folder: Path, root: Path) -> list[tuple[os.DirEntry, Path]]:
    """The entries of ``folder`` by name, with their paths, that a picker under ``root`` may
    list: not hidden, and not links that leave ``root``. None when ``folder`` is unreadable."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    return [
        (entry, Path(entry.path))
        for entry in entries
        if not entry.name.startswith(".") and is_inside(Path(entry.path), [root])
    ]


def dataset_candidates(root: Path, depth: int = 2, limit: int = 300) -> list[str]:
    """Folders (up to ``depth`` levels down) and manifest files under ``root``, as relative
    paths, for the page's picker. Hidden entries and links that leave the root are left out."""
    found: list[str] = []

    def visit(folder: Path, level: int) -> None:
        for entry, path in visible_entries(folder, root):
            if len(found) >= limit:
                return
            relative = path.relative_to(root).as_posix()
            if entry.is_dir():
                found.append(relative)
                if level < depth:
                    visit(path, level + 1)
            elif path.suffix.lower() in MANIFEST_SUFFIXES:
                found.append(relative)

    visit(root, 1)
    return found


def outside_files(dataset: Any, roots: Sequence[Path]) -> list[str]:
    """The image and mask files of ``dataset`` (an :class:`explainers.audit.AuditDataset`)
    that resolve outside every one of ``roots``."""
    found = []
    for item in dataset:
        for path in (item.path, item.mask_path):
            if path is not None and not is_inside(path, roots):
                found.append(path)
    return found


# ------------------------------------------------------------------------------------------------
# Uploaded zips
# ------------------------------------------------------------------------------------------------
def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(float(os.environ.get(name, "") or default)))
    except ValueError:
        return default


@dataclass(frozen=True)
class ZipLimits:
    """What an uploaded zip may hold: its own size, its file count, the total uncompressed
    size of what is extracted."""

    max_zip_bytes: int = 200 * 2**20
    max_files: int = 20_000
    max_total_bytes: int = 1024 * 2**20

    @classmethod
    def from_environment(cls) -> ZipLimits:
        """``EXPLAINER_AUDIT_ZIP_MB`` (default 200), ``EXPLAINER_AUDIT_ZIP_FILES`` (20000) and
        ``EXPLAINER_AUDIT_UNZIPPED_MB`` (1024)."""
        return cls(
            max_zip_bytes=_env_int("EXPLAINER_AUDIT_ZIP_MB", 200) * 2**20,
            max_files=_env_int("EXPLAINER_AUDIT_ZIP_FILES", 20_000),
            max_total_bytes=_env_int("EXPLAINER_AUDIT_UNZIPPED_MB", 1024) * 2**20,
        )


@dataclass(frozen=True)
class ExtractedZip:
    """An unpacked zip: ``folder`` the dataset folder inside it (a single wrapping folder is
    stepped into), ``images`` the image files written, ``skipped`` (name, reason) of the
    entries left out."""

    folder: Path
    images: int
    skipped: tuple[tuple[str, str], ...]
    sha256: str

    def skipped_summary(self) -> str:
        """'3 not images (notes.txt, …), 1 hidden' or ''."""
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.skipped:
            by_reason.setdefault(reason, []).append(name)
        parts = []
        for reason, names in by_reason.items():
            shown = ", ".join(PurePosixPath(n).name for n in names[:3])
            more = ", …" if len(names) > 3 else ""
            parts.append(f"{len(names)} {reason} ({shown}{more})")
        return "; ".join(parts)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n / 1024:,.0f} kB"


def _entry_parts(name: str) -> tuple[str, ...]:
    """The path parts of a zip entry; raises for a name that would leave the folder."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise AuditInputError(
            f"The zip holds an entry with an absolute path ({name!r}), which would be written "
            "outside its folder. It was refused; zip the dataset folder itself (relative paths)."
        )
    parts = tuple(p for p in PurePosixPath(posix).parts if p not in ("", "."))
    if ".." in parts:
        raise AuditInputError(
            f"The zip holds an entry whose path leaves its folder ({name!r}, a 'zip-slip'). It "
            "was refused; zip the dataset folder itself, without '..' in any path."
        )
    return parts


def _dataset_folder(folder: Path) -> Path:
    """Step into a single wrapping folder (``shapes/circle/…`` → ``shapes``) while the folder
    has one sub-folder, no files, and that sub-folder holds no image directly."""
    for _ in range(4):
        entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
        dirs = [e for e in entries if e.is_dir()]
        if len(entries) != 1 or len(dirs) != 1:
            return folder
        inner = dirs[0]
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in inner.iterdir() if p.is_file()):
            return folder
        folder = inner
    return folder


def extract_zip(
    data: bytes, parent: Path, limits: ZipLimits | None = None, name: str = "upload.zip"
) -> ExtractedZip:
    """Unpack the image files of an uploaded zip under ``parent/<SHA-256>/`` (once: the same
    bytes are unpacked again only if the folder is gone). See the module docstring for the
    checks; every refusal raises :class:`AuditInputError` and leaves nothing behind."""
    limits = limits or ZipLimits.from_environment()
    if not data:
        raise AuditInputError(f"{name!r} is empty (0 bytes).")
    if len(data) > limits.max_zip_bytes:
        raise AuditInputError(
            f"{name!r} is {_mb(len(data))}; the largest zip this page accepts is "
            f"{_mb(limits.max_zip_bytes)}. Put a larger dataset under the data root instead."
        )
    digest = hashlib.sha256(data).hexdigest()
    target = parent / digest[:24]
    record = parent / f"{digest[:24]}.json"
    if target.is_dir() and record.is_file():
        try:
            kept = json.loads(record.read_text())
            return ExtractedZip(
                _dataset_folder(target),
                int(kept["images"]),
                tuple((str(a), str(b)) for a, b in kept["skipped"]),
                digest,
            )
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unpack again below
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError):
        raise AuditInputError(
            f"{name!r} is not a zip archive (or it is damaged). Upload a .zip of a folder with "
            "one sub-folder of images per class."
        ) from None
    with archive:
        files = [info for info in archive.infolist() if not info.is_dir()]
        if len(files) > limits.max_files:
            raise AuditInputError(
                f"{name!r} holds {len(files):,} files; at most {limits.max_files:,} are accepted "
                "in an upload. Put a larger dataset under the data root instead."
            )
        plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        skipped: list[tuple[str, str]] = []
        for info in files:
            parts = _entry_parts(info.filename)
            mode = info.external_attr >> 16
            if not parts:
                skipped.append((info.filename, "without a name"))
            elif stat.S_ISLNK(mode):
                skipped.append((info.filename, "symbolic links"))
            elif parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
                skipped.append((info.filename, "hidden or system files"))
            elif PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((info.filename, "not images"))
            elif info.flag_bits & 0x1:
                skipped.append((info.filename, "encrypted"))
            else:
                plan.append((info, parts))
        if not plan:
            raise AuditInputError(
                f"{name!r} holds no image files ({len(files)} files, none with an image "
                f"extension: {', '.join(sorted(IMAGE_SUFFIXES))}). Zip a folder with one "
                "sub-folder of images per class."
            )
        declared = sum(info.file_size for info, _ in plan)
        if declared > limits.max_total_bytes:
            raise AuditInputError(
                f"{name!r} would unpack to {_mb(declared)} of images; at most "
                f"{_mb(limits.max_total_bytes)} are accepted from an upload. Put a larger "
                "dataset under the data root instead."
            )
        tag = f"{digest[:24]}.{os.getpid()}.{threading.get_ident()}"
        partial = parent / f".{tag}.partial"
        record_tmp = parent / f".{tag}.json.tmp"
        try:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            written = _write_entries(archive, plan, partial, limits, name, skipped)
            record_tmp.write_text(json.dumps({"images": written, "skipped": skipped}))
            if target.is_dir():  # the same zip, unpacked meanwhile by another session
                shutil.rmtree(partial, ignore_errors=True)
            else:
                os.replace(partial, target)
            os.replace(record_tmp, record)
        except OSError as err:
            raise AuditInputError(
                f"{name!r} cannot be unpacked on the server ({err.strerror or err}); ask the "
                "operator to check the free space of the audit folder."
            ) from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            record_tmp.unlink(missing_ok=True)
    return ExtractedZip(_dataset_folder(target), written, tuple(skipped), digest)


def _write_entries(
    archive: zipfile.ZipFile,
    plan: Sequence[tuple[zipfile.ZipInfo, tuple[str, ...]]],
    folder: Path,
    limits: ZipLimits,
    name: str,
    skipped: list[tuple[str, str]],
) -> int:
    """Write the planned entries under ``folder``, counting the bytes really written."""
    total = 0
    count = 0
    real_folder = folder.resolve()
    for info, parts in plan:
        destination = folder.joinpath(*parts)
        if not destination.resolve().is_relative_to(real_folder):  # belt and braces
            raise AuditInputError(f"The zip entry {info.filename!r} leaves its folder; refused.")
        if destination.exists():
            skipped.append((info.filename, "duplicate names"))
            continue
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            size = 0
            with archive.open(info) as source, open(destination, "wb") as out:
                while chunk := source.read(1 << 20):
                    size += len(chunk)
                    total += len(chunk)
                    if size > info.file_size or total > limits.max_total_bytes:
                        raise AuditInputError(
                            f"{name!r} unpacks to more than it declares (the entry "
                            f"{info.filename!r} goes past its stated {_mb(info.file_size)}, or "
                            f"the whole past {_mb(limits.max_total_bytes)}): a decompression "
                            "bomb or a damaged archive. It was refused."
                        )
                    out.write(chunk)
        except AuditInputError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
            raise AuditInputError(
                f"{name!r} is damaged or uses an unsupported compression: the entry "
                f"{info.filename!r} cannot be unpacked ({err}). Zip it again with ordinary "
                "(deflate) compression."
            ) from None
        except OSError as err:
            raise AuditInputError(
                f"The entry {info.filename!r} of {name!r} cannot be written "
                f"({err.strerror or err})."
            ) from None
        count += 1
    return count


# ------------------------------------------------------------------------------------------------
# The chosen dataset
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetChoice:
    """A dataset picked on the page: ``spec`` is what a worker needs to open it again
    (:func:`open_spec`), ``label`` a short name for runs and titles."""

    kind: str
    label: str
    spec: Mapping[str, Any]
    fingerprint: str
    count: int
    class_names: tuple[str, ...] | None
    has_object_masks: bool
    has_marker_masks: bool
    skipped: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        classes = (
            f"{len(self.class_names)} classes ({', '.join(self.class_names[:8])}"
            f"{', …' if len(self.class_names) > 8 else ''})"
            if self.class_names
            else "labels given as class indices"
        )
        extras = [
            text
            for present, text in (
                (self.has_object_masks, "object masks"),
                (self.has_marker_masks, "marker masks"),
            )
            if present
        ]
        return f"**{self.count:,} images** in {classes}" + (
            f" · with {' and '.join(extras)}" if extras else ""
        )


def demo_choice(name: str, n: int, seed: int = 0) -> DatasetChoice:
    """A generated demo dataset (``honest`` or ``shortcut_half``) of ``n`` images."""
    from explainers import audit

    if name not in DEMO_DATASETS:
        raise AuditInputError(
            f"Unknown demo dataset {name!r}; choose one of {', '.join(DEMO_DATASETS)}."
        )
    if not 1 <= int(n) <= DEMO_MAX_IMAGES:
        raise AuditInputError(
            f"A demo dataset has 1 to {DEMO_MAX_IMAGES:,} images; {n} was asked for."
        )
    dataset = audit.demo_dataset(name, n=int(n), seed=int(seed))
    return DatasetChoice(
        kind="demo",
        label=f"demo-{name}-{int(n)}-s{int(seed)}",
        spec={"kind": "demo", "name": name, "n": int(n), "seed": int(seed)},
        fingerprint=dataset.fingerprint(),
        count=len(dataset),
        class_names=dataset.class_names,
        has_object_masks=dataset.has_object_masks,
        has_marker_masks=dataset.has_marker_masks,
    )


def _open_files(path: Path, roots: Sequence[Path]) -> Any:
    """An image folder or manifest at ``path``, every file of it inside ``roots``."""
    from explainers import audit
    from explainers.errors import ExplainerError

    if not is_inside(path, roots):
        raise AuditInputError(
            f"{str(path)!r} is outside the folders this page may read (the data root and the "
            "uploads); it cannot be audited from the web page."
        )
    try:
        dataset = audit.open_dataset(path)
    except ExplainerError as err:
        raise AuditInputError(f"This dataset cannot be read: {err}.") from None
    outside = outside_files(dataset, roots)
    if outside:
        raise AuditInputError(
            f"{len(outside)} file{'s' if len(outside) > 1 else ''} of this dataset lead outside "
            f"the data root (e.g. {outside[0]!r}: a symbolic link or a manifest path), so it "
            "cannot be read from the web page. Copy those files under the data root."
        )
    return dataset


_FOLDER_CACHE: OrderedDict[tuple[str, tuple[str, ...]], tuple[float, DatasetChoice]] = OrderedDict()
_FOLDER_CACHE_LOCK = threading.Lock()
#: How long a scanned folder is trusted before it is scanned again (files may be added).
FOLDER_CACHE_S = 20.0


def folder_choice(path: Path, roots: Sequence[Path], label: str | None = None) -> DatasetChoice:
    """An image folder (one sub-folder per class) or a CSV/Parquet manifest at ``path``; every
    file it lists must lie inside ``roots``. Scans are cached for a few seconds."""
    key = (str(path), tuple(str(r) for r in roots))
    now = time.monotonic()
    with _FOLDER_CACHE_LOCK:
        cached = _FOLDER_CACHE.get(key)
        fresh = cached is not None and now - cached[0] < FOLDER_CACHE_S
        if fresh and (label is None or cached[1].label == _slug(label)):
            return cached[1]
    dataset = _open_files(path, roots)
    choice = DatasetChoice(
        kind=dataset.kind,
        label=_slug(label or path.name),
        spec={"kind": "files", "path": str(path), "roots": [str(r) for r in roots]},
        fingerprint=dataset.fingerprint(),
        count=len(dataset),
        class_names=dataset.class_names,
        has_object_masks=dataset.has_object_masks,
        has_marker_masks=dataset.has_marker_masks,
        skipped=tuple(dataset.skipped),
    )
    with _FOLDER_CACHE_LOCK:
        _FOLDER_CACHE[key] = (now, choice)
        while len(_FOLDER_CACHE) > 32:
            _FOLDER_CACHE.popitem(last=False)
    return choice


def open_spec(spec: Mapping[str, Any]) -> Any:
    """The :class:`explainers.audit.AuditDataset` a :attr:`DatasetChoice.spec` names, checked
    again (in the worker) against the folders it may read."""
    from explainers import audit

    kind = spec.get("kind")
    if kind == "demo":
        return audit.demo_dataset(str(spec["name"]), n=int(spec["n"]), seed=int(spec["seed"]))
    if kind == "files":
        roots = [Path(r) for r in spec.get("roots") or ()]
        if not roots:
            raise AuditInputError("No readable folder was given for this dataset.")
        return _open_files(Path(str(spec["path"])), roots)
    raise AuditInputError(f"Unknown kind of dataset {kind!r}.")


def label_problem(
    dataset_classes: Sequence[str] | None, model_classes: Sequence[str]
) -> str | None:
    """Why the dataset's labels cannot be matched to the model's classes (None when they can):
    by name, or by index for names that are whole numbers (the library's rule)."""
    if dataset_classes is None:
        return None
    unknown = [
        name
        for name in dataset_classes
        if name not in model_classes and not (name.isdigit() and int(name) < len(model_classes))
    ]
    if not unknown:
        return None
    shown = ", ".join(repr(u) for u in unknown[:5]) + (", …" if len(unknown) > 5 else "")
    known = ", ".join(model_classes[:8]) + ("…" if len(model_classes) > 8 else "")
    return (
        f"The dataset's classes {shown} are not among the model's classes ({known}). Name the "
        "class folders after the model's classes (or their indices), load the model with its "
        "class-names file in the sidebar, or pick the model the dataset was made for."
    )


def _slug(text: str, limit: int = 48) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("._-")
    return cleaned[:limit] or "dataset"


def run_folder(
    root: Path,
    choice: DatasetChoice,
    model_key: tuple[Any, ...],
    model_name: str,
    methods: Sequence[str],
    map_size: int,
) -> Path:
    """The run folder of an audit: readable parts and a hash of everything that decides its
    results, so that starting the same audit again resumes it."""
    identity = json.dumps(
        [list(map(str, model_key)), choice.fingerprint, list(methods), int(map_size)]
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    stem = _slug(Path(model_name).stem, 32)
    return root / f"{choice.label}__{stem}__{_slug('+'.join(methods), 40)}__{digest}"


# ------------------------------------------------------------------------------------------------
# Run folders
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunInfo:
    """What the list of earlier runs shows about a run folder (read from its JSON files)."""

    path: Path
    created: str
    dataset: str
    dataset_kind: str
    total: int
    done: int
    model: str
    model_sha256: str
    preprocessing: str
    methods: tuple[str, ...]
    map_size: int
    manifest: Mapping[str, Any]

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    @property
    def version(self) -> str:
        """Changes when the run is started over or gains images (the analysis cache key)."""
        return f"{self.created}|{self.done}"

    def describe(self) -> str:
        state = "complete" if self.complete else f"{self.done:,} of {self.total:,} done"
        return (
            f"{self.created[:16].replace('T', ' ')} · {self.dataset} ({self.total:,} images) · "
            f"{self.model} · {', '.join(self.methods)} · {state}"
        )


def read_run_info(path: str | os.PathLike) -> RunInfo | None:
    """The run in ``path``, or None when the folder holds no (readable) run."""
    folder = Path(path)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        total = int(manifest["dataset"]["count"])
        try:
            done = int(json.loads((folder / "progress.json").read_text())["done"])
        except (OSError, ValueError, KeyError, TypeError):
            done = 0
        model = manifest.get("model", {})
        dataset = manifest["dataset"]
        source = str(dataset.get("source", "?"))
        generator = dataset.get("generator") or {}
        if dataset.get("kind") == "demo" and generator:
            source = f"demo:{generator.get('name')} (seed {generator.get('seed')})"
        elif source.startswith("/"):
            source = Path(source).name or source
        return RunInfo(
            path=folder,
            created=str(manifest.get("created", "")),
            dataset=source,
            dataset_kind=str(dataset.get("kind", "")),
            total=total,
            done=min(done, total),
            model=Path(str(model.get("path") or model.get("name") or "model")).name,
            model_sha256=str(model.get("sha256", "")),
            preprocessing=str(model.get("preprocessing", "")),
            methods=tuple(manifest.get("methods", {})),
            map_size=int(manifest.get("map_size", 0)),
            manifest=manifest,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_runs(root: Path) -> list[RunInfo]:
    """The runs in the audit root, newest first (folders without a readable run are left out)."""
    runs = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith(".") and entry.name != "uploads":
            info = read_run_info(entry.path)
            if info is not None:
                runs.append(info)
    return sorted(runs, key=lambda r: (r.created, r.path.name), reverse=True)


def resume_spec(info: RunInfo, roots: Sequence[Path]) -> dict[str, Any]:
    """The dataset spec that continues ``info``'s run, from its manifest; raises
    :class:`AuditInputError` when it cannot be read from this page any more."""
    dataset = info.manifest.get("dataset", {})
    if dataset.get("kind") == "demo":
        generator = dataset.get("generator") or {}
        try:
            return {
                "kind": "demo",
                "name": str(generator["name"]),
                "n": int(generator["n"]),
                "seed": int(generator["seed"]),
            }
        except (KeyError, TypeError, ValueError):
            raise AuditInputError(
                "The run's demo dataset is not recorded fully; start a new audit instead."
            ) from None
    source = Path(str(dataset.get("source", "")))
    if not source.exists():
        raise AuditInputError(
            f"The run's dataset {str(source)!r} is not there any more, so the run cannot be "
            "resumed; its committed images can still be reviewed below."
        )
    if not is_inside(source, roots):
        raise AuditInputError(
            f"The run's dataset {str(source)!r} is outside the folders this page may read, so "
            "the run cannot be resumed from here."
        )
    return {"kind": "files", "path": str(source), "roots": [str(r) for r in roots]}


_RUNS: OrderedDict[tuple[str, str], Any] = OrderedDict()
_RUNS_LOCK = threading.Lock()


def load_run(info: RunInfo) -> Any:
    """The run folder read back (:func:`explainers.audit.open_run`), cached per version."""
    from explainers import audit
    from explainers.errors import ExplainerError

    key = (str(info.path), info.version)
    with _RUNS_LOCK:
        found = _RUNS.get(key)
        if found is not None:
            _RUNS.move_to_end(key)
            return found
    try:
        run = audit.open_run(info.path)
    except ExplainerError as err:
        raise AuditInputError(f"The run in {str(info.path)!r} cannot be read: {err}.") from None
    with _RUNS_LOCK:
        _RUNS[key] = run
        while len(_RUNS) > 8:
            _RUNS.popitem(last=False)
    return run


# ------------------------------------------------------------------------------------------------
# Numbers of a run
# ------------------------------------------------------------------------------------------------
def columns(run: Any, names: Sequence[str]) -> dict[str, list[Any]]:
    return {name: run.table.column(name).to_pylist() for name in names}


def _labels_and_predictions(run: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """int (N,) labels and predictions of the run table (-1 where None), and the class count."""
    n = len(run.manifest["model"]["class_names"])
    data = columns(run, ["label", "prediction"])
    labels = np.array([-1 if v is None else v for v in data["label"]], np.int64)
    predictions = np.array([-1 if v is None else v for v in data["prediction"]], np.int64)
    labels[labels >= n] = -1
    predictions[predictions >= n] = -1
    return labels, predictions, n


def class_accuracy(run: Any) -> list[dict[str, Any]]:
    """Per class of the model that has labelled images in the run: labelled images with a
    prediction, correct ones, accuracy, and labelled images that failed before a prediction."""
    names = list(run.manifest["model"]["class_names"])
    labels, predictions, n = _labels_and_predictions(run)
    labelled = labels >= 0
    images = np.bincount(labels[labelled & (predictions >= 0)], minlength=n)
    correct = np.bincount(labels[labelled & (predictions == labels)], minlength=n)
    failed = np.bincount(labels[labelled & (predictions < 0)], minlength=n)
    return [
        {
            "Class": names[c],
            "Images": int(images[c]),
            "Correct": int(correct[c]),
            "Accuracy": float(correct[c] / images[c]) if images[c] else None,
            "Failed": int(failed[c]),
        }
        for c in range(n)
        if images[c] or failed[c]
    ]


def confusion(run: Any) -> tuple[np.ndarray, list[str]]:
    """Counts of [label, prediction] over the labelled, predicted rows, restricted to the
    classes that occur as a label or a prediction there, and those classes' names."""
    names = list(run.manifest["model"]["class_names"])
    labels, predictions, n = _labels_and_predictions(run)
    usable = (labels >= 0) & (predictions >= 0)
    labels, predictions = labels[usable], predictions[usable]
    used = np.union1d(labels, predictions).astype(np.int64)
    position = np.full(n, -1, np.int64)
    position[used] = np.arange(len(used))
    matrix = np.zeros((len(used), len(used)), np.int64)
    np.add.at(matrix, (position[labels], position[predictions]), 1)
    return matrix, [names[c] for c in used]


def failed_rows(run: Any, limit: int = 20) -> list[dict[str, Any]]:
    """The first ``limit`` rows with an error: image id and message."""
    data = columns(run, ["id", "error"])
    rows = [
        {"Image": image, "Error": error}
        for image, error in zip(data["id"], data["error"], strict=True)
        if error
    ]
    return rows[:limit]


def typical_order(maps: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``members`` ordered from the map closest to their mean (normalised positive maps) to the
    farthest: the first images show what a group looks like."""
    members = np.sort(np.asarray(members, np.int64))
    if len(members) < 2:
        return members
    values = np.nan_to_num(np.asarray(maps[members], np.float64))
    positive = np.clip(values, 0, None).reshape(len(values), -1)
    total = positive.sum(axis=1, keepdims=True)
    normalised = positive / np.where(total > 0, total, 1.0)
    distance = ((normalised - normalised.mean(axis=0)) ** 2).sum(axis=1)
    return members[np.argsort(distance, kind="stable")]


# ------------------------------------------------------------------------------------------------
# Pictures
# ------------------------------------------------------------------------------------------------
def fit(rgb: np.ndarray, side: int) -> np.ndarray:
    """Resize so the longer side is ``side`` (nearest when enlarging small images)."""
    height, width = rgb.shape[:2]
    scale = side / max(height, width, 1)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(np.asarray(rgb, np.uint8)).resize(size, resample))


def map_picture(values: np.ndarray, side: int) -> np.ndarray:
    """A stored S×S map (or a mean map) as a positive-part heatmap of ``side`` pixels."""
    big = resize_map(np.nan_to_num(np.asarray(values, np.float32)), (side, side))
    return render.heatmap(big, sign="positive", colormap="Jet", clip_percentile=100)


def overlay_picture(image: np.ndarray, values: np.ndarray, side: int) -> np.ndarray:
    """The image fitted to ``side`` with its stored map over it (the map alone when its values
    are not finite: the method failed on it)."""
    small = fit(image, side)
    values = np.asarray(values, np.float32)
    if not np.isfinite(values).all():
        return small
    return render.overlay(small, values, sign="positive", colormap="Jet", alpha=0.5)


def hover_picture(image: np.ndarray, values: np.ndarray, side: int = 64, quality: int = 75) -> str:
    """The image and, beside it, the image with its stored map over it, each fitted into a
    ``side``-pixel square (2 × ``side`` wide, ``side`` high), as a JPEG data URL: the picture a
    point of the scatter shows on hover (a few kB)."""
    gap = max(2, side // 32)
    canvas = np.full((side, 2 * side + gap, 3), 255, np.uint8)
    for left, picture in (
        (0, fit(image, side)),
        (side + gap, overlay_picture(image, values, side)),
    ):
        height, width = picture.shape[:2]
        top, start = (side - height) // 2, left + (side - width) // 2
        canvas[top : top + height, start : start + width] = picture[..., :3]
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class RunImages:
    """Reads a run's images again (:class:`explainers.audit.RunImages`: a demo dataset is
    regenerated and checked against the run's fingerprint), a file only when it lies inside the
    readable folders."""

    def __init__(self, run: Any, roots: Sequence[Path]) -> None:
        from explainers.audit.datasets import RunImages as Source

        self.roots = tuple(roots)
        self.ids = run.table.column("id").to_pylist()
        self.source = Source(run)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(image uint8 (H, W, 3), object mask or None, marker mask or None); raises
        :class:`AuditInputError` saying why the image cannot be shown."""
        from explainers.errors import ExplainerError

        path = self.source.paths[index]
        if self.source.kind != "demo" and path and not is_inside(path, self.roots):
            raise AuditInputError(
                "This image lies outside the folders this page may read; it is not shown."
            )
        try:
            return self.source.read(index)
        except ExplainerError as err:
            raise AuditInputError(f"The image cannot be shown: {err}.") from None

    def name(self, index: int) -> str:
        """The image's name as the other pages show it (a file's base name)."""
        return PurePosixPath(str(self.ids[index])).name


_IMAGES: OrderedDict[tuple[str, str], RunImages] = OrderedDict()


def run_images(info: RunInfo, run: Any, roots: Sequence[Path]) -> RunImages:
    """A :class:`RunImages` for the run, kept for the run's version."""
    key = (str(info.path), info.version)
    with _RUNS_LOCK:
        found = _IMAGES.get(key)
        if found is not None and found.roots == tuple(roots):
            return found
    made = RunImages(run, roots)
    with _RUNS_LOCK:
        _IMAGES[key] = made
        while len(_IMAGES) > 8:
            _IMAGES.popitem(last=False)
    return made


_THUMBNAILS: OrderedDict[tuple[Any, ...], tuple[np.ndarray | None, str | None]] = OrderedDict()


def thumbnail(
    info: RunInfo, images: RunImages, maps: np.ndarray, index: int, method: str, side: int
) -> tuple[np.ndarray | None, str | None]:
    """(the image with its map over it, None) or (None, why it cannot be shown); cached."""
    key = (str(info.path), info.version, method, int(index), side)
    with _RUNS_LOCK:
        found = _THUMBNAILS.get(key)
    if found is not None:
        return found
    try:
        image, _, _ = images.read(int(index))
        made: tuple[np.ndarray | None, str | None] = (
            overlay_picture(image, maps[int(index)], side),
            None,
        )
    except AuditInputError as err:
        made = (None, str(err))
    with _RUNS_LOCK:
        _THUMBNAILS[key] = made
        while len(_THUMBNAILS) > 512:
            _THUMBNAILS.popitem(last=False)
    return made


#: At most this many points of a class get a picture in their tooltip (spread over the class).
HOVER_PICTURES = 2000
#: The height of a hover picture (its width is twice that).
HOVER_SIDE = 64
_HOVERS: OrderedDict[tuple[Any, ...], list[str | None]] = OrderedDict()


def hover_pictures(
    info: RunInfo,
    images: RunImages,
    maps: np.ndarray,
    indices: Sequence[int],
    method: str,
    limit: int = HOVER_PICTURES,
    side: int = HOVER_SIDE,
) -> list[str | None]:
    """Per image of ``indices`` its :func:`hover_picture`, or None: for at most ``limit`` of them
    (evenly spread over ``indices``), and for none whose image cannot be read. Cached per run
    version, method and set of images, so a rerun of the page builds nothing."""
    members = np.asarray(indices, np.int64)
    digest = hashlib.sha1(members.tobytes()).hexdigest()
    key = (str(info.path), info.version, method, digest, int(limit), int(side))
    with _RUNS_LOCK:
        found = _HOVERS.get(key)
        if found is not None:
            _HOVERS.move_to_end(key)
            return found
    spread = np.linspace(0, len(members) - 1, min(limit, len(members))).round()
    given = set(spread.astype(np.int64).tolist())
    made: list[str | None] = []
    for position, index in enumerate(members.tolist()):
        picture = None
        if position in given:
            try:
                image, _, _ = images.read(index)
                picture = hover_picture(image, maps[index], side)
            except AuditInputError:
                pass
        made.append(picture)
    with _RUNS_LOCK:
        _HOVERS[key] = made
        while len(_HOVERS) > 8:
            _HOVERS.popitem(last=False)
    return made


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
#: Names of the scatter's selection parameters: a clicked point (shift-click adds), a dragged box,
#: and the zoom on the mouse wheel (not a selection of images).
SCATTER_PICK = "pick"
SCATTER_BOX = "box"
SCATTER_ZOOM = "zoom"
#: A filled diagonal cross (✕) in Vega's unit square: the mark of a misclassified image.
_CROSS = "M-1,-0.6L-0.6,-1L0,-0.4L0.6,-1L1,-0.6L0.4,0L1,0.6L0.6,1L0,0.4L-0.6,1L-1,0.6L-0.4,0Z"


def cluster_colour(cluster: int) -> str:
    return CLUSTER_COLOURS[cluster % len(CLUSTER_COLOURS)]


def scatter_chart(
    review: Any,
    table: Mapping[str, Sequence[Any]],
    flagged: Sequence[int] = (),
    pictures: Sequence[str | None] | None = None,
    height: int = 460,
) -> Any:
    """The class's 2-D embedding as an Altair (Vega-Lite) scatter: one point per image, coloured
    by SpRAy cluster (the legend names each cluster, its size and ⚑ when it is flagged), a cross
    for a misclassified image. Its tooltip gives the image's id, label, prediction, run index and
    cluster, and ``pictures[i]`` (a data URL, see :func:`hover_pictures`) for the i-th image of
    ``review.images`` when there is one: Vega's tooltip draws a field named ``image`` as a
    picture. Click selects a point (:data:`SCATTER_PICK`, shift-click adds), a drag selects a box
    (:data:`SCATTER_BOX`), the mouse wheel zooms and a double-click clears them.
    :func:`selected_images` turns a selection back into images. ``table`` holds the run's
    ``id``, ``label_name``, ``prediction_name``, ``probability`` and ``correct`` columns."""
    import altair as alt
    import pandas as pd

    members = np.asarray(review.images, np.int64)
    clusters = np.asarray(review.clusters, np.int64)
    points = np.asarray(review.embedding, np.float64)
    n = len(members)
    names = [
        f"cluster {c} · {int(np.sum(clusters == c))}{' ⚑' if c in flagged else ''}"
        for c in range(review.n_clusters)
    ]
    rows = []
    for position, index in enumerate(members.tolist()):
        probability = table["probability"][index]
        prediction = table["prediction_name"][index]
        picture = pictures[position] if pictures is not None else None
        rows.append(
            {
                "x": float(points[position, 0]),
                "y": float(points[position, 1]),
                "index": int(index),
                "title": str(table["id"][index]),
                "label": "—" if table["label_name"][index] is None else table["label_name"][index],
                "predicted": "—"
                if prediction is None
                else f"{prediction} ({float(probability or 0.0):.1%})",
                "cluster": names[int(clusters[position])],
                "outcome": "misclassified" if table["correct"][index] is False else "other",
                # Vega-Lite writes a missing value as the text "null": an empty text shows none.
                "image": picture or "",
            }
        )
    frame = pd.DataFrame(
        rows,
        columns=["x", "y", "index", "title", "label", "predicted", "cluster", "outcome", "image"],
    )
    kind = "t-SNE" if review.embedding_kind == "tsne" else "spectral"
    size = 81 if n <= 300 else 36 if n <= 3000 else 16  # Vega's size: the square of the width
    pick = alt.selection_point(
        name=SCATTER_PICK, fields=["index"], on="click", clear="dblclick", nearest=False
    )
    box = alt.selection_interval(
        name=SCATTER_BOX, encodings=["x", "y"], translate=False, zoom=False, clear="dblclick"
    )
    zoom = alt.selection_interval(
        name=SCATTER_ZOOM, bind="scales", translate=False, zoom="wheel!", clear="dblclick"
    )
    axis = {"labels": False, "ticks": False, "grid": True, "domain": False}
    scale = alt.Scale(zero=False, padding=10)
    return (
        alt.Chart(frame, height=height)
        .mark_point(filled=True, opacity=0.9, clip=True)
        .encode(
            x=alt.X("x:Q", title=f"{kind} 1", axis=alt.Axis(**axis), scale=scale),
            y=alt.Y("y:Q", title=f"{kind} 2", axis=alt.Axis(**axis), scale=scale),
            color=alt.Color(
                "cluster:N",
                scale=alt.Scale(domain=names, range=[cluster_colour(c) for c in range(len(names))]),
                legend=alt.Legend(title=None, orient="top", symbolType="circle"),
                sort=names,
            ),
            shape=alt.Shape(
                "outcome:N",
                scale=alt.Scale(domain=["other", "misclassified"], range=["circle", _CROSS]),
                legend=None,
            ),
            size=alt.value(size),
            # A clicked point gets a dark outline (a box shows itself).
            stroke=alt.when(pick, empty=False)
            .then(alt.value("#111"))
            .otherwise(alt.value("white")),
            strokeWidth=alt.when(pick, empty=False).then(alt.value(1.5)).otherwise(alt.value(0.5)),
            tooltip=[
                alt.Tooltip("title:N", title="title"),
                alt.Tooltip("label:N", title="label"),
                alt.Tooltip("predicted:N", title="predicted"),
                alt.Tooltip("index:Q", title="image #", format="d"),
                alt.Tooltip("cluster:N", title="cluster"),
                alt.Tooltip("image:N", title="image"),
            ],
        )
        .add_params(pick, box, zoom)
        .properties(background="#fafbfc")
    )


def _number(value: Any) -> float | None:
    """A finite number from a selection's JSON (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def selected_images(
    selection: Mapping[str, Any], images: np.ndarray, embedding: np.ndarray
) -> list[int]:
    """The run indices a selection of :func:`scatter_chart` holds (Streamlit's
    ``event.selection``): the clicked points in their order, then the points inside the box in
    the class's order, each once. ``images`` and ``embedding`` are the class's run indices and
    their coordinates. Entries that name no image of the class, a box without two finite bounds
    per axis, and a box of no width or height (a click, not a drag) select nothing."""
    members = np.asarray(images, np.int64)
    known = set(members.tolist())
    chosen: list[int] = []
    picked = selection.get(SCATTER_PICK) if isinstance(selection, Mapping) else None
    for entry in picked if isinstance(picked, list) else ():
        value = _number(entry.get("index")) if isinstance(entry, Mapping) else None
        if (
            value is not None
            and value.is_integer()
            and int(value) in known
            and int(value) not in chosen
        ):
            chosen.append(int(value))
    box = selection.get(SCATTER_BOX) if isinstance(selection, Mapping) else None
    if isinstance(box, Mapping) and len(members):
        points = np.asarray(embedding, np.float64).reshape(len(members), 2)
        inside = np.ones(len(members), bool)
        for axis, field in enumerate(("x", "y")):
            bounds = box.get(field)
            if not isinstance(bounds, list | tuple) or len(bounds) != 2:
                return chosen
            low, high = _number(bounds[0]), _number(bounds[1])
            if low is None or high is None or low == high:
                return chosen
            low, high = min(low, high), max(low, high)
            inside &= (points[:, axis] >= low) & (points[:, axis] <= high)
        for value in members[inside].tolist():
            if value not in chosen:
                chosen.append(value)
    return chosen


def confusion_figure(matrix: np.ndarray, names: Sequence[str], height: int = 340) -> Any:
    """The confusion matrix as an annotated heatmap (rows: label, columns: prediction), each
    row coloured by its share so a small class reads as well as a large one."""
    import plotly.graph_objects as go

    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, np.where(totals > 0, totals, 1), dtype=np.float64)
    height = max(height, min(900, 80 + 26 * len(names)))
    figure = go.Figure(
        go.Heatmap(
            z=shares,
            x=list(names),
            y=list(names),
            text=matrix.astype(str),
            texttemplate="%{text}" if len(names) <= 20 else None,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar={"title": "share of row", "tickformat": ".0%"},
            hovertemplate="label %{y} → predicted %{x}: %{text} images (%{z:.0%} of the row)"
            "<extra></extra>",
        )
    )
    figure.update_layout(
        height=height,
        margin={"l": 90, "r": 10, "t": 10, "b": 60},
        xaxis={"title": "predicted", "side": "bottom", "automargin": True, "type": "category"},
        yaxis={"title": "label", "autorange": "reversed", "automargin": True, "type": "category"},
    )
    return figure
