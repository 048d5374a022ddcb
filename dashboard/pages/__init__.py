"""What only one page uses: its own widgets and its defaults, one module per page. The page
scripts that ``st.navigation`` runs stay in ``app_pages/`` (see ``app.py`` for why not
``pages/``); Streamlit does not look for pages in this package.

* :mod:`~dashboard.pages.explain`: the method picker, the result facts and the predictions table.
* :mod:`~dashboard.pages.compare`: the default methods, the colour-scale switch and the heatmap
  card of the grid.
* :mod:`~dashboard.pages.robustness`: the attack controls, its verdict, pictures, numbers and
  download, and the original / adversarial explanation pairs.
* :mod:`~dashboard.pages.evaluate`: the deletion / insertion protocol and ground-truth controls,
  the ranking table and curves, the sanity check, and the evaluation exports.
* :mod:`~dashboard.pages.model`: the model summary, the layer table and the feature maps.
* :mod:`~dashboard.pages.guide`: the methods overview and each method's guide.
"""
