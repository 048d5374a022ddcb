"""Compare: several methods side by side on the same image and target class."""

from __future__ import annotations

import streamlit as st

from dashboard.computation import Failure, build_request
from dashboard.pages import compare as compare_page
from dashboard.pictures import with_shared_scale
from dashboard.report import ReportEntry
from dashboard.widgets import display, downloads, frame, parameters, pickers, results, running

PAGE = "compare"
COLUMNS = 4


def page() -> None:
    header = frame.page_header(
        "Compare", "Several methods side by side: same image, same class, same display."
    )
    if header is None:
        return
    model, image, predictions = header

    # No fragment here, unlike Explain's result: a widget inside a fragment asks for a rerun of
    # that fragment, which Streamlit queues behind a running script instead of interrupting it,
    # and the cards compute in this run. A change of methods, target, parameter or display must
    # interrupt a long card (the request is abandoned and the worker cancels it). The cards fill
    # in one by one within a single run: a card finishing reruns nothing.
    target = pickers.wide_target_picker(PAGE, model, predictions, image)
    methods_col, target_col = st.columns([3, 1])
    with methods_col:
        methods = pickers.methods_multiselect(
            PAGE,
            model,
            "Methods to compare",
            compare_page.DEFAULT_COMPARISON,
            applicable_only=False,
        )
    with target_col:
        if not pickers.is_wide(model):
            target = pickers.target_picker(PAGE, model, predictions, image)
    if target is None:
        return  # a segmentation region still to choose: its picker says how
    settings = display.display_controls(PAGE)
    shared = compare_page.scale_mode_control(PAGE)
    if not methods:
        st.info("Pick at least one method above.")
        return

    # First lay out every card (title, parameters, an empty slot), then fill the slots one by
    # one, so the grid appears at once and fills in as each method finishes.
    cards = []
    for start in range(0, len(methods), COLUMNS):
        row = methods[start : start + COLUMNS]
        for column, method in zip(st.columns(COLUMNS), row, strict=False):
            with column, st.container(border=True, key=f"{PAGE}_card_{method.name}"):
                st.markdown(f"##### {method.label}")
                if not method.applicable:
                    results.unavailable_card(f"Not available for this model: {method.reason}")
                    cards.append((method, f"not available: {method.reason}", None))
                    continue
                with st.expander("Parameters"):
                    layer = pickers.layer_picker(PAGE, model, method)
                    engine = pickers.engine_picker(PAGE, method)
                    params = parameters.param_controls(PAGE, method)
                request = build_request(
                    model, image, method, params, target=target, layer=layer, engine=engine
                )
                slot = st.empty()
                if not isinstance(request, str):
                    slot.caption("Waiting…")
                cards.append((method, request, slot))

    entries: list[ReportEntry] = []
    computed = []
    for method, request, slot in cards:
        if slot is None:
            entries.append(ReportEntry(method, problem=request))
            continue
        if isinstance(request, str):
            slot.warning(request)
            entries.append(ReportEntry(method, problem=request))
            continue
        outcome = running.compute(request, image, slot, method)
        if isinstance(outcome, Failure):
            running.show_failure(outcome, f"{PAGE}_{method.name}", slot)
            entries.append(ReportEntry(method, problem=outcome.message))
            continue
        if shared:  # drawn once every map is known, on one colour scale
            slot.caption("Computed; drawn when every card is ready…")
            computed.append((method, outcome, slot, len(entries)))
            entries.append(ReportEntry(method, outcome))
            continue
        with slot.container():
            pics = compare_page.heatmap_card(PAGE, method, outcome, image, settings)
        entries.append(ReportEntry(method, outcome, pics.overlay, pics.heatmap))
    if computed:
        settings = with_shared_scale(settings, [c[1] for c in computed])
        for method, outcome, slot, index in computed:
            with slot.container():
                pics = compare_page.heatmap_card(PAGE, method, outcome, image, settings)
            entries[index] = ReportEntry(method, outcome, pics.overlay, pics.heatmap)

    st.divider()
    downloads.report_downloads(PAGE, model, image, predictions, entries, settings, grid=True)


page()
