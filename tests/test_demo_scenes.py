"""Scenes of several shapes (explainers.io.demo_data.generate_scene) and the two demo models
trained on them: demo_segmentation.keras (per-pixel classes) and demo_multilabel.keras (the
classes present), against the ground truth the generator carries."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from explainers.io.demo_data import (
    CLASS_NAMES,
    SEGMENTATION_CLASS_NAMES,
    SceneSample,
    generate_scene,
    generate_scene_dataset,
)

from .conftest import ROOT

MODELS = ROOT / "assets" / "models"
SAMPLES = ROOT / "assets" / "samples"
# A seed never used for training, validation, testing or samples by assets/make_demo_models.py.
FRESH_SEED = 20_261_128
N_FRESH = 200
# What assets/make_demo_models.py measured on 1,000 test scenes (demo_models.json, "tasks"), less
# a margin for a smaller, different sample: mean IoU of the 4 shape classes 0.954 (0.952 on these
# 200 scenes; star, the lowest, 0.909 and 0.902) less 0.1, and macro mean average precision 0.9965
# (0.998 here) less 0.05.
MIN_MEAN_IOU_SHAPES = 0.85
MIN_SHAPE_IOU = 0.8
MIN_MAP = 0.94


def assert_consistent(scene: SceneSample, size: int = 96) -> None:
    assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
    assert scene.label_map.shape == (size, size) and scene.label_map.dtype == np.uint8
    assert len(scene.shape_masks) == len(scene.shape_labels)
    assert len(set(scene.shape_labels)) == len(scene.shape_labels)  # distinct classes
    expected = np.zeros((size, size), dtype=np.uint8)
    covered = np.zeros((size, size), dtype=int)
    for mask, label in zip(scene.shape_masks, scene.shape_labels, strict=True):
        assert mask.shape == (size, size) and mask.dtype == bool
        assert mask.sum() > 0
        assert 0 <= label < len(CLASS_NAMES)
        covered += mask
        expected[mask] = label + 1
    assert covered.max() <= 1  # the masks are disjoint
    np.testing.assert_array_equal(scene.label_map, expected)
    multi_hot = np.zeros(len(CLASS_NAMES), dtype=np.float32)
    multi_hot[scene.shape_labels] = 1.0
    assert scene.multi_hot.dtype == np.float32
    np.testing.assert_array_equal(scene.multi_hot, multi_hot)


def test_scenes_are_consistent():
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(60):
        scene = generate_scene(rng)
        assert_consistent(scene)
        counts.append(len(scene.shape_labels))
    assert set(counts) == {1, 2, 3}  # n_shapes=None: 1..3


def test_shapes_keep_a_gap():
    """No two shapes touch: a pixel of one is never 4-adjacent to a pixel of another."""
    rng = np.random.default_rng(1)
    for _ in range(40):
        scene = generate_scene(rng, n_shapes=(3, 4))
        for i, a in enumerate(scene.shape_masks):
            grown = a.copy()
            grown[1:] |= a[:-1]
            grown[:-1] |= a[1:]
            grown[:, 1:] |= a[:, :-1]
            grown[:, :-1] |= a[:, 1:]
            for b in scene.shape_masks[i + 1 :]:
                assert not (grown & b).any()


@pytest.mark.parametrize(
    ("n_shapes", "allowed"),
    [(1, {1}), (3, {3}), (4, {4}), (0, {0}), ((2, 3), {2, 3}), ((1, 1), {1})],
)
def test_number_of_shapes_is_respected(n_shapes, allowed):
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(25):
        scene = generate_scene(rng, n_shapes=n_shapes)
        assert_consistent(scene)
        seen.add(len(scene.shape_labels))
    assert seen == allowed


@pytest.mark.parametrize("n_shapes", [5, -1, (3, 2), (0, 5)])
def test_impossible_numbers_of_shapes_are_refused(n_shapes):
    with pytest.raises(ValueError, match="shapes"):
        generate_scene(np.random.default_rng(0), n_shapes=n_shapes)
    with pytest.raises(ValueError, match="shapes"):
        generate_scene_dataset(2, seed=0, n_shapes=n_shapes)


def test_other_sizes_and_no_clutter():
    rng = np.random.default_rng(3)
    for size in (32, 64, 128):
        assert_consistent(generate_scene(rng, size=size, n_shapes=3, clutter=0.0), size)
    with pytest.raises(ValueError, match="size"):
        generate_scene(rng, size=31)
    with pytest.raises(ValueError, match="clutter"):
        generate_scene(rng, clutter=1.5)


def test_scenes_are_deterministic():
    a = np.random.default_rng(7)
    b = np.random.default_rng(7)
    for _ in range(3):
        x, y = generate_scene(a), generate_scene(b)
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.label_map, y.label_map)
        assert x.shape_labels == y.shape_labels


def test_scene_dataset():
    data = generate_scene_dataset(12, seed=5, n_shapes=(1, 3))
    assert set(data) == {"images", "label_maps", "multi_hot", "n_shapes"}
    assert data["images"].shape == (12, 96, 96, 3) and data["images"].dtype == np.uint8
    assert data["label_maps"].shape == (12, 96, 96) and data["label_maps"].dtype == np.uint8
    assert data["multi_hot"].shape == (12, 4) and data["multi_hot"].dtype == np.float32
    assert data["n_shapes"].shape == (12,)
    assert set(data["n_shapes"].tolist()) <= {1, 2, 3}
    np.testing.assert_array_equal(data["multi_hot"].sum(axis=1), data["n_shapes"])
    for label_map, multi_hot in zip(data["label_maps"], data["multi_hot"], strict=True):
        present = set(np.unique(label_map).tolist()) - {0}
        assert present == {k + 1 for k in np.flatnonzero(multi_hot)}
    # Same seed: byte-identical; scene i does not depend on how many scenes are drawn.
    again = generate_scene_dataset(12, seed=5)
    fewer = generate_scene_dataset(4, seed=5)
    other = generate_scene_dataset(4, seed=6)
    for key in data:
        np.testing.assert_array_equal(data[key], again[key])
        np.testing.assert_array_equal(data[key][:4], fewer[key])
    assert not np.array_equal(data["images"][:4], other["images"])
    assert generate_scene_dataset(0, seed=5)["images"].shape == (0, 96, 96, 3)
    assert set(generate_scene_dataset(8, seed=5, n_shapes=2)["n_shapes"].tolist()) == {2}


# ------------------------------------------------------------------------------------ models
def iou_per_class(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of each of the 5 label-map values, pixels of all images pooled."""
    return np.array(
        [
            np.logical_and(predicted == k, truth == k).sum()
            / max(np.logical_or(predicted == k, truth == k).sum(), 1)
            for k in range(len(SEGMENTATION_CLASS_NAMES))
        ]
    )


