"""Group a patient's files into series, say which sequence a series is, and which series to skip.

Sequence recognition: the params' regular expressions (case-insensitive ``re.search``) on
SeriesDescription, and only if that matches nothing, on ProtocolName; FLAIR is tried first (an
"AX T2 FLAIR" is a FLAIR), then T1 post-contrast, then T2.

Skipped, each with its reason: non-image objects, screen captures, MIPs, localizers, other SOP classes
than MR images, series of another body part. DERIVED series (reformats, typically an axial MPR of a 3D
sagittal acquisition) are candidates, used for a sequence only when no ORIGINAL series matches it
(and never when ``ingest.allow_derived`` is false).

When several usable series match one sequence, :data:`CHOICE_RULE` picks one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

from metastases.ingest.problems import series_label
from metastases.ingest.reading import DicomFile

MATCH_ORDER: tuple[str, ...] = ("flair", "t1c", "t2")
CHOICE_RULE = "ORIGINAL before DERIVED, then most slices, then highest SeriesNumber (the later repeat)"

MR_IMAGE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    }
)
"""The SOP classes whose images are used; other image objects are skipped with their class named."""
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_SCREEN_DESCRIPTION = re.compile(r"screen ?(save|capture|shot)|\bscreenshot\b", re.IGNORECASE)
_MIP_DESCRIPTION = re.compile(r"\bmip\b|max(imum)? intensity proj", re.IGNORECASE)
NON_BRAIN_PARTS: tuple[str, ...] = (
    "SPINE",
    "NECK",
    "CHEST",
    "THORAX",
    "BREAST",
    "HEART",
    "CARDIAC",
    "ABDOMEN",
    "LIVER",
    "PELVIS",
    "PROSTATE",
    "KNEE",
    "HIP",
    "SHOULDER",
    "ANKLE",
    "WRIST",
    "ELBOW",
    "HAND",
    "FOOT",
    "EXTREMITY",
    "WHOLEBODY",
)
"""BodyPartExamined values (substrings) that say a series is not of the brain; HEAD/BRAIN/SKULL and
HEADNECK-like values stay."""


@dataclasses.dataclass
class Series:
    """The files of one SeriesInstanceUID, in path order; header values are taken from the first file."""

    uid: str
    files: list[DicomFile]

    @property
    def number(self) -> int | None:
        return self.files[0].series_number

    @property
    def description(self) -> str:
        return self.files[0].description

    @property
    def label(self) -> str:
        return series_label(self.number, self.description)

    @property
    def study_uid(self) -> str:
        return self.files[0].study_uid

    @property
    def frame_of_reference(self) -> str:
        return self.files[0].frame_of_reference

    @property
    def derived(self) -> bool:
        """ImageType says DERIVED or SECONDARY on any file (a reformat, a processed image)."""
        return any(value in ("DERIVED", "SECONDARY") for file in self.files for value in file.image_type)


def group_series(files: Iterable[DicomFile]) -> list[Series]:
    """Files grouped by SeriesInstanceUID, sorted by SeriesNumber (unnumbered last), then first path."""
    groups: dict[str, Series] = {}
    for file in files:
        groups.setdefault(file.series_uid, Series(file.series_uid, [])).files.append(file)
    return sorted(
        groups.values(),
        key=lambda s: (s.number is None, s.number if s.number is not None else 0, str(s.files[0].path)),
    )


def compile_patterns(patterns: Mapping[str, Sequence[str]]) -> dict[str, list[re.Pattern[str]]]:
    return {name: [re.compile(p, re.IGNORECASE) for p in patterns[name]] for name in MATCH_ORDER}


def match_sequence(series: Series, patterns: Mapping[str, Sequence[re.Pattern[str]]]) -> str | None:
    """The sequence ``series`` is (flair, t1c, t2 tried in that order), or None."""
    for text in (series.description, series.files[0].protocol):
        if not text:
            continue
        for name in MATCH_ORDER:
            if any(pattern.search(text) for pattern in patterns[name]):
                return name
    return None


def skip_reason(series: Series, *, allow_derived: bool = True) -> str | None:
    """Why a series is not a usable MR image series of the brain, or None.

    Non-image objects, screen captures, other SOP classes, localizers, MIPs, series of another body part,
    and DERIVED series when ``allow_derived`` is false.
    """
    if not all(file.is_image for file in series.files):
        classes = sorted({file.sop_class for file in series.files if not file.is_image})
        return f"non-image object ({', '.join(classes)})"
    image_types = {value for file in series.files for value in file.image_type}
    class_uids = {file.sop_class_uid for file in series.files}
    if any(
        uid == _SECONDARY_CAPTURE or uid.startswith(f"{_SECONDARY_CAPTURE}.") for uid in class_uids
    ) or "SCREEN" in " ".join(image_types):
        return f"screen capture ({series.files[0].sop_class})"
    if _SCREEN_DESCRIPTION.search(series.description):
        return "screen capture (SeriesDescription)"
    other = sorted({file.sop_class for file in series.files if file.sop_class_uid not in MR_IMAGE_CLASSES})
    if other:
        return f"unsupported SOP class ({', '.join(other)}): only MR images are used"
    if "LOCALIZER" in image_types:
        return "localizer (ImageType LOCALIZER)"
    if image_types & {"MIP", "MAX", "MNIP", "PROJECTION IMAGE"} or _MIP_DESCRIPTION.search(
        series.description
    ):
        return "maximum intensity projection (MIP), not a volume"
    part = series.files[0].body_part
    if part and "HEAD" not in part and "BRAIN" not in part and any(p in part for p in NON_BRAIN_PARTS):
        return f"not a brain series (BodyPartExamined {part})"
    derived = sorted(image_types & {"DERIVED", "SECONDARY"})
    if derived and not allow_derived:
        return f"derived image (ImageType {'/'.join(derived)}) and ingest.allow_derived is false"
    return None


def choice_order(candidates: Sequence[tuple[Series, int]]) -> list[int]:
    """Indices of ``(series, n_slices)`` candidates, preferred first, by :data:`CHOICE_RULE`."""
    return sorted(
        range(len(candidates)),
        key=lambda i: (
            candidates[i][0].derived,
            -candidates[i][1],
            -(number if (number := candidates[i][0].number) is not None else -1),
            i,
        ),
    )
