"""The Training page: its reader of training runs (TensorFlow-free, cached per folder version),
what it may open (the bundled run, folders under the data root), its pictures and charts, and
the page itself driven through ``AppTest`` on a copy of the bundled run (no model, no worker:
a few seconds). Only the shortcut run is shipped; where a test needs a second run it makes one
from a copy of it (:func:`_other_run`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dashboard import audits
from dashboard import training_runs as runs
from dashboard.training_runs import EmptyRunError, Look, TrainingRunError

from .conftest import ROOT
from .dashboard_helpers import APP

BUNDLED = ROOT / "assets" / "runs"


def _copy_run(name: str, folder: Path) -> Path:
    source = BUNDLED / name
    if not (source / "manifest.json").is_file():
        pytest.skip(f"the bundled run {name} is not built")
    target = folder / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
    return target


@pytest.fixture
def assets(tmp_path) -> Path:
    """An assets folder holding a copy of the bundled run (and nothing else)."""
    folder = tmp_path / "assets"
    (folder / "runs").mkdir(parents=True)
    _copy_run("shortcut", folder / "runs")
    return folder


#: What :func:`_other_run` multiplies the marker shares of the shortcut run by.
OTHER_MARKER = 0.1


def _other_run(target: Path) -> Path:
    """A second training run in ``target``, made from the bundled shortcut run and visibly
    different: another model name, a tenth of its marker shares (in the captions and the
    attention chart) and two more metrics (a ReasonTrainer's ``penalty`` and ``lambda``, which
    draw a fourth chart)."""
    source = BUNDLED / "shortcut"
    if not (source / "manifest.json").is_file():
        pytest.skip("the bundled run shortcut is not built")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["model"]["name"] = "other"
    (target / "manifest.json").write_text(json.dumps(manifest))
    name = "grad_cam__energy_in_marker"
    for part in sorted((target / "table").glob("part-*.parquet")):
        table = pq.read_table(part)
        marker = pa.compute.multiply(table.column(name), OTHER_MARKER)
        table = table.set_column(table.schema.get_field_index(name), name, marker)
        epochs = np.asarray(table.column("epoch").to_pylist(), np.float64)
        table = table.append_column("metric__penalty", pa.array(1.0 / (1.0 + epochs)))
        table = table.append_column("metric__lambda", pa.array(np.full(len(epochs), 10.0)))
        pq.write_table(table, part)
    return target


def _table(path: Path) -> pa.Table:
    done = json.loads((path / "progress.json").read_text())["done"]
    parts = [pq.read_table(p) for p in sorted((path / "table").glob("part-*.parquet"))]
    table = pa.concat_tables(parts, promote_options="default").sort_by("index")
    return table.filter(pa.compute.less(table.column("index"), done))


# ------------------------------------------------------------------------------------------------
# Reading a run
# ------------------------------------------------------------------------------------------------
def test_a_bundled_run_reads_back_with_the_files_numbers(assets):
    path = assets / "runs" / "shortcut"
    view = runs.open_view(path)
    manifest = json.loads((path / "manifest.json").read_text())
    table = _table(path)
    n = manifest["training"]["images"]
    epochs = len(table) // n
    assert view.n_images == n == 8 and len(view.epochs) == epochs >= 2
    assert view.epochs.tolist() == table.column("epoch").to_pylist()[::n]
    assert view.model_name == "demo_shortcut"
    np.testing.assert_array_equal(view.images, np.load(path / "images.npy"))
    stored = np.load(path / "maps" / "grad_cam.npy")[: epochs * n]
    np.testing.assert_array_equal(view.maps["grad_cam"], stored.reshape(epochs, n, 32, 32))
    # Per epoch: the metrics Keras logged and the mean attention shares of the table.
    loss = np.array(table.column("metric__loss").to_pylist(), float).reshape(epochs, n)
    np.testing.assert_allclose(view.metrics["loss"], loss[:, 0])  # NaN before training
    assert set(view.metrics) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    shares = view.attention("grad_cam")
    for kind, column in (("object", "energy_in_mask"), ("marker", "energy_in_marker")):
        values = np.array(table.column(f"grad_cam__{column}").to_pylist(), float)
        np.testing.assert_allclose(shares[kind], values.reshape(epochs, n).mean(axis=1))
    # The shortcut model looks at the marker: far more than its area, far more than the object.
    assert shares["marker"][-1] > 5 * view.area("marker")
    assert shares["marker"][-1] > 3 * shares["object"][-1]
    marker = np.load(path / "masks" / "marker.npy")[:n]
    assert view.area("marker") == pytest.approx((marker.mean(axis=(1, 2)) / 255).mean())
    assert not view.still_writing


def test_reading_a_run_imports_no_tensorflow(assets):
    """The Streamlit process must never import TensorFlow (tests/test_ui_process.py): the page
    reads runs without explainers.callbacks, which imports Keras."""
    script = (
        "import sys; from dashboard import training_runs as r; "
        f"v = r.open_view({str(assets / 'runs' / 'shortcut')!r}); "
        "r.overlay(v, 'grad_cam', 0, 0, r.Look()); r.attention_figure([('a', v)], 'grad_cam', 0); "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_cache_follows_the_folders_version(assets):
    path = assets / "runs" / "shortcut"
    first = runs.open_view(path)
    assert runs.open_view(path) is first
    # The callback commits epochs by rewriting progress.json: with one epoch fewer committed the
    # run reads as still being written, and is read again.
    done = json.loads((path / "progress.json").read_text())["done"]
    (path / "progress.json").write_text(json.dumps({"done": done - first.n_images}))
    os.utime(path / "progress.json", ns=(1, 1))
    again = runs.open_view(path)
    assert again is not first
    assert len(again.epochs) == len(first.epochs) - 1 and again.still_writing
    assert again.reserved_epochs == len(first.epochs)


def test_runs_that_cannot_be_shown_say_what_to_do(assets, tmp_path):
    path = assets / "runs" / "shortcut"
    with pytest.raises(TrainingRunError, match=r"has no manifest.json.*ExplanationCallback"):
        runs.open_view(tmp_path)
    (path / "progress.json").write_text(json.dumps({"done": 0}))
    with pytest.raises(EmptyRunError, match=r"has no logged epoch yet.*Come back"):
        runs.open_view(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.pop("kind")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrainingRunError, match=r"dataset audit, not a training run.*Audit page"):
        runs.open_view(path)
    (path / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(TrainingRunError, match="not a run's"):
        runs.open_view(path)
    damaged = _other_run(tmp_path / "other")
    (damaged / "images.npy").write_bytes(b"not an array")
    with pytest.raises(TrainingRunError, match=r"cannot be read.*damaged"):
        runs.open_view(damaged)


def test_only_the_bundled_runs_and_folders_inside_the_data_root_are_offered(
    assets, tmp_path, monkeypatch
):
    assert [(c.key, c.title) for c in runs.bundled_runs(assets)] == [
        ("bundled:shortcut", runs.BUNDLED_RUNS["shortcut"][0])
    ]
    # Any other run folder under assets/runs/ is listed after the known ones, under its name.
    _other_run(assets / "runs" / "another")
    _copy_run("fixed", assets / "runs")
    (assets / "runs" / "not_a_run").mkdir()
    assert [(c.key, c.title) for c in runs.bundled_runs(assets)] == [
        ("bundled:shortcut", runs.BUNDLED_RUNS["shortcut"][0]),
        ("bundled:fixed", runs.BUNDLED_RUNS["fixed"][0]),
        ("bundled:another", "another"),
    ]
    root = tmp_path / "data"
    _other_run(root / "team" / "runs" / "other")
    audit = root / "audit"
    shutil.copytree(assets / "runs" / "shortcut", audit)
    manifest = json.loads((audit / "manifest.json").read_text())
    manifest.pop("kind")
    (audit / "manifest.json").write_text(json.dumps(manifest))
    (root / "link_out").symlink_to(assets / "runs")  # a link that leaves the root
    monkeypatch.setenv(audits.ENV_DATA_ROOT, str(root))
    found = runs.data_root_runs(root)
    assert [c.key for c in found] == ["data:team/runs/other"]
    assert runs.choice_path("data:team/runs/other", found) == (root / "team/runs/other").resolve()
    assert runs.resolve_typed("team/runs/other") == (root / "team/runs/other").resolve()
    for typed, message in (
        ("/etc", "absolute path"),
        ("../assets/runs/shortcut", "contains '..'"),
        ("link_out/shortcut", "leads outside the data root"),
        ("nothing/here", "no folder or manifest"),
        ("", "relative to the data root"),
    ):
        with pytest.raises(TrainingRunError, match=message):
            runs.resolve_typed(typed)
    monkeypatch.delenv(audits.ENV_DATA_ROOT)
    with pytest.raises(TrainingRunError, match=r"EXPLAINER_DATA_ROOT=/srv/datasets streamlit"):
        runs.resolve_typed("team/runs/other")
    with pytest.raises(TrainingRunError, match="data root"):
        runs.choice_path("data:team/runs/other", found)


def test_stepping_and_the_epoch_slot():
    assert runs.next_epoch([1, 3, 5], 1) == 3
    assert runs.next_epoch([1, 3, 5], 4) == 5
    assert runs.next_epoch([1, 3, 5], 5) is None


def test_overlays_captions_and_charts_show_the_runs_values(assets):
    view = runs.open_view(assets / "runs" / "shortcut")
    last = len(view.epochs) - 1
    plain = runs.overlay(view, "grad_cam", last, 0, Look(alpha=0.0))
    np.testing.assert_array_equal(plain, np.repeat(np.repeat(view.images[0], 2, 0), 2, 1))
    shown = runs.overlay(view, "grad_cam", last, 0, Look())
    assert shown.shape == (192, 192, 3)
    # The map is drawn: the overlay is reddest where the stored map is largest.
    values = np.asarray(view.maps["grad_cam"][last, 0], np.float32)
    hottest = np.unravel_index(np.argmax(values), values.shape)
    coldest = np.unravel_index(np.argmin(np.where(values > 0, values, np.inf)), values.shape)
    redness = shown[..., 0].astype(int) - shown[..., 2].astype(int)
    cell = 192 // values.shape[0]
    at = lambda rc: redness[rc[0] * cell + cell // 2, rc[1] * cell + cell // 2]  # noqa: E731
    assert at(hottest) > at(coldest) + 60
    # Outlining the marker paints magenta pixels where the marker is.
    outlined = runs.overlay(view, "grad_cam", last, 0, Look(outline_marker=True))
    magenta = np.all(outlined == (255, 0, 255), axis=-1)
    rows, cols = np.nonzero(magenta)
    marker = np.asarray(view.masks["marker"][0]) >= 128
    mr, mc = np.nonzero(marker)
    assert len(rows) > 0
    assert abs(rows.mean() / cell - mr.mean()) < 2 and abs(cols.mean() / cell - mc.mean()) < 2
    # A failed map (NaN) shows the image alone.
    broken = runs.TrainingView(
        **{**view.__dict__, "maps": {"grad_cam": np.full_like(view.maps["grad_cam"], np.nan)}}
    )
    broken._cache.clear()
    np.testing.assert_array_equal(runs.overlay(broken, "grad_cam", last, 0, Look()), plain)
    # The caption is the table's row of that epoch.
    label = view.columns["label_name"][last, 0]
    marker_share = view.columns["grad_cam__energy_in_marker"][last, 0]
    text = runs.caption(view, "grad_cam", last, 0)
    assert text.startswith(f"#0 {label} → {view.columns['prediction_name'][last, 0]} ")
    assert f"marker {marker_share:.0%}" in text
    # The charts: the run's numbers, epochs 1-based, the chosen epoch marked.
    figure = runs.attention_figure([("Shortcut", view)], "grad_cam", int(view.epochs[1]))
    traces = {t.name: t for t in figure.data}
    np.testing.assert_allclose(traces["on the marker"].y, view.attention("grad_cam")["marker"])
    assert list(traces["on the object"].x) == [int(e) + 1 for e in view.epochs]
    assert figure.layout.shapes[-1].x0 == int(view.epochs[1]) + 1
    loss = runs.metrics_figure([("Shortcut", view)], "loss", 0)
    assert [t.name for t in loss.data] == ["training loss", "validation loss"]
    np.testing.assert_allclose(loss.data[1].y, view.metrics["val_loss"])
    assert runs.metrics_figure([("Shortcut", view)], "other", 0) is None


# ------------------------------------------------------------------------------------------------
# The page
# ------------------------------------------------------------------------------------------------
AppTest = pytest.importorskip("streamlit.testing.v1").AppTest


@pytest.fixture
def training_app(assets, monkeypatch):
    """The app on the Training page, its assets folder holding only the shortcut run: no model
    to load, so no compute worker starts (the page needs none)."""
    monkeypatch.setenv("EXPLAINER_ASSETS_DIR", str(assets))
    monkeypatch.delenv(audits.ENV_DATA_ROOT, raising=False)
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.switch_page("app_pages/training.py")
    at.run()
    assert_clean(at)
    return at


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.main.error, [e.value for e in at.main.error]


def captions(at) -> list[str]:
    """The captions of the page's pictures, in order."""
    return [str(c) for element in at.main.image for c in element.captions]


