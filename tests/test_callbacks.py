"""ExplanationCallback: maps of the current weights every epoch, no retracing, TensorBoard images,
a run folder in the audit's format, and training that never stops because of it.

Everything trains a tiny CNN (32×32 inputs, a few steps per epoch) to stay cheap."""

from __future__ import annotations

import logging

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import explainers  # noqa: E402
from explainers import callbacks  # noqa: E402
from explainers.audit import open_run  # noqa: E402
from explainers.callbacks import ExplanationCallback, open_training_run  # noqa: E402

N_IMAGES = 4


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    model.compile(
        keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 3, n)
    x[np.arange(n), 4 + 8 * y, 4:12, 0] = 1.0  # a learnable stripe per class
    return x, y


class TracingProbe(keras.callbacks.Callback):
    """Reads the explanation callback's state after it ran at each epoch end."""

    def __init__(self, explaining: ExplanationCallback) -> None:
        super().__init__()
        self.explaining = explaining
        self.tracing: list[int] = []
        self.weights: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.tracing.append(self.explaining.bundle.runner.tracing_count())
        self.weights.append([w.copy() for w in self.model.get_weights()])


def image_summaries(log_dir) -> dict[str, list[int]]:
    """tag → steps of the image summaries in the event files under ``log_dir``."""
    found: dict[str, list[int]] = {}
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    found.setdefault(value.tag, []).append(int(event.step))
    return found


def test_callback_explains_current_weights_without_retracing(tmp_path):
    x, y = data()
    model = tiny_model()
    images = np.rint(x[:N_IMAGES] * 255).astype(np.uint8)
    masks = np.zeros((N_IMAGES, 32, 32), bool)
    masks[:, 8:24, 8:24] = True
    explaining = ExplanationCallback(
        images,
        methods=("grad_cam", "vanilla_gradients"),
        log_dir=tmp_path / "logs",
        run_dir=tmp_path / "run",
        labels=y[:N_IMAGES],
        masks={"object": masks},
        preprocessing="0_1",
    )
    probe = TracingProbe(explaining)
    history = model.fit(x, y, epochs=3, batch_size=16, callbacks=[explaining, probe], verbose=0)

    # Traced on the first logged epoch, never again although the weights changed.
    assert probe.tracing[0] > 0
    assert probe.tracing == [probe.tracing[0]] * 3
    assert explaining.failures == [] and explaining.disabled is None
    assert explaining.logged_epochs == [0, 1, 2]

    run = open_training_run(tmp_path / "run")
    assert run.epochs == [0, 1, 2]
    assert run.column("epoch").tolist() == [[0] * 4, [1] * 4, [2] * 4]
    assert run.column("image").tolist() == [[0, 1, 2, 3]] * 3
    np.testing.assert_allclose(run.column("metric__loss")[:, 0], history.history["loss"])
    np.testing.assert_allclose(run.column("metric__accuracy")[:, 0], history.history["accuracy"])
    maps = run.maps("grad_cam").astype(np.float32)
    assert maps.shape == (3, N_IMAGES, 32, 32) and np.isfinite(maps).all()
    # The weights moved, so did the maps.
    assert np.abs(maps[2] - maps[0]).max() > 1e-3 * np.abs(maps).max()

    # Each epoch's map is what a fresh bundle of that epoch's weights gives (current variables,
    # not constants frozen at the first trace).
    for epoch in (0, 2):
        fresh_model = tiny_model()
        fresh_model.set_weights(probe.weights[epoch])
        fresh = explainers.bundle_from_model(fresh_model, preprocessing="0_1")
        prediction = int(run.column("prediction")[epoch, 1])
        expected = explainers.explain(fresh, images[1], "grad_cam", target=prediction)
        stored = callbacks.stored_map(expected.attribution, 32).astype(np.float32)
        np.testing.assert_allclose(maps[epoch, 1], stored, rtol=2e-2, atol=1e-3 * stored.max())

    # The audit's reader reads the same folder; masks and statistics are there.
    audit = open_run(tmp_path / "run")
    assert audit.complete and audit.done == 12 and audit.manifest["kind"] == "training"
    assert audit.masks["object"].shape == (12, 32, 32)
    share = run.column("grad_cam__energy_in_mask")
    assert np.all((share >= 0) & (share <= 1))
    assert run.column("correct").dtype == bool
    assert (run.images == images).all()

    # TensorBoard: one image summary per method and epoch (steps = Keras' epochs).
    summaries = image_summaries(tmp_path / "logs")
    assert summaries == {
        "explanations/grad_cam": [0, 1, 2],
        "explanations/vanilla_gradients": [0, 1, 2],
    }


