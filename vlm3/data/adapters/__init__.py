"""Dataset adapters. Every module in this package that defines a ``@register``-ed Adapter is
imported here, so ``get_adapter(name)`` sees all built-in adapters."""

import importlib
import pkgutil

from vlm3.data.adapters.base import ADAPTERS, Adapter, AdapterOptions, Rejection, get_adapter, register

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["ADAPTERS", "Adapter", "AdapterOptions", "Rejection", "get_adapter", "register"]
