"""Dataset adapters. ``get_adapter(name)`` first imports every module of this package that defines
a ``@register``-ed Adapter, so it sees all built-in adapters."""

from vlm3.data.adapters.base import ADAPTERS, Adapter, AdapterOptions, LayoutError, Rejection, get_adapter, register

__all__ = ["ADAPTERS", "Adapter", "AdapterOptions", "LayoutError", "Rejection", "get_adapter", "register"]
