"""ckpt on torch: schedules executed on autograd's own graph.

* ``backend``  – the step that runs a schedule with saved-tensor hooks (how it works: its docstring);
* ``wrappers`` – ``CheckpointedSequential``, ``checkpoint_sequential``, ``checkpoint_modules``;
* ``hooks``    – the one saved-tensor recorder (bytes saved, each storage once);
* ``measure``  – a stage's bytes, measured once for ``Profile.from_torch`` and the memory check;
* ``memcheck`` – the wrappers' pre-run check: a step's predicted peak vs what the device may use;
* ``inspect``  – ``saved_residuals``: what a plain forward saves, stage by stage.
"""

from .backend import CheckpointError, replay_state_bytes
from .hooks import SavedRecorder, storage_key
from .inspect import print_saved_residuals, saved_bytes, saved_residuals
from .wrappers import (CheckpointedSequential, CheckpointHandle, checkpoint_modules, checkpoint_sequential,
                       remove_checkpointing)

__all__ = ["CheckpointedSequential", "checkpoint_sequential", "checkpoint_modules", "remove_checkpointing",
           "CheckpointHandle", "CheckpointError", "saved_residuals", "print_saved_residuals", "saved_bytes",
           "SavedRecorder", "storage_key", "replay_state_bytes"]
