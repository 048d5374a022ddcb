"""Audit: a model on a whole dataset — accuracy, what it looks at per class, SpRAy clusters of its
explanations, and flags with their evidence."""

from __future__ import annotations

import streamlit as st

from dashboard import audits, state
from dashboard.audits import AuditInputError
from dashboard.pages import audit as audit_page
from dashboard.widgets import frame

INTRO = """
An audit explains **every image of a dataset** with the sidebar's model and looks for patterns
across them: each class's mean map, clusters of similar maps (SpRAy, Lapuschkin et al. 2019), and
**flags** — a cluster whose attention stays at one place while the objects move, or off the
object, is a candidate shortcut ("Clever Hans"). It runs in a compute worker: you can keep using
the dashboard meanwhile.
"""


def page() -> None:
    audit_page.follow_explain_jump()
    frame.page_title("Audit", "The model on a whole dataset: where it looks, class by class.")
    st.markdown(INTRO)
    audit_page.show_notice()
    model = state.active_model()
    if model is not None:
        st.markdown(
            f"Model **{model.ref.file_name}** (the sidebar's) · {model.n_classes} classes: "
            f"{', '.join(model.class_names[:8])}{'…' if model.n_classes > 8 else ''}"
        )

    if audit_page.mode_control() == "new":
        audit_page.new_audit(model)
    else:
        audit_page.earlier_runs()

    path = st.session_state.get(audit_page.OPEN_RUN)
    if not path:
        return
    st.divider()
    info = audit_page.run_status(path, model)
    if info is None:
        return
    try:
        run = audits.load_run(info)
    except AuditInputError as err:
        st.error(str(err))
        return
    method, group_by = audit_page.analysis_controls(info)
    review = audit_page.analysis(info, method, group_by)
    audit_page.summary(info, run, review)
    audit_page.report_download(info, method, group_by)

    st.subheader("Accuracy")
    audit_page.accuracy(run)
    if review is None:
        return
    images = audits.run_images(info, run, audits.readable_roots())
    st.subheader("Class mean maps")
    audit_page.mean_maps(review, run)
    st.subheader("Clusters of explanations (SpRAy)")
    audit_page.spray_explorer(info, run, review, images, method)
    st.subheader(f"Flags ({len(review.flags)})")
    audit_page.flags(info, run, review, images, method)


page()