@pytest.fixture(scope="module")
def models():
    import keras

    return {
        name: keras.saving.load_model(MODELS / f"{name}.keras", compile=False)
        for name in ("demo_segmentation", "demo_multilabel")
    }


@pytest.fixture(scope="module")
def fresh_scenes():
    return generate_scene_dataset(N_FRESH, seed=FRESH_SEED)


def predict(model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(images.astype(np.float32) / 255.0, batch_size=100, verbose=0))


def test_label_files():
    seg = (MODELS / "demo_segmentation_labels.txt").read_text().splitlines()
    multi = (MODELS / "demo_multilabel_labels.txt").read_text().splitlines()
    assert tuple(seg) == SEGMENTATION_CLASS_NAMES == ("background", *CLASS_NAMES)
    assert tuple(multi) == CLASS_NAMES


def test_model_layouts(models):
    import keras

    seg = models["demo_segmentation"]
    # Saved as keras.Model(m.inputs, m.outputs): inputs and outputs are one-element lists.
    assert tuple(seg.inputs[0].shape) == (None, 96, 96, 3)
    assert tuple(seg.outputs[0].shape) == (None, 96, 96, 5)
    logits, softmax = seg.layers[-2], seg.layers[-1]
    assert logits.name == "seg_logits" and isinstance(logits, keras.layers.Conv2D)
    assert logits.kernel_size == (1, 1) and logits.filters == 5
    assert logits.activation is keras.activations.linear
    assert softmax.name == "segmentation" and isinstance(softmax, keras.layers.Activation)
    assert seg.count_params() < 300_000
    for layer in seg.layers:  # no 1x1 stride-2 convolution (TF 2.21 oneDNN filter-gradient crash)
        if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1):
            assert layer.strides == (1, 1)

    multi = models["demo_multilabel"]
    assert tuple(multi.inputs[0].shape) == (None, 96, 96, 3)
    assert tuple(multi.outputs[0].shape) == (None, 4)
    assert tuple(multi.get_layer("last_conv").output.shape) == (None, 12, 12, 128)
    assert isinstance(multi.get_layer("gap"), keras.layers.GlobalAveragePooling2D)
    assert multi.layers[-2].name == "label_logits" and multi.layers[-1].name == "labels"


