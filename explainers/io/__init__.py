"""Getting inputs in: model files checked before they are loaded (``safety``, ``model_files``),
models wrapped with their input spec and preprocessing (``models``), images read and checked
(``images``), and the generated demo datasets (``demo_data``)."""
