"""Per-class analysis of a dataset's maps (explainers/audit/analysis.py): SpRAy and the flags.

The acceptance case (issue 13) is a "shortcut-half" set of demo images: per class 40 images with
the class's corner marker and 40 without. The shortcut model's Grad-CAM looks at the marker when
there is one, so SpRAy must split each class into marker and no-marker clusters and
``fixed_location`` must point at the marker clusters; the honest model looks at the shapes, so
no class may get a ``fixed_location`` flag. The thresholds were chosen on data seeds 7, 11 and 23;
the seed here (2024) was not used to choose them. Small exact cases pin the eigengap rule, the
prediction flags and the class means.
"""

from __future__ import annotations

import numpy as np
import pytest

from explainers.audit import analysis
from explainers.core.maps import resize_map
from explainers.io.demo_data import CLASS_NAMES, generate_dataset

SEED = 2024
PER_CLASS = 40
SIZE = 32  # maps and masks are compared at 32 x 32 (the images are 96 x 96)


def area_resize(masks: np.ndarray, size: int = SIZE) -> np.ndarray:
    """(N, H, W) bool → (N, size, size) float: the fraction of each cell the mask covers."""
    n, side = len(masks), masks.shape[-1]
    factor = side // size
    assert factor * size == side
    return masks.astype(np.float64).reshape(n, size, factor, size, factor).mean(axis=(2, 4))


def purity(clusters: np.ndarray, truth: np.ndarray) -> float:
    """Σ over clusters of the majority ground-truth group's count, over N."""
    total = sum(np.bincount(truth[clusters == c].astype(int)).max() for c in np.unique(clusters))
    return total / len(clusters)


@pytest.fixture(scope="module")
def shortcut_half():
    """Per class 40 images with the class's marker (shape = class) and 40 without a marker."""
    marked = generate_dataset(4 * PER_CLASS, SEED, variant="shortcut", shape_agreement=1.0)
    plain = generate_dataset(4 * PER_CLASS, SEED + 1000, variant="honest")
    data = {
        key: np.concatenate([marked[key], plain[key]])
        for key in ("images", "masks", "labels", "marker_masks")
    }
    data["has_marker"] = np.r_[np.ones(4 * PER_CLASS, bool), np.zeros(4 * PER_CLASS, bool)]
    data["object_masks"] = area_resize(data["masks"])
    data["marker_masks_small"] = area_resize(data["marker_masks"])
    return data


def grad_cam_maps(bundle, data) -> dict[str, np.ndarray]:
    import explainers

    maps = np.stack(
        [
            resize_map(
                explainers.explain(bundle, image, "grad_cam", target=int(label)).attribution,
                (SIZE, SIZE),
            )
            for image, label in zip(data["images"], data["labels"], strict=True)
        ]
    )
    x = np.concatenate([bundle.model_input(image) for image in data["images"]])
    _, probs = bundle.runner.forward(x)
    return {"maps": maps, "predictions": probs.argmax(axis=1), "probabilities": probs.max(axis=1)}


@pytest.fixture(scope="module")
def model_maps(shortcut_half, shortcut_bundle, demo_bundle, fixed_bundle):
    """Grad-CAM maps (32 x 32), predictions and probabilities of the demo models, once."""
    return {
        "shortcut": grad_cam_maps(shortcut_bundle, shortcut_half),
        "honest": grad_cam_maps(demo_bundle, shortcut_half),
        "fixed": grad_cam_maps(fixed_bundle, shortcut_half),
    }


def run(model_maps, shortcut_half, model, *, masks=True, **kwargs):
    found = model_maps[model]
    return analysis.analyse(
        found["maps"],
        shortcut_half["labels"],
        found["predictions"],
        found["probabilities"],
        object_masks=shortcut_half["object_masks"] if masks else None,
        marker_masks=shortcut_half["marker_masks_small"],
        class_names=list(CLASS_NAMES),
        **{"embedding": "spectral", **kwargs},
    )


