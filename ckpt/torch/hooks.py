"""The one saved-tensor recorder: what autograd saves for backward, each storage once.

The torch backend (``track_memory=True``), ``ckpt.saved_residuals`` and the
profiler's saved-bytes counter all count through ``SavedRecorder``, so they
share one notion of storage identity: ``storage_key`` (views share their
base's storage; parameters and buffers are left out by the caller's
``exclude``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.graph import saved_tensors_hooks


def storage_key(t: torch.Tensor) -> int:
    """Identity of the memory behind ``t``: its storage's address (unique across devices)."""
    return t.untyped_storage().data_ptr()


@dataclass(frozen=True)
class Held:
    """One storage kept for backward, as the executor's ledger counts it."""

    key: int
    nbytes: int


class SavedRecorder:
    """Records every storage packed for backward once; ``exclude`` holds keys not to count."""

    def __init__(self, exclude=frozenset(), keep_tensors: bool = False):
        self.exclude, self.keep_tensors = exclude, keep_tensors
        self.held: dict[int, Held] = {}
        self.tensors: dict[int, torch.Tensor] = {}     # key → first tensor, when keep_tensors

    @property
    def bytes(self) -> int:
        """Bytes of every distinct storage recorded."""
        return sum(h.nbytes for h in self.held.values())

    def record(self, t: torch.Tensor) -> None:
        """Count t's storage unless it is excluded or already counted."""
        st = t.untyped_storage()
        key = st.data_ptr()
        if key not in self.held and key not in self.exclude:
            self.held[key] = Held(key, st.nbytes())
            if self.keep_tensors:
                self.tensors[key] = t.detach()

    def take(self) -> tuple:
        """What was recorded since the last ``take`` (a tape's Held records), and forget it."""
        held, self.held = tuple(self.held.values()), {}
        return held

    def hooks(self, outer=None) -> saved_tensors_hooks:
        """Saved-tensor hooks that record each pack, then apply ``outer`` (the caller's hooks)."""
        record = self.record
        if outer is not None:
            outer_pack, outer_unpack = outer

            def pack_outer(t):
                record(t)
                return outer_pack(t)
            return saved_tensors_hooks(pack_outer, outer_unpack)

        def pack(t):
            record(t)
            # not t: a saved output holding itself is a cycle that only the garbage collector
            # frees; autograd re-attaches the graph edge on unpack
            return t.detach()
        return saved_tensors_hooks(pack, _identity)


def _identity(t):
    return t


def outer_saved_hooks():
    """The (pack, unpack) saved-tensor hooks in force now (``save_on_cpu`` and the like), or None."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top(False) if top is not None else None
