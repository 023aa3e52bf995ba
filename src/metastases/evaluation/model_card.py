# ruff: noqa: E501  (Markdown lines of the card are kept whole so that the text reads as it will render)
"""``MODEL_CARD.md``: what the trained models are for and how well they did, from the run's own numbers.

The sections follow "Model Cards for Model Reporting" (Mitchell et al., 2019): model details, intended use,
factors, metrics, evaluation and training data, quantitative analyses, ethical considerations, caveats.
Every number comes from this run's metrics; nothing here is typed by hand, so the card cannot drift from
the results it describes. No patient key appears in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from metastases.atomic import write_text
from metastases.params import EvaluateParams, TrainingParams
from metastases.training.checkpoint import Ensemble


@dataclass(frozen=True)
class ModelCardInputs:
    results: dict[str, dict[str, Any]]
    """evaluate.json: per model (``2d``/``3d``)."""
    cv_summary: dict[str, dict[str, Any]]
    """cv.json: per model."""
    ensembles: dict[str, Ensemble]
    train_params: dict[str, TrainingParams]
    splits: pd.DataFrame
    """patient, label, split, fold."""
    evaluate_params: EvaluateParams
    has_lesion_truth: bool
    external: dict[str, Any] | None = None
    """external.json (details) of the external stage; None or no patients: no external site."""


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _counts(splits: pd.DataFrame, part: str) -> str:
    rows = splits[splits["split"] == part]
    positives = int((rows["label"] == 1).sum())
    return f"{len(rows)} ({positives} metastases, {len(rows) - positives} normal)"


def _preprocessing(ensemble: Ensemble) -> str:
    prep = ensemble.meta.get("preprocessing") or {}
    if not prep:
        return "not recorded in the checkpoint (trained before checkpoints kept it)"
    low, high = prep.get("clip_percentiles", ("?", "?"))
    return (
        f"all three sequences resampled on the T1+C grid; {prep.get('depth')} slices "
        f"({prep.get('depth_mode')}), in-plane {prep.get('image_size')} x {prep.get('image_size')} pixels over "
        f"{'the head' + chr(39) + 's bounding box' if prep.get('crop') == 'head' else 'the T1+C field of view'}; "
        f"{prep.get('normalise')} normalisation per volume after clipping to percentiles {low}-{high}"
    )


def _external_factors(inputs: ModelCardInputs) -> list[str]:
    """The internal vs external rows under "Factors"; nothing when there is no external site."""
    site = inputs.external or {}
    if not site.get("patients"):
        return []
    lines = [
        f"- **Another site** (`data/external`, {site['patients']} patients the models never saw, scored by the",
        "  final fold ensembles; `metrics/details/external.json`). Adapted: the threshold chosen again (Youden) on",
        f"  {site.get('calibration_patients', 0)} calibration patients of that site; sensitivity / specificity before",
        "  and after are on the site's other patients only.",
        "",
        "| model | AUC out-of-fold / held-out | AUC external [CI] | external - out-of-fold | sensitivity / specificity"
        " external, out-of-fold threshold | adapted | localisation external |",
        "|---|---|---|---|---|---|---|",
    ]
    for dim in inputs.results:
        ext, test, cv = site.get(dim, {}), inputs.results[dim], inputs.cv_summary.get(dim, {})
        before, after = ext.get("at_cv_threshold", {}), ext.get("adapted")
        external_auc = (
            f"{_f(ext['auc'])} [{_f(ext['auc_ci_low'])}, {_f(ext['auc_ci_high'])}]"
            if "auc" in ext
            else f"undefined: {ext.get('auc_undefined', 'not scored')}"
        )
        adapted = f"{_f(after.get('sensitivity'), 2)} / {_f(after.get('specificity'), 2)}" if after else "n/a"
        lines.append(
            f"| {dim.upper()} `{inputs.ensembles[dim].model_name}` | {_f(cv.get('oof_auc'))} / {_f(test['auc'])} | "
            f"{external_auc} | {_f(ext.get('auc_gap'))} | {_f(before.get('sensitivity'), 2)} / "
            f"{_f(before.get('specificity'), 2)} | {adapted} | {_f(ext.get('localisation'), 2)} |"
        )
    chance = [
        f"{dim.upper()} `{inputs.ensembles[dim].model_name}`"
        for dim in inputs.results
        if site.get(dim, {}).get("auc_ci_low", 1.0) <= 0.5
    ]
    lines += [
        "",
        *(
            [
                f"  **At the other site the AUC interval of {' and '.join(chance)} includes chance (0.5): it did not"
                " carry there.**",
                "",
            ]
            if chance
            else []
        ),
        "  A lower AUC at the other site means its images differ in a way the models are sensitive to; a few",
        "  dozen patients give a wide interval, so it does not say by how much. A specificity that collapses at",
        "  the out-of-fold threshold while the AUC holds means the scores shifted, not the ranking: the threshold",
        "  must be chosen again at each site before use.",
    ]
    return lines


def render_model_card(inputs: ModelCardInputs) -> str:
    """The card's Markdown text."""
    lines = [
        "# Model card: brain metastases vs normal from FLAIR, T2 and T1+C MRI",
        "",
        "Written by the `evaluate` stage from this run's metrics (`metrics/details/cv.json`, `metrics/details/evaluate.json`);",
        "regenerated by `dvc repro`, so it always describes the models in `models/` at the same commit.",
        "",
        "## Model details",
    ]
    for dim, ensemble in inputs.ensembles.items():
        params = inputs.train_params[dim]
        learned = sum(f.learned for f in ensemble.folds)
        lines += [
            f"- **{dim.upper()} `{ensemble.model_name}`**, input `{list(ensemble.input_shape)}`: an ensemble of "
            f"{len(ensemble.folds)} fold models ({learned} learned; the mean of the learned ones' probabilities "
            f"is the score). Adam, lr {params.lr} ({params.lr_schedule}), {params.epochs} epochs, batch "
            f"{params.batch_size}, weight decay {params.weight_decay}; augmentation: left-right flip "
            f"{params.flip_horizontal}, rotation ±{params.rotate_degrees}°, zoom ±{params.scale}, noise "
            f"{params.noise_std}, intensity shift {params.intensity_shift}. Training seed "
            f"{ensemble.meta.get('seed')}.",
            f"  - Preprocessing: {_preprocessing(ensemble)}.",
        ]
    lines += [
        "- Output: probability of metastases per patient; the decision threshold was chosen on out-of-fold",
        "  predictions (Youden's J unless `cross_validate.threshold` says otherwise), never on the test split.",
        "",
        "## Intended use",
        "- Research on classifying brain MRI studies, and a template for reproducible experiments on a site's",
        "  own data. **Not for diagnosis or any clinical decision**: not validated on real patients, not a",
        "  medical device.",
        "- Out of scope: lesion counting or segmentation, other diseases, studies without all three sequences.",
        "",
        "## Factors",
        "- Scanner vendor, slice thickness, tilt and matrix vary across the cohort; the arrays are",
        "  resampled to one grid, but performance per vendor or per lesion size is not reported separately",
        "  (the held-out split is too small to split further).",
        *_external_factors(inputs),
        "",
        "## Metrics",
        "- ROC AUC (threshold-free), with a percentile bootstrap "
        f"{inputs.evaluate_params.ci:.0%} confidence interval over patients "
        f"({inputs.evaluate_params.bootstrap} resamples); sensitivity and specificity at the out-of-fold "
        "threshold; Brier score (calibration: 0 is perfect, 0.25 a constant 0.5).",
    ]
    if inputs.has_lesion_truth:
        lines.append(
            "- Localisation (pointing game): the share of metastasis patients whose highest-evidence location "
            "lies inside a true metastasis (its radius + 5 mm)."
        )
    lines += [
        "",
        "## Training and evaluation data",
        f"- Training split: {_counts(inputs.splits, 'train')}, in {inputs.splits['fold'].max() + 1} "
        "cross-validation folds (patient-level, stratified).",
        f"- Held-out test split: {_counts(inputs.splits, 'test')}; read only by the `evaluate` stage.",
        "- The default data are the synthetic demo cohort (DICOM rendered from a brain template with simulated",
        "  metastases and non-enhancing mimics); numbers on it prove the pipeline, not clinical value.",
        "",
        "## Quantitative analyses",
        "",
        "| model | out-of-fold AUC | fold AUC mean ± std (min) | held-out AUC [CI] | sensitivity / specificity"
        " at CV threshold | Brier held-out (Platt) | localisation held-out / out-of-fold |",
        "|---|---|---|---|---|---|---|",
    ]
    for dim in inputs.results:
        test, cv = inputs.results[dim], inputs.cv_summary.get(dim, {})
        at = test.get("at_cv_threshold", {})
        localisation = (
            f"{_f(test.get('localisation'), 2)} ({test.get('localisation_patients', 0)}) / "
            f"{_f(cv.get('localisation'), 2)} ({cv.get('localisation_patients', 0)})"
            if "localisation" in test
            else "n/a"
        )
        lines.append(
            f"| {dim.upper()} `{inputs.ensembles[dim].model_name}` | {_f(cv.get('oof_auc'))} | "
            f"{_f(cv.get('auc_mean'))} ± {_f(cv.get('auc_std'))} ({_f(cv.get('auc_min'))}) | "
            f"{_f(test['auc'])} [{_f(test['auc_ci_low'])}, {_f(test['auc_ci_high'])}] | "
            f"{_f(at.get('sensitivity'), 2)} / {_f(at.get('specificity'), 2)} | "
            f"{_f(test.get('brier'))} ({_f(test.get('brier_platt'))}) | {localisation} |"
        )
    not_learned = [d for d in inputs.results if not inputs.results[d].get("learned", True)]
    lines += [
        "",
        "Pictures: `plots/roc.png`, `plots/calibration.png`, `plots/evidence.png` (where each model looked on "
        "every held-out patient).",
        "",
        "## Ethical considerations",
        "- Patient keys in this repository are the demo cohort's fake folder names or salted pseudonyms; no",
        "  DICOM header value is copied into any output.",
        "- A model trained on one site's scanners may fail silently on another's: validate locally first.",
        "",
        "## Caveats and recommendations",
        f"- The held-out split has {int((inputs.splits['split'] == 'test').sum())} patients: its AUC interval "
        "is wide; the out-of-fold AUC over the training patients is the steadier estimate.",
        "- 2D input: 3 sequences x 20 slices as 60 channels; 3D input: `[3, 20, S, S]`. Lesions smaller than a",
        "  few pixels at these sizes are hard to see for either model.",
    ]
    if not_learned:
        lines.append(f"- **No fold model of {', '.join(not_learned)} learned: its scores are chance.**")
    lines += [
        "",
        "## How to reproduce",
        "```",
        "git checkout <the commit that holds this card>",
        "make run          # or: dvc pull && dvc repro   (dvc.lock pins data, code and params)",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(path: Path, inputs: ModelCardInputs) -> None:
    write_text(path, render_model_card(inputs))
