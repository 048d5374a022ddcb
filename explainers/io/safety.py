"""Inspecting a model file before Keras deserialises anything from it.

A Keras model file is a program, not data: a ``Lambda`` layer carries marshalled Python bytecode,
a config may name any importable function, and the weights may declare arrays far larger than the
file. Keras' own ``safe_mode`` has been bypassed several times (CVE-2025-1550, CVE-2025-8747,
CVE-2025-9905, CVE-2025-9906, CVE-2026-1462), so every upload goes through our own inspection
first. It reads the file with :mod:`zipfile`, :mod:`json` and :mod:`h5py` only — no Keras
deserialisation, no extraction to disk, no code from the file — and refuses:

* files that are empty, too large, or whose first bytes do not match their extension;
* ``.keras`` archives with unsafe entry names (absolute, ``..``, backslashes, drive letters),
  symbolic links, duplicate or overlapping entries, encryption, unusual compression, entries
  Keras never writes, too many entries, or members that expand far beyond their stored size;
* configs (``config.json``, or an ``.h5`` file's ``model_config``) that contain ``Lambda`` or
  ``TFSMLayer`` layers, serialised Python functions or bytecode, objects from modules other than
  Keras, custom ``registered_name`` lookups, Keras functions that are not modelling functions
  (``keras.utils.get_file``, ``keras.config.enable_unsafe_deserialization``...), lookup layers
  that read a vocabulary from a file path, or object names that are file paths — by allow-list:
  every object must resolve to a Keras layer, operation, initializer, regularizer, constraint,
  dtype policy, loss or metric;
* HDF5 weights with external or soft links, external or virtual datasets, filter plugins,
  non-numeric data, or declared sizes that the file cannot plausibly hold.

With ``trust=True`` (an operator's decision, see :func:`trust_from_environment`) the config
findings are recorded in the report instead of raised; the structural and size checks still apply.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import io
import itertools
import json
import math
import os
import re
import stat
import struct
import types
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from explainers.errors import ModelLoadError, ParameterError, UnsafeModelError
from explainers.io.model_files import MODEL_SUFFIXES

# ------------------------------------------------------------------------------------------------
# Limits
# ------------------------------------------------------------------------------------------------
#: Largest model file accepted by default (bytes). The largest keras.applications model with
#: weights (EfficientNetV2L, ConvNeXtXLarge) is about 1.4 GB; raise ``max_bytes`` for those.
DEFAULT_MAX_BYTES = 1 << 30
#: Largest total declared uncompressed size of a ``.keras`` archive's entries.
MAX_EXPANDED_BYTES = 2 << 30
#: Largest total declared size of all weight arrays (what Keras would allocate).
MAX_WEIGHT_BYTES = 4 << 30
#: A member (or the weights) may declare at most this many times the bytes it stores...
BOMB_RATIO = 100
#: ...once it declares more than this. Keras writes members uncompressed (ratio 1), and DEFLATE
#: tops out near 1032:1, so only a forged header or a bomb exceeds 100:1 at this size.
BOMB_FLOOR_BYTES = 64 << 20
#: Largest compressed (deflated) ``model.weights.h5`` member; Keras itself stores weights
#: uncompressed, which the inspection reads in place without inflating anything.
MAX_DEFLATED_WEIGHTS_BYTES = 256 << 20
#: Largest ``config.json`` / ``model_config`` (DenseNet121's is 0.4 MB).
MAX_CONFIG_BYTES = 32 << 20
MAX_METADATA_BYTES = 1 << 20
#: Keras writes 3 entries plus one per asset file (lookup vocabularies and similar).
MAX_ZIP_ENTRIES = 256
#: Bounds on the config walk and the HDF5 walk, so a crafted file cannot make them slow.
MAX_CONFIG_NODES = 2_000_000
MAX_CONFIG_DEPTH = 200
MAX_HDF5_OBJECTS = 200_000

#: The environment variable an operator sets to load model files with custom code (off by default).
TRUST_ENV_VAR = "EXPLAINER_TRUST_MODEL_FILES"
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})

#: What h5py raises on a damaged file (SystemError: an error inside a visit callback).
_HDF5_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError, SystemError, UnicodeError)

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_KERAS_ENTRIES = ("config.json", "metadata.json", "model.weights.h5")
_ASSETS_DIR = "assets/"

_ADVICE_CODE = (
    "Rebuild the model from built-in Keras layers and save it again with "
    "model.save('name.keras'). Only if you trust where this file came from can an operator load it "
    f"anyway, with load_model(..., trust=True) (dashboard: {TRUST_ENV_VAR}=1)."
)
_ADVICE_STRUCTURE = (
    "A file saved by Keras never looks like this; save the model again with "
    "model.save('name.keras') and upload that file."
)


def trust_from_environment(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the operator allows model files with custom code (``EXPLAINER_TRUST_MODEL_FILES``).

    Off unless the variable is ``1``, ``true``, ``yes`` or ``on`` (any case). Trusting a file
    means Keras runs with ``safe_mode=False``: a ``Lambda`` layer's bytecode will execute. Only
    set it where every uploader is trusted. Any other value raises :class:`ParameterError`, so a
    typo cannot silently change the security setting.
    """
    value = (os.environ if environ is None else environ).get(TRUST_ENV_VAR, "")
    word = value.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ParameterError(
        f"{TRUST_ENV_VAR}={value!r} is not understood; set it to 1 to trust model files or 0 "
        "(the default) to inspect and refuse unsafe ones"
    )