def test_the_page_shows_a_run_moves_compares_and_plays(training_app, assets, tmp_path, monkeypatch):
    at = training_app
    view = runs.open_view(assets / "runs" / "shortcut")
    last = len(view.epochs) - 1
    assert [t.value for t in at.title] == ["Training"]
    slider = at.select_slider(key="training_epoch")
    assert slider.value == int(view.epochs[-1])
    assert slider.options == [runs.epoch_label(e) for e in view.epochs]
    assert slider.options[:2] == ["0 (before training)", "1"]
    shown = captions(at)
    # Each fixed image at the last epoch, then the first image's film strip.
    assert shown[: view.n_images] == [
        runs.caption(view, "grad_cam", last, i) for i in range(view.n_images)
    ]
    assert shown[view.n_images :][0].startswith("epoch 0 ")  # before training
    assert len(at.get("plotly_chart")) == 3  # loss, accuracy, attention

    slider.set_value(int(view.epochs[0])).run()
    assert_clean(at)
    assert captions(at)[0] == runs.caption(view, "grad_cam", 0, 0)

    # Side by side with another run, found under the data root: the same images, one row per
    # run, each with its own numbers.
    root = tmp_path / "data"
    other = runs.open_view(_other_run(root / "team" / "runs" / "other"))
    monkeypatch.setenv(audits.ENV_DATA_ROOT, str(root))
    at.run()
    compare = at.selectbox(key="training_compare")
    assert compare.options == ["No comparison", "team/runs/other (data root)"]
    compare.select("data:team/runs/other").run()
    assert_clean(at)
    shown = captions(at)
    assert shown[: view.n_images] == [
        runs.caption(view, "grad_cam", 0, i) for i in range(view.n_images)
    ]
    assert shown[view.n_images : 2 * view.n_images] == [
        runs.caption(other, "grad_cam", 0, i) for i in range(view.n_images)
    ]
    assert shown[view.n_images : 2 * view.n_images] != shown[: view.n_images]
    np.testing.assert_allclose(
        other.attention("grad_cam")["marker"], OTHER_MARKER * view.attention("grad_cam")["marker"]
    )
    options = runs.epoch_options([view, other])
    assert at.select_slider(key="training_epoch").options == [runs.epoch_label(e) for e in options]
    assert len(at.get("plotly_chart")) == 4  # and the other run's penalty and λ

    # Play: from the current epoch, one logged epoch per step, then it stops at the last.
    at.button(key="training_play").click().run()
    assert at.button(key="training_play").label == "Pause"
    assert at.session_state["training_playing"] is True

    def tick() -> None:
        at.session_state["training_last_step"] = 0.0  # the step's time has come
        at.run()
        assert_clean(at)

    tick()
    assert at.select_slider(key="training_epoch").value == options[1]
    assert at.session_state["training_playing"] is True
    assert captions(at)[0] == runs.caption(view, "grad_cam", view.slot(options[1]), 0)
    # Moved while playing (no step is due): it plays on from there.
    at.session_state["training_last_step"] = float("inf")
    at.select_slider(key="training_epoch").set_value(options[-2]).run()
    assert at.session_state["training_playing"] is True
    tick()
    assert at.select_slider(key="training_epoch").value == options[-1]
    assert captions(at)[0] == runs.caption(view, "grad_cam", view.slot(options[-1]), 0)
    assert at.session_state["training_playing"] is True  # the last epoch is on screen
    tick()  # the step after the last: it stops there
    assert at.select_slider(key="training_epoch").value == options[-1]
    assert at.session_state["training_playing"] is False
    assert at.button(key="training_play").label == "Play"
    # Play again at the last epoch starts over from the first.
    at.button(key="training_play").click().run()
    assert at.select_slider(key="training_epoch").value == options[0]
    at.button(key="training_play").click().run()  # pause
    assert at.session_state["training_playing"] is False


