"""Worker processes that do not outlive the process that started them.

A ``ProcessPoolExecutor`` worker keeps running its task when its parent is killed (``kill``, ``timeout``,
a cancelled CI job): nobody reads its result, but it holds a core for the rest of its fold or benchmark
row. Two guards, used by every stage (:func:`metastases.cli.run_stage`) and by the benchmark's workers:

- :func:`children_end_with_me`: while it is active, SIGTERM to this process first stops its child
  processes (fold processes, loader workers, a ``torchrun`` launcher), then ends it.
- :func:`die_with_parent`, in a pool's ``initializer``: the kernel sends the worker SIGTERM when its
  parent ends, however it ends (SIGKILL included; Linux only).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SECONDS = 40.0
"""How long stopped children may take to exit (torchrun gives its ranks 30 s) before they are killed."""


def _child_pids() -> list[int]:
    """This process's live children, from /proc (empty elsewhere), except multiprocessing's resource
    tracker: it removes the pools' semaphores once everyone else has gone."""
    me, found = os.getpid(), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if (
                int(fields[1]) == me
                and fields[0] != "Z"
                and b"resource_tracker" not in (entry / "cmdline").read_bytes()
            ):
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


def _stop(pids: list[int]) -> None:
    """SIGTERM each of ``pids`` (children of this process), wait for them, SIGKILL what is left."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline, waiting = time.monotonic() + STOP_SECONDS, set(pids)
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    waiting.discard(pid)
            except ChildProcessError:  # already reaped
                waiting.discard(pid)
        time.sleep(0.05)
    for pid in waiting:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _stop_children_and_exit(owner: int, *, quiet: bool) -> Callable[[int, FrameType | None], None]:
    """A SIGTERM handler for process ``owner``: stop its children, say so in one line (unless
    ``quiet``), exit with 128 + the signal. A process forked from it (a DataLoader worker, before it sets
    its own handlers) inherits the handler; there it only exits."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        try:
            if os.getpid() == owner:
                # a child's exit must not run another handler in here (PyTorch's SIGCHLD handler raises
                # when a loader worker ends by a signal)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _stop(_child_pids())
                if not quiet:
                    os.write(2, f"error: terminated ({signal.Signals(signum).name})\n".encode())
        except OSError:
            pass  # stderr closed: nothing more to say
        finally:
            os._exit(128 + signum)  # whatever happened above, this process ends

    return handler


def under_torchrun() -> bool:
    """True in a process that ``torchrun`` started (it sets ``LOCAL_RANK`` and ``WORLD_SIZE``); torchrun
    stops its ranks itself."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


@contextmanager
def children_end_with_me() -> Iterator[None]:
    """While inside, SIGTERM stops this process's children, then this process (exit status 143, one
    ``error:`` line). Does nothing outside the main thread (Python handles signals there only) and in
    a ``torchrun`` rank; the previous SIGTERM handler is restored on leaving."""
    if threading.current_thread() is not threading.main_thread() or under_torchrun():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _stop_children_and_exit(os.getpid(), quiet=False))
    try:
        yield
    finally:
        if previous is not None:  # None: a handler set outside Python, which cannot be put back
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
    processes): the worker ends with ``parent`` (:func:`die_with_parent`) and stops its own children
    on the way out, quietly (the parent speaks for the run)."""
    die_with_parent(parent)
    signal.signal(signal.SIGTERM, _stop_children_and_exit(os.getpid(), quiet=True))
