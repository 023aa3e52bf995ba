"""Worker processes that do not outlive the process that started them.

A ``ProcessPoolExecutor`` worker keeps running its task when its parent is killed (``kill``, ``timeout``,
a cancelled CI job): nobody reads its result, but it holds a core for the rest of its fold or benchmark
row. Two guards, used by every stage (:func:`metastases.cli.run_stage`) and by the benchmark's workers:

- :func:`children_end_with_me`: while it is active, SIGTERM to this process first terminates its
  multiprocessing children (fold processes, loader workers), then ends it.
- :func:`die_with_parent`, in a pool's ``initializer``: the kernel sends the worker SIGTERM when its
  parent ends, however it ends (SIGKILL included; Linux only).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
JOIN_SECONDS = 10.0
"""How long a terminated child may take to exit before its parent goes anyway."""


def _end_children_and_exit(owner: int) -> Callable[[int, FrameType | None], None]:
    """A SIGTERM handler for process ``owner``: terminate its multiprocessing children, say so in one
    line, exit. A process forked from it (a DataLoader worker) inherits the handler; there it only exits,
    so that the stage prints its line once."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        # the children's exits must not run another handler in here (PyTorch's SIGCHLD handler raises
        # when a loader worker ends by a signal), and nothing may keep this process from exiting
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            children = multiprocessing.active_children()
            for child in children:
                child.terminate()
            for child in children:
                child.join(JOIN_SECONDS)
            print(f"error: terminated ({signal.Signals(signum).name})", file=sys.stderr, flush=True)
        finally:
            os._exit(128 + signum)

    return handler


@contextmanager
def children_end_with_me() -> Iterator[None]:
    """While inside, SIGTERM terminates this process's multiprocessing children, then this process
    (exit status 143, one ``error:`` line). Outside the main thread it does nothing (Python handles
    signals there only); the previous SIGTERM handler is restored on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _end_children_and_exit(os.getpid()))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent(parent: int) -> None:
    """Make this process end when process ``parent`` (the one that started it) ends.

    On Linux the kernel sends SIGTERM to this process when its parent exits, however it exits; if the
    parent has already gone (it died between starting this process and this call), this process exits
    at once. Elsewhere only that last check is made. Call it first thing in a pool's initializer, with
    ``os.getpid()`` of the process creating the pool (and from the thread that submits the work: the
    kernel ties the signal to the thread that started the process).

    Args:
        parent: process id of the process that starts this one.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:  # pragma: no cover
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)


def guard_worker(parent: int) -> None:
    """A pool ``initializer`` for workers that start processes of their own (a benchmark job's fold
    processes): the worker ends with ``parent`` (:func:`die_with_parent`) and takes its children along."""
    die_with_parent(parent)
    signal.signal(signal.SIGTERM, _end_children_and_exit(os.getpid()))
