"""Typed, validated parameters: one dataclass per params.yaml section.

The library takes these objects, never the YAML file, so it can be driven from a notebook too.
Every check fails with one line naming the key and the accepted values.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from metastases.errors import ParamsError

T = TypeVar("T")

SEQUENCES: tuple[str, ...] = ("flair", "t2", "t1c")
"""The three MR sequences of every patient, in channel order."""

CLASSES: tuple[str, ...] = ("normal", "metastases")
"""Class names by integer label: 0 normal, 1 metastases (the positive class)."""


RUN_CACHE_BLIND = frozenset({"size", "nfiles"})
"""Key names DVC's run-cache key leaves out (treeverse/dvc#10296): a param so named could change without
its stage re-running, so no section may use them."""

SECTIONS: tuple[str, ...] = (
    "seed",
    "demo_cohort",
    "demo_external",
    "ingest",
    "split",
    "slice_2d",
    "stack_3d",
    "train_2d",
    "train_3d",
    "cross_validate",
    "evaluate",
    "external",
)
"""The top-level keys of params.yaml; anything else (a misspelt section) is refused."""

DEMO_SITES: tuple[str, ...] = ("a", "b")
"""The hospitals the demo generator imitates (:mod:`metastases.demo_cohort.site`)."""

NORMALISATIONS: tuple[str, ...] = ("zscore", "minmax", "none", "zscore_brain")
"""Per-volume intensity scaling (:func:`metastases.volumes.normalise`); ``zscore_brain`` z-scores on the
head eroded past scalp and skull, 0 outside it (:func:`metastases.volumes.brain_mask`)."""

SECTION_PLACEHOLDER = "<section>"
"""Stands for the section name in messages of params classes that several sections share."""

CROPS: tuple[str, ...] = ("head", "none")
"""In-plane field of view of the arrays: around the head's bounding box, or the T1+C series' own."""

PATIENT_KEYS: tuple[str, ...] = ("auto", "hash", "folder")
"""How patient folders become the keys written to every output (see ``IngestParams.patient_key``)."""

STUDY_RULES: tuple[str, ...] = ("latest", "earliest")
"""Which study a patient folder with several studies contributes (``IngestParams.study``)."""

PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
"""Autocast precisions a training section may ask for (``TrainingParams.precision``)."""

LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
"""``cosine`` anneals the learning rate to 0 over the epochs, so the last epoch's weights (the ones
scored and saved) come from a settled optimiser rather than one step of a noisy walk."""


def cpu_workers(setting: int | str) -> int:
    """Worker processes for ``setting``: a positive number as is; ``auto`` or 0: the CPU core count."""
    if setting == "auto" or setting == 0:
        return os.cpu_count() or 1
    return int(setting)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ParamsError(message)


def _choice(section: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{section}.{key}: {value!r} is not one of {', '.join(allowed)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoCohortParams:
    """``demo_cohort`` (the training site) and ``demo_external`` (a second site, data/external)."""

    patients: int
    seed: int
    site: str
    """Which hospital the generator imitates (:data:`metastases.demo_cohort.site.SITES`)."""

    def __post_init__(self) -> None:
        _require(self.patients >= 2, f"{SECTION_PLACEHOLDER}.patients: need at least 2, got {self.patients}")
        _choice(SECTION_PLACEHOLDER, "site", self.site, DEMO_SITES)


@dataclasses.dataclass(frozen=True)
class IngestParams:
    # raw_dir/out_dir are only the stage script's defaults; the library takes paths as arguments
    raw_dir: str = "data/raw"
    out_dir: str = "data/interim"
    workers: int | str = "auto"
    """Patients ingested at once, one process each; ``auto`` (or 0): one per CPU core. Changes only the
    speed, never an output (so it is not among the stage's DVC params)."""
    patient_key: str = "auto"
    """``auto``: folder names for the generated demo cohort (its names are fake), else ``hash``;
    ``hash``: a salted HMAC of the folder name; ``folder``: the folder name as is."""
    salt_file: str = ".metastases-salt"
    """Where the secret salt of ``hash`` keys lives when ``METASTASES_SALT`` is not set (Git-ignored;
    relative paths are from the working directory, the repository root under DVC)."""
    label_prefixes: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"mts": "metastases", "norma": "normal"}
    )
    sequences: dict[str, list[str]] = dataclasses.field(
        default_factory=lambda: {
            "flair": ["flair", r"dark[ _-]?fluid", "tirm"],
            "t2": [r"t2(?!.*(flair|\*|star|gre|swi))"],
            "t1c": [r"t1.*(\+ ?c|gd|gad|post|contrast|ce\b|\bc\b)", r"mprage.*(gd|post|\+c)"],
        }
    )
    spacing_tolerance: float = 0.1
    # a series with fewer slices is a localizer/scout, not a volume
    min_slices: int = 4
    allow_derived: bool = True
    """Use a DERIVED series (a reformat) for a sequence when no ORIGINAL series matches it."""
    study: str = "latest"
    """Which study of a patient folder holding several: ``latest`` or ``earliest`` of those with all three
    sequences."""

    def __post_init__(self) -> None:
        _require(
            self.workers == "auto" or (type(self.workers) is int and self.workers >= 0),
            f"ingest.workers: a whole number >= 0 or auto (0, auto: one per CPU core), got {self.workers!r}",
        )
        _choice("ingest", "patient_key", self.patient_key, PATIENT_KEYS)
        _require(bool(self.salt_file.strip()), "ingest.salt_file: must name a file")
        _choice("ingest", "study", self.study, STUDY_RULES)
        for label in self.label_prefixes.values():
            _choice("ingest", "label_prefixes", label, CLASSES)
        _require(
            set(self.sequences) == set(SEQUENCES),
            f"ingest.sequences: needs patterns for exactly {', '.join(SEQUENCES)}",
        )
        for name, patterns in self.sequences.items():
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ParamsError(f"ingest.sequences.{name}: bad pattern {pattern!r}: {exc}") from None
        _require(0 < self.spacing_tolerance < 1, "ingest.spacing_tolerance: must be between 0 and 1")
        _require(self.min_slices >= 2, f"ingest.min_slices: must be at least 2, got {self.min_slices}")


