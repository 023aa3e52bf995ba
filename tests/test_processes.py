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
from contextlib import suppress
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_arrays import write_cohort

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)"),
    pytest.mark.slow,  # real stages signalled and watched: make test, not make test-fast
]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _stat(pid: int | str) -> tuple[str, int, bytes] | None:
    """State, parent and command line of ``pid``; None when it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _live() -> dict[int, tuple[int, bytes]]:
    """Every live process: its parent and command line."""
    table = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(entry.name)
        if stat is not None and stat[0] not in ("Z", "X"):
            table[int(entry.name)] = stat[1:]
    return table


def _workers(pid: int) -> list[int]:
    """The live processes ``pid`` started: pool workers, loader workers (not its resource tracker)."""
    return [
        child
        for child, (parent, command) in _live().items()
        if parent == pid and b"resource_tracker" not in command
    ]


def _wait(find: Callable[[], list[int]], seconds: float) -> list[int]:
    """Poll ``find`` until it lists something (returned) or ``seconds`` pass (empty list)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := find():
            return found
        time.sleep(0.2)
    return find()


def _signal_and_watch(
    command: list[str], ready: Callable[[int], list[int]], signum: int, cwd: Path
) -> tuple[list[int], int, str]:
    """Start ``command``; once ``ready(pid)`` lists its workers, send it ``signum``. Returns what still
    runs 15 s after it exited (those workers, and any process whose command line names ``cwd``, such as
    a forked loader worker), its exit status and stderr. Everything it started is killed at the end."""
    log = cwd / "stderr.txt"
    with log.open("w") as stderr:  # a file, not a pipe: surviving workers would hold a pipe open
        process = subprocess.Popen(command, cwd=cwd, env=ENV, stderr=stderr, start_new_session=True)
    workers: list[int] = []

    def running() -> list[int]:
        marker = str(cwd).encode()
        return [pid for pid, (_, cmd) in _live().items() if pid in workers or marker in cmd]

    try:
        workers = _wait(lambda: ready(process.pid), 180.0)
        assert workers, "the workers never started"
        time.sleep(1.0)  # past the workers' initializers
        process.send_signal(signum)
        process.wait(timeout=90)

        deadline = time.monotonic() + 15.0
        while running() and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = running()
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the session: whatever the test left behind
        for pid in running():  # torchrun starts its ranks in sessions of their own
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()
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


def _named_after(marker: Path, count: int) -> Callable[[int], list[int]]:
    """The live processes other than ``pid`` whose command line names ``marker``, once ``count`` run."""

    def find(pid: int) -> list[int]:
        found = [p for p, (_, cmd) in _live().items() if p != pid and str(marker).encode() in cmd]
        return found if len(found) >= count else []

    return find


def _train_2d(endless: dict[str, Path], where: Path, **train_2d: int) -> list[str]:
    """The train-2d stage's command on the endless cohort, with ``train_2d`` params changed; writes
    under ``where/out``."""
    params = yaml.safe_load(endless["params"].read_text())
    params["train_2d"].update(train_2d)
    (where / "params.yaml").write_text(yaml.safe_dump(params))
    out = where / "out"
    return [
        sys.executable, str(ROOT / "stages/train.py"), "--dim", "2d",
        "--params", str(where / "params.yaml"),
        "--data-dir", str(endless["2d"]), "--splits", str(endless["splits"]),
        "--model-out", str(out / "2d.pt"), "--metrics", str(out / "train_2d.json"),
        "--curves", str(out / "model_2d.csv"), "--png", str(out / "loss_2d.png"),
        "--timing", str(out / "timing.json"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("parallel_folds", "num_workers", "nproc"),
    [(2, 0, 1), (1, 1, 1), (1, 0, 2)],
    ids=["fold_processes", "loader_worker", "torchrun"],
)
def test_a_terminated_training_stage_takes_its_workers_along(
    parallel_folds: int, num_workers: int, nproc: int, endless: dict[str, Path], tmp_path: Path
) -> None:
    command = _train_2d(
        endless, tmp_path, parallel_folds=parallel_folds, num_workers=num_workers, nproc=nproc
    )
    out = tmp_path / "out"
    # torchrun: the launcher and its two ranks, whose command lines name the stage's arguments
    ready = _named_after(tmp_path, 3) if nproc > 1 else _at_least(max(parallel_folds, num_workers), _workers)
    survivors, status, stderr = _signal_and_watch(command, ready, signal.SIGTERM, tmp_path)
    assert survivors == []
    assert status == 128 + signal.SIGTERM
    # one line, from the stage: a forked loader worker inherits the handler but leaves quietly
    assert stderr.splitlines().count("error: terminated (SIGTERM)") == 1
    if nproc == 1:  # torchrun prints its own traceback when it is stopped (SignalException)
        assert "Traceback" not in stderr
    assert not out.exists()


def test_a_killed_benchmark_takes_its_fold_processes_along(endless: dict[str, Path], tmp_path: Path) -> None:
    command = [
        sys.executable, str(ROOT / "stages/benchmark.py"), "--params", str(endless["params"]), "run",
        "--dim", "3d", "--seed", "42", "--data", str(endless["3d"].parent),
        "--splits", str(endless["splits"]), "--raw-dir", str(tmp_path), "--out", str(tmp_path / "run.json"),
    ]  # fmt: skip
    # SIGKILL: the benchmark itself cannot react; its fold processes end by the kernel's signal (and stop
    # their loader workers on the way out; with loaders every epoch here lasts milliseconds, too short to
    # watch them reliably)
    survivors, _, _ = _signal_and_watch(command, _at_least(2, _workers), signal.SIGKILL, tmp_path)
    assert survivors == []


def test_a_killed_training_stage_takes_its_fold_processes_along(
    endless: dict[str, Path], tmp_path: Path
) -> None:
    # SIGKILL: the stage cannot stop anything itself; its fold processes end by the kernel's signal
    command = _train_2d(endless, tmp_path, parallel_folds=2, num_workers=0, nproc=1)
    survivors, status, _ = _signal_and_watch(command, _at_least(2, _workers), signal.SIGKILL, tmp_path)
    assert status == -signal.SIGKILL
    assert survivors == []
    assert not (tmp_path / "out").exists()
