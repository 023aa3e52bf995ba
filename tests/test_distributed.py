"""Training under torchrun (2 gloo processes on the CPU) against the single-process run, on real arrays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from metastases.errors import ParamsError
from metastases.models import build_model
from metastases.training.checkpoint import FoldModel, load_ensemble
from metastases.training.distributed import IGNORE_LABEL, MarkedSamples, RankBatches
from metastases.training.folds import fold_seed
from metastases.training.runtime import seed_everything
from metastases.training.stage import TrainOutputs, run_training

sys.path.insert(0, str(Path(__file__).parent))
from params_support import committed_params, training_params
from synthetic_arrays import write_cohort

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from peak_memory import descendants

ROOT = Path(__file__).resolve().parents[1]
SEED = 42
TINY = {
    "batch_size": 4, "threads": 1, "num_workers": 0, "device": "cpu", "restarts": 0, "parallel_folds": 1,
    "flip_horizontal": 0.0, "noise_std": 0.0, "intensity_shift": 0.0, "rotate_degrees": 0.0, "scale": 0.0,
}  # fmt: skip
OUTPUT_FILES = {"model.pt", "train.json", "details", "curves.csv", "loss.png", "timing.json"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # 16 patients (12 training, 3 folds of 4), bright blobs: the models leave chance within a few epochs
    root = tmp_path_factory.mktemp("cohort")
    return write_cohort(root, patients=16, size_2d=32, size_3d=32, folds=3, contrast=4.0, seed=5)


def _outputs(root: Path) -> TrainOutputs:
    return TrainOutputs(
        model=root / "model.pt", metrics=root / "train.json", curves=root / "curves.csv",
        png=root / "loss.png", timing=root / "timing.json",
    )  # fmt: skip


def _stage(
    tmp: Path, dim: str, section: dict, cohort: dict[str, Path], out: Path
) -> subprocess.CompletedProcess:
    """stages/train.py as dvc repro runs it, with ``section`` as params train_<dim>."""
    params = tmp / f"params_{out.name}.yaml"
    params.write_text(yaml.safe_dump(committed_params(seed=SEED, **{f"train_{dim}": section})))
    outputs = _outputs(out)
    command = [
        sys.executable, str(ROOT / "stages/train.py"), "--dim", dim, "--params", str(params),
        "--data-dir", str(cohort[dim]), "--splits", str(cohort["splits"]), "--model-out", str(outputs.model),
        "--metrics", str(outputs.metrics), "--curves", str(outputs.curves), "--png", str(outputs.png),
        "--timing", str(outputs.timing),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp, check=False, timeout=300)


def test_each_rank_gets_its_share_of_the_single_process_batches_in_their_seeded_order() -> None:
    samples, batch = 11, 4  # batches of 4, 4, 3: the last one does not split evenly over 3 or 5 ranks
    for world in (2, 3, 5):
        single = DataLoader(list(range(samples)), batch_size=batch, shuffle=True,
                            generator=torch.Generator().manual_seed(7))  # fmt: skip
        ranks = [RankBatches(samples, batch, seed=7, rank=r, world=world) for r in range(world)]
        for _epoch in range(3):  # each pass is the next epoch's order, as for the real loader
            expected = [b.tolist() for b in single]
            steps = list(zip(*(list(rank) for rank in ranks), strict=True))
            assert len(steps) == len(expected) == 3
            for parts, whole in zip(steps, expected, strict=True):
                assert [i for part in parts for i in part if i >= 0] == whole  # same samples, same order
                assert all(len(part) >= 1 for part in parts)  # every rank steps, with a stand-in if need be
                assert all(i >= 0 for i in parts[0])  # rank 0 always trains on real samples
            assert sorted(i for whole in expected for i in whole) == list(range(samples))
        stand_ins = [part for parts in steps for part in parts if part[0] < 0]
        assert (len(stand_ins) > 0) == (world == 5) and all(len(part) == 1 for part in stand_ins)


def test_a_stand_in_sample_carries_the_ignored_label() -> None:
    data = [(torch.full((2,), float(i)), i % 2) for i in range(3)]
    marked = MarkedSamples(data)  # type: ignore[arg-type]
    assert marked[2][1] == 0 and marked[-1 - 2][1] == IGNORE_LABEL
    assert torch.equal(marked[-1 - 2][0], data[2][0])


def _moved_and_apart(a: FoldModel, b: FoldModel, shape: tuple[int, ...]) -> tuple[float, float]:
    """How far fold model ``a``'s LeNet-3D weights moved from their initialisation, and how far ``b``'s
    (the same fold, trained another way) lie from them: the largest absolute difference of any weight."""
    seed_everything(fold_seed(SEED, a.fold, 0))
    initial = build_model("lenet3d", shape).state_dict()
    trained, other = a.model.state_dict(), b.model.state_dict()
    moved = max(float((trained[k] - initial[k]).abs().max()) for k in trained)
    return moved, max(float((trained[k] - other[k]).abs().max()) for k in trained)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_without_batch_norm(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    """LeNet-3D has neither batch normalisation nor dropout: with the same batches and the loss scaled to
    the whole batch, the two processes' averaged gradient is the single process's up to the order of
    float32 sums, so losses and scores agree to 1e-5 and the weights to 1 % of how far training moved
    them. Not closer for the weights: Adam divides each gradient by its own running size, so a weight
    whose gradient is near zero steps by up to ``lr`` whichever way the last-bit noise points. Measured
    (3 epochs, weights moved 0.012): at most 1e-7 apart on one AVX-512 machine, 3.5e-5 on another
    (an AMD EPYC, 2026-12-02), where the training losses still agreed to 1e-5."""
    # float32: the comparison is of float32 sums in another order (bfloat16's rounding is 2**-8, not 2**-24)
    section = {**TINY, "model": "lenet3d", "epochs": 3, "lr": 0.003, "precision": "float32"}
    reference = run_training(cohort["3d"], cohort["splits"], training_params("3d", **section), SEED,
                             _outputs(tmp_path / "one"))  # fmt: skip
    result = _stage(tmp_path, "3d", {**section, "nproc": 2}, cohort, tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in (tmp_path / "two").iterdir()} == OUTPUT_FILES  # one set, no temporary files
    assert json.loads((tmp_path / "two/timing.json").read_text())["processes"] == 2
    metrics = json.loads((tmp_path / "two/details/train.json").read_text())
    assert metrics.keys() == reference.keys()
    assert metrics["oof_auc"] == pytest.approx(reference["oof_auc"], abs=1e-6)
    for fold in range(3):
        for key in ("train_loss", "val_loss", "val_auc"):
            assert metrics[f"fold{fold}"][key] == pytest.approx(reference[f"fold{fold}"][key], abs=1e-5)
    shape = (3, 20, 32, 32)
    one = load_ensemble(tmp_path / "one/model.pt", "lenet3d", "3d", shape, "test")
    two = load_ensemble(tmp_path / "two/model.pt", "lenet3d", "3d", shape, "test")
    scores = two.out_of_fold.sort_values("patient")["score"].to_numpy()
    assert scores == pytest.approx(one.out_of_fold.sort_values("patient")["score"].to_numpy(), abs=1e-5)
    for a, b in zip(one.folds, two.folds, strict=True):
        moved, apart = _moved_and_apart(a, b, shape)
        assert moved > 1e-3 and apart < 0.01 * moved, (a.fold, moved, apart)


@pytest.mark.slow
def test_micro_batches_accumulate_the_whole_batch_gradient_alone_and_under_ddp(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    """``micro_batch``: the batch of 4 back-propagated one sample at a time (in one process, and in each of
    two gloo processes, whose all-reduce then happens on the last micro-batch only) gives LeNet-3D (no
    batch normalisation, no dropout) the losses and scores of the whole-batch step to 1e-5 and its weights
    to 1e-4 (float32 sums in another order; Adam divides by each gradient's own scale, so a near-zero
    gradient's rounding reaches the weights: measured 1.6e-5), while training moved them by far more."""
    # float32: the comparison is of float32 sums in another order (bfloat16's rounding is 2**-8, not 2**-24)
    section = {**TINY, "model": "lenet3d", "epochs": 3, "lr": 0.003, "precision": "float32"}
    reference = run_training(cohort["3d"], cohort["splits"], training_params("3d", **section), SEED,
                             _outputs(tmp_path / "one"))  # fmt: skip
    micro = run_training(cohort["3d"], cohort["splits"], training_params("3d", **section, micro_batch=1),
                         SEED, _outputs(tmp_path / "micro"))  # fmt: skip
    result = _stage(tmp_path, "3d", {**section, "nproc": 2, "micro_batch": 1}, cohort, tmp_path / "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp/details/train.json").read_text())
    shape = (3, 20, 32, 32)
    one = load_ensemble(tmp_path / "one/model.pt", "lenet3d", "3d", shape, "test")
    for metrics, name in ((micro, "micro"), (ddp, "ddp")):
        for fold in range(3):
            for key in ("train_loss", "val_loss", "val_auc"):
                assert metrics[f"fold{fold}"][key] == pytest.approx(reference[f"fold{fold}"][key], abs=1e-5)
        other = load_ensemble(tmp_path / name / "model.pt", "lenet3d", "3d", shape, "test")
        for a, b in zip(one.folds, other.folds, strict=True):
            moved, apart = _moved_and_apart(a, b, shape)
            assert apart < 1e-4 and moved > 1e-3, (name, a.fold, apart, moved)


