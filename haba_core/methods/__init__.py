"""DD objectives. Every method works with every synset (pixels, haba)."""

from haba_core.methods import dc, dm, mtt  # noqa: F401  (registers the methods)
from haba_core.methods.base import METHODS, Context, Method, create_method, list_methods

__all__ = ["METHODS", "Context", "Method", "create_method", "list_methods"]