def test_every_and_targets(tmp_path):
    x, y = data()
    model = tiny_model(1)
    explaining = ExplanationCallback(
        x[:2], targets=[2, 0], every=2, run_dir=tmp_path / "run", preprocessing="0_1"
    )
    model.fit(x, y, epochs=5, batch_size=24, callbacks=[explaining], verbose=0)
    # Epochs 1 and 3 (every second), and the last one (4).
    assert explaining.logged_epochs == [1, 3, 4]
    run = open_training_run(tmp_path / "run")
    assert run.column("target").tolist() == [[2, 0]] * 3
    assert run.manifest["target"] == "given"
    assert len(explaining.epoch_seconds) == 3


def test_a_failing_method_is_logged_and_skipped(tmp_path, monkeypatch, caplog):
    x, y = data()
    model = tiny_model(2)
    real = callbacks.explain
    calls = {"n": 0}

    def flaky(bundle, image, method, **kwargs):
        if method == "vanilla_gradients":
            calls["n"] += 1
            if calls["n"] > 2:  # fails from the second epoch on
                raise RuntimeError("boom")
        return real(bundle, image, method, **kwargs)

    monkeypatch.setattr(callbacks, "explain", flaky)
    explaining = ExplanationCallback(
        x[:2],
        methods=("grad_cam", "vanilla_gradients", "cam_does_not_exist"),
        run_dir=tmp_path / "run",
        preprocessing="0_1",
    )
    with caplog.at_level(logging.WARNING, logger="explainers.callbacks"):
        history = model.fit(x, y, epochs=3, batch_size=24, callbacks=[explaining], verbose=0)
    assert len(history.history["loss"]) == 3  # training ran to the end
    assert explaining.disabled is None
    assert explaining.failures[0][:2] == (-1, "cam_does_not_exist")
    assert [f[:2] for f in explaining.failures[1:]] == [(1, "vanilla_gradients")] * 2 + [
        (2, "vanilla_gradients")
    ] * 2
    assert "boom" in caplog.text and "cam_does_not_exist" in caplog.text
    run = open_training_run(tmp_path / "run")
    errors = run.column("error")
    assert errors[0].tolist() == [None, None]
    assert errors[1].tolist() == ["vanilla_gradients: RuntimeError: boom"] * 2
    maps = run.maps("vanilla_gradients")
    assert np.isfinite(maps[0]).all() and np.isnan(maps[1:]).all()
    assert np.isfinite(run.maps("grad_cam")).all()  # the other method went on


def test_a_broken_callback_never_stops_training(tmp_path, caplog):
    x, y = data()
    model = tiny_model(3)
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    explaining = ExplanationCallback(x[:2], run_dir=blocked, preprocessing="0_1")
    with caplog.at_level(logging.ERROR, logger="explainers.callbacks"):
        history = model.fit(x, y, epochs=2, batch_size=24, callbacks=[explaining], verbose=0)
    assert len(history.history["loss"]) == 2
    assert "is a file" in explaining.disabled
    assert "switched off" in caplog.text
    assert explaining.logged_epochs == []


def test_bad_arguments_are_refused_up_front():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(explainers.ParameterError, match="every"):
        ExplanationCallback(images, every=0)
    with pytest.raises(explainers.ParameterError, match="targets has 3 entries"):
        ExplanationCallback(images, targets=[0, 1, 2])
    with pytest.raises(explainers.ParameterError, match="unknown mask"):
        ExplanationCallback(images, masks={"shadow": np.zeros((2, 32, 32), bool)})


