"""Worker processes end with the process that started them: a killed stage or benchmark leaves nothing
training. Real processes, real signals, real training on tiny arrays; the process table is read from
/proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_arrays import write_cohort

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (an exited process nobody has reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _workers(pid: int) -> list[int]:
    """The processes ``pid`` started: pool workers, loader workers (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid and b"resource_tracker" not in command:
                found.append(int(entry.name))
    return found


def _wait(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _signal_and_watch(
    command: list[str], ready: Callable[[int], list[int]], signum: int, cwd: Path
) -> tuple[list[int], int, str]:
    """Start ``command``; once ``ready(pid)`` lists its workers, send it ``signum``. Returns the workers
    still alive 15 s later (killed afterwards), the exit status and stderr."""
    log = cwd / "stderr.txt"
    with log.open("w") as stderr:  # a file, not a pipe: surviving workers would hold a pipe open
        process = subprocess.Popen(command, cwd=cwd, env=ENV, stderr=stderr, text=True)
    try:
        assert _wait(lambda: bool(ready(process.pid)), 180.0), "the workers never started"
        workers = ready(process.pid)
        time.sleep(1.0)  # past the workers' initializers
        process.send_signal(signum)
        process.wait(timeout=60)
        _wait(lambda: not any(_alive(pid) for pid in workers), 15.0)
        survivors = [pid for pid in workers if _alive(pid)]
    finally:
        process.kill()
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    return survivors, process.returncode, log.read_text()


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


def _at_least(count: int, workers: Callable[[int], list[int]]) -> Callable[[int], list[int]]:
    return lambda pid: found if len(found := workers(pid)) >= count else []


@pytest.mark.parametrize("guarded", [True, False], ids=["die_with_parent", "plain_pool"])
def test_pool_workers_end_with_a_killed_parent_only_when_guarded(guarded: bool, tmp_path: Path) -> None:
    init = "dict(initializer=die_with_parent, initargs=(os.getpid(),))" if guarded else "{}"
    (tmp_path / "pool.py").write_text(POOL.replace("{INIT}", init))
    survivors, _, _ = _signal_and_watch(
        [sys.executable, "pool.py"], _at_least(2, _workers), signal.SIGKILL, tmp_path
    )
    # the unguarded pool is the control: its workers outlive the parent, which is what the guard prevents
    assert (survivors == []) == guarded


@pytest.fixture(scope="module")
def endless(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny arrays and a params file whose training would take days: two folds at once."""
    root = tmp_path_factory.mktemp("endless")
    files = write_cohort(root, patients=12, size_2d=16, size_3d=16, folds=2)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name in ("train_2d", "train_3d"):
        params[name].update(
            epochs=100000, batch_size=4, threads=1, num_workers=0, device="cpu", restarts=0, parallel_folds=2
        )
    files["params"] = root / "params.yaml"
    files["params"].write_text(yaml.safe_dump(params))
    return files


@pytest.mark.parametrize(
    ("parallel_folds", "num_workers"), [(2, 0), (1, 1)], ids=["fold_processes", "loader_worker"]
)
def test_a_terminated_training_stage_takes_its_workers_along(
    parallel_folds: int, num_workers: int, endless: dict[str, Path], tmp_path: Path
) -> None:
    params = yaml.safe_load(endless["params"].read_text())
    params["train_2d"].update(parallel_folds=parallel_folds, num_workers=num_workers)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    command = [
        sys.executable, str(ROOT / "stages/train.py"), "--dim", "2d",
        "--params", str(tmp_path / "params.yaml"),
        "--data-dir", str(endless["2d"]), "--splits", str(endless["splits"]),
        "--model-out", str(out / "2d.pt"), "--metrics", str(out / "train_2d.json"),
        "--curves", str(out / "model_2d.csv"), "--png", str(out / "loss_2d.png"),
        "--timing", str(out / "timing.json"),
    ]  # fmt: skip
    ready = _at_least(max(parallel_folds, num_workers), _workers)
    survivors, status, stderr = _signal_and_watch(command, ready, signal.SIGTERM, tmp_path)
    assert survivors == []
    assert status == 128 + signal.SIGTERM
    # one line, from the stage: a forked loader worker inherits the handler but leaves quietly
    assert stderr.splitlines().count("error: terminated (SIGTERM)") == 1
    assert "Traceback" not in stderr
    assert not out.exists()


def _job_and_fold_workers(pid: int) -> list[int]:
    """Both benchmark job processes and both fold processes of each, once all six run."""
    jobs = _workers(pid)
    folds = [fold for job in jobs for fold in _workers(job)]
    return jobs + folds if len(jobs) == 2 and len(folds) == 4 else []


def test_a_killed_benchmark_takes_its_job_and_fold_processes_along(
    endless: dict[str, Path], tmp_path: Path
) -> None:
    command = [
        sys.executable, "-m", "metastases.benchmark", "--params", str(endless["params"]),
        "--data-2d", str(endless["2d"]), "--data-3d", str(endless["3d"]), "--splits", str(endless["splits"]),
        "--models", "cnn3d", "cnn2d", "--jobs", "2", "--threads", "1",
        "--out", str(tmp_path / "benchmark.md"), "--json", str(tmp_path / "benchmark.json"),
    ]  # fmt: skip
    # SIGKILL: the benchmark itself cannot react; its job processes end by the kernel's signal and stop
    # their fold processes on the way out
    survivors, _, _ = _signal_and_watch(command, _job_and_fold_workers, signal.SIGKILL, tmp_path)
    assert survivors == []
