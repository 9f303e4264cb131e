#!/usr/bin/env bash
# Fixed against calibrated thresholds (docs/results.md "Thresholds on a new dataset"): the CAM baseline
# and RPNet over SEEDS on the demo's synthetic set and its VOC-like variant, every chain to the
# segmenter's val mIoU. Each set gets a labelled list held out from the scored one: `calib` (every
# third image of `train`, 20) and `scored` (the other 40); eval_cam and eval_pseudo_masks score
# `scored`, the calibrated runs choose their thresholds on `calib`. MODES (default: all three):
#   fixed       the spec's thresholds (IR labels 0.30 / 0.05, walk background 0.25);
#   calibrated  the walk at b* and the IR labels by the rule fg = 2 t*, bg = t* / 3
#               (`thresholds: calibrated` with ir_labels.calibration_split set);
#   walk        the walk's b* only, the IR labels at the spec's (`thresholds: calibrated` as it is).
# Every mode keeps the walk's scores, so the scored split's own pseudo-mask sweep is there too. A
# calibrated run starts from its fixed twin's classifier and CAMs (same settings, so the pipeline
# takes them as complete).
# Summarise with `python scripts/calibration_study_table.py OUT`.
#
#   bash scripts/calibration_study.sh OUT [SETS...]     SETS: default voclike (default: both)
set -euo pipefail
out=${1:?usage: calibration_study.sh OUT [SETS...]}; shift
sets=${*:-default voclike}
seeds=${SEEDS:-0 1 2}
modes=${MODES:-fixed calibrated walk}
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$out" && cd "$out" && pwd)
rp() { "${PYTHON:-python3}" -m rpnet_pl.cli "$@"; }

source_of() { case $1 in default) echo "$repo/data/synthetic-voc" ;; voclike) echo "$repo/data/synth-voclike" ;;
               *) echo "calibration_study: unknown set '$1' (default, voclike)" >&2; exit 2 ;; esac; }

for set in $sets; do
    src=$(source_of "$set") || exit 2; data=$out/data/$set
    [ -f "$src/VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt" ] || {
        echo "calibration_study: $src has no dataset; run make synth / make demo-voclike first" >&2; exit 2; }
    if [ ! -d "$data" ]; then   # the set as symlinks, with the two held-out lists written
        mkdir -p "$data" && cp -rs "$src/VOCdevkit" "$data/"
        lists=$data/VOCdevkit/VOC2012/ImageSets/Segmentation
        awk 'NR % 3 == 1' "$lists/train.txt" > "$lists/calib.txt"
        awk 'NR % 3 != 1' "$lists/train.txt" > "$lists/scored.txt"
    fi
    for method in demo_cam demo; do
        fixed=$out/$set/fixed-${method//_/-}
        for mode in fixed ${modes//fixed/}; do
            exp=$out/$set-$mode-$method.yaml
            {
                echo "extends: $repo/experiments/$method.yaml"
                echo "name: $mode-${method//_/-}"
                echo "eval_cam: {split: scored}"
                echo "eval_pseudo_masks: {split: scored}"
                echo "pseudo_masks: {save_scores: true}"
                [ "$mode" = fixed ] || printf 'thresholds: calibrated\ncalibration: {split: calib}\n'
                [ "$mode" != calibrated ] || echo "ir_labels: {calibration_split: calib}"
                [ "$mode" != walk ] || echo "ir_labels: {calibration_split: null}"
            } > "$exp"
            run=$out/$set/$mode-${method//_/-}
            if [ "$mode" != fixed ]; then
                for s in $seeds; do   # the classifier and CAMs: the fixed twin's
                    for step in classifier cam; do
                        [ -e "$run/seed$s/$step" ] || { mkdir -p "$run/seed$s"; cp -a "$fixed/seed$s/$step" "$run/seed$s/"; }
                    done
                done
            fi
            rp pipeline "$exp" --data "$data" --runs "$out/$set" --logger csv --seeds $seeds
        done
    done
done
