"""Hostile model files, as data: each case builds one file into a directory and says what it
tries and which refusal the user must see.

Used by ``tests/test_hostile_models.py`` (every case is refused and its payload never runs) and
``tests/test_reliability_doc.py`` (``docs/RELIABILITY.md`` lists every case with the outcome the
tests observe). Payloads only ever write a marker file named by the test, so a failure shows up as
that file existing, not as damage.

Forged files start from a small honest model (:func:`honest_model`) saved by Keras itself and
change one thing: the config, an archive entry, or the weights.
"""

from __future__ import annotations

import base64
import io
import json
import marshal
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

#: The honest model's layer names, which the forged configs edit.
FEATURE_LAYER = "conv"
HEAD_LAYER = "head"


@dataclass(frozen=True)
class HostileCase:
    """One hostile file.

    Attributes
    ----------
    case_id
        Stable identifier; docs/RELIABILITY.md has one table row per id.
    tries
        What the file tries to do to the server, in a few words.
    file_name
        The name it is uploaded under (its extension picks the format).
    error
        Name of the error class ``load_model`` must raise: ``UnsafeModelError`` for files built
        to attack, ``ModelLoadError`` for files that are simply not a loadable model.
    phrase
        A phrase the refusal message must contain.
    build
        ``build(path, marker)`` writes the file at ``path``; a payload writes ``marker``.
    runs_code
        True when the payload really runs if Keras loads the file without our checks and with
        ``safe_mode=False`` (the test proves it, so the case is not a strawman).
    load_kwargs
        Extra keyword arguments for ``load_model`` (e.g. a small ``max_bytes``).
    """

    case_id: str
    tries: str
    file_name: str
    error: str
    phrase: str
    build: Callable[[Path, Path], None]
    runs_code: bool = False
    load_kwargs: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# The honest starting point