@pytest.fixture(scope="module")
def shortcut_audit(model_maps, shortcut_half):
    return run(model_maps, shortcut_half, "shortcut", embedding="tsne")


@pytest.fixture(scope="module")
def honest_audit(model_maps, shortcut_half):
    return run(model_maps, shortcut_half, "honest")


def flagged(audit, class_index: int, kind: str) -> np.ndarray:
    images = [f.images for f in audit.flags_of(class_index, kind)]
    return np.unique(np.concatenate(images)) if images else np.array([], dtype=int)


# --------------------------------------------------------------------------- acceptance


def test_spray_separates_marker_from_plain_images_on_the_shortcut_model(
    shortcut_audit, shortcut_half
):
    assert shortcut_audit.skipped == {} and len(shortcut_audit.failed) == 0
    for c in range(4):
        result = shortcut_audit.classes[c].spray
        truth = shortcut_half["has_marker"][result.images]
        assert len(result.images) == 2 * PER_CLASS
        assert 2 <= result.n_clusters <= analysis.MAX_CLUSTERS
        assert purity(result.labels, truth) >= 0.9, (c, result.n_clusters)


def test_fixed_location_flags_the_marker_clusters_of_the_shortcut_model(
    shortcut_audit, shortcut_half
):
    has_marker = shortcut_half["has_marker"]
    hits = 0
    for c in range(4):
        images = flagged(shortcut_audit, c, "fixed_location")
        if len(images) and has_marker[images].mean() >= 0.9 and has_marker[images].sum() >= 30:
            hits += 1
    assert hits >= 3
    first = shortcut_audit.flags_of(0, "fixed_location")[0]
    assert first.cluster is not None and first.values["peak_spread"] <= analysis.FIXED_SPREAD
    assert first.values["object_spread"] >= analysis.SPREAD_RATIO * first.values["peak_spread"]
    for number in (first.values["peak_spread"], first.values["object_spread"]):
        assert f"{number:.3f}" in first.evidence
    assert "'circle'" in first.evidence and "marker" in first.evidence


def test_outside_object_flags_the_marker_images_of_the_shortcut_model(
    shortcut_audit, shortcut_half
):
    # The shortcut model looks at the corner with or without a marker, so both kinds of
    # clusters lie off the shape; every marker image must be in a flagged cluster.
    for c in range(4):
        images = flagged(shortcut_audit, c, "outside_object")
        marked = np.flatnonzero(shortcut_half["has_marker"] & (shortcut_half["labels"] == c))
        assert np.isin(marked, images).mean() >= 0.9
        for flag in shortcut_audit.flags_of(c, "outside_object"):
            assert flag.values["inside_share"] < analysis.INSIDE_SHARE


def test_the_honest_model_gets_no_location_flags(honest_audit):
    assert honest_audit.skipped == {}
    assert [f for f in honest_audit.flags if f.kind == "fixed_location"] == []
    assert [f for f in honest_audit.flags if f.kind == "outside_object"] == []


def test_the_fixed_model_gets_no_marker_flag(model_maps, shortcut_half):
    """The teaching story's last step, "check it is gone": the model trained for the right
    reasons on the shortcut images (assets/make_demo_models.py) is audited like the shortcut
    model, and no class gets the marker's fixed-location flag any more."""
    fixed = run(model_maps, shortcut_half, "fixed")
    assert fixed.skipped == {}
    assert [f for f in fixed.flags if f.kind == "fixed_location"] == []
    accuracy = np.mean(model_maps["fixed"]["predictions"] == shortcut_half["labels"])
    assert accuracy > 0.9, accuracy


