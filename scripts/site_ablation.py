"""Which of the demo's second-site differences break the models: site b with one difference removed.

    python scripts/site_ablation.py VARIANT [--out /tmp/site-ablation] [--patients 30] [--seed 8]

VARIANT: ``all`` (site b as it is), ``no_vessels``, ``no_tilt``, ``site_a_contrast``,
``site_a_protocol``, ``site_a_noise_bias``. Builds the variant's cohort, ingests it and scores it with
the committed models (``models/2d.pt``, ``models/3d.pt``) through the pipeline's own stage scripts, with
the training site's ``data/interim`` and ``data/raw`` for the overlap check. Prints one JSON line (AUC
per model); the cohort is deleted afterwards. Run from the repository root after ``make run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

from metastases.demo_cohort import site as site_module
from metastases.demo_cohort.build import build_cohort

SITE_A, SITE_B = site_module.SITES["a"], site_module.SITES["b"]
VARIANTS = {
    "all": {},
    "no_vessels": {"vessels": (0, 0)},
    "no_tilt": {"head_tilt": None},
    "site_a_contrast": {"signal_factors": {}},
    "site_a_protocol": {"protocol": None},
    "site_a_noise_bias": {"noise": SITE_A.noise, "bias_strength": SITE_A.bias_strength},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/site-ablation"))
    parser.add_argument("--patients", type=int, default=30)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    # the pool's workers are forked: they see the replaced profile
    site_module.SITES["b"] = dataclasses.replace(SITE_B, **VARIANTS[args.variant])  # type: ignore[arg-type]
    root = args.out / args.variant
    shutil.rmtree(root, ignore_errors=True)
    build_cohort(root / "raw", args.patients, args.seed, 2, 1.0, site="b")
    run = [sys.executable]
    subprocess.run([*run, "stages/ingest.py", "--raw-dir", str(root / "raw"), "--out-dir",
                    str(root / "interim"), "--metrics", str(root / "ingest.json")],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([*run, "stages/external.py", "--interim-dir", str(root / "interim"), "--raw-dir",
                    str(root / "raw"), "--metrics", str(root / "external.json"), "--predictions",
                    str(root / "predictions.csv"), "--plots-dir", str(root / "plots")],
                   check=True, capture_output=True)  # fmt: skip
    details = json.loads((root / "details/external.json").read_text())
    print(
        json.dumps({"variant": args.variant, **{dim: round(details[dim]["auc"], 3) for dim in ("2d", "3d")}})
    )
    shutil.rmtree(root / "raw")
    shutil.rmtree(root / "interim")


if __name__ == "__main__":
    main()
