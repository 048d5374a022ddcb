"""The streaming, resumable dataset audit (``explainers.audit``: datasets, the run folder, the
run): bad images are error rows, the stored table and maps are what ``explain()`` gives, a run
killed with SIGKILL resumes to exactly an uninterrupted run's results, and settings that differ
from a run folder's are refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from explainers.audit import datasets as audit_datasets
from explainers.audit import run as audit_run
from explainers.audit.datasets import demo_dataset, image_folder, manifest_dataset
from explainers.audit.run import map_statistics, run_audit
from explainers.audit.store import BASE_COLUMNS, METHOD_COLUMNS, open_run, table_schema
from explainers.errors import ParameterError
from explainers.io.demo_data import CLASS_NAMES, generate_dataset

from .bad_images import BY_ID
from .conftest import DEMO_LABELS, DEMO_MODEL, ROOT

BAD_FILES = {  # file name in circle/ → the case of tests/bad_images.py it holds
    "corrupt.png": "corrupt_png",
    "empty.png": "zero_byte",
    "notes.png": "not_an_image",
    "truncated.png": "truncated_png",
}


def _columns(methods):
    return [*BASE_COLUMNS, *(f"{m}__{s}" for m in methods for s in METHOD_COLUMNS)]


def _image_folder(root, n=8, seed=5):
    """``n`` demo shapes as PNGs in class folders, the bad files of BAD_FILES in circle/, and two
    files the scan skips."""
    data = generate_dataset(n, seed)
    for i, (image, label) in enumerate(zip(data["images"], data["labels"], strict=True)):
        folder = root / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"shape_{i:02d}.png")
    for name, case in BAD_FILES.items():
        (root / "circle" / name).write_bytes(BY_ID[case].build())
    (root / "README.txt").write_text("not in a class folder")
    (root / "circle" / "labels.csv").write_text("not an image extension")
    return data


def _comparable(table):
    """A run table without its timings, as plain Python values."""
    return table.drop_columns(
        [c for c in table.column_names if c.endswith("__seconds")]
    ).to_pylist()


def test_a_folder_with_bad_images_completes_with_error_rows(tmp_path, demo_bundle):
    _image_folder(tmp_path / "images")
    dataset = image_folder(tmp_path / "images")
    assert len(dataset) == 12 and len(dataset.skipped) == 2
    assert dataset.class_names == ("circle", "square", "star", "triangle")  # sorted folders
    messages = []
    methods = ("grad_cam", "vanilla_gradients")
    summary = run_audit(
        demo_bundle,
        dataset,
        tmp_path / "run",
        methods=methods,
        chunk_size=5,
        progress=lambda fraction, message: messages.append((fraction, message)),
    )
    assert (summary.total, summary.done, summary.computed, summary.errors) == (12, 12, 12, 4)
    assert messages[-1] == (1.0, "committed 12/12 images")
    assert any("images/s" in m and "left" in m for _, m in messages)

    run = open_run(tmp_path / "run")
    assert run.complete and run.table.column_names == _columns(methods)
    assert run.table.schema == table_schema(methods)
    parts = sorted(p.name for p in (tmp_path / "run" / "table").iterdir())
    assert parts == ["part-00000000.parquet", "part-00000005.parquet", "part-00000010.parquet"]
    rows = run.table.to_pylist()
    assert [r["index"] for r in rows] == list(range(12))

    by_name = {r["id"].split("/")[-1]: r for r in rows}
    for name, case in BAD_FILES.items():
        row = by_name[name]
        assert BY_ID[case].refused in row["error"], row["error"]
        assert row["prediction"] is None and row[f"{methods[0]}__entropy"] is None
        assert np.isnan(run.maps["grad_cam"][row["index"]].astype(np.float32)).all()
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 8
    for row in good:
        # Folder class indices (sorted names) are mapped to the model's by name.
        assert row["label_name"] == row["id"].split("/")[0]
        assert row["label"] == CLASS_NAMES.index(row["label_name"])
        assert row["prediction_name"] == CLASS_NAMES[row["prediction"]]
        assert 0 < row["label_probability"] <= row["probability"] <= 1
        assert row["correct"] == (row["prediction"] == row["label"])
        assert (row["height"], row["width"], row["has_mask"], row["has_marker"]) == (
            96,
            96,
            False,
            False,
        )
        for method in methods:
            assert 0 <= row[f"{method}__peak_row"] <= 1 and 0 <= row[f"{method}__entropy"] <= 1
            assert row[f"{method}__energy_in_mask"] is None  # a folder has no masks
            assert row[f"{method}__seconds"] > 0
            assert np.isfinite(run.maps[method][row["index"]].astype(np.float32)).all()
    for method in methods:
        assert run.maps[method].shape == (12, 32, 32) and run.maps[method].dtype == np.float16
        assert not run.maps[method].flags.writeable
    assert run.masks == {}

    manifest = run.manifest
    assert manifest["model"]["sha256"] == demo_bundle.sha256
    assert manifest["dataset"]["kind"] == "folder" and manifest["dataset"]["count"] == 12
    assert manifest["dataset"]["skipped"] == 2
    assert manifest["dataset"]["fingerprint"] == dataset.fingerprint()
    assert manifest["methods"]["grad_cam"]["layer"] == demo_bundle.default_layer
    assert manifest["map_size"] == 32 and set(manifest["versions"]) >= {
        "explainers",
        "tensorflow",
        "keras",
        "numpy",
        "pyarrow",
    }

    # The stored map is explain()'s map, area-resized to 32×32, in float16.
    import explainers
    from explainers.core.maps import resize_map

    row = good[0]
    image = explainers.load_image(row["path"])
    result = explainers.explain(demo_bundle, image, "grad_cam", target=row["prediction"])
    expected = resize_map(result.attribution, (32, 32)).astype(np.float16)
    np.testing.assert_allclose(
        run.maps["grad_cam"][row["index"]].astype(np.float32),
        expected.astype(np.float32),
        rtol=2**-10,
        atol=1e-6 * float(np.abs(expected).max()),
    )
    stats = map_statistics(result.attribution)
    for key, value in stats.items():
        assert row[f"grad_cam__{key}"] == pytest.approx(value, rel=1e-5), key


# ------------------------------------------------------------------------------------------------
# Resuming
# ------------------------------------------------------------------------------------------------
DRIVER = """
import json, os, signal, sys
from pathlib import Path
from explainers.audit import demo_dataset, run_audit

