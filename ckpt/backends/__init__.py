"""Backends run one stage at a time for the executor: numpy, symbolic (the memory model), torch."""

from .base import Backend, ChainBackend
from .numpy_backend import NumpyBackend
from .symbolic import SymbolicArray, SymbolicBackend

__all__ = ["Backend", "ChainBackend", "NumpyBackend", "SymbolicArray", "SymbolicBackend"]
