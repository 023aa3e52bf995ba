"""Worker processes end with the process that started them: a killed stage leaves nothing training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_arrays import write_cohort

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (an exited process nobody has reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _workers(pid: int) -> list[int]:
    """The multiprocessing workers ``pid`` started (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid and b"spawn_main" in command:
                found.append(int(entry.name))
    return found


def _wait(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _kill_parent_and_watch(script: str, workers: int, tmp_path: Path, start_s: float) -> list[int]:
    """Run ``script``, wait for ``workers`` workers, SIGKILL it; return the workers alive 15 s later."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env)
    try:
        assert _wait(lambda: len(_workers(parent.pid)) >= workers, start_s), "workers never started"
        children = _workers(parent.pid)
        time.sleep(1.0)  # past the initializer
        parent.kill()
        parent.wait()
        _wait(lambda: not any(_alive(pid) for pid in children), 15.0)
        survivors = [pid for pid in children if _alive(pid)]
    finally:
        parent.kill()
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    return survivors


POOL = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from metastases.processes import die_with_parent

def work(_):
    time.sleep(120)

if __name__ == "__main__":
    options = {INIT}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context, **options) as pool:
        list(pool.map(work, range(2)))
"""


@pytest.mark.parametrize("guarded", [True, False], ids=["die_with_parent", "plain_pool"])
def test_pool_workers_end_with_a_killed_parent_only_when_guarded(guarded: bool, tmp_path: Path) -> None:
    init = "dict(initializer=die_with_parent, initargs=(os.getpid(),))" if guarded else "{}"
    script = POOL.replace("{INIT}", init)
    (tmp_path / "pool.py").write_text(script)
    survivors = _kill_parent_and_watch(
        "import runpy; runpy.run_path('pool.py', run_name='__main__')", 2, tmp_path, 60.0
    )
    # the unguarded pool is the control: its workers outlive the parent, which is what the guard prevents
    assert (survivors == []) == guarded


def test_a_killed_training_stage_leaves_no_fold_process_training(tmp_path: Path) -> None:
    cohort = write_cohort(tmp_path / "cohort", patients=12, size_2d=16, size_3d=16, folds=2)
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from metastases.params import TrainParams
        from metastases.training.workflow import TrainOutputs, run_training
        params = TrainParams(epochs=100000, batch_size=4, threads=1, num_workers=0, device="cpu",
                             restarts=0, parallel_folds=2)
        out = Path("out")
        outputs = TrainOutputs(model=out / "m.pt", metrics=out / "m.json", curves=out / "c.csv",
                               png=out / "l.png", timing=out / "t.json")
        run_training(Path({str(cohort["2d"])!r}), Path({str(cohort["splits"])!r}), params, 0, outputs)
        """
    )
    assert _kill_parent_and_watch(script, 2, tmp_path, 120.0) == []
    assert not (tmp_path / "out" / "m.pt").exists()
