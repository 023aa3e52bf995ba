"""One synthetic patient: plan the study (anatomy, lesions, series), render each series, write the files.

:func:`plan_patient` draws every random choice from the patient's own seed, so a patient is the same
whichever worker builds it; :func:`write_patient` renders and writes what the plan says.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from scipy import ndimage

from metastases.demo_cohort.anatomy import (
    BRAIN_CENTRE_MM,
    HeadTransform,
    Template,
    dot3,
    load_template,
    random_head,
    tilted_head,
)
from metastases.demo_cohort.contrast import (
    ScannerScale,
    add_rician_noise,
    bias_field,
    patient_signals,
    random_bias,
    random_scale,
    sequence_volumes,
)
from metastases.demo_cohort.export import (
    LAYOUTS,
    SeriesNaming,
    fake_identity,
    series_folder_name,
    series_namings,
    shuffled_numbers,
    study_date,
)
from metastases.demo_cohort.lesions import Lesion, sample_metastases, sample_mimics, sample_vessels
from metastases.demo_cohort.site import AxialProtocol, Site, site_profile
from metastases.dicom_writer import (
    SeriesGeometry,
    SeriesHeader,
    axial_geometry,
    write_classic_series,
    write_enhanced_series,
    write_multiplane_series,
)

LPS_FROM_RAS = np.array([-1.0, -1.0, 1.0])
POINTS_PER_CHUNK = 2_000_000
"""Output voxels sampled at once: bounds memory (a 512 x 512 x 48 series is 12.6 M voxels)."""


@dataclasses.dataclass(frozen=True)
class PatientSpec:
    """Who to build: folder ``name`` (``mts-7``), ``label`` (metastases/normal), the seeds and the
    ``site`` (:data:`metastases.demo_cohort.site.SITES`)."""

    index: int
    name: str
    label: str
    seed: int
    size_scale: float = 1.0
    site: str = "a"

    def seed_sequence(self) -> np.random.SeedSequence:
        """The patient's own stream: a child of the cohort seed, independent of every other patient.

        Another site adds its ``stream`` word to the entropy: its patients share no draws with site a's
        (for seeds below 2**32)."""
        stream = site_profile(self.site).stream
        entropy = self.seed if stream is None else [self.seed, stream]
        return np.random.SeedSequence(entropy, spawn_key=(self.index,))


@dataclasses.dataclass(frozen=True)
class SeriesPlan:
    """One series: ``geometries`` holds one stack, or one single-slice geometry per localizer plane."""

    naming: SeriesNaming
    geometries: tuple[SeriesGeometry, ...]
    scale: ScannerScale
    noise: float
    bias: np.ndarray
    enhanced: bool
    compressed: bool


@dataclasses.dataclass(frozen=True)
class PatientPlan:
    spec: PatientSpec
    head: HeadTransform
    lesions: list[Lesion]
    signals: dict[str, dict[str, float]]
    series: list[SeriesPlan]
    vendor: str
    layout: str
    folder_style: int
    identity: dict[str, str]
    study_date: str


def _slice_count(rng: np.random.Generator) -> int:
    """16-48 slices, weighted so that every branch of the seed depth rule (<20, 20-40, >40) is common."""
    low, high = [(16, 20), (20, 41), (41, 49)][int(rng.choice(3, p=[0.3, 0.55, 0.15]))]
    return int(rng.integers(low, high))


def _axial_stack(rng: np.random.Generator, centre_lps: np.ndarray, size_scale: float) -> SeriesGeometry:
    """Axial stack: 4-6 mm slices (sometimes a 10 % gap), matrix 256 or (1 in 5) 512 over a 220-240 mm FOV."""
    matrix = 512 if rng.random() < 0.2 else 256
    matrix = max(16, round(matrix * size_scale))
    fov = rng.uniform(220.0, 240.0)
    n_slices = _slice_count(rng)
    thickness = round(float(rng.uniform(4.0, max(4.0, min(6.0, 200.0 / n_slices)))), 2)
    gap = round(0.1 * thickness, 2) if thickness <= 5.4 and n_slices <= 40 and rng.random() < 0.3 else 0.0
    centre = centre_lps + rng.uniform([-4, -4, -6], [4, 4, 8])
    geometry = axial_geometry(
        matrix, matrix, n_slices, fov / matrix, thickness + gap, float(rng.uniform(-6, 6)), tuple(centre)
    )
    return dataclasses.replace(geometry, slice_thickness=thickness)


def _protocol_stack(
    rng: np.random.Generator, centre_lps: np.ndarray, size_scale: float, protocol: AxialProtocol
) -> SeriesGeometry:
    """Axial stack of a site's fixed protocol (:class:`~metastases.demo_cohort.site.AxialProtocol`),
    shifted and tilted like site a's."""
    matrix = max(16, round(protocol.matrix * size_scale))
    fov = rng.uniform(*protocol.fov_mm)
    n_slices = int(rng.integers(*protocol.slices))
    centre = centre_lps + rng.uniform([-4, -4, -6], [4, 4, 8])
    geometry = axial_geometry(
        matrix,
        matrix,
        n_slices,
        fov / matrix,
        protocol.thickness_mm,
        float(rng.uniform(-6, 6)),
        tuple(centre),
    )
    return dataclasses.replace(geometry, slice_thickness=protocol.thickness_mm)