out = Path(sys.argv[1])

def progress(fraction, message):
    state = out / "progress.json"
    done = json.loads(state.read_text())["done"] if state.exists() else 0
    # Two chunks of 8 committed and three images of the third computed: die mid-chunk.
    if done >= 16 and round(fraction * 24) >= 19:
        os.kill(os.getpid(), signal.SIGKILL)

run_audit({model!r}, demo_dataset("shortcut_half", 24, seed=1), out, methods=["grad_cam"],
          chunk_size=8, progress=progress, labels={labels!r})
sys.exit(3)  # never reached: the callback kills the process
"""


def _assert_same_run(left, right):
    a, b = open_run(left), open_run(right)
    assert a.done == b.done == a.total
    assert _comparable(a.table) == _comparable(b.table)
    assert a.maps.keys() == b.maps.keys() and a.masks.keys() == b.masks.keys()
    for name in a.maps:
        np.testing.assert_array_equal(a.maps[name], b.maps[name])
    for kind in a.masks:
        np.testing.assert_array_equal(a.masks[kind], b.masks[kind])


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path, demo_bundle):
    killed = tmp_path / "killed"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(model=str(DEMO_MODEL), labels=str(DEMO_LABELS)))
    process = subprocess.run(
        [sys.executable, str(script), str(killed)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        # This checkout's library, whatever an editable install points at.
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)},
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    assert json.loads((killed / "progress.json").read_text()) == {"done": 16}
    partial = open_run(killed)  # a killed run reads back as its committed rows
    assert partial.done == 16 and not partial.complete and partial.table.num_rows == 16
    assert partial.maps["grad_cam"].shape == (16, 32, 32)

    dataset = demo_dataset("shortcut_half", 24, seed=1)
    summary = run_audit(demo_bundle, dataset, killed, methods=["grad_cam"], chunk_size=8)
    assert (summary.resumed_from, summary.computed, summary.done) == (16, 8, 24)
    whole = tmp_path / "whole"
    run_audit(demo_bundle, dataset, whole, methods=["grad_cam"], chunk_size=8)
    _assert_same_run(killed, whole)
    # Resuming a complete run computes nothing.
    again = run_audit(demo_bundle, dataset, whole, methods=["grad_cam"], chunk_size=8)
    assert (again.computed, again.done) == (0, 24)


def test_a_chunk_written_but_not_committed_is_redone(tmp_path, demo_bundle):
    """The window between a chunk's part and progress.json: a kill there leaves a part and
    memmap rows past ``done``; resuming deletes the part and overwrites the rows."""
    dataset = demo_dataset("shortcut_half", 12, seed=2)
    whole = tmp_path / "whole"
    run_audit(demo_bundle, dataset, whole, methods=["grad_cam"], chunk_size=4)
    crashed = tmp_path / "crashed"
    shutil.copytree(whole, crashed)
    (crashed / "progress.json").write_text(json.dumps({"done": 4}))
    maps = np.load(crashed / "maps" / "grad_cam.npy", mmap_mode="r+")
    maps[4:] = 7.0  # garbage in the uncommitted rows
    maps.flush()
    del maps
    (crashed / "table" / ".part-00000008.parquet.1.tmp").write_bytes(b"half a file")
    summary = run_audit(demo_bundle, dataset, crashed, methods=["grad_cam"], chunk_size=4)
    assert (summary.resumed_from, summary.computed) == (4, 8)
    assert not (crashed / "table" / ".part-00000008.parquet.1.tmp").exists()
    _assert_same_run(crashed, whole)


def test_resuming_with_other_settings_is_refused(tmp_path, demo_bundle, shortcut_bundle):
    dataset = demo_dataset("honest", 4, seed=0)
    out = tmp_path / "run"
    run_audit(demo_bundle, dataset, out, methods=["grad_cam"], chunk_size=4)
    cases = [
        (dict(map_size=16), "map size"),
        (dict(params={"grad_cam": {"relu": False}}), "settings of grad_cam"),
        (dict(methods=["grad_cam", "vanilla_gradients"]), "the methods"),
        (dict(dataset=demo_dataset("honest", 4, seed=1)), "the dataset"),
        (dict(model=shortcut_bundle), "the model"),
    ]
    for change, phrase in cases:
        arguments = dict(model=demo_bundle, dataset=dataset, methods=["grad_cam"]) | change
        with pytest.raises(ParameterError, match=phrase) as caught:
            run_audit(out=out, **arguments)
        assert "choose another folder" in str(caught.value)
    # resume=False replaces the run.
    summary = run_audit(demo_bundle, dataset, out, methods=["grad_cam"], map_size=8, resume=False)
    assert summary.computed == 4 and open_run(out).maps["grad_cam"].shape == (4, 8, 8)
    # A folder that holds something else is never written to.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ParameterError, match="holds no audit run"):
        run_audit(demo_bundle, dataset, tmp_path / "other")


def test_a_failing_method_is_an_error_row(tmp_path, demo_bundle, monkeypatch):
    real = audit_run.explain

    def flaky(bundle, image, method, **kwargs):
        if method == "vanilla_gradients" and image[0, 0, 0] % 2 == 0:
            raise RuntimeError("boom")
        return real(bundle, image, method, **kwargs)

    monkeypatch.setattr(audit_run, "explain", flaky)
    dataset = demo_dataset("honest", 6, seed=0)
    run_audit(demo_bundle, dataset, tmp_path / "run", methods=["grad_cam", "vanilla_gradients"])
    run = open_run(tmp_path / "run")
    failed = [r for r in run.table.to_pylist() if r["error"] is not None]
    assert failed, "the test needs at least one image to fail"
    for row in failed:
        assert row["error"] == "vanilla_gradients: RuntimeError: boom"
        assert row["prediction"] is not None and row["grad_cam__entropy"] is not None
        assert row["vanilla_gradients__entropy"] is None
        assert np.isnan(run.maps["vanilla_gradients"][row["index"]].astype(np.float32)).all()
        assert np.isfinite(run.maps["grad_cam"][row["index"]].astype(np.float32)).all()


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------
def test_a_manifest_without_a_column_is_refused(tmp_path):
    (tmp_path / "m.csv").write_text("path,class\na.png,circle\n")
    with pytest.raises(ParameterError, match="no 'label' column"):
        manifest_dataset(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("file,label\na.png,circle\n")
    with pytest.raises(ParameterError, match="no 'path' column"):
        manifest_dataset(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("path,label\na.png,circle\n,square\n")
    with pytest.raises(ParameterError, match=r"row 2 .* empty path"):
        manifest_dataset(tmp_path / "m.csv")
    pq.write_table(pa.table({"path": ["a.png"], "mask": ["m.png"]}), tmp_path / "m.parquet")
    with pytest.raises(ParameterError, match="no 'label' column"):
        manifest_dataset(tmp_path / "m.parquet")


def test_a_parquet_manifest_with_masks_runs(tmp_path, demo_bundle):
    data = generate_dataset(4, 9)
    rows = []
    for i in range(4):
        Image.fromarray(data["images"][i]).save(tmp_path / f"img{i}.png")
        Image.fromarray(data["masks"][i].astype(np.uint8) * 255).save(tmp_path / f"mask{i}.png")
        rows.append((f"img{i}.png", CLASS_NAMES[data["labels"][i]], f"mask{i}.png"))
    rows[3] = (rows[3][0], rows[3][1], "")  # an image without a mask
    path, label, mask = (list(c) for c in zip(*rows, strict=True))
    pq.write_table(pa.table({"path": path, "label": label, "mask_path": mask}), tmp_path / "m.pq")
    dataset = manifest_dataset(tmp_path / "m.pq")
    assert dataset.has_object_masks and dataset[3].mask_path is None
    run_audit(demo_bundle, dataset, tmp_path / "run", methods=["grad_cam"])
    run = open_run(tmp_path / "run")
    table = run.table.to_pylist()
    assert [r["label"] for r in table] == data["labels"].tolist()
    assert [r["has_mask"] for r in table] == [True, True, True, False]
    assert all(r["grad_cam__energy_in_mask"] is not None for r in table[:3])
    assert table[3]["grad_cam__energy_in_mask"] is None
    assert run.masks.keys() == {"object"} and run.masks["object"].dtype == np.uint8
    share = run.masks["object"][0].astype(np.float64).sum() / 255 / 32**2
    assert share == pytest.approx(data["masks"][0].mean(), abs=0.002)  # area shares
    assert not run.masks["object"][3].any()


def test_demo_shortcut_half_has_markers_on_exactly_half():
    dataset = demo_dataset("shortcut_half", 48, seed=0)
    assert dataset.has_marker_masks and int(dataset.markers.sum()) == 24
    read = [dataset.read_item(i) for i in range(len(dataset))]
    marked = [marker.any() for _, _, marker in read]
    assert marked == dataset.markers.tolist()
    labels = np.array([item.label for item in dataset])
    for label in range(len(CLASS_NAMES)):  # about half of each class
        assert abs(int(dataset.markers[labels == label].sum()) - (labels == label).sum() / 2) <= 1
    # The images generate_dataset draws: the shortcut variant (shape agreement 1) where marked,
    # the same images without the marker elsewhere; the label is the drawn shape's class.
    shortcut = generate_dataset(48, 0, variant="shortcut", shape_agreement=1.0)
    plain = generate_dataset(48, 0, marker=False)
    np.testing.assert_array_equal(labels, shortcut["shape_labels"])
    for i, (image, mask, marker) in enumerate(read):
        source = shortcut if dataset.markers[i] else plain
        np.testing.assert_array_equal(image, source["images"][i])
        np.testing.assert_array_equal(mask, source["masks"][i])
        np.testing.assert_array_equal(marker, source["marker_masks"][i])
    honest = demo_dataset("honest", 48, seed=0)
    assert not honest.has_marker_masks and honest.read_item(5)[2] is None
    np.testing.assert_array_equal(honest.read_item(5)[0], plain["images"][5])
    prints = {d.fingerprint() for d in (dataset, honest, demo_dataset("honest", 48, seed=1))}
    assert len(prints) == 3 and demo_dataset("honest", 48, seed=0).fingerprint() in prints


def test_map_statistics_on_known_maps():
    point = np.zeros((10, 20))
    point[2, 5] = 3.0
    point[7, 7] = -9.0  # negative values carry no mass
    stats = map_statistics(point, point > 0, np.zeros((10, 20), bool))
    assert (stats["peak_row"], stats["peak_col"]) == (0.25, 0.275)
    assert stats["entropy"] == 0.0 and stats["spread"] == 0.0
    assert stats["energy_in_mask"] == 1.0 and stats["energy_in_marker"] is None  # empty mask
    uniform = map_statistics(np.ones((16, 16)))
    assert uniform["entropy"] == pytest.approx(1.0) and 0.3 < uniform["spread"] < 0.45
    assert all(v is None for v in map_statistics(-np.ones((4, 4))).values())


def test_the_dataset_module_needs_no_tensorflow():
    code = (
        "import sys, explainers.audit.datasets, explainers.audit.store; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    assert {".png", ".jpg"} <= audit_datasets.IMAGE_SUFFIXES


def test_a_folder_listing_is_sorted_and_deterministic(tmp_path):
    for name in ("b", "a"):
        (tmp_path / "dog" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "dog" / name / "x.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "dog" / "c.PNG")
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / ".hidden.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "z.jpg")
    dataset = image_folder(tmp_path)
    assert [item.id for item in dataset] == ["cat/z.jpg", "dog/a/x.png", "dog/b/x.png", "dog/c.PNG"]
    assert [item.label for item in dataset] == [0, 1, 1, 1]
    assert [reason for _, reason in dataset.skipped] == ["hidden"]
    assert image_folder(tmp_path).fingerprint() == dataset.fingerprint()
    os.utime(tmp_path / "cat" / "z.jpg", ns=(0, 0))
    assert image_folder(tmp_path).fingerprint() != dataset.fingerprint()


# ------------------------------------------------------------------------------------------------
# Batched passes
# ------------------------------------------------------------------------------------------------
#: (model, methods): the zoo's tiny models cover a softmax head, a sigmoid unit and nesting.
BATCHED_CASES = [
    ("shortcut", ("grad_cam", "grad_cam_plus_plus", "layer_cam", "cam")),
    ("functional_softmax", ("grad_cam", "cam")),
    ("binary_sigmoid", ("grad_cam", "cam")),
    ("nested_base", ("grad_cam",)),
]


@pytest.mark.parametrize(("model", "methods"), BATCHED_CASES, ids=[c[0] for c in BATCHED_CASES])
def test_batched_maps_equal_explain_per_image(model, methods, shortcut_bundle, zoo_bundles):
    import explainers
    from explainers.audit.batched import explain_batch

    from .models_zoo import random_image

    bundle = shortcut_bundle if model == "shortcut" else zoo_bundles[model]
    if model == "shortcut":
        data = demo_dataset("shortcut_half", 8, seed=3)
        images = [data.read_item(i)[0] for i in range(8)]
    else:
        images = [random_image(30 + i, 20 + 2 * i, seed=i) for i in range(8)]  # any size
    x = np.stack([bundle.model_input(image)[0] for image in images])
    for method in methods:
        layer = bundle.default_layer
        traced = bundle.runner.tracing_count()
        whole = explain_batch(bundle, x, method, layer, {"relu": True})
        part = explain_batch(bundle, x[2:5], method, layer, {"relu": True})  # another size
        assert bundle.runner.tracing_count() - traced <= 1  # one graph for every batch size
        np.testing.assert_allclose(part.maps, whole.maps[2:5], rtol=1e-5, atol=1e-7)
        for i, image in enumerate(images[:4]):
            probs = bundle.predict(image)
            assert whole.targets[i] == int(np.argmax(probs))
            np.testing.assert_allclose(whole.probs[i], probs, rtol=1e-5, atol=1e-7)
            expected = explainers.explain(bundle, image, method, target=int(whole.targets[i]))
            scale = float(np.abs(expected.model_attribution).max())
            np.testing.assert_allclose(
                whole.maps[i], expected.model_attribution, rtol=1e-5, atol=1e-6 * scale
            )
        # Given targets (another method of the same run) explain those classes.
        other = (whole.targets + 1) % bundle.n_classes
        given = explain_batch(bundle, x[:3], method, layer, {"relu": False}, targets=other[:3])
        assert list(given.targets) == list(other[:3])
        expected = explainers.explain(bundle, images[0], method, target=int(other[0]), relu=False)
        scale = float(np.abs(expected.model_attribution).max())
        np.testing.assert_allclose(
            given.maps[0], expected.model_attribution, rtol=1e-5, atol=1e-6 * scale
        )


def test_batch_size_does_not_change_the_run(tmp_path, shortcut_bundle):
    dataset = demo_dataset("shortcut_half", 10, seed=4)
    run_audit(shortcut_bundle, dataset, tmp_path / "a", chunk_size=10, batch_size=10)
    run_audit(shortcut_bundle, dataset, tmp_path / "b", chunk_size=10, batch_size=3)
    _assert_same_run(tmp_path / "a", tmp_path / "b")
    manifest = open_run(tmp_path / "a").manifest
    assert "batch_size" not in json.dumps(manifest)
    with pytest.raises(ParameterError, match="batch_size must be at least 1"):
        run_audit(shortcut_bundle, dataset, tmp_path / "c", batch_size=0)


def test_non_finite_rows_of_a_batch_are_error_rows(tmp_path, shortcut_bundle, monkeypatch):
    """A row whose output is NaN, a row whose map is not finite, and a batched pass that raises:
    each stays its own row's error (or is redone image by image), the others are unchanged."""
    from explainers.audit import batched

    dataset = demo_dataset("shortcut_half", 6, seed=5)
    clean = tmp_path / "clean"
    run_audit(shortcut_bundle, dataset, clean, chunk_size=6)
    real = batched.explain_batch
    calls = []

    def broken(bundle, x, method, layer, params, targets=None):
        calls.append(len(x))
        if len(calls) == 2:
            raise RuntimeError("the whole batch failed")
        result = real(bundle, x, method, layer, params, targets)
        result.probs[1] = np.nan
        result.maps[2] = np.inf
        return result

    monkeypatch.setattr(audit_run, "explain_batch", broken)
    out = tmp_path / "broken"
    run_audit(shortcut_bundle, dataset, out, chunk_size=6, batch_size=3)
    assert calls == [3, 3]
    rows, expected = open_run(out).table.to_pylist(), open_run(clean).table.to_pylist()
    maps, expected_maps = open_run(out).maps["grad_cam"], open_run(clean).maps["grad_cam"]
    assert rows[1]["error"] == audit_run.NOT_A_NUMBER and rows[1]["prediction"] is None
    assert (
        rows[2]["error"] == "grad_cam: Grad-CAM produced non-finite values for this model and image"
    )
    assert (
        rows[2]["prediction"] == expected[2]["prediction"] and rows[2]["grad_cam__entropy"] is None
    )
    assert np.isnan(maps[1].astype(np.float32)).all() and np.isnan(maps[2].astype(np.float32)).all()
    for i in (0, 3, 4, 5):  # 3..5: the failed pass, redone one image at a time
        assert rows[i]["error"] is None and rows[i]["prediction"] == expected[i]["prediction"]
        assert rows[i]["probability"] == pytest.approx(expected[i]["probability"], rel=1e-5)
        np.testing.assert_allclose(
            maps[i].astype(np.float32), expected_maps[i].astype(np.float32), rtol=2e-3, atol=1e-6
        )
