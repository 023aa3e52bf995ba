"""Score a new patient: ``python -m metastases.predict STUDY_DIR [--model models/3d.pt ...] [--out DIR]``.

The study folder (one patient's DICOM files, any layout) goes through the same ingest rules as the
pipeline (sequences recognised by ``ingest.sequences`` of ``--params``, defaults when there is none), then
through the preprocessing each model was trained with, read from its checkpoint (never from today's
params), then through the model's fold ensemble. Printed and written (``DIR/prediction.json``,
``DIR/evidence.png``): per model the probability of metastases, the decision at the threshold chosen on
its out-of-fold predictions, and where it found its evidence. Nothing identifying is printed or written:
no header value, no folder name.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metastases.atomic import write_json
from metastases.cli import OneLineParser, configure_logging, run_stage
from metastases.errors import UserError
from metastases.evaluation.evidence import (
    Evidence,
    array_depth,
    can_explain,
    ensemble_evidence,
    make_evidence,
    peak_lps,
)
from metastases.evaluation.evidence_plots import ModelView, plot_patient_evidence
from metastases.evaluation.metrics import youden_threshold
from metastases.evaluation.new_patients import checkpoint_preprocessing, prepare_array
from metastases.ingest.patient import PatientTask, ingest_patient
from metastases.params import SEQUENCES, CrossValidateParams, IngestParams, from_mapping, load_params
from metastases.training.checkpoint import open_ensemble
from metastases.volumes import GridGeometry

log = logging.getLogger(__name__)

STUDY_KEY = "study"
"""The name the new study goes by in every output (never its folder name, which may identify)."""
UNLABELLED = "unlabelled"
FIX_MODEL = "train it with this version (make run) or pass another --model"


@dataclass(frozen=True)
class ModelPrediction:
    dim: str
    model: str
    probability: float
    threshold: float
    learned: bool
    evidence: Evidence | None
    lps_mm: tuple[float, float, float] | None
    array: np.ndarray
    geometry: GridGeometry

    def to_json(self) -> dict[str, Any]:
        decision = "metastases" if self.probability >= self.threshold else "normal"
        out: dict[str, Any] = {
            "model": self.model,
            "probability": self.probability,
            "threshold": self.threshold,
            "decision": decision,
            "learned": self.learned,
        }
        if self.evidence is not None and self.lps_mm is not None:
            slice_index, row, column = self.evidence.centre
            out["strongest_evidence"] = {
                "slice": round(slice_index, 2),
                "row": round(row, 2),
                "column": round(column, 2),
                "lps_mm": [round(v, 1) for v in self.lps_mm],
            }
        return out


def _ingest_params(path: Path) -> IngestParams:
    if not path.is_file():
        log.info("%s not found: default ingest rules", path)
        return IngestParams(workers=1)
    return dataclasses.replace(
        from_mapping(IngestParams, "ingest", load_params(path).get("ingest")), workers=1
    )


def _threshold_rule(path: Path) -> str:
    if not path.is_file():
        return CrossValidateParams().threshold
    return from_mapping(
        CrossValidateParams, "cross_validate", load_params(path).get("cross_validate")
    ).threshold


def ingest_study(study: Path, params: IngestParams, work_dir: Path) -> dict[str, Path]:
    """The study's three sequences as NIfTI under ``work_dir``; one clear error when it cannot be done."""
    if not study.is_dir():
        raise UserError(f"{study} is not a folder: give the folder that holds one patient's DICOM files")
    if not any(p.is_file() for p in study.rglob("*")):
        raise UserError(f"{study} holds no files: give the folder that holds one patient's DICOM files")
    result = ingest_patient(PatientTask(study, STUDY_KEY, UNLABELLED, "", params), work_dir)
    not_dicom = sum(p.kind == "not_dicom" for p in result.problems)
    if result.files_read == 0 or not_dicom == result.files_read:
        raise UserError(f"{study}: no DICOM file could be read; is this a DICOM export?")
    if result.status != "ok":
        skipped = "; ".join(sorted({f"{s.series}: {s.reason}" for s in result.skipped}))[:400]
        problems = "; ".join(sorted({p.reason for p in result.problems}))[:400]
        raise UserError(
            f"{study}: {'; '.join(result.notes) or problems}"
            + (f" (series left out: {skipped})" if skipped else "")
            + "; every study needs FLAIR, T2 and T1+C series whose descriptions match ingest.sequences in "
            "params.yaml"
        )
    return {name: work_dir / result.sequences[name].file for name in SEQUENCES}


