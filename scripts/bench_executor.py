"""The executor's own cost per action: every schedule run on a backend that does no work."""

import argparse
import statistics
import time

import ckpt


class NullBackend:
    """Runs nothing: each value is a fresh object of 8 bytes, so only the executor's bookkeeping is timed."""

    def check_inputs(self, n, x, y):
        """Accept anything."""

    def forward(self, i, x, keep_tape):
        """A new value, and a tape holding the input when asked."""
        return object(), ((x,) if keep_tape else None)

    def loss(self, x, y):
        """J = 0 and a new δ_n."""
        return 0.0, object()

    def backward(self, i, tape, delta):
        """A new δ_{i-1} and one gradient."""
        return object(), {"W": object()}

    def storage(self, value):
        """Each value is its own storage."""
        return id(value)

    def nbytes(self, value):
        """Every value weighs 8 bytes."""
        return 8

    def temp_bytes(self, action, operand, y=None):
        """No temporaries."""
        return 0


def main() -> None:
    """Print µs per action, median of --repeats runs, for each strategy."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--depth", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--strategy", nargs="+", default=["store_all", "sqrt_n", "recompute"])
    args = p.parse_args()
    for name in args.strategy:
        schedule = ckpt.make_schedule(name, args.depth)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ckpt.execute(schedule, NullBackend(), object(), object())
            times.append(time.perf_counter() - t0)
        print(f"{name:10s} {len(schedule):6d} actions  {statistics.median(times) / len(schedule) * 1e6:5.2f} µs/action")


if __name__ == "__main__":
    main()
