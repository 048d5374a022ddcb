"""The Streamlit dashboard's shared code (the pages live in ``app_pages/``).

* :mod:`dashboard.service`: the only place that calls the explainer library (cached, plain data in
  and out, errors turned into sentences).
* :mod:`dashboard.state`: session-state keys and their initialisation.
* :mod:`dashboard.components`: UI pieces shared by the pages.
* :mod:`dashboard.visuals`: pictures from cached raw maps (display settings, outlines, grids).
* :mod:`dashboard.report`: PNG, ``.npy`` and HTML report exports.
"""