def test_segmentation_model_quality(models, fresh_scenes):
    probabilities = predict(models["demo_segmentation"], fresh_scenes["images"])
    assert probabilities.shape == (N_FRESH, 96, 96, 5)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-4)
    iou = iou_per_class(probabilities.argmax(-1), fresh_scenes["label_maps"])
    print(
        "IoU per class:",
        dict(zip(SEGMENTATION_CLASS_NAMES, np.round(iou, 3).tolist(), strict=True)),
    )
    assert iou[1:].mean() >= MIN_MEAN_IOU_SHAPES
    assert iou[1:].min() >= MIN_SHAPE_IOU
    assert iou[0] >= 0.95


def test_multilabel_model_quality(models, fresh_scenes):
    from sklearn.metrics import average_precision_score

    probabilities = predict(models["demo_multilabel"], fresh_scenes["images"])
    assert probabilities.shape == (N_FRESH, 4)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    ap = average_precision_score(fresh_scenes["multi_hot"], probabilities, average=None)
    print("AP per label:", dict(zip(CLASS_NAMES, np.round(ap, 3).tolist(), strict=True)))
    assert ap.mean() >= MIN_MAP
    # Independent sigmoids: scenes with more shapes get more labels above 0.5.
    decided = (probabilities >= 0.5).sum(axis=1)
    assert np.corrcoef(decided, fresh_scenes["n_shapes"])[0, 1] > 0.5


def test_scene_samples(models):
    images = sorted(SAMPLES.glob("scenes_[0-9].png"))
    assert [p.name for p in images] == [f"scenes_{i}.png" for i in range(6)]
    pixels, label_maps = [], []
    for path in images:
        image = Image.open(path)
        labels = Image.open(path.with_name(f"{path.stem}_labels.png"))
        assert image.mode == "RGB" and image.size == (96, 96)
        assert labels.mode == "L" and labels.size == (96, 96)
        label_map = np.asarray(labels)
        assert set(np.unique(label_map).tolist()) <= set(range(5))
        assert len(np.unique(label_map)) - 1 in (2, 3)
        pixels.append(np.asarray(image))
        label_maps.append(label_map)
    pixels, label_maps = np.stack(pixels), np.stack(label_maps)
    # Both models are right on every sample.
    predicted = predict(models["demo_segmentation"], pixels).argmax(-1)
    probabilities = predict(models["demo_multilabel"], pixels)
    for i in range(len(images)):
        present = set(np.unique(label_maps[i]).tolist())
        assert set(np.unique(predicted[i]).tolist()) == present
        assert {k + 1 for k in np.flatnonzero(probabilities[i] >= 0.5)} == present - {0}
        assert iou_per_class(predicted[i], label_maps[i])[sorted(present)].min() >= 0.8
