"""The ``engine`` fixture: run a planner test on the C kernel and on the numpy engine.

The native run skips only where no C compiler is on PATH; with one, a kernel that
fails to build fails the test (CKPT_PLANNER_ENGINE=native raises).
"""

import os
import shutil

import pytest


def needs_a_compiler() -> None:
    """Skip the calling test where no C compiler is on PATH (the planner then uses its numpy engine)."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler on PATH: the planner uses its numpy engine here")


@pytest.fixture(params=["native", "numpy"])
def engine(request, monkeypatch):
    """Select the planner engine for one test (``CKPT_PLANNER_ENGINE``)."""
    if request.param == "native":
        needs_a_compiler()
    monkeypatch.setenv("CKPT_PLANNER_ENGINE", request.param)
    return request.param
