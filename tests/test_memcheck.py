"""The pre-run memory check: a step that cannot fit is refused before any work, naming both numbers."""

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ckpt
from ckpt import memcheck

MiB = 2**20

# depth 32, width 64, batch 4096, float64: store_all ≈ 66 MiB, sqrt_n ≈ 24 MiB, recompute ≈ 9 MiB (predicted)
CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, ckpt
    from ckpt.memcheck import read_status_bytes
    model = ckpt.MLP([64] * 33)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4096, 64)), rng.standard_normal((4096, 64))
    ckpt.gradients(model, x[:8], y[:8], "store_all")      # warm: one-time allocations before the limit
    vm = read_status_bytes("VmSize")
    resource.setrlimit(resource.RLIMIT_AS, (vm + 45 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
    out = {}
    for strategy, check in [("store_all", True), ("sqrt_n", True), ("store_all", False)]:
        try:
            r = ckpt.gradients(model, x, y, strategy, memory_check=check)
            out[f"{strategy} {check}"] = ["ok", r.stats.peak_bytes]
        except MemoryError as e:
            out[f"{strategy} {check}"] = [type(e).__name__, str(e)]
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_refused_under_an_address_space_limit():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    kind, message = out["store_all True"]
    assert kind == "InsufficientMemoryError"
    assert "strategy 'store_all' (batch 4096, 32 stages; predicted peak) needs 66.1 MiB (69,272,576 B)" in message
    assert re.search(r"but this process may use (3\d|4[0-5])\.\d MiB \([\d,]+ B, RLIMIT_AS − VmSize\); ", message)
    assert "sqrt_n would fit (24.2 MiB, 58 forward steps vs 32)" in message        # fewest forward steps
    assert "Pass memory_check=False to run anyway" in message
    assert out["sqrt_n True"][0] == "ok"
    assert out["store_all False"][0] == "MemoryError"                # what the check prevents: a failure half-way


def limited(monkeypatch, nbytes: int, source: str = "MemAvailable"):
    monkeypatch.setattr(memcheck, "memory_limits", lambda device="cpu": {source: nbytes})


def test_gradients_refused_before_any_work(monkeypatch):
    model = ckpt.MLP([64] * 33)
    x = np.zeros((4096, 64))
    limited(monkeypatch, 5 * MiB)
    with pytest.raises(ckpt.InsufficientMemoryError, match=r"may use 5.0 MiB \(5,242,880 B, MemAvailable\); "
                                                           r"no strategy fits: use a smaller batch or model"):
        ckpt.gradients(model, x, x, "sqrt_n")
    limited(monkeypatch, 12 * MiB)
    with pytest.raises(ckpt.InsufficientMemoryError, match="recompute would fit .* 528 forward steps vs 58"):
        ckpt.gradients(model, x, x, "sqrt_n")
    assert ckpt.gradients(model, x[:64], x[:64], "sqrt_n").loss >= 0    # a small batch fits


def test_fused_step_is_checked_with_its_own_prediction(monkeypatch):
    model = ckpt.MLP([128] * 17)
    x = np.zeros((8, 128))
    unfused, fused = (ckpt.predict_memory(model, "store_all", batch=8, fused=f).peak_bytes for f in (False, True))
    assert fused < unfused / 4                                       # gradients dominate unfused
    limited(monkeypatch, (fused + unfused) // 2)
    opt = ckpt.optim.SGD(model.params)
    ckpt.train_step(model, x, x, opt, fused=True)
    with pytest.raises(ckpt.InsufficientMemoryError, match="'store_all'"):
        ckpt.train_step(model, x, x, opt, fused=False)
    ckpt.train_step(model, x, x, opt, fused=False, memory_check=False)


def test_check_fits_for_other_callers(monkeypatch):
    limited(monkeypatch, 100, "CUDA free")
    memcheck.check_fits(100, device="cuda:0", what="torch step")
    with pytest.raises(ckpt.InsufficientMemoryError, match=r"memcheck: torch step needs 0.0 MiB \(101 B\), "
                                                           r"but this process may use 0.0 MiB \(100 B, CUDA free\)"):
        memcheck.check_fits(101, device="cuda:0", what="torch step")
    with pytest.raises(ckpt.InsufficientMemoryError, match="b would fit"):
        memcheck.check_fits(200, alternatives=[("a", 150, 1), ("b", 90, 9), ("c", 50, 20)])


def test_limits_read_from_this_process():
    limits = memcheck.memory_limits()
    assert limits["MemAvailable"] > 0
    assert all(isinstance(v, int) and v >= 0 for v in limits.values())
    assert memcheck.cuda_free("cpu") is None
    available, source = memcheck.available_bytes()
    assert available == min(limits.values()) and source in limits


def test_remembered_prediction_tells_models_apart(monkeypatch):
    plain, with_l2 = ckpt.MLP([64] * 9), ckpt.MLP([64] * 9, l2=0.1)    # l2 adds a W-sized temporary
    a = memcheck._predicted(plain, 32, "store_all", False, {})
    b = memcheck._predicted(with_l2, 32, "store_all", False, {})
    assert a == (ckpt.predict_memory(plain, batch=32).peak_bytes, 8)
    assert b == (ckpt.predict_memory(with_l2, batch=32).peak_bytes, 8) and b != a
