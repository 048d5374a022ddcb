"""Streamlit entry point: ``streamlit run app.py``.

The sidebar (model and image inputs) is shared by every page; the page scripts live in
``app_pages/``, what only one page uses in ``dashboard.pages`` and the widgets the pages share in
``dashboard.widgets``.

Why ``app_pages/`` and not ``pages/``: Streamlit treats a ``pages/`` folder next to the entry
script as a legacy (v1) multipage app until the first ``st.navigation`` call of the process. A
fresh server whose first request is a deep link (``/compare``) then runs the page file on its own,
without this script, so without the sidebar and session-state set-up; ``AppTest`` hits the same
path on every rerun. Keeping the page files elsewhere avoids both.
"""

from __future__ import annotations

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
        st.Page("app_pages/model.py", title="Model", icon=":material/account_tree:"),
        st.Page("app_pages/guide.py", title="Guide", icon=":material/menu_book:"),
    ]
    page = st.navigation(pages)
    sidebar()
    page.run()


if __name__ == "__main__":  # streamlit run executes this file as __main__
    run()