def test_the_page_explains_a_folder_it_cannot_show(training_app, assets, tmp_path, monkeypatch):
    at = training_app
    at.selectbox(key="training_run").select("data:?").run()
    assert "No data root is configured" in at.main.error[0].value
    root = tmp_path / "data"
    root.mkdir()
    empty = _other_run(root / "empty")
    (empty / "progress.json").write_text(json.dumps({"done": 0}))
    (root / "plain").mkdir()
    monkeypatch.setenv(audits.ENV_DATA_ROOT, str(root))
    at.run()
    for typed, message in (
        ("../assets/runs/shortcut", "contains '..'"),
        ("plain", "is not a training run: it has no manifest.json"),
    ):
        at.text_input(key="training_folder").input(typed).run()
        assert not at.exception
        assert message in at.main.error[0].value, at.main.error[0].value
        assert not at.main.image
    at.text_input(key="training_folder").input("empty").run()
    assert not at.exception and not at.main.error
    assert "has no logged epoch yet" in at.main.warning[0].value
    # The empty run is listed too (found under the data root); a real one opens.
    shutil.copytree(assets / "runs" / "shortcut", root / "team" / "shortcut")
    at.run()
    at.selectbox(key="training_run").select("data:team/shortcut").run()
    assert_clean(at)
    assert len(captions(at)) > 8


