"""Compare: several methods side by side on the same image and target class."""

from __future__ import annotations

import streamlit as st

from dashboard import components
from dashboard.report import ReportEntry

PAGE = "compare"
COLUMNS = 4


def page() -> None:
    header = components.page_header(
        "Compare", "Several methods side by side: same image, same class, same display."
    )
    if header is None:
        return
    model, image, predictions = header

    methods_col, target_col = st.columns([3, 1])
    with methods_col:
        methods = components.methods_picker(PAGE, model)
    with target_col:
        target = components.target_picker(PAGE, model, predictions)
    settings = components.display_controls(PAGE)
    shared = components.scale_mode_control(PAGE)
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
                    components.unavailable_card(f"Not available for this model: {method.reason}")
                    cards.append((method, f"not available: {method.reason}", None))
                    continue
                with st.expander("Parameters"):
                    layer = components.layer_picker(PAGE, model, method)
                    engine = components.engine_picker(PAGE, method)
                    params = components.param_controls(PAGE, method)
                request = components.build_request(
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
        outcome = components.compute(request, image, slot, method.label)
        if isinstance(outcome, components.Failure):
            components.show_failure(outcome, f"{PAGE}_{method.name}", slot)
            entries.append(ReportEntry(method, problem=outcome.message))
            continue
        if shared:  # drawn once every map is known, on one colour scale
            slot.caption("Computed; drawn when every card is ready…")
            computed.append((method, outcome, slot, len(entries)))
            entries.append(ReportEntry(method, outcome))
            continue
        with slot.container():
            pictures = components.heatmap_card(PAGE, method, outcome, image, settings)
        entries.append(ReportEntry(method, outcome, pictures.overlay, pictures.heatmap))
    if computed:
        settings = components.with_shared_scale(settings, [c[1] for c in computed])
        for method, outcome, slot, index in computed:
            with slot.container():
                pictures = components.heatmap_card(PAGE, method, outcome, image, settings)
            entries[index] = ReportEntry(method, outcome, pictures.overlay, pictures.heatmap)

    st.divider()
    components.report_downloads(PAGE, model, image, predictions, entries, settings, grid=True)


page()
