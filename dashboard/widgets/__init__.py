"""Widgets shared by the dashboard's pages; what only one page uses lives in
:mod:`dashboard.pages`.

* :mod:`~dashboard.widgets.frame`: the page style and each page's header (title, the loaded model
  and image, their predictions).
* :mod:`~dashboard.widgets.sidebar`: the model and image inputs every page works on.
* :mod:`~dashboard.widgets.pickers`: method, class, layer and engine pickers.
* :mod:`~dashboard.widgets.parameters`: a method's parameter controls, one per ``ParamSpec``.
* :mod:`~dashboard.widgets.display`: the display controls (they never recompute).
* :mod:`~dashboard.widgets.running`: a computation's progress bar, its failure and Retry button.
* :mod:`~dashboard.widgets.results`: a result's pictures, warnings and "not available" card.
* :mod:`~dashboard.widgets.downloads`: a map's PNG / ``.npy`` buttons and the HTML review report.
"""
