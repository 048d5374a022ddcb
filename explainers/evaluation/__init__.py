"""Judging maps and models: faithfulness and localisation metrics (``metrics``), the model
randomisation sanity check (``sanity``) and adversarial attacks (``attacks``). They call
:func:`explainers.explain` and the shared runner; no method imports them."""