def _site_signals(signals: dict[str, dict[str, float]], site: Site) -> dict[str, dict[str, float]]:
    """The patient's signal table times the site's factors, plus its vessel signal (site a: unchanged)."""
    out = {
        sequence: {t: v * site.signal_factors.get(sequence, {}).get(t, 1.0) for t, v in table.items()}
        for sequence, table in signals.items()
    }
    for sequence, value in site.vessel_signals.items():
        out[sequence]["vessel"] = value
    return out


def _localizer_planes(centre_lps: np.ndarray, size_scale: float) -> tuple[SeriesGeometry, ...]:
    """Axial, sagittal and coronal single slices through the head centre (260 mm FOV, 8 mm thick)."""
    matrix = max(16, round(256 * size_scale))
    spacing = 260.0 / matrix
    planes = (((1, 0, 0), (0, 1, 0)), ((0, 1, 0), (0, 0, -1)), ((1, 0, 0), (0, 0, -1)))
    out = []
    for row, column in planes:
        row_v, column_v = np.asarray(row, float), np.asarray(column, float)
        first = centre_lps - (row_v + column_v) * (matrix - 1) * spacing / 2
        out.append(SeriesGeometry(matrix, matrix, (spacing, spacing), row, column, tuple(first), 8.0, 1, 8.0))
    return tuple(out)


def _coverage(head: HeadTransform, stacks: list[SeriesGeometry]):
    """``inside(points_mm, margin)``: template points imaged by every stack, ``margin`` mm from its ends."""

    def inside(points_mm: np.ndarray, margin: float) -> np.ndarray:
        lps = head.to_patient(points_mm.astype(np.float64)) * LPS_FROM_RAS
        keep = np.ones(len(points_mm), bool)
        for geometry in stacks:
            depth = dot3(lps - np.asarray(geometry.first_position), geometry.normal)
            keep &= (depth > margin) & (depth < (geometry.n_slices - 1) * geometry.slice_spacing - margin)
        return keep

    return inside