def test_without_object_masks_the_other_clusters_are_the_reference(model_maps, shortcut_half):
    has_marker = shortcut_half["has_marker"]
    shortcut = run(model_maps, shortcut_half, "shortcut", masks=False)
    classes = [c for c in range(4) if len(flagged(shortcut, c, "fixed_location"))]
    assert len(classes) >= 3
    for c in classes:
        assert has_marker[flagged(shortcut, c, "fixed_location")].mean() >= 0.9
        assert "other images spread" in shortcut.flags_of(c, "fixed_location")[0].evidence
    assert not [f for f in shortcut.flags if f.kind == "outside_object"]  # needs masks
    honest = run(model_maps, shortcut_half, "honest", masks=False)
    assert [f for f in honest.flags if f.kind == "fixed_location"] == []


def test_the_display_embedding_and_the_class_means(shortcut_audit, shortcut_half, model_maps):
    maps = model_maps["shortcut"]["maps"]
    for c, found in shortcut_audit.classes.items():
        result = found.spray
        assert result.embedding_kind == "tsne" and result.embedding.shape == (80, 2)
        assert np.isfinite(result.embedding).all()
        assert result.mean_maps.shape == (result.n_clusters, SIZE, SIZE)
        assert result.sizes.sum() == 80 and list(result.sizes) == sorted(result.sizes)[::-1]
        assert len(result.gaps) == len(result.eigenvalues) - 1
        expected = analysis.class_mean_maps(maps, shortcut_half["labels"], 4)[c]
        np.testing.assert_allclose(found.mean_map, expected)
        # Half the class carries the marker: the class's mean map peaks at the top-left corner.
        row, col = np.unravel_index(np.argmax(found.mean_map), found.mean_map.shape)
        assert row < 6 and col < 6, (c, row, col)


def test_grouping_by_prediction(model_maps, shortcut_half):
    found = model_maps["shortcut"]
    audit = run(model_maps, shortcut_half, "shortcut", group_by="prediction")
    assert audit.group_by == "prediction"
    for c, result in audit.classes.items():
        assert (found["predictions"][result.images] == c).all()
    # Without a marker the shortcut model answers one class for most plain images: that
    # predicted class is the largest group, and its misclassified flag names exactly them.
    sizes = {c: len(result.images) for c, result in audit.classes.items()}
    default = max(sizes, key=sizes.get)
    assert sizes[default] > 2 * PER_CLASS, sizes
    wrong = flagged(audit, default, "misclassified")
    np.testing.assert_array_equal(
        wrong,
        np.flatnonzero((found["predictions"] == default) & (shortcut_half["labels"] != default)),
    )


# --------------------------------------------------------------------------- exact, small


def blob(row: float, col: float, side: int = 16, width: float = 1.5) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side]
    return np.exp(-((y - row) ** 2 + (x - col) ** 2) / (2 * width**2))


