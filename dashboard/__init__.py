"""The Streamlit dashboard's code; the page scripts that ``st.navigation`` runs live in
``app_pages/``.

Computing: models are loaded and run in worker processes, never in the Streamlit process.

* :mod:`dashboard.service`: what the pages call to load models and images, explain, attack and
  evaluate (cached, plain data in and out, errors turned into sentences); every model call is a
  request to the worker pool.
* :mod:`dashboard.worker`: the pool of compute worker processes, with a time limit, a memory
  ceiling and crash detection per request.
* :mod:`dashboard.jobs`: what a worker can be asked to do; it runs inside a worker and is where
  the library loads and runs models.
* :mod:`dashboard.protocol`: the plain data exchanged with the workers, and the restricted
  unpickler that reads their replies.

The Streamlit process reads only TensorFlow-free parts of the explainer library directly (image
checks, parameter specs, layer descriptions, ``explainers.render``).

Streamlit-free helpers of the pages:

* :mod:`dashboard.visuals`: pictures from raw maps (display settings, outlines, feature-map
  mosaics, the comparison grid).
* :mod:`dashboard.pictures`: a result's overlay and heatmap at display size, the input with its
  outlines, one colour scale for several results, the raw map's Plotly figure.
* :mod:`dashboard.charts`: the Evaluate page's Plotly figures (curves, sanity check).
* :mod:`dashboard.report`: PNG, ``.npy``, JSON and HTML report exports.
* :mod:`dashboard.computation`: the explanation request built from a page's controls, and
  ``Failure``, why a computation gave no result.
* :mod:`dashboard.attacks`: the Robustness page's verdict sentence, amplified perturbation and
  explained classes.
* :mod:`dashboard.masks`: the Evaluate page's ground-truth masks (uploaded, box) and their preview.

Streamlit:

* :mod:`dashboard.state`: session-state keys, their initialisation, and the Evaluate page's latest
  outcomes kept for the reports.
* :mod:`dashboard.widgets`: the widgets the pages share (page frame, sidebar, pickers, parameter
  and display controls, progress and failures, results, downloads).
* :mod:`dashboard.pages`: what only one page uses, one module per page (its own widgets and its
  defaults).
"""