def plan_patient(spec: PatientSpec, template: Template | None = None) -> PatientPlan:
    """Every random choice for one patient, from ``spec.seed_sequence()`` only.

    Site a's draws are those of the original generator, in the same order; another site's extra draws
    (head tilt, vessels) come only on its own path."""
    template = template or load_template()
    site = site_profile(spec.site)
    rng = np.random.default_rng(spec.seed_sequence().spawn(1)[0])
    head = random_head(rng)
    if site.head_tilt is not None:
        head = tilted_head(head, rng.uniform(*site.head_tilt))
    centre_lps = head.to_patient(BRAIN_CENTRE_MM) * LPS_FROM_RAS
    vendor = str(rng.choice(list(site.vendors)))
    namings = series_namings(
        rng, vendor, localizer=rng.random() < 0.25, repeat_flair=rng.random() < 0.05, vendors=site.vendors
    )
    series = []
    for naming in namings:
        if naming.sequence == "localizer":
            geometries = _localizer_planes(centre_lps, spec.size_scale)
            enhanced, compressed = False, False
        else:
            if site.protocol is None:
                geometries = (_axial_stack(rng, centre_lps, spec.size_scale),)
            else:
                geometries = (_protocol_stack(rng, centre_lps, spec.size_scale, site.protocol),)
            enhanced = rng.random() < 0.1
            compressed = rng.random() < (0.9 if geometries[0].rows > 256 * spec.size_scale else 0.55)
        noise = float(rng.uniform(*site.noise))
        scale = random_scale(rng)  # before the bias: the order of site a's draws
        bias = random_bias(rng) * site.bias_strength  # x * 1.0 is x exactly: site a's bias unchanged
        series.append(SeriesPlan(naming, geometries, scale, noise, bias, enhanced, compressed))
    stacks = [s.geometries[0] for s in series if s.naming.sequence != "localizer"]
    inside = _coverage(head, stacks)
    lesions = sample_metastases(rng, template, inside) if spec.label == "metastases" else []
    if rng.random() < (0.2 if lesions else 0.45):
        lesions += sample_mimics(rng, template, inside, int(rng.integers(1, 4 if lesions else 6)))
    if site.vessels[1] > site.vessels[0]:
        count = int(rng.integers(*site.vessels))
        lesions += sample_vessels(rng, template, inside, count=count, avoid=lesions)
    signals = _site_signals(patient_signals(rng), site)
    layout = str(rng.choice(LAYOUTS, p=[0.45, 0.35, 0.2]))
    folder_style = int(rng.integers(3))
    identity = fake_identity(rng)
    if site.institution is not None:
        identity["InstitutionName"] = site.institution
    return PatientPlan(
        spec=spec,
        head=head,
        lesions=lesions,
        signals=signals,
        series=series,
        vendor=vendor,
        layout=layout,
        folder_style=folder_style,
        identity=identity,
        study_date=study_date(rng),
    )


COARSE_STEP = 8
"""In-plane step (pixels) of the grid on which the output -> template mapping and the bias field are
evaluated exactly; both are smooth (wavelengths >= 70 mm), so bilinear interpolation between grid
points is accurate to ~0.05 mm and saves most of the cost of the deformation."""


