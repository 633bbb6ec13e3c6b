"""Zygote: one preloaded process that forks a fresh measuring child per configuration.

Starting a measuring child used to cost more than most measurements: the interpreter, numpy
and ckpt (~0.3 s), and for a torch row torch itself (~1.3 s) plus ``torch._dynamo``, which
``torch.optim`` and ``torch.profiler`` import on first use (~1.3 s more; measured on 2 idle
cores).  A sweep starts a zygote once, with the children's environment (allocator threshold,
BLAS threads), which imports those modules, runs nothing, and forks one child per
configuration.  Each child is a new process with its own heap: it builds, meters and times its
workload and exits, exactly as a freshly started ``python -m profiling.runner`` does (the
same ``runner.child_main``), and dies with the zygote (``PR_SET_PDEATHSIG``), which dies with
the sweep.  Forking is only safe from a single-threaded process: the zygote reports its thread
count and the parent refuses it unless it is 1 (the runner then starts each child afresh).

The zygote's environment is ``runner.child_env(env, threads)`` at its start; it serves rows
run with the same ``env`` and ``threads`` (``serves``), others start afresh.

Protocol (JSON lines; one configuration at a time).  The zygote first writes
``{"ready": pid, "threads": n}``.  The parent writes ``{"args": [config json, options json],
"stdout": path, "stderr": path}``; the zygote forks, writes ``{"pid": child}``, waits and
writes ``{"pid": child, "returncode": rc}`` (negative: killed by signal ``-rc``, as in
``subprocess``).  The child's output goes to the two files.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback

PRELOAD = ("numpy", "ckpt", "profiling.runner", "memory_profiler", "psutil")
TORCH_PRELOAD = ("torch", "torch._dynamo", "torch.profiler", "torch.optim", "ckpt.torch")


class ZygoteError(RuntimeError):
    """The zygote could not start, refused to fork, or died."""


class Zygote:
    """The parent's handle: ``run(args, timeout)`` forks one child and returns how it ended."""

    def __init__(self, env: dict | None = None, threads: int | None = 1, preload=PRELOAD,
                 start_timeout: float = 120.0):
        from .runner import child_env, die_with_parent
        self.made_for = (dict(env or {}), threads)       # run_config's env and threads this zygote serves
        self._dir = tempfile.TemporaryDirectory(prefix="ckpt-zygote-")
        self._n = 0
        cmd = [sys.executable, "-m", "profiling.zygote", *preload]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env=child_env(env, threads), preexec_fn=die_with_parent)
        self._buffer = b""
        try:
            ready = self._reply(start_timeout)
        except ZygoteError:                              # it exited: an import failed (its stderr says which)
            ready = None
        if ready is None or ready.get("threads") != 1:
            self.close()
            why = "did not start" if ready is None else f"has {ready.get('threads')} threads after its imports"
            raise ZygoteError(f"zygote: the preloaded process {why}; forking it would not be safe")

    def serves(self, env: dict | None, threads: int | None) -> bool:
        """Whether a row with this extra ``env`` and ``threads`` may be forked here (alive, same environment)."""
        return self._proc.poll() is None and self.made_for == (dict(env or {}), threads)

    def run(self, args: list[str], timeout: float) -> tuple[int | None, str, str]:
        """(returncode, stdout, stderr) of a child running ``runner.child_main(args)``; returncode None on timeout."""
        self._n += 1
        out, err = (os.path.join(self._dir.name, f"{self._n}.{s}") for s in ("out", "err"))
        self._send({"args": args, "stdout": out, "stderr": err})
        started = self._reply(10.0)
        if started is None:
            raise ZygoteError("zygote: no child was forked within 10 s")
        ended = self._reply(timeout)
        returncode = None if ended is None else ended["returncode"]
        if ended is None:                                # a timeout: kill the child, collect its exit
            os.kill(started["pid"], signal.SIGKILL)
            if self._reply(10.0) is None:
                raise ZygoteError("zygote: the zygote did not reap a killed child")
        return returncode, _read_and_remove(out), _read_and_remove(err)

    def close(self) -> None:
        """Stop the zygote (its children die with it)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for f in (self._proc.stdin, self._proc.stdout):
            f.close()
        self._dir.cleanup()

    def _send(self, request: dict) -> None:
        try:
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
        except OSError:
            raise ZygoteError("zygote: the zygote is gone (its pipe is closed)") from None

    def _reply(self, timeout: float) -> dict | None:
        """The next JSON line from the zygote, or None after ``timeout`` seconds; raises when it has died."""
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise ZygoteError(f"zygote: the zygote (pid {self._proc.pid}) died")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


def _read_and_remove(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""
    finally:
        if os.path.exists(path):
            os.unlink(path)


# ----------------------------------------------------------------- the zygote process

PROTOCOL_FD = None      # in the zygote: its original stdout, kept for replies (fd 1 then points at stderr)


def _say(message: dict) -> None:
    os.write(PROTOCOL_FD, (json.dumps(message) + "\n").encode())


def _child(request: dict, zygote_pid: int) -> None:
    """In the forked child: die with the zygote, send output to the files, run the runner's child; never returns."""
    code = 1
    try:
        from .runner import child_main, die_with_parent
        die_with_parent()
        if os.getppid() != zygote_pid:                   # the zygote died before the line above
            os._exit(1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.close(PROTOCOL_FD)
        code = child_main(request["args"])
    except BaseException:                                # a row is always attempted; anything else is reported
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def serve(preload: list[str]) -> int:
    """The zygote's loop: import ``preload``, report readiness, fork one child per request line."""
    global PROTOCOL_FD
    signal.signal(signal.SIGINT, signal.SIG_IGN)         # Ctrl-C stops the sweep, which stops us
    PROTOCOL_FD = os.dup(1)
    os.dup2(2, 1)                                        # a stray print of an import cannot garble a reply
    for name in preload:
        importlib.import_module(name)
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
    _say({"ready": os.getpid(), "threads": threads})
    if threads != 1:
        return 1
    for line in sys.stdin.buffer:
        request = json.loads(line)
        zygote_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            _child(request, zygote_pid)
        _say({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _say({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)})
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
