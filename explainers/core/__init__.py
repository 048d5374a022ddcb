"""The computation core every method shares: method and parameter specs (``specs``), the layer
description (``layers``), graph replay (``graph``), the compiled batched model passes
(``runner``), map resizing and blurring (``maps``), and what hidden pixels become (``fills``).
Nothing here imports a method, the registry or the dashboard."""
