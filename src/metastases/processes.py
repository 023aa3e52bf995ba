"""Worker processes that do not outlive the process that started them.

A ``ProcessPoolExecutor`` worker keeps running its task when its parent is killed (``kill``, ``timeout``,
a cancelled CI job, an out-of-memory kill): nobody reads its result, but it holds a core for the rest of
the fold or benchmark row. Pools pass :func:`die_with_parent` as (part of) their ``initializer``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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