@torch.inference_mode()
def predict_study(
    volumes: dict[str, Path], model_paths: Sequence[Path], *, threshold_rule: str
) -> list[ModelPrediction]:
    """Score the ingested study with each checkpoint's fold ensemble (CPU).

    Args:
        volumes: the study's NIfTI volumes by sequence.
        model_paths: ``models/<dim>.pt`` checkpoints.
        threshold_rule: ``youden`` (on each checkpoint's out-of-fold scores) or ``fixed`` (0.5).
    """
    device = torch.device("cpu")
    predictions = []
    for path in model_paths:
        ensemble = open_ensemble(path, FIX_MODEL)
        params = checkpoint_preprocessing(ensemble, path, FIX_MODEL)
        array, geometry = prepare_array(ensemble, volumes, params, path=path, fix=FIX_MODEL)
        batch = torch.from_numpy(array)[None]
        members = [m.model for m in ensemble.members]
        fold_scores = {
            m.fold: np.array([torch.softmax(m.model(batch), dim=1)[0, 1].item()]) for m in ensemble.members
        }
        probability = float(ensemble.mean_score(fold_scores)[0])
        oof = ensemble.out_of_fold
        threshold = (
            youden_threshold(oof["label"], oof["score"])
            if threshold_rule == "youden" and oof["label"].nunique() == 2
            else 0.5
        )
        evidence, lps = None, None
        if can_explain(members):
            depth = array_depth(ensemble)
            loader = [(batch, torch.zeros(1, dtype=torch.long))]
            heat = ensemble_evidence(members, loader, device, depth=depth)[0]  # type: ignore[arg-type]
            evidence = make_evidence(STUDY_KEY, heat)
            lps = peak_lps(geometry, evidence.centre)
        predictions.append(
            ModelPrediction(
                ensemble.dim,
                ensemble.model_name,
                probability,
                float(threshold),
                ensemble.learned,
                evidence,
                lps,
                array,
                geometry,
            )
        )
    return predictions


def write_outputs(predictions: list[ModelPrediction], out_dir: Path) -> dict[str, Any]:
    """``out_dir/evidence.png`` (models with evidence maps) and ``out_dir/prediction.json`` (written last)."""
    result = {
        "study": STUDY_KEY,
        "models": {p.dim: p.to_json() for p in predictions},
        "note": "research use only, not a diagnosis",
    }
    views = [
        ModelView(
            f"{p.dim.upper()} {p.model}", p.array, p.evidence, p.probability, p.threshold, None, p.geometry
        )
        for p in predictions
        if p.evidence is not None
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    if views:
        plot_patient_evidence("new study", views, None, out_dir / "evidence.png")
    write_json(out_dir / "prediction.json", result)
    return result


def _default_models() -> list[Path]:
    found = [p for p in (Path("models/2d.pt"), Path("models/3d.pt")) if p.is_file()]
    if not found:
        raise UserError("no models/2d.pt or models/3d.pt here: run make run first, or pass --model PATH")
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m metastases.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "study", type=Path, help="one patient's DICOM folder (any layout, outside the repo too)"
    )
    parser.add_argument("--model", type=Path, action="append", help="checkpoint (repeatable; default: both)")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (%(default)s)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="ingest rules (%(default)s)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    model_paths = args.model or _default_models()
    for path in model_paths:
        if not path.is_file():
            raise UserError(f"{path} not found: {FIX_MODEL}")
    ingest_params, rule = _ingest_params(args.params), _threshold_rule(args.params)
    with tempfile.TemporaryDirectory(prefix="metastases-predict-") as work:
        volumes = ingest_study(args.study, ingest_params, Path(work))
        predictions = predict_study(volumes, model_paths, threshold_rule=rule)
        result = write_outputs(predictions, args.out)
    for dim, entry in result["models"].items():
        learned = "" if entry["learned"] else "  (WARNING: no fold model learned; chance)"
        print(
            f"{dim.upper()} {entry['model']}: p(metastases) = {entry['probability']:.3f} -> "
            f"{entry['decision']} (threshold {entry['threshold']:.3f}, chosen out of fold){learned}"
        )
    picture = any(p.evidence is not None for p in predictions)
    print(f"written: {args.out / 'prediction.json'}" + (f", {args.out / 'evidence.png'}" if picture else ""))
    print("research use only, not a diagnosis")


if __name__ == "__main__":
    sys.exit(run_stage(main))
