"""DD objectives. Every method works with every synset kind. Each module of this package is imported (it
registers its methods with ``@METHODS.register``), so a new backend is one new file here."""

import importlib
import pkgutil

from haba_core.methods.base import METHODS, Context, Method, create_method, list_methods

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Context", "Method", "create_method", "list_methods"]
