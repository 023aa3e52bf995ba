"""The embedded demo cohort: realistic synthetic brain-MRI DICOM studies built from the MNI template.

``python -m metastases.demo_cohort OUT_DIR --patients 60 --seed 7`` or :func:`build_cohort`.
"""

from metastases.demo_cohort.build import build_cohort, cohort_specs

__all__ = ["build_cohort", "cohort_specs"]
