"""Memory timelines: the model's stack per action, tracemalloc per action, torch's allocator over time, the command."""

import argparse

import numpy as np
import pytest

import ckpt
from profiling import timeline as T
from profiling.workloads import Config

C = Config(depth=8, width=32, batch=64)
ACTIVATION = 64 * 32 * 4


def _total(df):
    return df[list(T.CATEGORIES)].sum(axis=1).to_numpy()


def test_predicted_training_rises_through_the_forward_and_falls_through_the_backward():
    df = T.predicted_timeline(C)
    total, loss = _total(df), int(df.index[df["action"] == "Loss()"][0])
    assert np.all(np.diff(total[:loss]) >= 0) and total[loss - 1] > total[0] + C.depth * ACTIVATION / 2
    saved = df["saved tapes"].to_numpy()
    assert saved[loss - 1] == ckpt.predict_memory(T._model(C), "store_all", batch=C.batch).peak_saved_bytes
    assert np.all(np.diff(saved[loss:]) <= 0) and saved[-1] == 0             # every tape consumed
    params = T._resident(T._model(C), C)[0]
    assert df["gradients"].iloc[-1] == params                                 # one gradient per parameter


def test_predicted_prediction_stays_flat():
    df = T.predicted_timeline(Config.from_dict({**C.as_dict(), "mode": "predict", "optimizer": "none"}))
    total = _total(df)[1:]
    assert total.max() - total.min() <= ACTIVATION                      # one activation at a time
    assert df["saved tapes"].max() == 0 and df["gradients"].max() == 0


@pytest.mark.parametrize("strategy", ["store_all", "sqrt_n"])
def test_numpy_measured_follows_the_prediction_action_by_action(strategy):
    c = Config.from_dict({**C.as_dict(), "depth": 16, "batch": 256, "strategy": strategy})
    pred, meas = T.predicted_timeline(c), T.numpy_timeline(c)
    assert list(pred["action"]) == list(meas["action"])
    # tracemalloc also sees the executor's few KiB of Python bookkeeping
    assert np.abs(meas["held"].to_numpy() - _total(pred)) .max() <= 0.02 * _total(pred).max() + 16 * 1024
    assert (meas["peak"] >= meas["held"] - 1024).iloc[1:].all()


def test_torch_measured_rises_then_falls():
    pytest.importorskip("torch")
    d = T.torch_timeline(Config.from_dict({**C.as_dict(), "batch": 512}))
    held = d["held"].to_numpy()
    top = int(np.argmax(held))
    assert 0 < top < len(held) - 1
    assert held[top] - held[0] >= C.depth * 512 * 32 * 4                # every stage's saved activation
    assert held[-1] < held[top]


def test_the_command_writes_a_figure_and_a_csv(tmp_path):
    parser = argparse.ArgumentParser()
    T.add_parser(parser.add_subparsers())
    args = parser.parse_args(["timeline", "--depth", "4", "--width", "16", "--batch", "8", "--backend", "numpy",
                              "--strategy", "store_all", "recompute", "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
    import pandas as pd
    frame = pd.read_csv(tmp_path / "timeline.csv")
    assert set(frame["line"]) == {"store_all", "recompute", "predict"}
    assert set(frame["source"]) == {"predicted", "numpy"}