@dataclasses.dataclass(frozen=True)
class SplitParams:
    test_fraction: float = 0.2
    folds: int = 5

    def __post_init__(self) -> None:
        _require(
            0 < self.test_fraction < 1, f"split.test_fraction: must be in (0, 1), got {self.test_fraction}"
        )
        _require(self.folds >= 2, f"split.folds: must be at least 2, got {self.folds}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class VolumeParams:
    """How a patient's three volumes become one ``[3, depth, S, S]`` tensor (``slice_2d``, ``stack_3d``)."""

    image_size: int
    """In-plane pixels ``S`` of every slice. Not called ``size``: DVC's run-cache ignores that key."""
    depth: int = 20
    depth_mode: str = "resample"
    crop: str = "head"
    """``head``: the square field of view around the head's bounding box; ``none``: the whole T1+C field."""
    normalise: str = "zscore"
    clip_percentiles: tuple[float, float] = (0.5, 99.9)

    def __post_init__(self) -> None:
        section = SECTION_PLACEHOLDER  # from_mapping names the real section (slice_2d or stack_3d)
        _require(self.image_size >= 32, f"{section}.image_size: must be at least 32, got {self.image_size}")
        _require(self.depth >= 2, f"{section}.depth: must be at least 2, got {self.depth}")
        _require(
            self.depth_mode != "seed",
            f"{section}.depth_mode: 'seed' is now called 'study' (the original study's slice rule)",
        )
        _choice(section, "depth_mode", self.depth_mode, ("study", "resample"))
        if self.depth_mode == "study":
            _require(
                self.depth == 20,
                f"{section}.depth: the study's rule is defined for 20 slices, got {self.depth}",
            )
        _choice(section, "crop", self.crop, CROPS)
        _choice(section, "normalise", self.normalise, NORMALISATIONS)
        low, high = self.clip_percentiles
        _require(0 <= low < high <= 100, f"{section}.clip_percentiles: need 0 <= low < high <= 100")


def volume_section(name: str, path: str | Path = "params.yaml") -> VolumeParams:
    """``slice_2d`` or ``stack_3d`` of params.yaml."""
    return section(VolumeParams, name, path)


def from_mapping(cls: type[T], section: str, mapping: dict[str, Any] | None) -> T:
    """Build a params dataclass from a YAML mapping, rejecting unknown keys with one clear line."""
    if mapping is not None and not isinstance(mapping, dict):
        raise ParamsError(f"{section}: expected a mapping of keys, got {mapping!r}")
    mapping = dict(mapping or {})
    for name in RUN_CACHE_BLIND & set(mapping):
        raise ParamsError(
            f"{section}.{name}: a param may not be called {name!r}: DVC's run-cache ignores that key "
            f"(treeverse/dvc#10296), so changing it would not re-run the stage"
        )
    fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(fields))
    _require(not unknown, f"{section}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: coerce(f"{section}.{name}", value, hints[name]) for name, value in mapping.items()}
    missing = [
        name
        for name, field in fields.items()
        if name not in mapping
        and field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
    ]
    _require(not missing, f"{section}: missing key(s) {', '.join(missing)}: params.yaml sets each of them")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ParamsError(f"{section}: {exc}") from None
    except ParamsError as exc:
        raise ParamsError(str(exc).replace(SECTION_PLACEHOLDER, section)) from None


def _number_text(where: str, value: str, kind: str) -> float:
    """A number written as text: YAML 1.1 (PyYAML) reads ``3e-3`` or ``1e4`` (no dot) as a string."""
    try:
        number = float(value.strip())
    except ValueError:
        raise ParamsError(f"{where}: expected {kind}, got {value!r}") from None
    return number


def coerce(where: str, value: Any, hint: Any) -> Any:
    """``value`` as the annotated type ``hint`` of the param ``where`` (``section.key``), or one line.

    Numbers may be written in any spelling YAML users write (``3e-3``, ``1e4``, ``1_000``, ``2.0`` for
    a whole number); lists and mappings are checked element by element and tuples for their length.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        kind = "a whole number" if hint is int else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ParamsError(f"{where}: expected {kind}, got {value!r}")
        number = _number_text(where, value, kind) if isinstance(value, str) else value
        if not math.isfinite(number):
            raise ParamsError(f"{where}: expected a finite number, got {value!r}")
        if hint is int:
            if number != int(number):
                raise ParamsError(f"{where}: expected a whole number, got {value!r}")
            return int(number)
        return float(number)
    if hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected text, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        if len(value) != len(args):
            raise ParamsError(
                f"{where}: expected a list of {len(args)} values, got {len(value)}: {list(value)!r}"
            )
        return tuple(coerce(where, item, arg) for item, arg in zip(value, args, strict=True))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        return [coerce(where, item, args[0]) for item in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ParamsError(f"{where}: expected a mapping of keys, got {value!r}")
        return {
            coerce(where, key, args[0]): coerce(f"{where}.{key}", item, args[1])
            for key, item in value.items()
        }
    return value


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml as plain data; a missing or malformed file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repository root)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    unknown = sorted(str(name) for name in data if name not in SECTIONS)
    if unknown:
        raise ParamsError(f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    return data


def shared_seed(path: str | Path = "params.yaml") -> int:
    """The top-level ``seed`` every stage derives its randomness from."""
    return int(coerce("seed", load_params(path).get("seed", 0), int))


def section(cls: type[T], name: str, path: str | Path = "params.yaml") -> T:
    """Load and validate one section of params.yaml."""
    return from_mapping(cls, name, load_params(path).get(name))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingParams:
    """One training section, ``train_2d`` or ``train_3d`` (:func:`training_section`); Adam and
    cross-entropy are fixed. No field has a default: params.yaml is the one home of every value.

    Augmentation acts on z-scored intensities, so ``noise_std`` and ``intensity_shift`` are in units
    of one standard deviation of the patient's volume.
    """

    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("num_workers", "parallel_folds")
    """Fields that change how fast training runs, never its numbers (each sample's augmentation is seeded
    by patient and epoch, each fold's initialisation by fold): not DVC params of the train stages, not
    part of a benchmark run's identity. ``threads``, ``device``, ``precision``, ``nproc`` and
    ``micro_batch`` change the numbers (measured: docs/speed.md), so they are params."""

    dim: str
    """``2d`` or ``3d``: the arrays this section trains on; set from the section's name, not a key."""
    model: str
    epochs: int
    batch_size: int
    micro_batch: int
    """Samples per forward/backward pass: the gradients of a batch accumulate over its micro-batches of
    this size before the one optimiser step, so memory follows ``micro_batch`` while the step is still
    the whole batch's (batch normalisation then sees each micro-batch on its own); 0: the whole batch."""
    lr: float
    lr_schedule: str
    weight_decay: float
    restarts: int
    flip_horizontal: float
    flip_vertical: float
    noise_std: float
    intensity_shift: float
    rotate_degrees: float
    scale: float
    device: str
    precision: str
    """Autocast precision of the forward pass: ``auto`` (float16 on CUDA, float32 on the CPU), ``float32``,
    ``bfloat16`` (a CPU with AVX-512 BF16 or AMX, or a GPU) or ``float16`` (CUDA)."""
    threads: int
    num_workers: int | str
    """DataLoader workers per training process, or ``auto``: 0 on the CPU (the training process loads and
    augments its own batches), on CUDA up to 8 (the cores shared out over the training processes)."""
    parallel_folds: int | str
    """Fold models trained at once, one process each (the same numbers as one after another); ``auto``:
    one per ``threads`` cores on the CPU (2 on 2 cores), 1 on CUDA."""
    nproc: int
    """Processes that train each fold model together under torchrun (DistributedDataParallel): 1 is a
    plain process; N > 1 needs N GPUs on CUDA, or runs N gloo workers on the CPU."""
    deterministic: bool

    def __post_init__(self) -> None:
        # the model name is checked against the registry by the training layer (models.check_model):
        # params sits below the models and must not import them (every stage imports params)
        _require(self.dim in ("2d", "3d"), f"train_<dim>: dim must be 2d or 3d, got {self.dim!r}")
        name = self.section_name
        _require(self.epochs >= 1, f"{name}.epochs: must be at least 1, got {self.epochs}")
        _require(self.batch_size >= 1, f"{name}.batch_size: must be at least 1, got {self.batch_size}")
        _require(
            self.micro_batch >= 0,
            f"{name}.micro_batch: a whole number >= 0 (0: the whole batch), got {self.micro_batch}",
        )
        _require(0 < self.lr < 1, f"{name}.lr: must be in (0, 1), got {self.lr}")
        _require(
            self.lr_schedule in LR_SCHEDULES,
            f"{name}.lr_schedule: {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}",
        )
        _require(self.weight_decay >= 0, f"{name}.weight_decay: must be >= 0, got {self.weight_decay}")
        _require(0 <= self.restarts <= 10, f"{name}.restarts: must be in 0..10, got {self.restarts}")
        for key in ("flip_horizontal", "flip_vertical"):
            value = getattr(self, key)
            _require(0 <= value <= 1, f"{name}.{key}: a probability in [0, 1], got {value}")
        _require(self.noise_std >= 0, f"{name}.noise_std: must be >= 0, got {self.noise_std}")
        shift = self.intensity_shift
        _require(shift >= 0, f"{name}.intensity_shift: must be >= 0, got {shift}")
        _require(
            0 <= self.rotate_degrees <= 180,
            f"{name}.rotate_degrees: must be in [0, 180], got {self.rotate_degrees}",
        )
        _require(0 <= self.scale < 1, f"{name}.scale: must be in [0, 1), got {self.scale}")
        _require(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"{name}.device: {self.device!r} is not one of auto, cpu, cuda, cuda:N",
        )
        _require(
            self.precision in PRECISIONS,
            f"{name}.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}",
        )
        _require(self.threads >= 1, f"{name}.threads: must be at least 1, got {self.threads}")
        workers = self.num_workers
        _require(
            workers == "auto"
            or (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0),
            f"{name}.num_workers: a whole number >= 0 or auto, got {workers!r}",
        )
        folds = self.parallel_folds
        _require(
            folds == "auto" or (isinstance(folds, int) and not isinstance(folds, bool) and folds >= 1),
            f"{name}.parallel_folds: a whole number >= 1 or auto, got {folds!r}",
        )
        _require(self.nproc >= 1, f"{name}.nproc: must be at least 1, got {self.nproc}")

    @property
    def section_name(self) -> str:
        return f"train_{self.dim}"


def training_section(dim: str, path: str | Path = "params.yaml") -> TrainingParams:
    """The ``train_<dim>`` section of params.yaml (``dim``: ``2d`` or ``3d``)."""
    name = f"train_{dim}"
    mapping = load_params(path).get(name)
    if isinstance(mapping, dict):
        _require("dim" not in mapping, f"{name}.dim: not a key: the section's name says which arrays")
        mapping = {**mapping, "dim": dim}
    return from_mapping(TrainingParams, name, mapping)


def train_sections(path: str | Path = "params.yaml") -> dict[str, TrainingParams]:
    """The ``train_2d`` and ``train_3d`` sections, keyed by dim (``2d``, ``3d``)."""
    return {dim: training_section(dim, path) for dim in ("2d", "3d")}


@dataclasses.dataclass(frozen=True)
class CrossValidateParams:
    """Summary of the fold models' out-of-fold predictions; K is the fold count in ``data/splits.csv``.

    The fold models themselves are trained by train-2d / train-3d (one per fold, nothing trained twice).
    """

    threshold: str = "youden"

    def __post_init__(self) -> None:
        _choice("cross_validate", "threshold", self.threshold, ("youden", "fixed"))


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """Held-out evaluation: bootstrap confidence interval of the test AUC."""

    bootstrap: int = 2000
    ci: float = 0.95
    calibration_bins: int = 5
    """Bins of equal patient counts in the reliability diagram (few: a test split has a dozen patients)."""

    def __post_init__(self) -> None:
        _require(self.bootstrap >= 100, f"evaluate.bootstrap: at least 100 resamples, got {self.bootstrap}")
        _require(0.5 < self.ci < 1, f"evaluate.ci: must be in (0.5, 1), got {self.ci}")
        _require(
            2 <= self.calibration_bins <= 20,
            f"evaluate.calibration_bins: 2 to 20, got {self.calibration_bins}",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExternalParams:
    """External validation on a second site (data/external): how its decision threshold is adapted."""

    calibration_fraction: float
    """Share of the external patients (stratified, ``seed``) on which the threshold is chosen again; the
    metrics before and after adaptation are reported on the other patients. 0: no adaptation."""

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.calibration_fraction < 1.0,
            f"external.calibration_fraction: must be in [0, 1), got {self.calibration_fraction}",
        )
