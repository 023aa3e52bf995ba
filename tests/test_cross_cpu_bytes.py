"""The data are the same bytes on any CPU: demo cohort, ingest (NIfTI, manifest), both array layouts, splits.

"Another CPU" is simulated on this one: each run is a subprocess with another OpenBLAS kernel
(``OPENBLAS_CORETYPE``: Haswell with FMA, Sandybridge without) or with numpy's SIMD dispatch cut down
(``NPY_DISABLE_CPU_FEATURES``: no AVX-512, then the baseline only). A matrix product, an ``einsum``, a
LAPACK inverse or numpy's float64 ``exp`` in the data path changes some bytes under one of these
(docs/reproducibility.md); this test lists the files that differ.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end or many processes: make test, not make test-fast

try:  # numpy 2
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
except ImportError:  # numpy 1
    from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__

# Variables that choose kernels: removed from every run, then set per run.
_KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES")


def _settings() -> dict[str, dict[str, str]]:
    settings: dict[str, dict[str, str]] = {"default": {}}
    # A forced OpenBLAS kernel must be one this CPU can run.
    if __cpu_features__.get("AVX2") and __cpu_features__.get("FMA3"):
        settings["openblas-haswell"] = {"OPENBLAS_CORETYPE": "Haswell"}
    if __cpu_features__.get("AVX"):
        settings["openblas-sandybridge"] = {"OPENBLAS_CORETYPE": "Sandybridge"}
    # numpy's dispatch targets on this CPU (numpy 2.4: X86_V3, X86_V4, AVX512_ICL, AVX512_SPR; older
    # numpy: AVX512F, AVX512_SKX, ...). Names numpy does not dispatch on would be ignored silently.
    dispatch = list(__cpu_dispatch__)
    avx512 = [name for name in dispatch if "AVX512" in name or name == "X86_V4"]
    if avx512:
        settings["numpy-no-avx512"] = {"NPY_DISABLE_CPU_FEATURES": " ".join(avx512)}
    if dispatch:
        settings["numpy-baseline"] = {"NPY_DISABLE_CPU_FEATURES": " ".join(dispatch)}
    return settings


# One run: 2 small patients (64-pixel matrices), ingest, 32-pixel arrays in both layouts (the 3D ones
# without the head crop where the option exists), and a split of a 24-patient table.
_PIPELINE = textwrap.dedent(
    """
    import dataclasses, sys
    from pathlib import Path

    import pandas as pd

    from metastases.arrays import build_arrays
    from metastases.atomic import write_csv
    from metastases.demo_cohort import build_cohort
    from metastases.ingest import ingest_cohort
    from metastases.params import IngestParams, SplitParams, VolumeParams
    from metastases.splits import make_splits

    out = Path(sys.argv[1])
    build_cohort(out / "raw", patients=2, seed=7, workers=1, size_scale=0.25)
    ingest_cohort(out / "raw", out / "interim", IngestParams(workers=1))
    fields = {f.name for f in dataclasses.fields(VolumeParams)}
    size = "image_size" if "image_size" in fields else "size"  # the field's name before/after a rename
    params = VolumeParams(**{size: 32})
    quiet = lambda items, **_: items
    build_arrays(out / "interim", out / "2d", params, "2d", workers=1, progress=quiet)
    if "crop" in fields:
        params = dataclasses.replace(params, crop="none")
    build_arrays(out / "interim", out / "3d", params, "3d", workers=1, progress=quiet)
    patients = pd.DataFrame(
        {"patient": [f"p{k:02d}" for k in range(24)], "label": [k % 2 for k in range(24)]}
    )
    write_csv(out / "splits.csv", make_splits(patients, SplitParams(), seed=42))
    """
)


def _run(out: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _KERNEL_VARIABLES}
    env.update(extra)
    done = subprocess.run(
        [sys.executable, "-c", _PIPELINE, str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"pipeline failed under {extra or 'no extra env'}:\n{done.stderr[-3000:]}"
    return {
        path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow
def test_data_are_the_same_bytes_under_every_blas_kernel_and_simd_level(tmp_path):
    settings = _settings()
    assert len(settings) >= 3, f"too few kernel settings to compare on this CPU: {sorted(settings)}"
    hashes = {name: _run(tmp_path / name, extra) for name, extra in settings.items()}
    reference = hashes["default"]
    kinds = {path.split("/")[0] for path in reference}
    assert {"raw", "interim", "2d", "3d", "splits.csv"} <= kinds, sorted(kinds)
    assert any(path.endswith(".nii.gz") for path in reference) and any(p.endswith(".npy") for p in reference)
    report = []
    for name, other in hashes.items():
        differing = sorted(p for p in reference.keys() | other.keys() if reference.get(p) != other.get(p))
        if differing:
            shown = "\n    ".join(differing[:25]) + ("\n    ..." if len(differing) > 25 else "")
            report.append(
                f"{name} {settings[name]}: {len(differing)} of {len(reference)} files differ:\n    {shown}"
            )
    assert not report, "outputs depend on the CPU kernel:\n" + "\n".join(report)
