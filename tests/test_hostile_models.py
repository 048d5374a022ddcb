"""Hostile model files are refused before Keras reads them, and their payloads never run; honest
models of every shape we know still pass."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

import explainers
from explainers.errors import ModelLoadError, ParameterError, UnsafeModelError
from explainers.io import safety

from . import hostile_files, models_zoo
from .conftest import DEMO_MODEL, SHORTCUT_MODEL

ERRORS = {"UnsafeModelError": UnsafeModelError, "ModelLoadError": ModelLoadError}
#: Cases whose refusal is a config finding that ``trust=True`` waives (everything else is
#: structural and refused whatever the operator trusts).
WAIVED_BY_TRUST = {
    "lambda_keras",
    "lambda_h5",
    "lambda_h5_keras2",
    "lambda_activation",
    "hidden_bytecode",
    "os_system",
    "builtins_exec",
    "keras_get_file",
    "enable_unsafe",
    "custom_module",
    "registered_name",
    "tfsm_layer",
    "vocabulary_path",
}
CASE_IDS = [case.case_id for case in hostile_files.CASES]


@pytest.fixture
def keras_must_not_load(monkeypatch):
    """Fail the test if Keras is asked to deserialise the file: the refusal must be ours."""
    calls: list[tuple] = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("keras.saving.load_model was called on a file that should be refused")

    monkeypatch.setattr(keras.saving, "load_model", refuse)
    return calls


@pytest.mark.parametrize("case", hostile_files.CASES, ids=CASE_IDS)
def test_hostile_file_is_refused_before_keras_and_runs_nothing(case, tmp_path, keras_must_not_load):
    path, marker = hostile_files.build(case, tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        explainers.load_model(path, **case.load_kwargs)
    assert keras_must_not_load == []
    assert type(caught.value) is ERRORS[case.error], caught.value
    message = str(caught.value)
    assert case.phrase in message
    assert repr(case.file_name) in message  # the user is told which file
    assert str(tmp_path) not in message  # and not where the server keeps it
    assert not marker.exists()


@pytest.mark.parametrize(
    "case", [c for c in hostile_files.CASES if c.runs_code], ids=lambda case: case.case_id
)
def test_the_code_payloads_are_real(case, tmp_path):
    """Without our inspection and with Keras' safe_mode off, each code payload runs (at load time
    or at the first prediction): the refusals above are not refusals of harmless files."""
    path, marker = hostile_files.build(case, tmp_path)
    model = keras.saving.load_model(path, compile=False, safe_mode=False)
    model(np.zeros((1, 16, 16, 3), np.float32))
    assert marker.exists()


def test_keras_safe_mode_alone_also_refuses_the_lambda_files(tmp_path):
    """Defence in depth, not a replacement: Keras 3.15's own safe_mode refuses these too."""
    for case_id in ("lambda_keras", "lambda_h5"):
        path, marker = hostile_files.build(hostile_files.BY_ID[case_id], tmp_path)
        with pytest.raises(ValueError, match="Lambda"):
            keras.saving.load_model(path, compile=False, safe_mode=True)
        assert not marker.exists()


def test_trust_runs_the_code_the_operator_chose_to_trust(tmp_path):
    path, marker = hostile_files.build(hostile_files.BY_ID["lambda_keras"], tmp_path)
    bundle = explainers.load_model(path, trust=True)
    assert marker.exists()  # trust means exactly this: the file's code ran
    assert bundle.n_classes == 3


@pytest.mark.parametrize("case_id", sorted(WAIVED_BY_TRUST))
def test_trust_records_the_findings_it_waives(case_id, tmp_path):
    case = hostile_files.BY_ID[case_id]
    path, marker = hostile_files.build(case, tmp_path)
    report = safety.inspect_model_file(path, trust=True)  # inspection only: nothing runs
    assert report.trusted
    assert any(case.phrase in finding for finding in report.waived), report.waived
    assert not marker.exists()


@pytest.mark.parametrize(
    "case",
    [c for c in hostile_files.CASES if c.case_id not in WAIVED_BY_TRUST],
    ids=lambda case: case.case_id,
)
def test_trust_keeps_the_structural_checks(case, tmp_path, keras_must_not_load):
    path, marker = hostile_files.build(case, tmp_path)
    with pytest.raises(ERRORS[case.error], match=re.escape(case.phrase)):
        safety.inspect_model_file(path, trust=True, **case.load_kwargs)
    assert not marker.exists()


def test_trust_from_environment():
    name = safety.TRUST_ENV_VAR
    assert name == "EXPLAINER_TRUST_MODEL_FILES"
    assert safety.trust_from_environment({}) is False  # off by default
    for value in ("1", "true", "TRUE", " yes ", "on"):
        assert safety.trust_from_environment({name: value}) is True
    for value in ("", "0", "false", "No", "off"):
        assert safety.trust_from_environment({name: value}) is False
    with pytest.raises(ParameterError, match=f"{name}='maybe'"):
        safety.trust_from_environment({name: "maybe"})


# ------------------------------------------------------------------------------------------------
# Not over-broad: honest models pass
# ------------------------------------------------------------------------------------------------
def _weight_bytes(model) -> int:
    return sum(np.asarray(w).nbytes for w in model.weights)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("name", sorted(models_zoo.ZOO))
