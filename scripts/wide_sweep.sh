#!/usr/bin/env bash
# Re-score every study run's CAMs over a background-threshold sweep that reaches below the default's
# 0.05 edge (on the VOC-like set both methods' best threshold was the sweep's bottom, 0.05).
# For each RUNS/<set>/<name>/seed<k>/cam/cams, writes RUNS/<set>/<name>/seed<k>/eval_cam_wide/metrics.json
# (`rpnet eval-cam`'s format); `python scripts/seed_study_table.py RUNS` then adds a column for it.
#
#   bash scripts/wide_sweep.sh RUNS DATA [SPLIT]     DATA: the folder of the study's sets (DATA/<set>); SPLIT: train
set -euo pipefail
runs=${1:?usage: wide_sweep.sh RUNS DATA [SPLIT]}; data=${2:?usage: wide_sweep.sh RUNS DATA [SPLIT]}; split=${3:-train}
py=${PYTHON:-python3}
# THRESHOLDS='0.3 ... 0.95' re-scores above the default's 0.60 edge instead (pretrained CAMs);
# OUT_NAME names the folder (default eval_cam_wide, which seed_study_table.py reads).
read -r -a thresholds <<< "${THRESHOLDS:-0.01 0.02 0.03 0.04 0.05 0.06 0.08 0.10 0.12 0.15 0.20 0.25 0.30 0.40}"
out_name=${OUT_NAME:-eval_cam_wide}
[ -d "$runs" ] || { echo "error: $runs: no such study runs folder" >&2; exit 2; }
found=0; failed=0
for cams in "$runs"/*/*/seed*/cam/cams; do
    [ -d "$cams" ] || continue
    found=$((found + 1))
    seed=${cams%/cam/cams}; set_=$(basename "$(dirname "$(dirname "$seed")")")
    out=$seed/$out_name/metrics.json
    [ -f "$out" ] && continue   # resumable: scored runs are skipped
    if [ ! -d "$data/$set_" ]; then
        echo "error: $data/$set_: no such dataset for $cams (DATA must hold one folder per set)" >&2
        failed=$((failed + 1)); continue
    fi
    mkdir -p "$(dirname "$out")"
    # eval-cam names the file on bad input (a missing CAM, a size mismatch) in one line on stderr
    if "$py" -m rpnet_pl.cli eval-cam --cams "$cams" --root "$data/$set_" --split "$split" \
            --thresholds "${thresholds[@]}" --out "$out.tmp" > /dev/null; then
        mv "$out.tmp" "$out"; echo "$out"
    else
        rm -f "$out.tmp"; failed=$((failed + 1))
    fi
done
[ "$found" -gt 0 ] || { echo "error: $runs: no <set>/<run>/seed<k>/cam/cams folders (run the study's cam step first)" >&2; exit 2; }
[ "$failed" -eq 0 ] || { echo "error: $failed of $found runs could not be scored (see above)" >&2; exit 1; }
