"""The planner's C kernel (``_frontier.c``): compiled on first use, cached by the source's hash, loaded with ctypes.

Like ``torch.utils.cpp_extension.load``, the shared library is built by the
system's C compiler (``$CC``, else ``cc``) into ``$CKPT_CACHE_DIR`` (default
``~/.cache/ckpt``) under a name that hashes the source and the flags, so an
edited source is never served by a stale build.  Without a compiler, or with
``CKPT_PLANNER_ENGINE=numpy``, :func:`frontier_lib` is ``None`` and the
planners use their numpy engine: same frontiers, slower.
``CKPT_PLANNER_ENGINE=native`` makes a failed build an error instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import sysconfig
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("_frontier.c")
ABI = 8                                        # CKPT_FRONTIER_ABI in the source
FLAGS = ["-O2", "-shared", "-fPIC", "-std=c99"]
ENGINES = ("auto", "native", "numpy")

_i64, _f64, _u8, _i32 = (np.ctypeslib.ndpointer(dtype=t, flags="C_CONTIGUOUS")
                         for t in (np.int64, np.float64, np.uint8, np.int32))


def engine_choice() -> str:
    """``CKPT_PLANNER_ENGINE``: auto (native if it builds), native (must build) or numpy."""
    choice = os.environ.get("CKPT_PLANNER_ENGINE", "auto").lower()
    if choice not in ENGINES:
        raise ValueError(f"ckpt: CKPT_PLANNER_ENGINE={choice!r} is not one of {', '.join(ENGINES)}")
    return choice


def _cache_dir() -> Path:
    root = os.environ.get("CKPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ckpt")
    return Path(root)


def _build(target: Path, extra_flags: tuple = ()) -> None:
    """Compile the source to ``target`` atomically (concurrent builders each rename a whole file); ``extra_flags``
    (e.g. ``-DCKPT_FRONTIER_COUNTS``) go after ``FLAGS``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".part")
    os.close(fd)
    compiler = os.environ.get("CC", "cc")
    try:
        try:
            done = subprocess.run([compiler, *FLAGS, *extra_flags, "-o", partial, str(SOURCE)], capture_output=True, text=True,
                                  timeout=120)
        except subprocess.TimeoutExpired as error:
            raise OSError(f"{compiler} ran past {error.timeout:g} s") from error
        if done.returncode:
            raise OSError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _declare(lib) -> None:
    lib.ckpt_frontier_abi.restype = ctypes.c_int
    lib.ckpt_frontier_solve.restype = ctypes.c_void_p
    lib.ckpt_frontier_solve.argtypes = [ctypes.c_int, _i64, _i64, _i64, _u8, _u8, _i64, _f64, _f64, _i64, _i64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_double, _i32, _i64, ctypes.c_int,
                                        ctypes.c_int64, _i64, _i64, _i64, _f64, ctypes.POINTER(ctypes.c_int)]
    lib.ckpt_frontier_read.restype = None
    lib.ckpt_frontier_read.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, _i64, _f64]
    lib.ckpt_frontier_choice.restype = ctypes.c_int
    lib.ckpt_frontier_choice.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                         ctypes.c_int64, _i32]
    lib.ckpt_frontier_free.restype = None
    lib.ckpt_frontier_free.argtypes = [ctypes.c_void_p]


def counting_lib(target: Path):
    """The kernel built into ``target`` with ``-DCKPT_FRONTIER_COUNTS`` and loaded: ``ckpt_frontier_counts()``
    returns its work counters (``_frontier.c``'s enum).  Raises ``OSError`` without a compiler."""
    _build(target, ("-DCKPT_FRONTIER_COUNTS",))
    lib = ctypes.CDLL(str(target))
    _declare(lib)
    lib.ckpt_frontier_counts.restype = ctypes.POINTER(ctypes.c_int64)
    return lib


@lru_cache(maxsize=None)
def _load() -> tuple[object, str]:
    """(library or None, why not)."""
    tag = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()
                         + (sysconfig.get_platform() + sys.implementation.cache_tag).encode()).hexdigest()[:16]
    target = _cache_dir() / f"frontier-{tag}.so"
    try:
        if not target.exists():
            _build(target)
        lib = ctypes.CDLL(str(target))
        _declare(lib)
    except OSError as error:
        return None, f"the C planner kernel did not build or load ({error}); CC or CKPT_CACHE_DIR may help"
    if lib.ckpt_frontier_abi() != ABI:
        return None, f"{target} reports ABI {lib.ckpt_frontier_abi()}, this ckpt needs {ABI}"
    return lib, ""


def frontier_lib():
    """The loaded C kernel, or None when the numpy engine is to be used (chosen, or no compiler)."""
    choice = engine_choice()
    if choice == "numpy":
        return None
    lib, why = _load()
    if lib is None and choice == "native":
        raise RuntimeError(f"ckpt: CKPT_PLANNER_ENGINE=native but {why}")
    return lib


def engine() -> str:
    """Which planner engine ``optimal`` uses here: 'native' or 'numpy'."""
    return "native" if frontier_lib() is not None else "numpy"