# ------------------------------------------------------------------------------------------------
def honest_model(activation: Any = "softmax") -> Any:
    """Conv → GAP → Dense: 16×16 RGB in, 3 classes out (keras.Model)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name=FEATURE_LAYER)(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, activation=activation, name=HEAD_LAYER)(x)
    return keras.Model(inputs, outputs, name="honest")


_HONEST: dict[str, bytes] = {}


def honest_bytes(suffix: str) -> bytes:
    """The honest model saved by Keras as ``.keras`` or ``.h5`` (built once per process)."""
    if suffix not in _HONEST:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"honest{suffix}"
            honest_model().save(path)
            _HONEST[suffix] = path.read_bytes()
    return _HONEST[suffix]


def marker_lambda(marker: Path) -> Callable[[Any], Any]:
    """A lambda that writes ``marker`` and returns its input. The path is a constant inside the
    code object, so it survives marshalling into the file."""
    return eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), t)[1]")


def _archive_entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _write_archive(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            zf.writestr(name, data)


def _with_config(path: Path, edit: Callable[[dict], None]) -> None:
    """The honest .keras archive with its config.json changed by ``edit``."""
    entries = _archive_entries(honest_bytes(".keras"))
    config = json.loads(entries["config.json"])
    edit(config)
    entries["config.json"] = json.dumps(config).encode()
    _write_archive(path, list(entries.items()))


def _with_extra_entries(path: Path, extra: list[tuple[str | zipfile.ZipInfo, bytes]]) -> None:
    entries = list(_archive_entries(honest_bytes(".keras")).items())
    _write_archive(path, [*entries, *extra])


def _layer(config: dict, name: str) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["name"] == name)


def _set_activation(value: Any) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        _layer(config, HEAD_LAYER)["config"]["activation"] = value

    return edit


def _replace_feature_layer(
    module: str | None, class_name: str, inner: dict, registered: str | None = None
) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        layer = _layer(config, FEATURE_LAYER)
        layer.update(module=module, class_name=class_name, registered_name=registered)
        layer["config"] = {"name": FEATURE_LAYER, "trainable": True, "dtype": "float32", **inner}

    return edit


def _bytecode_b64(source: str) -> str:
    return base64.b64encode(marshal.dumps(compile(source, "<payload>", "exec"))).decode()


def _weights_h5(fill: Callable[[h5py.File], None]) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        fill(h5)
    return buffer.getvalue()


def _with_weights(path: Path, fill: Callable[[h5py.File], None]) -> None:
    """The honest config with a model.weights.h5 built by ``fill``."""
    entries = _archive_entries(honest_bytes(".keras"))
    entries["model.weights.h5"] = _weights_h5(fill)
    _write_archive(path, list(entries.items()))


def _huge_dataset(shape: tuple[int, ...]) -> Callable[[Any], None]:
    """A float32 dataset with this declared shape and no data written (chunked storage is
    allocated lazily, so the file stays a few KB)."""

    def fill(h5: Any) -> None:
        chunk = tuple(min(n, 64) for n in shape)
        h5.create_dataset(f"layers/{FEATURE_LAYER}/vars/0", shape=shape, dtype="f4", chunks=chunk)

    return fill


def _patch_central_directory(
    data: bytes, entry: str, *, file_size: int | None = None, grow_compressed: int = 0
) -> bytes:
    """Rewrite one entry's sizes in the zip's central directory (and the local header)."""
    out = bytearray(data)
    encoded = entry.encode()
    position = out.find(b"PK\x01\x02")
    while position >= 0:
        name_length = struct.unpack_from("<H", out, position + 28)[0]
        if bytes(out[position + 46 : position + 46 + name_length]) == encoded:
            local = struct.unpack_from("<L", out, position + 42)[0]
            if file_size is not None:
                struct.pack_into("<L", out, position + 24, file_size)
                struct.pack_into("<L", out, local + 22, file_size)
            if grow_compressed:
                size = struct.unpack_from("<L", out, position + 20)[0] + grow_compressed
                struct.pack_into("<L", out, position + 20, size)
                struct.pack_into("<L", out, local + 18, size)
            return bytes(out)
        position = out.find(b"PK\x01\x02", position + 4)
    raise KeyError(entry)


# ------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------
def build_lambda_keras(path: Path, marker: Path) -> None:
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Lambda(marker_lambda(marker), name="payload")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    model.save(path)  # Keras marshals the lambda's bytecode into config.json
    marker.unlink(missing_ok=True)  # building the model ran it once, here, on purpose


build_lambda_h5 = build_lambda_keras  # the suffix of ``path`` picks the legacy HDF5 format


def build_lambda_activation(path: Path, marker: Path) -> None:
    """No Lambda layer: the payload hides in a Dense layer's activation."""
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Lambda(marker_lambda(marker))(inputs)
    keras.Model(inputs, x).save(path)  # only to let Keras serialise the function for us
    marker.unlink(missing_ok=True)
    entries = _archive_entries(path.read_bytes())
    donor = json.loads(entries["config.json"])["config"]["layers"][1]["config"]["function"]
    code = donor["config"]["code"]
    _with_config(
        path, _set_activation({"class_name": "__lambda__", "config": {"value": [code, None, None]}})
    )


def build_lambda_h5_keras2(path: Path, marker: Path) -> None:
    """A Keras 2 (tf.keras) style Lambda in a legacy .h5: marshalled bytecode, function_type."""
    path.write_bytes(honest_bytes(".h5"))
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        layer = _layer(config, FEATURE_LAYER)
        layer["class_name"] = "Lambda"
        layer["config"] = {
            "name": FEATURE_LAYER,
            "function": [_bytecode_b64(f"open({str(marker)!r}, 'w')"), None, None],
            "function_type": "lambda",
            "module": "__main__",
            "output_shape": None,
            "output_shape_type": "raw",
            "arguments": {},
        }
        h5.attrs["model_config"] = json.dumps(config)


def build_os_system(path: Path, marker: Path) -> None:
    _with_config(
        path,
        _set_activation(
            {"module": "os", "class_name": "function", "config": "system", "registered_name": None}
        ),
    )


def build_builtins_exec(path: Path, marker: Path) -> None:
    _with_config(
        path,
        _set_activation(
            {
                "module": "builtins",
                "class_name": "function",
                "config": "exec",
                "registered_name": None,
            }
        ),
    )


