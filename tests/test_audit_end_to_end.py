"""The audit, end to end on the shipped demo models: run_audit over the generated "shortcut_half"
dataset (the class marker on half the images) into a run folder, then analyse_run on what was
written. The shortcut model's marker use is found and flagged with its evidence (that the honest
model gets no such flag is held on more images by tests/test_audit_analysis.py)."""

from __future__ import annotations

import pytest

from .conftest import DEMO_LABELS, SHORTCUT_MODEL

N_IMAGES = 240  # 60 per class, 30 with the marker


@pytest.fixture(scope="module")
def dataset():
    from explainers import audit

    return audit.demo_dataset("shortcut_half", n=N_IMAGES, seed=5)


@pytest.fixture(scope="module")
def reviews(dataset, tmp_path_factory):
    from explainers import audit

    found = {}
    for name, model in (("shortcut", SHORTCUT_MODEL),):
        out = tmp_path_factory.mktemp(name)
        summary = audit.run_audit(model, dataset, out, labels=DEMO_LABELS, chunk_size=80)
        assert summary.complete and summary.errors == 0 and summary.done == N_IMAGES
        run = audit.open_run(out)
        found[name] = (run, audit.analyse_run(run, "grad_cam"))
    return found


def _marker_images(run):
    import numpy as np

    return set(
        np.flatnonzero(
            np.asarray(run.masks["marker"]).reshape(len(run.masks["marker"]), -1).max(axis=1) > 0
        ).tolist()
    )


def test_the_shortcut_models_marker_use_is_flagged_from_the_run_folder(reviews):
    run, review = reviews["shortcut"]
    marked = _marker_images(run)
    assert len(marked) == N_IMAGES // 2
    flagged_classes = set()
    for flag in review.flags:
        if flag.kind != "fixed_location":
            continue
        assert flag.evidence  # a sentence with the numbers a reviewer acts on
        # A flagged cluster of no-marker images can be right too (the shortcut model also looks
        # at the empty corner); what must hold is that the marker clusters are among the flags.
        if len(set(flag.images) & marked) / len(flag.images) >= 0.9:
            flagged_classes.add(flag.class_index)
    assert len(flagged_classes) >= 3, [f.evidence for f in review.flags]
