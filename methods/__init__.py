"""Pruning methods. Each is one file registered by name; importing this package registers them all."""
from . import control, decore, fpgm, hrank, l1, random_pruning, slim, taylor  # noqa: F401  (registration)
from .base import METHODS, Context, Knob, KnobError, Method, Result, code_version, get_method, register

__all__ = ["METHODS", "Context", "Knob", "KnobError", "Method", "Result", "code_version", "get_method", "register"]
