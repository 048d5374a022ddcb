"""The explanation methods, one module per family; importing this package registers them all.

Every module here is imported (in file-name order) and registers its methods with
:func:`explainers.core.specs.register`. Adding a method is adding a module here (or a
:func:`register` call in one): the registry, the CLI, the dashboard and the contract tests find
it through its spec.
"""

from importlib import import_module
from pkgutil import iter_modules

for _module in sorted(m.name for m in iter_modules(__path__) if not m.name.startswith("_")):
    import_module(f"{__name__}.{_module}")