@dataclass(frozen=True)
class ModelFileReport:
    """What :func:`inspect_model_file` saw in a file it let through.

    Attributes
    ----------
    file_name, file_format, file_bytes
        The file's name, ``"keras"`` (zip archive) or ``"h5"`` (legacy HDF5), and its size.
    keras_version
        The Keras version that saved it (``metadata.json`` or the ``keras_version`` attribute).
    entries
        The archive's entry names (empty for ``.h5``).
    config_objects
        How many serialised objects (dicts with a ``class_name``) the config holds.
    layer_classes
        Sorted distinct ``class_name`` values of the config's objects.
    weight_arrays, weight_bytes
        Number of HDF5 datasets and the total bytes their declared shapes and dtypes occupy.
    trusted
        Whether the file was inspected with ``trust=True``.
    waived
        With ``trust=True``: the findings that would otherwise have refused the file.
    """

    file_name: str
    file_format: Literal["keras", "h5"]
    file_bytes: int
    keras_version: str | None
    entries: tuple[str, ...]
    config_objects: int
    layer_classes: tuple[str, ...]
    weight_arrays: int
    weight_bytes: int
    trusted: bool
    waived: tuple[str, ...]


def inspect_model_file(
    path: str | os.PathLike,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    trust: bool = False,
) -> ModelFileReport:
    """Check a ``.keras``/``.h5``/``.hdf5`` file before any Keras code reads it.

    Parameters
    ----------
    path
        The model file. Its extension decides which format is expected.
    max_bytes
        Largest file size accepted, in bytes.
    trust
        Record config findings (``Lambda``, custom modules...) in ``report.waived`` instead of
        refusing; structural, size and weights checks still refuse.

    Returns
    -------
    ModelFileReport
        What the file contains, for display and logging.

    Raises
    ------
    UnsafeModelError
        The file holds code, reaches outside Keras, or is shaped to exhaust memory or disk.
    ModelLoadError
        The file is missing, empty, too large, not the format its extension says, or damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no model file at {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise ModelLoadError(
            f"{path.name!r} is not a Keras model file: expected a .keras, .h5 or .hdf5 file, "
            f"got {suffix or 'no extension'!r}"
        )
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path.name!r} is empty (0 bytes); upload the complete model file")
    if size > max_bytes:
        raise ModelLoadError(
            f"{path.name!r} is {_bytes(size)}; the limit is {_bytes(max_bytes)}. Use a smaller "
            "model, or ask the operator to raise the limit."
        )
    with open(path, "rb") as handle:
        head = handle.read(8)
        is_hdf5 = _has_hdf5_signature(handle, size)
    if suffix == ".keras":
        if not head.startswith(_ZIP_MAGIC):
            if is_hdf5:
                raise ModelLoadError(
                    f"{path.name!r} is an HDF5 (legacy .h5) model, not a .keras archive; rename it "
                    "to .h5 and upload it again"
                )
            raise ModelLoadError(
                f"{path.name!r} is not a Keras model file: a .keras file is a zip archive, but "
                f"this one {_describe_content(head)}"
            )
        return _inspect_keras_archive(path, size, trust)
    if not is_hdf5:
        if head.startswith(_ZIP_MAGIC):
            raise ModelLoadError(
                f"{path.name!r} is a zip archive (the .keras format), not an HDF5 file; rename it "
                "to .keras and upload it again"
            )
        raise ModelLoadError(
            f"{path.name!r} is not a Keras model file: a {suffix} file is an HDF5 file, but this "
            f"one {_describe_content(head)}"
        )
    return _inspect_legacy_h5(path, size, trust)


# ------------------------------------------------------------------------------------------------
# File type
# ------------------------------------------------------------------------------------------------
_KNOWN_CONTENT: tuple[tuple[bytes, str], ...] = (
    (_EMPTY_ZIP_MAGIC, "is an empty zip archive"),
    (b"PK", "is a damaged zip archive"),
    (_HDF5_MAGIC, "is an HDF5 file"),
    (b"\x89PNG", "is a PNG image"),
    (b"\xff\xd8\xff", "is a JPEG image"),
    (b"GIF8", "is a GIF image"),
    (b"%PDF", "is a PDF document"),
    (b"\x1f\x8b", "is gzip-compressed data"),
    (b"\x7fELF", "is a Linux executable"),
    (b"MZ", "is a Windows executable"),
)


def _describe_content(head: bytes) -> str:
    """Name what the first bytes of a file look like ("is a PNG image", ...)."""
    for magic, label in _KNOWN_CONTENT:
        if head.startswith(magic):
            return label
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "is a Python pickle (never loaded here: unpickling runs code)"
    if head[:8].startswith(b"RIFF") or head[:4] == b"\x00\x00\x01\x00":
        return "is an image or media file"
    if head.lstrip()[:1] in (b"{", b"["):
        return "looks like JSON text (a model config without its weights?)"
    return f"starts with the bytes {head[:8].hex(' ')}, which no model format uses"


def _has_hdf5_signature(handle: BinaryIO, size: int) -> bool:
    """HDF5's superblock sits at byte 0, or after a user block at 512, 1024, 2048... bytes."""
    offset = 0
    while offset + len(_HDF5_MAGIC) <= size and offset <= 1 << 16:
        handle.seek(offset)
        if handle.read(len(_HDF5_MAGIC)) == _HDF5_MAGIC:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


def _bytes(n: int) -> str:
    """A byte count for people: ``1.5 GiB``, ``300 KiB``, ``12 bytes``."""
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------
# .keras archives
# ------------------------------------------------------------------------------------------------
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # the 30-byte zip local file header
_DRIVE = re.compile(r"^[A-Za-z]:")
_ALLOWED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


def _refuse_structure(name: str, what: str) -> UnsafeModelError:
    return UnsafeModelError(f"{name!r} was refused before loading: {what}. {_ADVICE_STRUCTURE}")


