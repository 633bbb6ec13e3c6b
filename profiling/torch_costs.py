"""What the torch workload allocates, stage by stage: a ``ckpt.Profile`` for its prediction.

The torch workload (``profiling.workloads.TorchWorkload``) is ``depth`` pairs of
``nn.Linear(W, W)`` and ``nn.ReLU()``, wrapped by ``ckpt.CheckpointedSequential``,
which makes every top-level module one stage: 2·depth stages, not depth.  Each
stage's bytes follow from its shapes and dtype (a = batch·W·itemsize, one
activation; w = W²·itemsize, b = W·itemsize: a weight and a bias), read from the
ATen kernels each op runs and confirmed op by op in torch's CPU allocator records
(``profiling.meters.TorchCPUMeter``; tests/test_torch_costs.py checks the totals):

==========  ========  =================================  ==========================================
stage       output    tape (saved for backward)          backward allocates (outputs included)
==========  ========  =================================  ==========================================
Linear      z: a      its input x_{i-1} (``addmm``'s      δx = δz·W (a; none for the first stage:
                      mat1; the weight is a parameter)    x_0 does not require grad), ∂W = δzᵀ·x
                                                          (w), ∂b = Σδz (b) — autograd's
                                                          AccumulateGrad keeps ∂W, ∂b as ``.grad``
ReLU        x: a      its output (``clamp_min``'s         δz = ``threshold_backward`` (a)
                      result)
==========  ========  =================================  ==========================================

Every forward allocates its output alone (forward transient = the output).

The MSE loss (``F.mse_loss``, mean): the forward allocates the unreduced
(batch, W) buffer and a second one of the same size (2a, plus 12 bytes of
scalars) and returns a 0-d *view* of one of them, so the loss value keeps a bytes
(``Profile.loss_bytes``) until the caller drops it — after the optimizer step in
the workload.  Its backward starts from a 0-d ``ones_like`` gradient (one item, also
held to the end: counted in ``loss_bytes``) and allocates δ_n (a).

Gradients: the step starts with ``p.grad = None`` (``zero_grad(set_to_none=True)``), so
each Linear's backward allocates ∂W and ∂b fresh and autograd's AccumulateGrad keeps that
very buffer as ``.grad`` (no accumulation copy); they stay to the step's end (``grad_bytes``).

Two more allocations happen outside the chain, at the step's end, and are added
here (``optimizer_step_bytes``): the optimizer's update, when every gradient is
held.  SGD, with or without momentum, updates in place (0 bytes); Adam's
single-tensor CPU path computes ``denom = (v.sqrt() / c).add_(eps)``: two
temporaries of the parameter's size alive at once, for the largest parameter
(2w).  The optimizer's state (one or two copies of the parameters, and Adam's
per-parameter 4-byte ``step`` counters) is allocated at the region's start and
resident: ``optimizer_state_bytes``.

On CUDA the same model applies up to the caching allocator's rounding (blocks of 512 bytes);
it is exact for torch's CPU allocator, whose records carry the requested sizes.
"""

from __future__ import annotations

import numpy as np

SCALAR_TEMPS = 12            # mse_loss's forward: an 8-byte and a 4-byte scalar, alive with its 2a buffers


def activation_bytes(batch: int, width: int, dtype: str) -> int:
    """Bytes of one (batch, width) activation."""
    return batch * width * np.dtype(dtype).itemsize


def mlp_profile(depth: int, width: int, batch: int, dtype: str = "float32"):
    """The ``ckpt.Profile`` of the torch workload's 2·depth Linear/ReLU stages and MSE loss (bytes; times in FLOPs).

    ``input_bytes`` is 0: x_0 is the caller's (resident) and autograd computes no δ_0
    for an input that does not require grad; so the first Linear's tape (x_0) counts 0.
    """
    import ckpt
    itemsize = np.dtype(dtype).itemsize
    a, w, b = activation_bytes(batch, width, dtype), width * width * itemsize, width * itemsize
    linear, relu = 2.0 * batch * width * width, float(batch * width)      # forward FLOPs; a backward twice
    stages = []
    for i in range(depth):
        first = i == 0
        stages.append(ckpt.StageCost(linear, 2 * linear, output_bytes=a, tape_bytes=0 if first else a, tape_keeps_input=True,
                                     forward_transient=a, backward_transient=(0 if first else a) + w + b,
                                     grad_bytes=w + b))
        stages.append(ckpt.StageCost(relu, 2 * relu, output_bytes=a, tape_bytes=a, tape_keeps_output=True,
                                     forward_transient=a, backward_transient=a))
    return ckpt.Profile(tuple(stages), input_bytes=0, loss_transient=2 * a + SCALAR_TEMPS, loss_bytes=a + itemsize,
                        time_unit="flops", source=f"torch Linear/ReLU stages and MSE loss on the CPU allocator, "
                                                  f"from shapes (profiling.torch_costs), batch {batch}")


