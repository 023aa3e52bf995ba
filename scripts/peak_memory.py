"""Run a command and report its wall time and peak resident memory, summed over it and its worker processes.

    python scripts/peak_memory.py COMMAND [ARGS...]

Every 0.1 s the resident set sizes (VmRSS) of the command and of all its descendants are read from
Linux's /proc and summed; the JSON line on stderr gives the largest sum, the largest single process and the
wall seconds. `/usr/bin/time -v` reports only the largest single process, which misses worker pools.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc), parents before their children."""
    found, queue = [pid], [pid]
    while queue:
        for task in Path(f"/proc/{queue.pop(0)}/task").glob("*/children"):
            try:
                children = [int(c) for c in task.read_text().split()]
            except OSError:
                continue
            found += children
            queue += children
    return found


def resident_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    start = time.perf_counter()
    process = subprocess.Popen(sys.argv[1:])
    peak_sum = peak_one = 0.0
    while process.poll() is None:
        sizes = [resident_mib(pid) for pid in descendants(process.pid)]
        peak_sum, peak_one = max(peak_sum, sum(sizes)), max([peak_one, *sizes])
        time.sleep(0.1)
    result = {
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_tree_rss_mib": round(peak_sum),
        "peak_process_rss_mib": round(peak_one),
        "exit_status": process.returncode,
    }
    print(json.dumps(result), file=sys.stderr)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