def _damaged(name: str, detail: str) -> ModelLoadError:
    return ModelLoadError(
        f"{name!r} is damaged or truncated ({detail}); upload the complete file again"
    )


def _declared_entry_count(handle: BinaryIO, size: int, name: str) -> int:
    """Entry count from the zip's end-of-directory record, read before :mod:`zipfile` builds one
    object per entry (a crafted directory of millions of entries would take minutes and GBs)."""
    tail_size = min(size, 22 + 0xFFFF)
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    position = tail.rfind(_EMPTY_ZIP_MAGIC)
    if position < 0 or position + 22 > len(tail):
        raise _damaged(name, "the zip directory at the end of the file is missing")
    count = struct.unpack_from("<H", tail, position + 10)[0]
    if count != 0xFFFF:
        return count
    # ZIP64: the locator 20 bytes before the record points at the 64-bit record with the count.
    locator = tail[position - 20 : position] if position >= 20 else b""
    if locator[:4] != b"PK\x06\x07":
        raise _damaged(name, "the ZIP64 directory locator is missing")
    record_offset = struct.unpack_from("<Q", locator, 8)[0]
    if record_offset + 56 > size:
        raise _damaged(name, "the ZIP64 directory points past the end of the file")
    handle.seek(record_offset)
    record = handle.read(56)
    if record[:4] != b"PK\x06\x06":
        raise _damaged(name, "the ZIP64 directory record is missing")
    return int(struct.unpack_from("<Q", record, 32)[0])


def _entry_name_problem(entry: str) -> str | None:
    """Why an archive entry name is unsafe to extract anywhere, or None."""
    if not entry:
        return "an entry with an empty name"
    if any(ord(ch) < 32 for ch in entry):
        return f"an entry name with control characters ({entry!r})"
    if entry.startswith(("/", "\\")):
        return f"an entry with an absolute path ({entry!r})"
    if _DRIVE.match(entry):
        return f"an entry with a Windows drive letter ({entry!r})"
    if "\\" in entry:
        return f"an entry name with backslashes ({entry!r}), a Windows path separator"
    if ".." in entry.split("/"):
        return f"an entry whose path climbs out of the archive with '..' ({entry!r})"
    return None


def _data_start(handle: BinaryIO, info: zipfile.ZipInfo, size: int, name: str) -> int:
    """Offset of an entry's data, from its local header (which must agree with the directory)."""
    handle.seek(info.header_offset)
    raw = handle.read(_LOCAL_HEADER.size)
    if len(raw) < _LOCAL_HEADER.size:
        raise _damaged(name, f"entry {info.filename!r} lies past the end of the file")
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != _ZIP_MAGIC:
        raise _damaged(name, f"entry {info.filename!r} has no local header")
    name_length, extra_length = fields[-2], fields[-1]
    local_name = handle.read(name_length)
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"  # zip's language-encoding flag
    if local_name.decode(encoding, "replace") != info.orig_filename:
        raise _refuse_structure(
            name,
            f"entry {info.filename!r} is named {local_name!r} in its local header "
            "(the two names must agree)",
        )
    return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