def parameter_sizes(depth: int, width: int, dtype: str) -> list[int]:
    """Bytes of each parameter tensor (weight, bias per Linear)."""
    itemsize = np.dtype(dtype).itemsize
    return [width * width * itemsize, width * itemsize] * depth


ADAM_STEP_COUNTER = 4        # torch.optim.Adam keeps a 0-d float32 ``step`` tensor per parameter on CPU


def optimizer_state_bytes(optimizer: str, sizes: list[int]) -> int:
    """Bytes of the optimizer's state: momentum one copy of the parameters, Adam two and a step counter each."""
    if optimizer == "momentum":
        return sum(sizes)
    if optimizer == "adam":
        return 2 * sum(sizes) + ADAM_STEP_COUNTER * len(sizes)
    return 0


def optimizer_step_bytes(optimizer: str, sizes: list[int]) -> int:
    """Peak bytes the optimizer's update allocates (see the module docstring): Adam 2 × its largest parameter."""
    return 2 * max(sizes) if optimizer == "adam" and sizes else 0


def rng_state_nbytes() -> int:
    """Bytes of one saved CPU generator state (``torch.get_rng_state()``; ckpt's torch backend counts them)."""
    from ckpt.torch.backend import rng_state_nbytes as nbytes
    return nbytes()


def profile_backend(profile, replay_state_bytes: int):
    """``ckpt.ProfileBackend`` plus the generator state ckpt's torch backend saves while a replay runs.

    With ``preserve_rng_state=True`` (its default) the caller's generator state is saved
    for the length of each replay: every forward after the loss has it in flight.  (The
    states saved in the first sweep, one per stage a replay starts from, are held to the
    step's end: ``rng_state_bytes``, added as resident.)
    """
    from ckpt.backends.symbolic import ProfileBackend
    from ckpt.schedule import Forward, ForwardTape

    class TorchCPUProfileBackend(ProfileBackend):
        replaying = False

        def loss(self, x, y):
            self.replaying = True
            return super().loss(x, y)

        def temp_bytes(self, action, operand, y=None) -> int:
            replay = self.replaying and isinstance(action, (Forward, ForwardTape))
            return super().temp_bytes(action, operand, y) + (replay_state_bytes if replay else 0)

    return TorchCPUProfileBackend(profile)


def rng_state_bytes(schedule) -> int:
    """Bytes of the generator states saved in the first sweep: one per stage a replay starts from."""
    return rng_state_nbytes() * len(schedule.replay_starts())


def predicted(c) -> dict:
    """The memory model's prediction of a torch CPU config (the fields of ``profiling.workloads.predicted``)."""
    import ckpt
    profile = mlp_profile(c.depth, c.width, c.batch, c.dtype)
    if c.mode == "predict":
        s = ckpt.predict_memory(profile, mode="predict")
        return {"predicted_peak_bytes": s.peak_bytes, "predicted_activation_bytes": s.peak_activation_bytes,
                "predicted_saved_bytes": 0, "predicted_forward_steps": s.forward_steps}
    fused = bool(getattr(c, "fused", False))
    schedule = ckpt.schedule_for(profile, c.strategy, **({"fused": True} if fused else {}), **c.strategy_options)
    backend = profile_backend(profile, rng_state_nbytes() if schedule.replay_starts() else 0)
    s = ckpt.execute(schedule, backend, *backend.inputs()).stats
    sizes = parameter_sizes(c.depth, c.width, c.dtype)
    # the optimizer's update: after the backward over every gradient; fused, one parameter's at a time
    held_grads = max(sizes) if fused else sum(sizes)
    at_end = held_grads + profile.loss_bytes + optimizer_step_bytes(c.optimizer, sizes)
    resident = optimizer_state_bytes(c.optimizer, sizes) + rng_state_bytes(schedule)
    return {"predicted_peak_bytes": max(s.peak_bytes, at_end) + resident,
            "predicted_activation_bytes": s.peak_activation_bytes,
            "predicted_saved_bytes": s.peak_saved_bytes,
            "predicted_forward_steps": s.forward_steps}