def build_keras_get_file(path: Path, marker: Path) -> None:
    _with_config(
        path,
        _set_activation(
            {
                "module": "keras.utils",
                "class_name": "function",
                "config": "get_file",
                "registered_name": None,
            }
        ),
    )


def build_enable_unsafe(path: Path, marker: Path) -> None:
    _with_config(
        path,
        _set_activation(
            {
                "module": "keras.config",
                "class_name": "function",
                "config": "enable_unsafe_deserialization",
                "registered_name": None,
            }
        ),
    )


def build_custom_module(path: Path, marker: Path) -> None:
    _with_config(
        path,
        _replace_feature_layer("company_layers", "Backdoor", {}, registered="Company>Backdoor"),
    )


def build_registered_name(path: Path, marker: Path) -> None:
    def edit(config: dict) -> None:
        _layer(config, HEAD_LAYER)["registered_name"] = "evil>Payload"

    _with_config(path, edit)


def build_tfsm_layer(path: Path, marker: Path) -> None:
    _with_config(
        path,
        _replace_feature_layer(
            "keras.layers",
            "TFSMLayer",
            {"filepath": str(path.parent / "attacker_savedmodel"), "call_endpoint": "serve"},
        ),
    )


def build_vocabulary_path(path: Path, marker: Path) -> None:
    _with_config(
        path, _replace_feature_layer("keras.layers", "StringLookup", {"vocabulary": "/etc/passwd"})
    )


def build_hidden_bytecode(path: Path, marker: Path) -> None:
    def edit(config: dict) -> None:
        _layer(config, HEAD_LAYER)["config"]["notes"] = _bytecode_b64(f"open({str(marker)!r}, 'w')")

    _with_config(path, edit)


def build_layer_name_path(path: Path, marker: Path) -> None:
    def edit(config: dict) -> None:
        layer = _layer(config, FEATURE_LAYER)
        layer["name"] = layer["config"]["name"] = "../../../tmp/evil"

    _with_config(path, edit)


def build_deep_json(path: Path, marker: Path) -> None:
    def edit(config: dict) -> None:
        config["config"]["deep"] = "PLACEHOLDER"

    _with_config(path, edit)
    entries = _archive_entries(path.read_bytes())
    depth = 100_000
    entries["config.json"] = entries["config.json"].replace(
        b'"PLACEHOLDER"', b"[" * depth + b"]" * depth
    )
    _write_archive(path, list(entries.items()))


def build_zip_traversal(path: Path, marker: Path) -> None:
    _with_extra_entries(path, [("../evil.py", b"import os\n")])


def build_zip_absolute(path: Path, marker: Path) -> None:
    _with_extra_entries(path, [(zipfile.ZipInfo("/tmp/evil.py"), b"import os\n")])


def build_zip_backslash(path: Path, marker: Path) -> None:
    _with_extra_entries(path, [("assets\\..\\..\\evil.py", b"import os\n")])


def build_zip_symlink(path: Path, marker: Path) -> None:
    link = zipfile.ZipInfo("assets/vocabulary.txt")
    link.create_system = 3  # unix
    link.external_attr = (0o120777) << 16  # S_IFLNK: a symbolic link
    _with_extra_entries(path, [(link, b"/etc/passwd")])