def test_the_demo_models_are_listed_honest_shortcut_fixed_then_others(tmp_path, monkeypatch):
    from dashboard import service

    (tmp_path / "models").mkdir()
    names = ("demo_fixed.keras", "demo_shortcut.keras", "another.keras", "demo_shapes.keras")
    for name in (*names, "mine.keras"):
        (tmp_path / "models" / name).write_bytes(b"")
    monkeypatch.setenv("EXPLAINER_ASSETS_DIR", str(tmp_path))
    listed = [(d.file_name, d.description) for d in service.demo_models()]
    assert listed == [
        ("demo_shapes.keras", "Shapes CNN — honest"),
        ("demo_shortcut.keras", "Shapes CNN — shortcut (cheats)"),
        ("demo_fixed.keras", "Shapes CNN — fixed (right for the right reasons)"),
        ("another.keras", "another"),
        ("mine.keras", "mine"),
    ]
    # Only the shipped demo models are described, and every one of them is shipped.
    shipped = sorted(p.name for p in (service.ASSETS_DIR / "models").glob("*.keras"))
    assert list(service.DEMO_DESCRIPTIONS) == list(service.DEMO_NOTES)
    assert sorted(service.DEMO_DESCRIPTIONS) == shipped
    assert list(service.DEMO_DESCRIPTIONS)[:3] == [
        "demo_shapes.keras",
        "demo_shortcut.keras",
        "demo_fixed.keras",
    ]