def two_groups(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = [blob(3, 3) + 0.2 * rng.random((16, 16)) for _ in range(12)]
    maps += [blob(12, 11) + 0.2 * rng.random((16, 16)) - 0.1 for _ in range(12)]
    return np.stack(maps), np.repeat([0, 1], 12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_obvious_groups_give_two_clusters(seed):
    maps, truth = two_groups(seed)
    result = analysis.spray(maps)
    assert result.n_clusters == 2
    assert int(np.argmax(result.gaps)) + 1 == 2
    assert purity(result.labels, truth) == 1.0
    assert result.sizes.tolist() == [12, 12]
    assert result.labels[0] == 0  # equal sizes: the cluster of the first image comes first
    assert result.embedding.shape == (24, 2) and result.embedding_kind == "tsne"
    np.testing.assert_allclose(result.eigenvalues[:2], 0.0, atol=1e-9)  # two components


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_homogeneous_group_gives_one_cluster(seed):
    rng = np.random.default_rng(seed)
    maps = np.stack([blob(8, 8) + 0.2 * rng.random((16, 16)) for _ in range(24)])
    result = analysis.spray(maps)
    assert result.n_clusters == 1 and (result.labels == 0).all()
    assert np.argmax(result.gaps) == 0
    np.testing.assert_allclose(result.mean_maps[0], analysis.normalise_maps(maps).mean(0))


def test_identical_maps_are_one_cluster():
    maps = np.stack([blob(3, 3)] * 15 + [blob(12, 12)] * 10)
    assert analysis.spray(np.stack([blob(3, 3)] * 15)).n_clusters == 1
    result = analysis.spray(maps)
    assert result.n_clusters == 2 and result.labels.tolist() == [0] * 15 + [1] * 10


def test_the_eigengap_rule():
    choose = analysis.choose_clusters
    assert choose(np.array([0.0, 0.5, 0.6, 0.7])) == 1  # the first gap is the largest
    assert choose(np.array([0.0, 0.0, 0.5, 0.6])) == 2
    assert choose(np.array([0.0, 0.0, 0.0, 0.9, 1.0])) == 3
    assert choose(np.array([0.0, 0.3, 0.6, 0.7])) == 1  # a tie goes to the smaller k
    assert choose(np.array([0.0, 0.1, 0.4, 0.7])) == 2
    assert choose(np.array([0.0, 0.0, 0.0, 0.9]), max_clusters=2) == 1  # gaps up to k = 2 only
    assert choose(np.array([0.0])) == 1 and choose(np.array([])) == 1


def test_spray_is_deterministic_and_skips_failed_rows():
    maps, truth = two_groups()
    maps[5] = np.nan
    first, second = analysis.spray(maps), analysis.spray(maps)
    assert 5 not in first.images and len(first.images) == 23
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.embedding, second.embedding)
    assert purity(first.labels, truth[first.images]) == 1.0


def test_the_sparse_solver_agrees_with_the_dense_one(monkeypatch):
    maps, _ = two_groups()
    dense = analysis.spray(maps, embedding="spectral")
    monkeypatch.setattr(analysis, "DENSE_LIMIT", 1)
    sparse = analysis.spray(maps, embedding="spectral")
    np.testing.assert_allclose(sparse.eigenvalues, dense.eigenvalues, atol=1e-8)
    np.testing.assert_array_equal(sparse.labels, dense.labels)


def test_tiny_inputs():
    maps, _ = two_groups()
    for n in (1, 2, 5):
        result = analysis.spray(maps[:n])
        assert result.n_clusters == 1 and result.embedding_kind == "spectral"
        assert result.embedding.shape == (n, 2)
    forced = analysis.spray(maps, n_clusters=3, embedding="spectral")
    assert forced.n_clusters == 3
    empty = analysis.spray(np.zeros((6, 8, 8)))
    assert empty.empty.all() and empty.n_clusters == 1
    with pytest.raises(ValueError, match="no valid map"):
        analysis.spray(np.full((3, 8, 8), np.nan))


def test_prediction_flags_select_exactly_the_wrong_images():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    predictions = np.array([0, 1, 1, 0, 1, 0, 2, 1, 0])
    probabilities = np.array([0.99, 0.95, 0.6, 0.8, 0.7, 0.9, 0.89, 0.99, 0.999])
    maps = np.ones((9, 4, 4))
    maps[8] = np.nan  # a failed map: left out, though it is wrong and confident
    found = analysis.flags(maps, labels, predictions, probabilities, {})
    got = {(f.kind, f.class_index): f.images.tolist() for f in found}
    assert got == {
        ("misclassified", 0): [1, 2],
        ("confident_error", 0): [1],
        ("misclassified", 1): [5, 6],
        ("confident_error", 1): [5],  # 0.9 counts as confident, 0.89 does not
    }
    assert all(f.cluster is None for f in found)
    by_prediction = analysis.flags(
        maps, labels, predictions, probabilities, {}, group_by="prediction", confident=0.95
    )
    got = {(f.kind, f.class_index): f.images.tolist() for f in by_prediction}
    assert got == {
        ("misclassified", 0): [5],
        ("misclassified", 1): [1, 2],
        ("confident_error", 1): [1],
        ("misclassified", 2): [6],
    }
    assert found[0].evidence == (
        "2 of 4 (50 %) images of class 0 are misclassified; the commonest wrong answer is 1 "
        "(2 images)."
    )
    assert by_prediction[1].evidence.startswith("2 of 4 (50 %) images predicted 1 are")
    assert "commonest true class is 0" in by_prediction[1].evidence


def test_class_mean_maps_by_hand():
    maps = np.array(
        [
            [[1.0, -1.0], [1.0, 2.0]],  # positive part / 4
            [[0.0, 0.0], [0.0, 3.0]],  # positive part / 3
            [[2.0, 2.0], [0.0, 0.0]],  # class 1
            [[np.nan, 1.0], [1.0, 1.0]],  # failed: left out
            [[-1.0, -1.0], [-1.0, -1.0]],  # class 3: no positive mass, stays zero
        ]
    )
    classes = np.array([0, 0, 1, 1, 3])
    means = analysis.class_mean_maps(maps, classes, 5)
    np.testing.assert_allclose(means[0], [[0.125, 0.0], [0.125, 0.75]])
    np.testing.assert_allclose(means[1], [[0.5, 0.5], [0.0, 0.0]])
    assert np.isnan(means[2]).all() and np.isnan(means[4]).all()
    np.testing.assert_allclose(means[3], 0.0)
    by_max = analysis.class_mean_maps(maps, classes, 2, normalise="max")
    np.testing.assert_allclose(by_max[0], [[0.25, 0.0], [0.25, 1.0]])


def test_peaks_spreads_and_shares_by_hand():
    maps = np.zeros((2, 10, 10))
    maps[0, 2, 3] = 5.0  # one hot cell: the peak is its centre
    maps[1, 7, 7] = 1.0
    maps[1, 7, 8] = 1.0
    peaks = analysis.attention_peaks(maps)
    np.testing.assert_allclose(peaks, [[0.25, 0.35], [0.75, 0.80]])
    assert np.isnan(analysis.attention_peaks(np.zeros((1, 10, 10)))).all()
    assert analysis.spread(np.array([[0.0, 0.0], [0.0, 0.2]])) == pytest.approx(0.1)
    assert np.isnan(analysis.spread(np.array([[0.5, 0.5], [np.nan, 0.1]])))
    masks = np.zeros((2, 10, 10))
    masks[:, 7:, 7:] = 1.0
    np.testing.assert_allclose(analysis.mass_share(maps, masks), [0.0, 1.0])
    np.testing.assert_allclose(analysis.mask_centroids(masks)[0], [0.85, 0.85])


def test_analyse_skips_small_classes_and_reports_failed_maps():
    maps, _ = two_groups()
    maps = np.concatenate([maps, maps[:3]])
    maps[0] = np.nan
    labels = np.r_[np.zeros(24, int), np.full(3, 2)]
    audit = analysis.analyse(maps, labels, labels, np.ones(27), embedding="spectral")
    assert audit.failed.tolist() == [0]
    assert list(audit.classes) == [0]
    assert audit.classes[0].images.tolist() == list(range(1, 24))
    assert audit.classes[0].spray.n_clusters == 2
    np.testing.assert_array_equal(np.sort(audit.classes[0].spray.images), np.arange(1, 24))
    assert set(audit.skipped) == {1, 2}
    assert "3 valid images" in audit.skipped[2] and "fewer than the 10" in audit.skipped[2]
    assert audit.class_names == ["class 0", "class 1", "class 2"]
    assert audit.mean_maps.shape == (3, 16, 16)
    np.testing.assert_allclose(audit.mean_maps[2], analysis.normalise_maps(maps[24:]).mean(0))
    assert np.isnan(audit.mean_maps[1]).all()
    with pytest.raises(ValueError, match="group_by"):
        analysis.analyse(maps, labels, labels, np.ones(27), group_by="cluster")
