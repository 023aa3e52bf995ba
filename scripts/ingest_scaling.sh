#!/usr/bin/env bash
# Ingest and array-stage memory and rate as the cohort grows, and ingest against dcm2niix on the same files.
#
#   bash scripts/ingest_scaling.sh [WORK_DIR] [COPIES]
#
# Uses the demo cohort in data/raw (make run builds it: 60 patients). WORK_DIR (default /tmp/ingest-scaling)
# gets a cohort of COPIES (default 10) hard-linked copies of those patients under new demo names, so that
# the large cohort has the same mix of studies and only its size changes. For both cohorts: ingest,
# slice-2d and stack-3d with 2 workers under scripts/peak_memory.py (peak resident memory summed over the
# stage and its workers). Then our ingest and dcm2niix (pip-installed into WORK_DIR/dcm2niix-venv), one
# process each, alternately three times on data/raw. Reads params.yaml; writes only under WORK_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/ingest-scaling}
COPIES=${2:-10}
PY=${PY:-.venv/bin/python}
RAW=data/raw
[ -f $RAW/labels.csv ] || { echo "error: no demo cohort in $RAW (run make run first)" >&2; exit 2; }
mkdir -p "$WORK"

big=$WORK/raw_x$COPIES
if [ ! -f "$big/labels.csv" ]; then
  rm -rf "$big"; mkdir -p "$big"
  cp $RAW/DEMO_COHORT.txt "$big/"
  echo "patient,label" > "$big/labels.csv"
  for ((copy = 0; copy < COPIES; copy++)); do
    tail -n +2 $RAW/labels.csv | while IFS=, read -r patient label; do
      name="${patient%-*}-$(( ${patient#*-} + 1000 * copy ))"   # mts-7 -> mts-1007, mts-2007, ...
      cp -al "$RAW/$patient" "$big/$name"
      echo "$name,$label" >> "$big/labels.csv"
    done
  done
fi

measure() {  # label, command...
  local label=$1; shift
  echo -n "$label: "
  "$PY" scripts/peak_memory.py "$@" 2>&1 >/dev/null | tail -1
}
for cohort in "$RAW" "$big"; do
  tag=$(basename "$cohort")
  rm -rf "$WORK/interim_$tag" "$WORK/2d_$tag" "$WORK/3d_$tag"
  measure "ingest $tag" "$PY" stages/ingest.py --raw-dir "$cohort" --out-dir "$WORK/interim_$tag" \
    --metrics "$WORK/ingest_$tag.json" --workers 2
  measure "slice-2d $tag" "$PY" stages/slice_2d.py --interim-dir "$WORK/interim_$tag" --out-dir "$WORK/2d_$tag" \
    --workers 2 --samples-png "$WORK/samples_$tag.png"
  measure "stack-3d $tag" "$PY" stages/stack_3d.py --interim-dir "$WORK/interim_$tag" --out-dir "$WORK/3d_$tag" \
    --workers 2
done

DCM2NIIX=$WORK/dcm2niix-venv/bin/dcm2niix
[ -x "$DCM2NIIX" ] || { python3 -m venv "$WORK/dcm2niix-venv" && "$WORK/dcm2niix-venv/bin/pip" install -q dcm2niix; }
echo "dcm2niix: $("$DCM2NIIX" -v 2>&1 | tail -1)"
echo "files: $(find $RAW -mindepth 2 -type f | wc -l) in $(tail -n +2 $RAW/labels.csv | wc -l) patients"
for run in 1 2 3; do
  rm -rf "$WORK/ours" "$WORK/nii"; mkdir -p "$WORK/nii"
  start=$(date +%s.%N)
  "$PY" stages/ingest.py --raw-dir $RAW --out-dir "$WORK/ours" --metrics "$WORK/ours.json" --workers 1 >/dev/null 2>&1
  middle=$(date +%s.%N)
  partial=0
  for folder in $RAW/*/; do
    out="$WORK/nii/$(basename "$folder")"; mkdir -p "$out"
    # -z i: gzip in this process (not pigz threads), like our .nii.gz; exit 8: some series not converted
    "$DCM2NIIX" -z i -b n -v 0 -o "$out" -f %s "$folder" >/dev/null 2>&1 || partial=$((partial + 1))
  done
  end=$(date +%s.%N)
  echo "run $run: ours $(echo "$middle - $start" | bc) s, dcm2niix $(echo "$end - $middle" | bc) s" \
    "($(find "$WORK/nii" -name '*.nii.gz' | wc -l) NIfTI files; $partial patients with a non-zero exit)"
done
