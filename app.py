"""Streamlit entry point: ``streamlit run app.py``.

The sidebar (model and image inputs) is shared by every page; the page scripts live in
``app_pages/``, what only one page uses in ``dashboard.pages`` and the widgets the pages share in
``dashboard.widgets``.

Start-up: ``streamlit run app.py`` finds the ``st.App`` at the end of this file and serves it; its
lifespan hook warms the compute workers before the server takes requests, so the first visitor
sees a heatmap in about a second instead of waiting for TensorFlow to import in a fresh worker.

Why ``app_pages/`` and not ``pages/``: Streamlit treats a ``pages/`` folder next to the entry
script as a legacy (v1) multipage app until the first ``st.navigation`` call of the process. A
fresh server whose first request is a deep link (``/compare``) then runs the page file on its own,
without this script, so without the sidebar and session-state set-up; ``AppTest`` hits the same
path on every rerun. Keeping the page files elsewhere avoids both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import streamlit as st

from dashboard import state
from dashboard.widgets.frame import page_style
from dashboard.widgets.sidebar import sidebar


def run() -> None:
    st.set_page_config(
        page_title="CNN explainer",
        page_icon=":material/image_search:",
        layout="wide",
        initial_sidebar_state="expanded",
    )
    state.init()
    page_style()
    pages = [
        st.Page(
            "app_pages/explain.py", title="Explain", icon=":material/image_search:", default=True
        ),
        st.Page("app_pages/compare.py", title="Compare", icon=":material/grid_view:"),
        st.Page("app_pages/robustness.py", title="Robustness", icon=":material/security:"),
        st.Page("app_pages/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
        st.Page("app_pages/audit.py", title="Audit", icon=":material/dataset:"),
        st.Page("app_pages/training.py", title="Training", icon=":material/model_training:"),
        st.Page("app_pages/model.py", title="Model", icon=":material/account_tree:"),
        st.Page("app_pages/guide.py", title="Guide", icon=":material/menu_book:"),
    ]
    page = st.navigation(pages)
    # The sidebar loads the model before the page runs; on a session's first run (after a server
    # start that includes starting a compute worker and importing TensorFlow, several seconds)
    # the page's title shows at once instead of a blank page.
    frame = st.empty()
    if state.active_model() is None and state.model_error() is None:
        with frame.container():
            st.title(page.title)
            st.caption(
                "Loading the model… (the first visit after a server start also starts a "
                "compute worker)"
            )
    sidebar()
    frame.empty()
    page.run()


@asynccontextmanager
async def warm_up_first(_app: Any) -> AsyncIterator[None]:
    """At server start, before the server answers its first request: start the compute workers
    and compute the default Explain page (the demo model, the first sample, Grad-CAM), so a first
    visitor does not wait for TensorFlow to import (see ``dashboard.computation.warm_up``). Bounded
    by ``EXPLAINER_WARM_UP_S`` seconds (default 120; 0 switches it off)."""
    import asyncio
    import logging
    import os

    from dashboard.computation import warm_up

    limit = float(os.environ.get("EXPLAINER_WARM_UP_S", "120") or 0)
    if limit > 0:
        try:
            done = await asyncio.wait_for(asyncio.to_thread(warm_up), timeout=limit)
        except TimeoutError:
            done = f"warm-up still running after {limit:g} s; serving anyway"
        logging.getLogger("dashboard").warning(done)
    yield


if __name__ == "__main__":  # every session runs this file as __main__
    run()
else:
    # `streamlit run app.py` finds this ASGI app and serves it (Streamlit's own server, with the
    # warm-up above added to its start-up); each session then runs this file as the script.
    app = st.App(__file__, lifespan=warm_up_first)