def _linear_weights(knots: np.ndarray, size: int, part: slice) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation from values at ``knots`` to the positions ``range(size)[part]``: for each
    position the index of the knot on its left and the float32 weight of the knot on its right."""
    positions = np.arange(size)[part]
    left = np.clip(np.searchsorted(knots, positions, side="right") - 1, 0, len(knots) - 2)
    right_weight = (positions - knots[left]) / (knots[left + 1] - knots[left])
    return left, right_weight.astype(np.float32)


def _interpolate(values: np.ndarray, left: np.ndarray, right_weight: np.ndarray, axis: int) -> np.ndarray:
    """``values`` at the knots along ``axis`` -> the positions of :func:`_linear_weights`, elementwise."""
    shape = [1] * values.ndim
    shape[axis] = len(left)
    weight = right_weight.reshape(shape)
    lower, upper = np.take(values, left, axis=axis), np.take(values, left + 1, axis=axis)
    return lower * (np.float32(1.0) - weight) + upper * weight


def _template_coordinates(
    geometry: SeriesGeometry, head: HeadTransform, template: Template, bias: np.ndarray, start: int, stop: int
) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """Template voxel indices (3) and bias gain (1) at the pixel centres of slices ``start:stop``
    (LPS -> patient RAS -> template RAS -> template voxel): float32 ``(4, stop - start, h, w)`` over the
    rectangle ``(rows, columns)`` of the slices that can see the template; None when none can.
    Pixels outside the rectangle lie outside the head and stay air."""
    knots_r = np.unique(np.r_[np.arange(0, geometry.rows, COARSE_STEP), geometry.rows - 1])
    knots_c = np.unique(np.r_[np.arange(0, geometry.columns, COARSE_STEP), geometry.columns - 1])
    down = knots_r[:, None, None] * geometry.pixel_spacing[0] * np.asarray(geometry.column_direction)
    across = knots_c[None, :, None] * geometry.pixel_spacing[1] * np.asarray(geometry.row_direction)
    lps = geometry.positions()[start:stop, None, None, :] + (down + across)[None]
    voxels = template.mm_to_voxel(head.to_template(lps * LPS_FROM_RAS))
    # A knot counts as inside within a margin of more than one knot step, so thin slivers of the
    # template between knots are not cut off.
    margin = 1.5 * COARSE_STEP * max(geometry.pixel_spacing)
    seen = np.all((voxels > -margin) & (voxels < np.asarray(template.shape) - 1 + margin), axis=-1).any(
        axis=0
    )
    if not seen.any():
        return None
    rows_seen, cols_seen = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    rows = slice(
        int(knots_r[max(rows_seen[0] - 1, 0)]), int(knots_r[min(rows_seen[-1] + 1, len(knots_r) - 1)]) + 1
    )
    cols = slice(
        int(knots_c[max(cols_seen[0] - 1, 0)]), int(knots_c[min(cols_seen[-1] + 1, len(knots_c) - 1)]) + 1
    )
    channels = np.concatenate([voxels, bias_field(lps, bias)[..., None]], axis=-1)
    # (channel, slice, coarse row, coarse column), interpolated along columns, then rows. float32 keeps
    # template positions to ~0.001 voxel. Elementwise (two knots per pixel), not as matrix products:
    # BLAS sums in an order that depends on the CPU kernel, and the stored integers would with it.
    channels = np.ascontiguousarray(np.moveaxis(channels, -1, 0), dtype=np.float32)
    across = _interpolate(channels, *_linear_weights(knots_c, geometry.columns, cols), axis=3)
    return _interpolate(across, *_linear_weights(knots_r, geometry.rows, rows), axis=2), (rows, cols)


def render_series(
    volume: np.ndarray,
    geometry: SeriesGeometry,
    head: HeadTransform,
    template: Template,
    plan: SeriesPlan,
    rng: np.random.Generator,
) -> np.ndarray:
    """Stored uint16 pixels ``(n_slices, rows, columns)`` of one stack: template signal sampled at every
    output voxel centre (trilinear, a single interpolation), times the bias field, plus Rician noise."""
    # Matrices above 256 are reconstructed the way scanners do it ("zero-fill interpolation"):
    # sample every other pixel, interpolate the rest; noise is added at the full matrix.
    fine = geometry.rows > 300 and geometry.columns > 300
    sampled = _every_other_pixel(geometry) if fine else geometry
    signal = np.zeros((sampled.n_slices, sampled.rows, sampled.columns), np.float32)
    step = max(1, POINTS_PER_CHUNK // (sampled.rows * sampled.columns))
    for start in range(0, sampled.n_slices, step):
        stop = min(start + step, sampled.n_slices)
        found = _template_coordinates(sampled, head, template, plan.bias, start, stop)
        if found is None:
            continue
        mapping, (rows, cols) = found
        block = ndimage.map_coordinates(
            volume, mapping[:3], order=1, cval=0.0, prefilter=False, output=np.float32
        )
        signal[start:stop, rows, cols] = block * mapping[3]
    if fine:
        signal = _double_in_plane(signal, geometry.rows, geometry.columns)
    return plan.scale.to_stored(add_rician_noise(signal, plan.noise, rng))


def _every_other_pixel(geometry: SeriesGeometry) -> SeriesGeometry:
    """The same stack with the pixels of even row and column index only (same first pixel)."""
    return dataclasses.replace(
        geometry,
        rows=(geometry.rows + 1) // 2,
        columns=(geometry.columns + 1) // 2,
        pixel_spacing=(2 * geometry.pixel_spacing[0], 2 * geometry.pixel_spacing[1]),
    )


def _double_axis(half: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` from the even samples ``half`` to ``size`` samples;
    an odd last sample (no right neighbour) copies its left one."""
    half = np.moveaxis(half, axis, 0)
    out = np.empty((size, *half.shape[1:]), np.float32)
    out[0::2] = half
    middles = 0.5 * (half[:-1] + half[1:])
    out[1 : 2 * len(middles) : 2] = middles
    if size % 2 == 0:
        out[-1] = half[-1]
    return np.moveaxis(out, 0, axis)


