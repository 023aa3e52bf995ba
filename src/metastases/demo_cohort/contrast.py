"""Tissue -> MR signal for FLAIR, T2 and T1 post-contrast, plus what the scanner adds on top.

Signals are relative (arbitrary units, white matter on T1+C about 1); the scanner's gain turns them into
stored integers. Orderings follow clinical appearance: FLAIR suppresses CSF and shows oedema bright,
T2 shows CSF brightest, T1+C has WM > GM > CSF with enhancing metastases brighter than WM.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from metastases.demo_cohort.anatomy import TISSUES, Template
from metastases.demo_cohort.lesions import Lesion, lesion_fractions

SEQUENCE_NAMES: tuple[str, ...] = ("flair", "t2", "t1c")

# Columns: TISSUES, then the lesion compartments. Fat is bright on T1 and on fast-spin-echo T2/FLAIR;
# cortical bone is dark everywhere; dura enhances after contrast.
_LESION_TISSUES = ("enhancing", "necrosis", "oedema", "mimic")
SIGNALS: dict[str, dict[str, float]] = {
    "flair": dict(
        csf=0.10, gm=0.78, wm=0.58, dura=0.30, skull=0.04, marrow=0.40, fat=0.80, skin=0.50,
        enhancing=0.88, necrosis=0.55, oedema=1.02, mimic=0.98,
    ),
    "t2": dict(
        csf=1.45, gm=0.62, wm=0.45, dura=0.25, skull=0.04, marrow=0.50, fat=0.95, skin=0.55,
        enhancing=0.68, necrosis=1.20, oedema=0.92, mimic=0.88,
    ),
    "t1c": dict(
        csf=0.25, gm=0.68, wm=0.95, dura=0.85, skull=0.04, marrow=0.75, fat=1.25, skin=0.60,
        enhancing=1.45, necrosis=0.30, oedema=0.74, mimic=0.80,
    ),
}  # fmt: skip


def patient_signals(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """The signal table with +-5 % per patient and tissue (coil, sequence parameters, age)."""
    return {
        sequence: {tissue: value * float(rng.uniform(0.95, 1.05)) for tissue, value in table.items()}
        for sequence, table in SIGNALS.items()
    }


def sequence_volumes(
    template: Template, lesions: list[Lesion], signals: dict[str, dict[str, float]]
) -> dict[str, np.ndarray]:
    """Signal of each sequence on the template grid: float32 ``(197, 233, 189)`` per sequence name.

    A lesion of kind ``vessel`` needs a ``vessel`` entry in every sequence's ``signals``."""
    weights = np.array([[signals[s][t] for t in TISSUES] for s in SEQUENCE_NAMES], dtype=np.float32)
    # weights @ stack, summed tissue by tissue in TISSUES order: a matrix product (BLAS) would sum in
    # an order that depends on the CPU kernel, and the stored integers with it.
    volumes = {}
    term = np.empty(template.shape, np.float32)
    for name, row in zip(SEQUENCE_NAMES, weights, strict=True):
        volume = template.stack[0] * row[0]
        for fraction, weight in zip(template.stack[1:], row[1:], strict=True):
            volume += np.multiply(fraction, weight, out=term)
        volumes[name] = volume
    for lesion in lesions:
        parts = lesion_fractions(lesion, template)
        for name, volume in volumes.items():
            table = signals[name]
            local = volume[parts.box]
            if lesion.kind == "mimic":
                local += parts.lesion * (table["mimic"] - table["wm"])
                continue
            if lesion.kind == "vessel":  # site b only: its signals carry a "vessel" entry
                local *= 1.0 - parts.lesion
                local += parts.lesion * table["vessel"]
                continue
            local += parts.oedema * (table["oedema"] - table["wm"])
            local *= 1.0 - parts.lesion
            local += (parts.lesion - parts.core) * table["enhancing"] + parts.core * table["necrosis"]
    return volumes


def bias_field(points_lps: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Smooth receive-coil gain at ``points_lps`` ``(..., 3)`` mm: exp of a quadratic in position/100 mm.

    ``coefficients`` ``(9,)``: x, y, z, x^2, y^2, z^2, xy, xz, yz terms (see :func:`random_bias`).
    """
    x, y, z = np.moveaxis(points_lps / 100.0, -1, 0)
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    log_gain = sum(float(c) * term for c, term in zip(coefficients, terms, strict=True))
    # math.exp, not np.exp: numpy's float64 exp takes a CPU-dependent SIMD path (last-bit differences).
    return np.frompyfunc(math.exp, 1, 1)(log_gain).astype(np.float32)


def random_bias(rng: np.random.Generator) -> np.ndarray:
    """Coefficients for :func:`bias_field` giving gains of roughly 0.8 to 1.2 across a head."""
    return np.concatenate([rng.uniform(-0.15, 0.15, 3), rng.uniform(-0.12, 0.12, 6)])


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of std ``sigma`` per channel (Rician)."""
    real = signal + rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    imaginary = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    return np.hypot(real, imaginary)


@dataclasses.dataclass(frozen=True)
class ScannerScale:
    """How real values become stored integers.

    ``real = gain * signal`` and ``stored = (real - intercept) / slope``, rounded and clipped to uint16.
    """

    gain: float
    slope: float = 1.0
    intercept: float = 0.0

    def to_stored(self, signal: np.ndarray) -> np.ndarray:
        stored = (signal * self.gain - self.intercept) / self.slope
        return np.clip(np.rint(stored), 0, 65535).astype(np.uint16)


def random_scale(rng: np.random.Generator) -> ScannerScale:
    """Scanner-like ranges: white matter stored between ~300 and ~3000; one series in four carries a
    non-trivial RescaleSlope/Intercept (as some vendors write for scaled or derived images)."""
    gain = math.exp(float(rng.uniform(math.log(300.0), math.log(3000.0))))
    if rng.random() < 0.25:
        slope = round(float(rng.uniform(0.3, 4.0)), 5)
        intercept = float(rng.choice([0.0, -10.0, -100.0]))
        return ScannerScale(gain, slope, intercept)
    return ScannerScale(gain)