def test_every_zoo_model_passes_and_loads(name, suffix, tmp_path):
    model = models_zoo.ZOO[name]()
    path = tmp_path / f"{name}{suffix}"
    model.save(path)
    report = safety.inspect_model_file(path)
    assert report.waived == () and not report.trusted
    assert report.file_format == suffix[1:]
    assert report.weight_arrays == len(model.weights)
    assert report.weight_bytes == _weight_bytes(model)  # declared sizes, read without the data
    assert report.keras_version == keras.__version__
    bundle = explainers.load_model(path)
    image = models_zoo.random_image(30, 30)
    np.testing.assert_allclose(
        bundle.predict(image), explainers.bundle_from_model(model).predict(image), rtol=1e-5
    )


def test_demo_models_pass(demo_bundle, shortcut_bundle):
    for path, bundle in ((DEMO_MODEL, demo_bundle), (SHORTCUT_MODEL, shortcut_bundle)):
        report = safety.inspect_model_file(path)
        assert report.entries == ("metadata.json", "config.json", "model.weights.h5")
        assert report.weight_bytes == _weight_bytes(bundle.model)
        assert "Conv2D" in report.layer_classes and report.waived == ()


def test_keras_applications_pass(tmp_path):
    """A keras.applications architecture (weights=None, kept small) alone and as the nested base of
    a transfer-learning model, in both formats."""
    base = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None)
    nested = keras.Sequential([keras.Input((96, 96, 3)), base, keras.layers.Dense(4)])
    for model, suffix in ((base, ".keras"), (base, ".h5"), (nested, ".keras")):
        path = tmp_path / f"{model.name}{suffix}"
        model.save(path)
        report = safety.inspect_model_file(path)
        assert report.waived == ()
        assert report.weight_bytes == _weight_bytes(model)
        assert {"Conv2D", "DepthwiseConv2D", "ReLU"} <= set(report.layer_classes)


def test_functional_ops_regularizers_and_wrappers_pass(tmp_path):
    """Objects that live in keras.src modules (functional-API ops, Functional itself), and the
    less common building blocks: regularizers, constraints, gelu, TimeDistributed."""
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(
        4,
        3,
        activation=keras.activations.gelu,
        kernel_regularizer=keras.regularizers.L2(1e-3),
        kernel_constraint=keras.constraints.MaxNorm(2.0),
    )(inputs)
    x = x * 2.0 + 1.0  # keras.src.ops.numpy.Multiply / Add nodes
    x = keras.ops.mean(x, axis=(1, 2))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    clips = keras.Sequential(
        [
            keras.Input((2, 12, 12, 3)),
            keras.layers.TimeDistributed(keras.layers.Conv2D(2, 3)),
            keras.layers.TimeDistributed(keras.layers.GlobalAveragePooling2D()),
            keras.layers.Bidirectional(keras.layers.LSTM(3)),
            keras.layers.Dense(2),
        ]
    )
    for built in (model, clips):
        path = tmp_path / f"{built.name}.keras"
        built.save(path)
        report = safety.inspect_model_file(path)
        assert report.waived == () and report.weight_bytes == _weight_bytes(built)
    assert {"Multiply", "Add", "Mean"} <= set(
        safety.inspect_model_file(tmp_path / f"{model.name}.keras").layer_classes
    )


def test_message_names_the_layer_and_its_place(tmp_path):
    path, _ = hostile_files.build(hostile_files.BY_ID["lambda_keras"], tmp_path)
    with pytest.raises(UnsafeModelError) as caught:
        explainers.load_model(path)
    message = str(caught.value)
    assert "'payload' (Lambda from keras.layers) at config.json config.layers[1]" in message
    assert safety.TRUST_ENV_VAR in message  # and what an operator can do about it


def test_damaged_keras_archives_only_ever_raise_model_load_error(tmp_path):
    """200 seeded random corruptions of an honest .keras file (flipped, zeroed or inserted bytes,
    truncation): each one passes or raises ModelLoadError, never anything else. (The same fuzzing
    of legacy .h5 files is not run here: libhdf5 can spin forever on some, in Keras as in the
    inspection; see docs/RELIABILITY.md.)"""
    rng = np.random.default_rng(0)
    honest = hostile_files.honest_bytes(".keras")
    outcomes = {"passed": 0, "refused": 0}
    for trial in range(200):
        data = bytearray(honest)
        kind = trial % 4
        if kind == 0:
            for position in rng.integers(0, len(data), rng.integers(1, 20)):
                data[position] = int(rng.integers(0, 256))
        elif kind == 1:
            data = data[: int(rng.integers(1, len(data)))]
        elif kind == 2:
            start = int(rng.integers(0, len(data)))
            data[start : start + 200] = bytes(len(data[start : start + 200]))
        else:
            start = int(rng.integers(0, len(data)))
            data[start:start] = rng.integers(0, 256, int(rng.integers(1, 50)), np.uint8).tobytes()
        path = tmp_path / "damaged.keras"
        path.write_bytes(bytes(data))
        try:
            safety.inspect_model_file(path)
        except ModelLoadError:
            outcomes["refused"] += 1
        else:
            outcomes["passed"] += 1
    # Observed: 180 refused, 20 passed; all 20 then load normally in Keras too.
    assert outcomes["refused"] >= 150