def _double_in_plane(half: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """``[n, ceil(rows/2), ceil(columns/2)]`` even pixels -> ``[n, rows, columns]`` (bilinear)."""
    return np.ascontiguousarray(_double_axis(_double_axis(half, rows, 1), columns, 2))


def _header(plan: PatientPlan, series: SeriesPlan) -> SeriesHeader:
    localizer = series.naming.sequence == "localizer"
    image_type = ("ORIGINAL", "PRIMARY", "LOCALIZER") if localizer else SeriesHeader.image_type
    return SeriesHeader(
        series_description=series.naming.description,
        series_number=series.naming.series_number,
        uid_seed=site_profile(plan.spec.site).uid_seed(plan.spec.seed, plan.spec.index),
        identity=plan.identity,
        protocol_name=series.naming.protocol,
        rescale_slope=series.scale.slope,
        rescale_intercept=series.scale.intercept,
        study_date=plan.study_date,
        manufacturer=plan.vendor,
        image_type=image_type,
    )


def _file_paths(plan: PatientPlan, root: Path, rng: np.random.Generator) -> list[list[Path]]:
    """Paths of every file of every series (one per slice, one per enhanced series), never in slice order."""
    counts = [1 if s.enhanced else sum(g.n_slices for g in s.geometries) for s in plan.series]
    patient = root / plan.spec.name
    if plan.layout == "flat":
        numbers = iter(shuffled_numbers(rng, sum(counts), start=int(rng.integers(1, 40))))
        return [[patient / f"IM{next(numbers):05d}" for _ in range(count)] for count in counts]
    paths = []
    for k, (series, count) in enumerate(zip(plan.series, counts, strict=True)):
        series_numbers = shuffled_numbers(rng, count)
        if plan.layout == "nested":
            folder = patient / "DICOM" / "ST00001" / f"SE{k + 1:05d}"
            paths.append([folder / f"IM{n:05d}" for n in series_numbers])
        else:
            folder = patient / series_folder_name(series.naming, plan.folder_style)
            paths.append(
                [folder / f"IM-{series.naming.series_number:04d}-{n:04d}.dcm" for n in series_numbers]
            )
    return paths


def lesion_truth(plan: PatientPlan) -> list[dict[str, object]]:
    """Rows of ``lesions.csv`` (see :mod:`metastases.lesion_truth`) for one patient: each lesion's centre in
    DICOM patient coordinates (LPS mm, rounded to 0.01 mm), diameter, kind and whether it enhances.
    A vessel (site b) is an enhancing ``mimic``; its diameter is its length."""
    rows: list[dict[str, object]] = []
    counters = {"metastasis": 0, "mimic": 0}
    for lesion in plan.lesions:
        kind = "mimic" if lesion.kind == "vessel" else lesion.kind  # an enhancing mimic
        counters[kind] += 1
        lps = plan.head.to_patient(np.asarray(lesion.centre, np.float64)) * LPS_FROM_RAS
        rows.append(
            {
                "patient": plan.spec.name,
                "lesion": counters[kind],
                "kind": kind,
                "x_mm": round(float(lps[0]), 2) + 0.0,
                "y_mm": round(float(lps[1]), 2) + 0.0,
                "z_mm": round(float(lps[2]), 2) + 0.0,
                "diameter_mm": round(2 * lesion.radius, 2),
                "enhancing": "yes" if lesion.kind in ("metastasis", "vessel") else "no",
            }
        )
    return rows


def write_patient(spec: PatientSpec, root: Path, plan: PatientPlan | None = None) -> int:
    """Render and write one patient under ``root / spec.name``; returns the number of files written.

    ``plan`` defaults to :func:`plan_patient` of ``spec``; tests pass an edited plan (e.g. a known lesion).
    """
    template = load_template()
    plan = plan or plan_patient(spec, template)
    noise_rng, layout_rng = (np.random.default_rng(s) for s in spec.seed_sequence().spawn(3)[1:])
    volumes = sequence_volumes(template, plan.lesions, plan.signals)
    all_paths = _file_paths(plan, root, layout_rng)
    written = 0
    for series, paths in zip(plan.series, all_paths, strict=True):
        header = _header(plan, series)
        syntax = RLELossless if series.compressed else ExplicitVRLittleEndian
        volume = volumes["t1c" if series.naming.sequence == "localizer" else series.naming.sequence]
        if series.naming.sequence == "localizer":
            planes = [
                render_series(volume, g, plan.head, template, series, noise_rng)[0] for g in series.geometries
            ]
            write_multiplane_series(planes, series.geometries, header, paths, syntax)
        else:
            geometry = series.geometries[0]
            pixels = render_series(volume, geometry, plan.head, template, series, noise_rng)
            if series.enhanced:
                order = shuffled_numbers(layout_rng, geometry.n_slices, start=0)
                write_enhanced_series(
                    pixels, geometry, header, paths[0], frame_order=order, transfer_syntax=syntax
                )
            else:
                numbers = shuffled_numbers(layout_rng, geometry.n_slices)
                write_classic_series(pixels, geometry, header, paths, syntax, instance_numbers=numbers)
        written += len(paths)
    return written