@pytest.mark.slow
def test_two_gloo_processes_with_batch_norm_and_dropout_stay_within_a_seed_change(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    """The default 2D model (slice MIL) has batch normalisation and dropout: under DDP on the CPU each
    process normalises its half batch with that half's statistics (SyncBatchNorm needs CUDA) and draws its
    own dropout masks, so the run is as different from one process as a change of seed is, no more.
    Measured on this cohort (2026-12-01): single process seed 42 / seed 43 / 2 processes seed 42: mean
    training loss 0.317 / 0.454 / 0.423, out-of-fold AUC 0.611 / 0.667 / 0.639, validation losses within
    0.013 of each other. Bounds: training loss 0.15 (the seed change: 0.14), out-of-fold AUC 0.1 (one
    ordered pair of 36 is 0.028), each fold's validation loss 0.03."""
    section = {**TINY, "model": "cnn2d", "epochs": 4, "batch_size": 8}
    reference = run_training(cohort["2d"], cohort["splits"], training_params("2d", **section), SEED,
                             _outputs(tmp_path / "one"))  # fmt: skip
    result = _stage(tmp_path, "2d", {**section, "nproc": 2}, cohort, tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in (tmp_path / "two").iterdir()} == OUTPUT_FILES
    metrics = json.loads((tmp_path / "two/details/train.json").read_text())
    assert metrics["train_loss_mean"] == pytest.approx(reference["train_loss_mean"], abs=0.15)
    assert metrics["oof_auc"] == pytest.approx(reference["oof_auc"], abs=0.1)
    for fold in range(3):
        assert metrics[f"fold{fold}"]["val_loss"] == pytest.approx(
            reference[f"fold{fold}"]["val_loss"], abs=0.03
        )


def test_cuda_without_a_gpu_is_one_line_before_any_worker_starts(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = _stage(
        tmp_path, "2d", {**TINY, "epochs": 1, "device": "cuda", "nproc": 2}, cohort, tmp_path / "out"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: device 'cuda': no CUDA device is available; use device: auto or cpu"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("precision", "line"),
    [
        (
            "float16",
            "error: train_2d.precision: float16 needs a CUDA device; on the CPU use auto, float32 "
            "or bfloat16",
        ),
        ("double", "error: train_2d.precision: 'double' is not one of auto, float32, bfloat16, float16"),
    ],
)
def test_a_precision_the_machine_cannot_honour_is_one_line_and_nothing_written(
    cohort: dict[str, Path], tmp_path: Path, precision: str, line: str
) -> None:
    result = _stage(tmp_path, "2d", {**TINY, "epochs": 1, "precision": precision}, cohort, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "out").exists()


def test_bfloat16_on_a_cpu_without_it_is_a_params_error_before_anything_trains(
    cohort: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # this machine may have AVX-512 BF16: the CPU's answer is replaced by "no" (the one thing not real here)
    monkeypatch.setattr("metastases.training.runtime.native_bfloat16", lambda: False)
    bfloat16 = training_params("3d", **{**TINY, "precision": "bfloat16"})
    with pytest.raises(
        ParamsError, match=r"^train_3d.precision: bfloat16 needs a CPU with AVX-512 BF16 or AMX"
    ):
        run_training(cohort["3d"], cohort["splits"], bfloat16, SEED, _outputs(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    auto = run_training(cohort["3d"], cohort["splits"], training_params("3d", **{**TINY, "epochs": 1}), SEED,
                        _outputs(tmp_path / "auto"))  # fmt: skip
    assert auto["precision"] == "float32"  # auto: float32 on the CPU


def _rank_and_cpu(pid: int) -> tuple[str | None, float]:
    """The RANK in a process's environment and the CPU seconds it has used."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None, 0.0
    rank = next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"RANK=")), None)
    return rank, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through Linux /proc")
def test_a_worker_killed_mid_training_ends_the_stage_with_one_line_and_nothing_written(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    """Rank 1 is killed (SIGKILL, as the out-of-memory killer or a lost node would) once it has trained for
    a few CPU seconds: torchrun stops rank 0, the stage exits 2 with one ``error:`` line, and no model,
    metrics or temporary file is left."""
    params = tmp_path / "params.yaml"
    section = {**TINY, "model": "lenet3d", "epochs": 400, "lr": 0.003, "nproc": 2}
    params.write_text(yaml.safe_dump(committed_params(seed=SEED, train_3d=section)))
    out = tmp_path / "out"
    outputs = _outputs(out)
    command = [
        sys.executable, str(ROOT / "stages/train.py"), "--dim", "3d", "--params", str(params),
        "--data-dir", str(cohort["3d"]), "--splits", str(cohort["splits"]), "--model-out", str(outputs.model),
        "--metrics", str(outputs.metrics), "--curves", str(outputs.curves), "--png", str(outputs.png),
        "--timing", str(outputs.timing),
    ]  # fmt: skip
    stage = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, deadline = None, time.monotonic() + 240
    try:
        while killed is None and stage.poll() is None and time.monotonic() < deadline:
            for pid in descendants(stage.pid)[1:]:
                rank, cpu = _rank_and_cpu(pid)
                if rank == "1" and cpu > 6.0:  # past the imports and the rendezvous: training
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                    break
            time.sleep(0.2)
        _, stderr = stage.communicate(timeout=120)
    finally:
        if stage.poll() is None:
            stage.kill()
    assert killed is not None, "rank 1 was never seen training"
    assert stage.returncode == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: distributed training on 2 processes failed"), last
    assert "Traceback" not in last
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