def build_zip_duplicate(path: Path, marker: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name
        _with_extra_entries(path, [("config.json", b'{"class_name": "Lambda"}')])


def build_zip_unexpected_entry(path: Path, marker: Path) -> None:
    _with_extra_entries(path, [("payload.py", b"import os\n")])


def build_zip_many_entries(path: Path, marker: Path) -> None:
    _with_extra_entries(path, [(f"assets/{i}.txt", b"") for i in range(300)])


def build_zip_bomb_deflate(path: Path, marker: Path) -> None:
    """100 MiB of zeros deflated to about 100 KB (a real, if mild, bomb), streamed in 1 MiB
    blocks so building it costs no memory."""
    info = zipfile.ZipInfo("assets/zeros.bin")
    info.compress_type = zipfile.ZIP_DEFLATED
    block = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in _archive_entries(honest_bytes(".keras")).items():
            zf.writestr(name, data)
        with zf.open(info, "w") as member:
            for _ in range(100):
                member.write(block)


def build_zip_bomb_forged(path: Path, marker: Path) -> None:
    """config.json's directory entry declares 3.75 GiB; the archive is a few KB."""
    path.write_bytes(
        _patch_central_directory(honest_bytes(".keras"), "config.json", file_size=0xF0000000)
    )


def build_zip_overlap(path: Path, marker: Path) -> None:
    """metadata.json's stored bytes are declared to run into the next entry's header."""
    path.write_bytes(
        _patch_central_directory(honest_bytes(".keras"), "metadata.json", grow_compressed=40)
    )


def build_weights_huge(path: Path, marker: Path) -> None:
    _with_weights(path, _huge_dataset((100_000, 100_000, 100)))


def build_weights_bomb(path: Path, marker: Path) -> None:
    _with_weights(path, _huge_dataset((512, 1024, 1024)))  # 2 GiB declared, below Keras' 4 GiB


def build_weights_external_file(path: Path, marker: Path) -> None:
    def fill(h5: Any) -> None:
        h5.create_dataset(
            f"layers/{FEATURE_LAYER}/vars/0",
            shape=(64,),
            dtype="u1",
            external=[("/etc/passwd", 0, 64)],
        )

    _with_weights(path, fill)


def build_weights_external_link(path: Path, marker: Path) -> None:
    def fill(h5: Any) -> None:
        h5[f"layers/{FEATURE_LAYER}"] = h5py.ExternalLink("/etc/secrets.h5", "/")

    _with_weights(path, fill)


def build_h5_huge_weights(path: Path, marker: Path) -> None:
    path.write_bytes(honest_bytes(".h5"))
    with h5py.File(path, "r+") as h5:
        group = h5["model_weights"][FEATURE_LAYER]
        group.create_dataset("huge", shape=(100_000, 100_000, 100), dtype="f4", chunks=(64, 64, 64))


def build_png_as_keras(path: Path, marker: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def build_empty(path: Path, marker: Path) -> None:
    path.write_bytes(b"")


def build_truncated(path: Path, marker: Path) -> None:
    data = honest_bytes(".keras")
    path.write_bytes(data[: len(data) * 6 // 10])


def build_h5_as_keras(path: Path, marker: Path) -> None:
    path.write_bytes(honest_bytes(".h5"))


def build_keras_as_h5(path: Path, marker: Path) -> None:
    path.write_bytes(honest_bytes(".keras"))


def build_pickle_as_h5(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"weights": np.zeros(3)}, protocol=4))


def build_zip_without_config(path: Path, marker: Path) -> None:
    entries = _archive_entries(honest_bytes(".keras"))
    del entries["config.json"]
    _write_archive(path, list(entries.items()))


def build_honest_keras(path: Path, marker: Path) -> None:
    path.write_bytes(honest_bytes(".keras"))


# ------------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------------
CASES: tuple[HostileCase, ...] = (
    HostileCase(
        "lambda_keras",
        "a Lambda layer whose bytecode writes a file when loaded",
        "lambda.keras",
        "UnsafeModelError",
        "contains a Lambda layer",
        build_lambda_keras,
        runs_code=True,
    ),
    HostileCase(
        "lambda_h5",
        "the same Lambda layer in a legacy .h5 file (CVE-2025-9905 path)",
        "lambda.h5",
        "UnsafeModelError",
        "contains a Lambda layer",
        build_lambda_h5,
        runs_code=True,
    ),
    HostileCase(
        "lambda_h5_keras2",
        "a Keras 2 style Lambda: marshalled bytecode in model_config",
        "keras2_lambda.h5",
        "UnsafeModelError",
        "contains a Lambda layer",
        build_lambda_h5_keras2,
    ),
    HostileCase(
        "lambda_activation",
        "bytecode hidden in a Dense layer's activation, no Lambda",
        "activation.keras",
        "UnsafeModelError",
        "serialised Python lambda",
        build_lambda_activation,
        runs_code=True,
    ),
    HostileCase(
        "hidden_bytecode",
        "a marshalled code object tucked into an unused config field",
        "notes.keras",
        "UnsafeModelError",
        "serialised Python bytecode",
        build_hidden_bytecode,
    ),
    HostileCase(
        "os_system",
        "an activation naming os.system (CVE-2025-1550 style import)",
        "os_system.keras",
        "UnsafeModelError",
        "from the module 'os'",
        build_os_system,
    ),
    HostileCase(
        "builtins_exec",
        "an activation naming Python's builtins.exec",
        "builtins_exec.keras",
        "UnsafeModelError",
        "Python's builtins",
        build_builtins_exec,
    ),
    HostileCase(
        "keras_get_file",
        "keras.utils.get_file as a function (CVE-2025-8747 style)",
        "get_file.keras",
        "UnsafeModelError",
        "not an activation or tensor operation",
        build_keras_get_file,
    ),
    HostileCase(
        "enable_unsafe",
        "keras.config.enable_unsafe_deserialization (CVE-2025-9906)",
        "unsafe.keras",
        "UnsafeModelError",
        "not an activation or tensor operation",
        build_enable_unsafe,
    ),
    HostileCase(
        "custom_module",
        "a layer class from a user module (company_layers.Backdoor)",
        "custom.keras",
        "UnsafeModelError",
        "which is not part of Keras",
        build_custom_module,
    ),
    HostileCase(
        "registered_name",
        "a built-in layer redirected to a registered custom object",
        "registered.keras",
        "UnsafeModelError",
        "registered as 'evil>Payload'",
        build_registered_name,
    ),
    HostileCase(
        "tfsm_layer",
        "a TFSMLayer loading a SavedModel from disk (CVE-2026-1462)",
        "tfsm.keras",
        "UnsafeModelError",
        "contains a TFSMLayer",
        build_tfsm_layer,
    ),
    HostileCase(
        "vocabulary_path",
        "a StringLookup reading /etc/passwd (CVE-2025-12058)",
        "lookup.keras",
        "UnsafeModelError",
        "vocabulary is the path '/etc/passwd'",
        build_vocabulary_path,
    ),
    HostileCase(
        "layer_name_path",
        "a layer named ../../../tmp/evil, joined into asset paths (CVE-2026-12479)",
        "layer_name.keras",
        "UnsafeModelError",
        "a name that is a file path",
        build_layer_name_path,
    ),
    HostileCase(
        "deep_json",
        "config.json nested 100,000 levels deep (parser stack exhaustion)",
        "deep.keras",
        "UnsafeModelError",
        "nested too deeply",
        build_deep_json,
    ),
    HostileCase(
        "zip_traversal",
        "an archive entry named ../evil.py",
        "traversal.keras",
        "UnsafeModelError",
        "climbs out of the archive",
        build_zip_traversal,
    ),
    HostileCase(
        "zip_absolute",
        "an archive entry with the absolute path /tmp/evil.py",
        "absolute.keras",
        "UnsafeModelError",
        "absolute path",
        build_zip_absolute,
    ),
    HostileCase(
        "zip_backslash",
        "an entry named assets\\..\\..\\evil.py (Windows traversal)",
        "backslash.keras",
        "UnsafeModelError",
        "backslashes",
        build_zip_backslash,
    ),
    HostileCase(
        "zip_symlink",
        "a symbolic-link entry pointing at /etc/passwd",
        "symlink.keras",
        "UnsafeModelError",
        "is a symbolic link",
        build_zip_symlink,
    ),
    HostileCase(
        "zip_duplicate",
        "a second config.json that a different reader would pick",
        "duplicate.keras",
        "UnsafeModelError",
        "more than once",
        build_zip_duplicate,
    ),
    HostileCase(
        "zip_unexpected_entry",
        "an extra payload.py entry next to the model",
        "extra.keras",
        "UnsafeModelError",
        "a Keras archive holds only",
        build_zip_unexpected_entry,
    ),
    HostileCase(
        "zip_many_entries",
        "303 entries (directory-size exhaustion)",
        "many.keras",
        "UnsafeModelError",
        "declares 303 entries",
        build_zip_many_entries,
    ),
    HostileCase(
        "zip_bomb_deflate",
        "100 MiB of zeros deflated into about 100 KB",
        "bomb.keras",
        "UnsafeModelError",
        "decompression bomb",
        build_zip_bomb_deflate,
    ),
    HostileCase(
        "zip_bomb_forged",
        "a few-KB archive whose config.json declares 3.75 GiB",
        "forged.keras",
        "UnsafeModelError",
        "decompression bomb",
        build_zip_bomb_forged,
    ),
    HostileCase(
        "zip_overlap",
        "two entries sharing stored bytes (overlapping zip bomb trick)",
        "overlap.keras",
        "UnsafeModelError",
        "overlap",
        build_zip_overlap,
    ),
    HostileCase(
        "weights_huge_shape",
        "a weights array declared (100000, 100000, 100), no data",
        "huge.keras",
        "UnsafeModelError",
        "above the 4 GiB limit",
        build_weights_huge,
    ),
    HostileCase(
        "weights_bomb",
        "2 GiB of declared weights in a few-KB file (below Keras' 4 GiB)",
        "weights_bomb.keras",
        "UnsafeModelError",
        "but the file holds only",
        build_weights_bomb,
    ),
    HostileCase(
        "weights_external_file",
        "weights stored in /etc/passwd (CVE-2026-1669)",
        "external.keras",
        "UnsafeModelError",
        "external file(s) '/etc/passwd'",
        build_weights_external_file,
    ),
    HostileCase(
        "weights_external_link",
        "an HDF5 external link to another file",
        "link.keras",
        "UnsafeModelError",
        "is an external link",
        build_weights_external_link,
    ),
    HostileCase(
        "h5_huge_weights",
        "a legacy .h5 with a (100000, 100000, 100) weights array",
        "huge.h5",
        "UnsafeModelError",
        "above the 4 GiB limit",
        build_h5_huge_weights,
    ),
    HostileCase(
        "png_as_keras",
        "a PNG image renamed .keras",
        "picture.keras",
        "ModelLoadError",
        "this one is a PNG image",
        build_png_as_keras,
    ),
    HostileCase(
        "empty",
        "an empty (0-byte) .keras file",
        "empty.keras",
        "ModelLoadError",
        "is empty (0 bytes)",
        build_empty,
    ),
    HostileCase(
        "truncated",
        "the first 60% of a real .keras file",
        "truncated.keras",
        "ModelLoadError",
        "damaged or truncated",
        build_truncated,
    ),
    HostileCase(
        "h5_as_keras",
        "a legacy HDF5 model renamed .keras",
        "legacy.keras",
        "ModelLoadError",
        "rename it to .h5",
        build_h5_as_keras,
    ),
    HostileCase(
        "keras_as_h5",
        "a .keras archive renamed .h5",
        "archive.h5",
        "ModelLoadError",
        "rename it to .keras",
        build_keras_as_h5,
    ),
    HostileCase(
        "pickle_as_h5",
        "a Python pickle renamed .h5 (unpickling runs code)",
        "weights.h5",
        "ModelLoadError",
        "is a Python pickle",
        build_pickle_as_h5,
    ),
    HostileCase(
        "zip_without_config",
        "a zip archive without config.json",
        "noconfig.keras",
        "ModelLoadError",
        "has no config.json",
        build_zip_without_config,
    ),
    HostileCase(
        "too_large",
        "a file above the operator's size limit (max_bytes=10 KiB here)",
        "large.keras",
        "ModelLoadError",
        "the limit is 10 KiB",
        build_honest_keras,
        load_kwargs={"max_bytes": 10 * 1024},
    ),
)

BY_ID: dict[str, HostileCase] = {case.case_id: case for case in CASES}


def build(case: HostileCase, directory: Path) -> tuple[Path, Path]:
    """Write the case's file into ``directory``; returns (file, marker the payload would write)."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / f"{case.case_id}.MARKER"
    path = directory / case.file_name
    case.build(path, marker)
    if marker.exists():  # pragma: no cover - a builder must never leave its marker behind
        raise AssertionError(f"building {case.case_id} ran its payload")
    return path, marker