def _check_archive_layout(
    zf: zipfile.ZipFile, handle: BinaryIO, size: int, name: str
) -> dict[str, tuple[int, int]]:
    """Entry checks; returns ``{entry: (data offset, stored bytes)}``."""
    infos = zf.infolist()
    duplicates = [entry for entry, n in Counter(i.filename for i in infos).items() if n > 1]
    if duplicates:
        raise _refuse_structure(
            name, f"the archive holds {duplicates[0]!r} more than once (duplicate entries)"
        )
    spans: list[tuple[int, int, str]] = []
    offsets: dict[str, tuple[int, int]] = {}
    total_declared = 0
    for info in infos:
        entry = info.filename
        # zipfile cuts names at a NUL byte; check the name as stored, too.
        problem = _entry_name_problem(info.orig_filename) or _entry_name_problem(entry)
        if problem:
            raise _refuse_structure(name, f"it contains {problem}")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _refuse_structure(name, f"entry {entry!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise _refuse_structure(name, f"entry {entry!r} is encrypted")
        if info.compress_type not in _ALLOWED_COMPRESSION:
            raise _refuse_structure(
                name,
                f"entry {entry!r} uses zip compression method {info.compress_type}; Keras "
                "archives use stored or deflate entries only",
            )
        if entry not in _KERAS_ENTRIES and not entry.startswith(_ASSETS_DIR):
            raise _refuse_structure(
                name,
                f"it contains the entry {entry!r}; a Keras archive holds only "
                f"{', '.join(_KERAS_ENTRIES)} and files under {_ASSETS_DIR}",
            )
        if info.file_size > BOMB_FLOOR_BYTES and info.file_size > BOMB_RATIO * max(
            info.compress_size, 1
        ):
            raise UnsafeModelError(
                f"{name!r} was refused before loading: entry {entry!r} declares "
                f"{_bytes(info.file_size)} but stores only {_bytes(info.compress_size)} "
                f"(more than {BOMB_RATIO}:1, a decompression bomb). {_ADVICE_STRUCTURE}"
            )
        total_declared += info.file_size
        start = _data_start(handle, info, size, name)
        end = start + info.compress_size
        if end > size:
            raise _damaged(name, f"entry {entry!r} runs past the end of the file")
        spans.append((info.header_offset, end, entry))
        offsets[entry] = (start, info.compress_size)
    if total_declared > MAX_EXPANDED_BYTES:
        raise UnsafeModelError(
            f"{name!r} was refused before loading: its entries declare {_bytes(total_declared)} "
            f"in total, above the {_bytes(MAX_EXPANDED_BYTES)} limit for a model archive. "
            f"{_ADVICE_STRUCTURE}"
        )
    if total_declared > BOMB_FLOOR_BYTES and total_declared > BOMB_RATIO * size:
        raise UnsafeModelError(
            f"{name!r} was refused before loading: its entries declare {_bytes(total_declared)} "
            f"but the archive is {_bytes(size)} (more than {BOMB_RATIO}:1, a decompression "
            f"bomb). {_ADVICE_STRUCTURE}"
        )
    spans.sort()
    for (_, end, entry), (next_start, _, next_entry) in itertools.pairwise(spans):
        if next_start < end:
            raise _refuse_structure(
                name,
                f"entries {entry!r} and {next_entry!r} overlap (one stored byte range read as two "
                "entries, the trick behind non-recursive zip bombs)",
            )
    return offsets


def _read_member(zf: zipfile.ZipFile, entry: str, limit: int, name: str) -> bytes:
    """Read one small member, at most ``limit`` bytes whatever its header declares."""
    info = zf.getinfo(entry)
    if info.file_size > limit:
        raise UnsafeModelError(
            f"{name!r} was refused before loading: {entry} is {_bytes(info.file_size)}, above "
            f"the {_bytes(limit)} limit. {_ADVICE_STRUCTURE}"
        )
    try:
        with zf.open(info) as member:
            data = member.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise _damaged(name, f"{entry} could not be read: {exc}") from exc
    if len(data) > limit:  # defensive: zipfile stops at the declared size
        raise UnsafeModelError(f"{name!r} was refused before loading: {entry} is too large")
    return data


def _parse_json(data: bytes, what: str, name: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError as exc:
        raise UnsafeModelError(
            f"{name!r} was refused before loading: {what} is nested too deeply to read safely. "
            f"{_ADVICE_STRUCTURE}"
        ) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(
            f"{name!r} is damaged: {what} is not valid JSON ({str(exc)[:120]}). Save the model "
            "again with model.save('name.keras')."
        ) from exc


class _ByteWindow(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes at ``start`` in an open file.

    h5py reads HDF5 metadata with many small backward seeks; on a :mod:`zipfile` member each one
    would re-read the member from its start (seconds per model), on this window it is free. Only
    used for stored (uncompressed) members, which is how Keras writes them.
    """

    def __init__(self, handle: BinaryIO, start: int, length: int) -> None:
        super().__init__()
        self._handle, self._start, self._length, self._position = handle, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._length - self._position))
        if count == 0:
            return 0
        self._handle.seek(self._start + self._position)
        got = self._handle.readinto(view[:count]) or 0
        self._position += got
        return got


def _crc32(stream: BinaryIO) -> int:
    crc = 0
    for block in iter(lambda: stream.read(1 << 20), b""):
        crc = zlib.crc32(block, crc)
    return crc


def _inspect_keras_archive(path: Path, size: int, trust: bool) -> ModelFileReport:
    name = path.name
    with open(path, "rb") as handle:
        count = _declared_entry_count(handle, size, name)
        if count > MAX_ZIP_ENTRIES:
            raise _refuse_structure(
                name,
                f"the archive declares {count} entries; a Keras model archive has 3 plus one per "
                f"asset file (limit {MAX_ZIP_ENTRIES})",
            )
        try:
            zf = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise _damaged(name, f"not a readable zip archive: {exc}") from exc
        with zf:
            offsets = _check_archive_layout(zf, handle, size, name)
            if "config.json" not in offsets:
                raise ModelLoadError(
                    f"{name!r} is a zip archive but not a Keras model: it has no config.json. "
                    "Save the model with model.save('name.keras') in Keras 3."
                )
            if "model.weights.h5" not in offsets:
                raise ModelLoadError(
                    f"{name!r} has no model.weights.h5: save the whole model with "
                    "model.save('name.keras'), not only its architecture."
                )
            config = _parse_json(
                _read_member(zf, "config.json", MAX_CONFIG_BYTES, name), "config.json", name
            )
            version = None
            if "metadata.json" in offsets:
                try:
                    metadata = json.loads(
                        _read_member(zf, "metadata.json", MAX_METADATA_BYTES, name).decode()
                    )
                    found = metadata.get("keras_version") if isinstance(metadata, dict) else None
                    version = str(found)[:40] if found is not None else None
                except (UnicodeDecodeError, ValueError, RecursionError):
                    version = None  # Keras ignores metadata.json when loading; so do we
            walk = _walk_config(config, name, "config.json", trust, version)
            info = zf.getinfo("model.weights.h5")
            start, stored = offsets["model.weights.h5"]
            if info.compress_type == zipfile.ZIP_STORED:
                member: BinaryIO = _ByteWindow(handle, start, stored)  # type: ignore[assignment]
                if _crc32(member) != info.CRC:  # what zipfile checks when Keras reads it
                    raise _damaged(name, "model.weights.h5 fails its CRC-32 check")
                member.seek(0)
            else:
                # Keras stores weights uncompressed; a re-zipped (deflated) copy must be inflated
                # in memory to read it, so it is bounded more tightly.
                member = io.BytesIO(
                    _read_member(zf, "model.weights.h5", MAX_DEFLATED_WEIGHTS_BYTES, name)
                )
            arrays, weight_bytes = _inspect_weights(member, name, "model.weights.h5", stored)
            entries = tuple(i.filename for i in zf.infolist())
    return ModelFileReport(
        file_name=name,
        file_format="keras",
        file_bytes=size,
        keras_version=version,
        entries=entries,
        config_objects=walk.objects,
        layer_classes=tuple(sorted(walk.classes)),
        weight_arrays=arrays,
        weight_bytes=weight_bytes,
        trusted=trust,
        waived=tuple(walk.waived),
    )


# ------------------------------------------------------------------------------------------------
# Legacy .h5 / .hdf5
# ------------------------------------------------------------------------------------------------
def _inspect_legacy_h5(path: Path, size: int, trust: bool) -> ModelFileReport:
    import h5py

    name = path.name
    try:
        h5 = h5py.File(path, "r")
    except _HDF5_ERRORS as exc:
        raise _damaged(name, f"not a readable HDF5 file: {str(exc)[:160]}") from exc
    with h5:
        try:
            if "model_config" not in h5.attrs:
                raise ModelLoadError(
                    f"{name!r} holds no model architecture (no 'model_config' attribute): it "
                    "looks like a weights-only file from save_weights(). Save the whole model "
                    "with model.save('name.keras')."
                )
            stored = h5.attrs.get_id("model_config").get_storage_size()
            if stored > MAX_CONFIG_BYTES:
                raise UnsafeModelError(
                    f"{name!r} was refused before loading: its model_config is {_bytes(stored)}, "
                    f"above the {_bytes(MAX_CONFIG_BYTES)} limit. {_ADVICE_STRUCTURE}"
                )
            raw = h5.attrs["model_config"]
            version_attr = h5.attrs.get("keras_version")
            if isinstance(raw, str):
                text = raw.encode("utf-8")
            elif isinstance(raw, bytes):
                text = raw
            else:
                raise ModelLoadError(
                    f"{name!r} is damaged: its model_config attribute is not text "
                    f"({type(raw).__name__})"
                )
        except _HDF5_ERRORS as exc:
            raise _damaged(name, f"its model_config attribute cannot be read: {exc}") from exc
        if isinstance(version_attr, bytes):
            version_attr = version_attr.decode("utf-8", "replace")
        version = str(version_attr)[:40] if version_attr is not None else None
        config = _parse_json(text, "the model_config attribute", name)
        walk = _walk_config(config, name, "model_config", trust, version)
        arrays, weight_bytes = _walk_hdf5(h5, name, "", size)
    return ModelFileReport(
        file_name=name,
        file_format="h5",
        file_bytes=size,
        keras_version=version,
        entries=(),
        config_objects=walk.objects,
        layer_classes=tuple(sorted(walk.classes)),
        weight_arrays=arrays,
        weight_bytes=weight_bytes,
        trusted=trust,
        waived=tuple(walk.waived),
    )


# ------------------------------------------------------------------------------------------------
# HDF5 weights
# ------------------------------------------------------------------------------------------------
#: HDF5's built-in filters (deflate, shuffle, fletcher32, szip, nbit, scale-offset) and LZF. Any
#: other id makes libhdf5 search its plugin path and load a shared library when data is read.
_BUILTIN_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})


def _inspect_weights(member: BinaryIO, name: str, label: str, stored: int) -> tuple[int, int]:
    import h5py

    try:
        h5 = h5py.File(member, "r")
    except _HDF5_ERRORS as exc:
        raise _damaged(name, f"{label} is not a readable HDF5 file: {str(exc)[:160]}") from exc
    with h5:
        return _walk_hdf5(h5, name, f"{label}:", stored)


def _walk_hdf5(h5: Any, name: str, prefix: str, container_bytes: int) -> tuple[int, int]:
    """Every group and dataset in an HDF5 file: refuse links that leave the file, data stored
    elsewhere, unknown filters, non-numeric data, and declared sizes the file cannot hold.
    Returns (number of datasets, total declared bytes). Reads metadata only, never array data."""
    import h5py

    def refuse(what: str) -> UnsafeModelError:
        return UnsafeModelError(f"{name!r} was refused before loading: {what}. {_ADVICE_STRUCTURE}")

    objects = arrays = declared = 0
    problems: list[str] = []
    failures: list[BaseException] = []

    # h5py turns an exception raised inside a visit callback into a SystemError, so callbacks
    # record what they find and return True, which stops the visit.
    def check_link(path: str, link: Any) -> bool | None:
        # Every link, hard or not: the object visit below never follows soft or external links.
        nonlocal objects
        objects += 1
        if objects > MAX_HDF5_OBJECTS:
            problems.append(f"its HDF5 data holds more than {MAX_HDF5_OBJECTS} objects")
        elif isinstance(link, h5py.ExternalLink):
            problems.append(
                f"HDF5 object '{prefix}/{path}' is an external link to {link.filename!r} "
                "(it would read another file on the server)"
            )
        elif isinstance(link, h5py.SoftLink):
            problems.append(f"HDF5 object '{prefix}/{path}' is a soft link to {link.path!r}")
        return True if problems else None

    def check_object(path: str, item: Any) -> bool | None:
        # Each object once (libhdf5 tracks visited objects, so hard-link cycles end).
        nonlocal arrays, declared
        try:
            if isinstance(item, h5py.Dataset):  # groups hold nothing; committed types describe
                arrays += 1
                problem, size = _dataset_problem(item, f"{prefix}/{path}")
                if problem:
                    problems.append(problem)
                    return True
                declared += size
        except _HDF5_ERRORS as exc:  # damaged metadata
            failures.append(exc)
            return True
        return None

    try:
        h5.visititems_links(check_link)
        if not problems:
            h5.visititems(check_object)
    except _HDF5_ERRORS as exc:
        failures.append(exc)
    if problems:
        raise refuse(problems[0])
    if failures:
        raise _damaged(
            name, f"its HDF5 data cannot be read: {str(failures[0])[:160]}"
        ) from failures[0]
    if declared > MAX_WEIGHT_BYTES:
        raise refuse(
            f"its weights declare {_bytes(declared)} in total, above the "
            f"{_bytes(MAX_WEIGHT_BYTES)} limit"
        )
    if declared > BOMB_FLOOR_BYTES and declared > BOMB_RATIO * container_bytes:
        raise refuse(
            f"its weights declare {_bytes(declared)} but the file holds only "
            f"{_bytes(container_bytes)} (arrays with a declared shape and no data, which Keras "
            "would allocate in full)"
        )
    return arrays, declared


def _dataset_problem(dataset: Any, where: str) -> tuple[str | None, int]:
    """(why this weights dataset is refused or None, its declared size in bytes)."""
    if dataset.external:
        files = ", ".join(repr(str(entry[0])) for entry in dataset.external)
        return (
            f"HDF5 dataset {where!r} keeps its data in external file(s) {files} "
            "(it would read other files on the server, CVE-2026-1669)",
            0,
        )
    if dataset.is_virtual:
        return f"HDF5 dataset {where!r} is a virtual dataset mapping data from other files", 0
    kind = dataset.dtype.kind
    if kind not in "biufc":
        return (
            f"HDF5 dataset {where!r} has data type {dataset.dtype} (kind {kind!r}); model "
            "weights are numeric arrays",
            0,
        )
    plist = dataset.id.get_create_plist()
    for index in range(plist.get_nfilters()):
        code = plist.get_filter(index)[0]
        if code not in _BUILTIN_FILTERS:
            return (
                f"HDF5 dataset {where!r} uses filter id {code}, which libhdf5 would load from a "
                "plugin library",
                0,
            )
    shape = dataset.shape or ()
    return None, math.prod(int(n) for n in shape) * int(dataset.dtype.itemsize)


# ------------------------------------------------------------------------------------------------
# The config walk
# ------------------------------------------------------------------------------------------------
#: Keras' own markers for values that are not objects (tensors, arrays, tuples...).
_VALUE_MARKERS = frozenset(
    {
        "__keras_tensor__",
        "__tensor__",
        "__numpy__",
        "__bytes__",
        "__ellipsis__",
        "__slice__",
        "__tuple__",
        "TensorShape",
    }
)
#: Layers whose whole purpose is running code or loading other artefacts: (what, why).
_CODE_LAYERS: dict[str, tuple[str, str]] = {
    "Lambda": (
        "a Lambda layer",
        "A Lambda layer stores Python bytecode that runs when the model is loaded",
    ),
    "TFSMLayer": (
        "a TFSMLayer",
        "A TFSMLayer loads and runs a TensorFlow SavedModel from a path named in the file "
        "(the safe_mode bypass CVE-2026-1462)",
    ),
    "JaxLayer": ("a JaxLayer", "A JaxLayer wraps arbitrary Python functions"),
    "FlaxLayer": ("a FlaxLayer", "A FlaxLayer wraps arbitrary Python modules"),
    "TorchModuleWrapper": (
        "a TorchModuleWrapper",
        "A TorchModuleWrapper unpickles a PyTorch module, which runs code",
    ),
}
#: Keras' deserialiser resolves ``"module": "builtins"`` functions in these Keras modules only.
_BUILTIN_FUNCTION_MODULES = (
    "activations",
    "constraints",
    "initializers",
    "losses",
    "metrics",
    "regularizers",
)
#: Where the functions a model config may name (activations and tensor ops) are defined.
_MODELLING_FUNCTION_MODULES = (
    "keras.src.activations",
    "keras.src.ops",
    "keras.src.losses",
    "keras.src.metrics",
    "keras.src.initializers",
    "keras.src.regularizers",
    "keras.src.constraints",
)
_LOOKUP_LAYERS = frozenset({"StringLookup", "IntegerLookup", "IndexLookup", "TextVectorization"})
_BASE64 = re.compile(rb"^[A-Za-z0-9+/=\s]+$")
#: An object name with a path separator or a ``..`` component.
_PATH_LIKE_NAME = re.compile(r"[/\\]|^\.\.?$")


@dataclass
class _Walk:
    objects: int
    classes: set[str]
    waived: list[str]


def _looks_like_bytecode(text: str) -> bool:
    """Whether a string is base64 of a marshalled Python code object (a serialised function).

    ``marshal`` writes a code object as type byte ``c`` (0x63, or 0xE3 with the reference flag)
    followed by 32-bit argument counts; real config strings (names, paths, dtypes) never decode to
    that. Keras stores Lambda functions this way (``python_utils.func_dump``).
    """
    if len(text) < 32 or len(text) > MAX_CONFIG_BYTES:
        return False
    raw = text.encode("ascii", "ignore")
    if len(raw) != len(text) or not _BASE64.match(raw):
        return False
    try:
        decoded = base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(decoded) < 17 or decoded[0] not in (0x63, 0xE3):
        return False
    argcount, posonly, kwonly = struct.unpack_from("<3I", decoded, 1)
    return argcount < 256 and posonly < 256 and kwonly < 256


def _json_path(parts: tuple[str | int, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _iter_children(node: Any) -> Iterator[tuple[str | int, Any]]:
    if isinstance(node, dict):
        yield from node.items()
    elif isinstance(node, list):
        yield from enumerate(node)


def _walk_config(config: Any, name: str, source: str, trust: bool, version: str | None) -> _Walk:
    """Visit every value of the config tree; refuse (or, trusted, record) what could run code.

    Iterative, so the depth of nested models cannot exhaust Python's stack; the whole tree is
    walked, not only ``layers``: activations, initializers, regularizers, constraints, dtype
    policies, wrapped layers (TimeDistributed, Bidirectional) and nested models alike.
    ``compile_config`` is skipped: :func:`explainers.io.models.load_model` never compiles.
    """
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelLoadError(
            f"{name!r} is damaged: {source} does not describe a Keras model (expected an object "
            "with a 'class_name')"
        )
    resolver = _KerasResolver(version)
    walk = _Walk(objects=0, classes=set(), waived=[])
    # (node, JSON path, description of the innermost enclosing object, depth)
    stack: list[tuple[Any, tuple[str | int, ...], str, int]] = [(config, (), "in the model", 0)]
    nodes = 0
    while stack:
        node, path_parts, context, depth = stack.pop()
        nodes += 1
        if nodes > MAX_CONFIG_NODES or depth > MAX_CONFIG_DEPTH:
            raise UnsafeModelError(
                f"{name!r} was refused before loading: {source} is too large or too deeply "
                f"nested to inspect (limits: {MAX_CONFIG_NODES} values, depth "
                f"{MAX_CONFIG_DEPTH}). {_ADVICE_STRUCTURE}"
            )
        if isinstance(node, str):
            if _looks_like_bytecode(node):
                _finding(
                    walk,
                    name,
                    trust,
                    "serialised Python bytecode (base64 of a marshalled code object)",
                    f"{context}, at {source} {_json_path(path_parts)}",
                    "It would run as code if a deserialiser loaded it",
                )
            continue
        if not isinstance(node, dict | list):
            continue
        if isinstance(node, dict):
            context = _check_object(node, path_parts, context, name, source, trust, walk, resolver)
        for key, child in _iter_children(node):
            if key == "compile_config" and isinstance(node, dict):
                continue
            stack.append((child, (*path_parts, key), context, depth + 1))
    return walk


def _finding(walk: _Walk, name: str, trust: bool, what: str, where: str, why: str) -> None:
    """Refuse the file, or with ``trust`` record the finding and go on."""
    message = f"it contains {what}: {where}. {why}."
    if trust:
        walk.waived.append(message)
        return
    raise UnsafeModelError(f"{name!r} was refused before loading: {message} {_ADVICE_CODE}")


def _describe_object(class_name: str, label: Any, module: Any) -> str:
    """``'conv1' (Conv2D from keras.layers)``, or just the class when the object has no name."""
    origin = f"{class_name} from {module}" if isinstance(module, str) else class_name
    return f"{label!r} ({origin})" if isinstance(label, str) else origin


def _check_object(
    node: dict,
    path_parts: tuple[str | int, ...],
    context: str,
    name: str,
    source: str,
    trust: bool,
    walk: _Walk,
    resolver: _KerasResolver,
) -> str:
    """Check one dict of the config; return the context description for its children."""
    location = f"{source} {_json_path(path_parts)}"

    def found(what: str, why: str, where: str | None = None) -> None:
        _finding(walk, name, trust, what, where or f"{context}, at {location}", why)

    if "__lambda__" in node:
        found(
            "a serialised Python lambda ('__lambda__' key)",
            "It is bytecode that would run when the model is loaded",
        )
    for key in ("function_type", "output_shape_type"):
        if node.get(key) == "lambda":
            found(
                f"a Keras 2 serialised lambda ({key}='lambda')",
                "Its 'function' entry is marshalled bytecode that would run when loaded",
            )
    if "class_name" not in node:
        return context
    class_name = node["class_name"]
    if not isinstance(class_name, str):
        found(f"a class_name that is not text ({class_name!r})", "Keras cannot resolve it safely")
        return context
    if class_name in _VALUE_MARKERS:
        return context
    walk.objects += 1
    walk.classes.add(class_name)
    module = node.get("module")
    registered = node.get("registered_name")
    inner = node.get("config")
    for label in (node.get("name"), inner.get("name") if isinstance(inner, dict) else None):
        if isinstance(label, str) and _PATH_LIKE_NAME.search(label):
            # Keras joins object names into asset paths (CVE-2026-12479); it never writes a name
            # with a separator itself, so this is refused whatever the operator trusts.
            raise UnsafeModelError(
                f"{name!r} was refused before loading: the {class_name} at {location} is named "
                f"{label!r}, a name that is a file path. {_ADVICE_STRUCTURE}"
            )
    described = _describe_object(
        class_name, inner.get("name") if isinstance(inner, dict) else None, module
    )
    where = f"{described} at {location}"
    inside = f"inside {described}"
    if class_name == "__lambda__":
        found(
            "a serialised Python lambda",
            "It is bytecode that would run when the model is loaded",
            f"{context}, at {location}",
        )
        return inside
    if class_name in ("__typespec__", "TypeSpec", "CompositeTensor"):
        found(
            f"a TensorFlow type description ({class_name})",
            "It resolves classes outside Keras' allow-list, and image classifiers never need one",
            where,
        )
        return inside
    if class_name in _CODE_LAYERS:
        what, why = _CODE_LAYERS[class_name]
        found(what, why, where)
        return inside
    if class_name == "function":
        problem = resolver.function_problem(module, inner, registered)
        if problem:
            found(
                f"a reference to the function {problem}",
                "Only Keras activations and tensor operations may be named in an uploaded model",
            )
        return context
    problem = resolver.class_problem(module, class_name)
    if problem:
        found(problem, "Only built-in Keras classes may be loaded from an uploaded file", where)
        return inside
    if registered is not None and registered != class_name:
        found(
            f"a custom object registered as {registered!r}",
            "Keras would look that name up in its registry of custom objects, outside its own "
            "classes",
            where,
        )
        return inside
    if class_name in _LOOKUP_LAYERS and isinstance(inner, dict):
        vocabulary = inner.get("vocabulary")
        if isinstance(vocabulary, str):
            found(
                f"a {class_name} whose vocabulary is the path {vocabulary!r}",
                "Keras would read that file or URL on the server (CVE-2025-12058)",
                where,
            )
    return inside


class _KerasResolver:
    """Decides whether a ``(module, class_name)`` or a function reference names an allowed
    Keras object, the way Keras' deserialiser would resolve it, without instantiating anything."""

    def __init__(self, file_version: str | None = None) -> None:
        import keras

        self._keras = keras
        saved = f"; the file was saved with Keras {file_version}" if file_version else ""
        self._missing = f"which this Keras ({keras.__version__}) does not have{saved}"
        self._class_bases: tuple[type, ...] = (
            keras.Operation,  # layers, models and functional-API ops (keras.src.ops.numpy.Add)
            keras.initializers.Initializer,
            keras.regularizers.Regularizer,
            keras.constraints.Constraint,
            keras.DTypePolicy,
            keras.losses.Loss,
            keras.metrics.Metric,
        )
        self._code_classes: tuple[type, ...] = tuple(
            getattr(keras.layers, layer) for layer in _CODE_LAYERS if hasattr(keras.layers, layer)
        )
        self._legacy_names: set[str] | None = None
        self._cache: dict[tuple[Any, ...], str | None] = {}

    # -- lookups -------------------------------------------------------------------------------
    def _symbol(self, module: str, attribute: str) -> Any:
        """``module.attribute`` resolved as Keras would: public API first, then keras.src."""
        if not isinstance(attribute, str) or not attribute.isidentifier():
            return None
        parts = module.split(".")
        obj: Any = self._keras
        for part in parts[1:]:
            obj = getattr(obj, part, None) if part.isidentifier() else None
            if obj is None:
                break
        if obj is not None and parts[1:2] != ["src"]:
            found = getattr(obj, attribute, None)
            if found is not None:
                return found
        if module.startswith("keras.src.") and all(p.isidentifier() for p in parts):
            try:  # Keras' deserialiser imports keras.* modules the same way
                loaded = importlib.import_module(module)
            except Exception:  # an optional backend's module, e.g. keras.src.backend.jax
                return None
            return vars(loaded).get(attribute)
        return None

    def _legacy_class_names(self) -> set[str]:
        """Names a module-less (legacy ``.h5``) config may use: Keras' public classes."""
        if self._legacy_names is None:
            names = {"Functional", "Sequential", "Model", "Policy"}
            for namespace in (
                self._keras.layers,
                self._keras.initializers,
                self._keras.regularizers,
                self._keras.constraints,
                self._keras.dtype_policies,
                self._keras.losses,
                self._keras.metrics,
            ):
                for attribute in dir(namespace):
                    value = getattr(namespace, attribute, None)
                    if self._allowed_class(value):
                        names.add(attribute)
            self._legacy_names = names
        return self._legacy_names

    def _allowed_class(self, value: Any) -> bool:
        return (
            isinstance(value, type)
            and issubclass(value, self._class_bases)
            and not issubclass(value, self._code_classes)
        )

    # -- checks --------------------------------------------------------------------------------
    def class_problem(self, module: Any, class_name: str) -> str | None:
        key = ("class", module, class_name)
        if key not in self._cache:
            self._cache[key] = self._class_problem(module, class_name)
        return self._cache[key]

    def _class_problem(self, module: Any, class_name: str) -> str | None:
        if module is None:
            if class_name in self._legacy_class_names():
                return None
            return (
                f"the class {class_name!r}, which is not a built-in Keras 3 class (a custom or "
                "Keras 2-only class)"
            )
        if not isinstance(module, str):
            return f"a module entry that is not text ({module!r})"
        if module != "keras" and not module.startswith("keras."):
            return (
                f"the class {class_name!r} from the module {module!r}, which is not part of Keras"
            )
        value = self._symbol(module, class_name)
        if value is None:
            return f"the class {module}.{class_name}, {self._missing}"
        if isinstance(value, type) and issubclass(value, self._code_classes):
            return f"{module}.{class_name}, a subclass of a code-running layer"
        if not self._allowed_class(value):
            return (
                f"{module}.{class_name}, which is not a Keras layer, operation, initializer, "
                "regularizer, constraint or dtype policy"
            )
        return None

    def function_problem(self, module: Any, function_name: Any, registered: Any) -> str | None:
        key = ("function", module, function_name, registered)
        if key not in self._cache:
            self._cache[key] = self._function_problem(module, function_name, registered)
        return self._cache[key]

    def _function_problem(self, module: Any, function_name: Any, registered: Any) -> str | None:
        label = f"{module}.{function_name}"
        if not isinstance(function_name, str) or not isinstance(module, str):
            return f"{label!r} (module and name must be text)"
        if registered not in (None, function_name, "function"):
            return f"{label} registered as {registered!r} (a custom function)"
        if module == "builtins":
            # Keras looks a "builtins" function up among its own activations, losses... only.
            for namespace in _BUILTIN_FUNCTION_MODULES:
                value = getattr(getattr(self._keras, namespace), function_name, None)
                if self._modelling_function(value):
                    return None
            return f"{function_name!r} from Python's builtins (not a Keras function)"
        if module != "keras" and not module.startswith("keras."):
            return f"{label} from the module {module!r}, which is not part of Keras"
        value = self._symbol(module, function_name)
        if value is None:
            return f"{label}, {self._missing}"
        if not self._modelling_function(value):
            return f"{label}, which is not an activation or tensor operation"
        return None

    @staticmethod
    def _modelling_function(value: Any) -> bool:
        return isinstance(value, types.FunctionType) and str(
            getattr(value, "__module__", "")
        ).startswith(_MODELLING_FUNCTION_MODULES)
