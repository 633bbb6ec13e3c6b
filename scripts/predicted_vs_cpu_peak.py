"""Predicted peak (memory model on Profile.from_torch) vs torch's CPU allocator peak, schedule by schedule.

    PYTHONPATH=$PWD python scripts/predicted_vs_cpu_peak.py

The models and schedules of tests/test_profile_cpu_transients.py (a small CNN and a post-LN
transformer; store_all, sqrt_n, recompute, revolve, optimal at two budgets).  Per schedule: the
predicted peak (``ckpt.predict_memory``), the measured one (``TorchCPUMeter`` over one
``CheckpointedSequential`` step after a warm-up), their difference, and the CPU generator states
the step holds to its end (one per re-run start), which the memory model leaves out.  For an older
checkout, put its ``ckpt`` first on PYTHONPATH.
"""

from __future__ import annotations

import ckpt
from ckpt.torch.backend import rng_state_nbytes
from tests.test_profile_cpu_transients import SCHEDULES, cnn, measured_peak, transformer


def main() -> None:
    state = rng_state_nbytes()
    print(f"{'model':12} {'schedule':24} {'predicted':>10} {'measured':>10} {'ratio':>7} {'diff':>7} {'states':>7}")
    for build in (cnn, transformer):
        stages, x = build()
        profile = ckpt.Profile.from_torch(stages, x, repeats=1)
        for name, make in SCHEDULES.items():
            schedule = make(profile)
            predicted = ckpt.predict_memory(profile, schedule).peak_bytes
            measured = measured_peak(stages, schedule, x)
            states = len(schedule.replay_starts()) * state
            print(f"{build.__name__:12} {name:24} {predicted:>10,} {measured:>10,} {measured / predicted:>7.4f} "
                  f"{measured - predicted:>7,} {states:>7,}")


if __name__ == "__main__":
    main()
