"""Model surgery: the one place where modules and parameters are swapped by name."""

from torchslim.graph.surgery import get_module, get_parameter, named_leaf_modules, replace_module, set_parameter

__all__ = ["get_module", "get_parameter", "named_leaf_modules", "replace_module", "set_parameter"]