def test_before_training_logs_the_untrained_model_first(tmp_path):
    x, y = data()
    model = tiny_model(2)
    initial = [w.copy() for w in model.get_weights()]
    explaining = ExplanationCallback(
        x[:2],
        run_dir=tmp_path / "run",
        log_dir=tmp_path / "logs",
        preprocessing="0_1",
        before_training=True,
    )
    model.fit(x, y, epochs=2, batch_size=24, callbacks=[explaining], verbose=0)
    assert explaining.logged_epochs == [callbacks.BEFORE_TRAINING, 0, 1] == [-1, 0, 1]
    run = open_training_run(tmp_path / "run")
    assert run.audit.complete and run.epochs == [-1, 0, 1]
    loss = run.column("metric__loss").astype(float)
    assert np.isnan(loss[0]).all() and np.isfinite(loss[1:]).all()  # no metrics before training
    # The first log is the untrained model's: explain() on the initial weights.
    untrained = tiny_model(2)
    untrained.set_weights(initial)
    bundle = explainers.bundle_from_model(untrained, preprocessing="0_1")
    prediction = int(run.column("prediction")[0, 0])
    expected = explainers.explain(bundle, explaining.images[0], "grad_cam", target=prediction)
    stored = callbacks.stored_map(expected.attribution, 32).astype(np.float32)
    first = run.maps("grad_cam")[0, 0].astype(np.float32)
    np.testing.assert_allclose(first, stored, rtol=2e-2, atol=1e-3 * max(stored.max(), 1e-12))
    assert image_summaries(tmp_path / "logs") == {"explanations/grad_cam": [-1, 0, 1]}


def test_the_shipped_story_runs():
    """assets/runs/shortcut and assets/runs/fixed (assets/make_demo_models.py): Grad-CAM on the
    same 8 shortcut images before training and after every epoch. The shortcut model's attention
    goes to the marker within its first epoch and stays there; the fixed model's (trained with
    Right for the Right Reasons on the same images) ends on the shapes. Each run's metrics are
    the ones demo_models.json recorded for that training."""
    import json

    from .conftest import ROOT

    report = json.loads((ROOT / "assets" / "models" / "demo_models.json").read_text())
    runs = {
        name: open_training_run(ROOT / "assets" / "runs" / name) for name in ("shortcut", "fixed")
    }
    for name, run in runs.items():
        logged = report["training"][f"demo_{name}"]
        epochs = logged["epochs"]
        assert run.audit.complete and run.epochs == list(range(-1, epochs))
        assert run.maps("grad_cam").shape == (epochs + 1, 8, 32, 32)
        assert (run.images == runs["shortcut"].images).all()  # the same fixed images
        val = run.column("metric__val_accuracy").astype(float)
        assert np.isnan(val[0]).all()  # before training: no metrics yet
        np.testing.assert_allclose(val[1:, 0], logged["val_accuracy_per_epoch"], atol=1e-4)
    area = runs["shortcut"].audit.masks["marker"][:8].astype(float).sum() / (255.0 * 8 * 32 * 32)
    marker = {n: r.column("grad_cam__energy_in_marker").astype(float) for n, r in runs.items()}
    shape = {n: r.column("grad_cam__energy_in_mask").astype(float) for n, r in runs.items()}
    # Shortcut: after the first epoch every image's map is on the marker, not the shape.
    assert (marker["shortcut"][1:] > 10 * area).all()
    assert (marker["shortcut"][1:] > shape["shortcut"][1:]).all()
    assert marker["shortcut"][1].mean() > 3 * marker["shortcut"][0].mean()  # it formed
    # Fixed: at the end every image's map is on the shape, not the marker.
    assert (shape["fixed"][-1] > marker["fixed"][-1]).all()
    assert marker["fixed"][-1].mean() < 2 * area
    assert runs["fixed"].column("correct")[-1].all()
