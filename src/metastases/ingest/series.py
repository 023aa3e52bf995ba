"""Group a patient's files into series, say which sequence a series is, and which series to skip.

Sequence recognition: the params' regular expressions (case-insensitive ``re.search``) on
SeriesDescription, and only if that matches nothing, on ProtocolName; FLAIR is tried first (an
"AX T2 FLAIR" is a FLAIR), then T1 post-contrast, then T2.

When several usable series match one sequence, :data:`CHOICE_RULE` picks one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

from metastases.ingest.reading import DicomFile
from metastases.ingest.report import series_label

MATCH_ORDER: tuple[str, ...] = ("flair", "t1c", "t2")
CHOICE_RULE = "most slices, then highest SeriesNumber (the later repeat)"


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


def skip_reason(series: Series) -> str | None:
    """Why a series is not an original image series (non-image object, localizer, derived), or None."""
    if not all(file.is_image for file in series.files):
        classes = sorted({file.sop_class for file in series.files if not file.is_image})
        return f"non-image object ({', '.join(classes)})"
    image_types = {value for file in series.files for value in file.image_type}
    if "LOCALIZER" in image_types:
        return "localizer (ImageType LOCALIZER)"
    derived = sorted(image_types & {"DERIVED", "SECONDARY"})
    if derived:
        return f"derived image (ImageType {'/'.join(derived)})"
    return None


def choice_order(candidates: Sequence[tuple[Series, int]]) -> list[int]:
    """Indices of ``(series, n_slices)`` candidates, preferred first, by :data:`CHOICE_RULE`."""
    return sorted(
        range(len(candidates)),
        key=lambda i: (
            -candidates[i][1],
            -(number if (number := candidates[i][0].number) is not None else -1),
            i,
        ),
    )
