"""Joining a worker thread until the OS thread is really gone.

``Thread.join()`` returns once the thread's Python code has finished, before its C++
thread-local destructors run. MLX keeps ``mx.compile`` traces in such thread-locals (in this
server: the engine's compiled blocks and kernels, mlx-lm's compiled samplers), and freeing
them takes the GIL. If the interpreter starts shutting down in that window, as when a
process stops an engine and exits at once, the thread is killed inside a destructor and the
process aborts ("terminate called without an active exception", exit status 134).
"""

from __future__ import annotations

import os
import threading
import time


def join_fully(thread: threading.Thread, timeout: float | None = None) -> None:
    """``thread.join(timeout)``, then (on Linux) wait, within the same timeout, until the
    OS thread has exited, thread-local destructors included."""
    deadline = None if timeout is None else time.monotonic() + timeout
    thread.join(timeout)
    if thread.is_alive() or thread.native_id is None:
        return
    task = f"/proc/self/task/{thread.native_id}"
    if not os.path.exists("/proc/self/task"):
        return  # no per-thread view of the process (not Linux): join() is all there is
    while os.path.exists(task) and (deadline is None or time.monotonic() < deadline):
        time.sleep(0.001)
