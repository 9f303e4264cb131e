#!/usr/bin/env bash
# The multi-seed study (docs/results.md): the CAM baseline and RPNet (and RPNet without Ls, lambda = 0) over
# seeds 0 1 2 on three synthetic VOC-layout sets, every chain to the segmenter's val mIoU, with the
# per-epoch seed monitor (train split, 40 images) in the classifier's CSV log. Chains run in
# parallel (JOBS at a time), each under a common deadline (BUDGET seconds from the start); what a
# chain has written when it ends (metrics, CSV curves, step logs, pseudo masks) is packed into
# OUT/<set>__<name>__seed<k>.tgz. Summarise with `python scripts/seed_study_table.py OUT`.
#
#   bash scripts/seed_study.sh OUT [GROUPS...]     GROUPS: main big lambda0 default schedules default_schedules
#                                                  default_lambda0 rows default_rows big_schedules
#                                                  pretrained irn_imagenet (the regimes a / b of docs/results.md)
#                                                  pretrained_schedules (regime a's seeds at EPOCHS)
#                                                  (default: main big lambda0 default schedules)
#   REFINEMENT=1: after each chain, `rpnet eval-refinement` with the learned and the ideal boundary
#   (eval_refinement_{learned,ground-truth}.json, IRN padding PAD_TO, default 128) and, for RPNet,
#   `rpnet confidence` (confidence.txt: the confidence mask's coverage).
#
# Sets (`rpnet data synth`): voclike = --object-scale 0.35 0.75 --context family (240 images, 96 px,
# 6 classes); big = the same at 20 classes, 532 images (400 train_aug), 128 px with crop 128, 8 classifier epochs and
# IRN padding 160 (the recipe of the issue's hidden set); default = the demo's set.
# Settings are the demo's (experiments/demo*.yaml); GPUS=1 runs each chain on the GPU. Smoke test:
# SYNTH_EXTRA='--images 24' EXTRA_SET='classifier.trainer.max_epochs=1 ...' (appended, so they win).
set -uo pipefail
out=${1:?usage: seed_study.sh OUT [GROUPS...]}; shift
groups=${*:-main big lambda0 default schedules}
py=${PYTHON:-python3}
work=${STUDY_WORK:-/tmp/seed-study}
jobs=${JOBS:-8}
budget=${BUDGET:-480}
seeds=${SEEDS:-0 1 2}
gpus=${GPUS:-0}
monitor=${MONITOR_IMAGES:-40}
deadline=$(( $(date +%s) + budget ))
mkdir -p "$out" "$work"
rp() { "$py" -m rpnet_pl.cli "$@"; }

synth() {  # synth NAME ARGS...: a set, made once
    local name=$1; shift
    [ -f "$work/data/$name/VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt" ] || \
        rp data synth --out "$work/data/$name" "$@" ${SYNTH_EXTRA:-} > /dev/null
}
synth voclike --object-scale 0.35 0.75 --context family &
synth default &
synth big --classes 20 --images 532 --size 128 --object-scale 0.35 0.75 --context family &
wait

full=($(rp steps --until eval_seg))
seeds_only=($(rp steps --until eval_cam))
big_set=(classifier.data.crop_size=128 classifier.trainer.max_epochs=8 refine.data.crop_size=128
         segmenter.data.crop_size=128 pseudo_masks.pad_to=160)
# one line per chain: SET EXPERIMENT NAME SEED STEPS(comma) OVERRIDES(comma)
plan=$work/plan.txt; : > "$plan"
add() { for s in $seeds; do echo "$1 $2 $3 $s $4 ${5:--}" >> "$plan"; done; }
csv() { local IFS=,; echo "$*"; }   # steps
osv() { local IFS=@; echo "$*"; }   # overrides (their values may hold commas: levels=[2,3])
for g in $groups; do case $g in
    main)      add voclike demo_cam demo-cam "$(csv "${full[@]}")"; add voclike demo demo "$(csv "${full[@]}")" ;;
    big)       add big demo_cam demo-cam "$(csv "${full[@]}")" "$(osv "${big_set[@]}")"
               add big demo demo "$(csv "${full[@]}")" "$(osv "${big_set[@]}")" ;;
    lambda0)   add voclike demo demo-lambda0 "$(csv "${full[@]}")" classifier.model.lam=0.0 ;;
    default_lambda0) add default demo demo-lambda0 "$(csv "${full[@]}")" classifier.model.lam=0.0 ;;
    default)   add default demo_cam demo-cam "$(csv "${full[@]}")"; add default demo demo "$(csv "${full[@]}")" ;;
    pretrained)    # regime (a): every stage on ImageNet EfficientNet-Lite0 (experiments/demo_pretrained*.yaml)
               for set_ in default voclike; do
                   add $set_ demo_pretrained_cam demo-pretrained-cam "$(csv "${full[@]}")"
                   add $set_ demo_pretrained demo-pretrained "$(csv "${full[@]}")"; done ;;
    pretrained_schedules)  # regime (a)'s seeds at longer classifier schedules (EPOCHS, default 20), VOC-like set
               for e in ${EPOCHS:-20}; do
                   add voclike demo_pretrained_cam demo-pretrained-cam-e$e "$(csv "${seeds_only[@]}")" classifier.trainer.max_epochs=$e
                   add voclike demo_pretrained demo-pretrained-e$e "$(csv "${seeds_only[@]}")" classifier.trainer.max_epochs=$e
               done ;;
    irn_imagenet)  # regime (b): the scratch classifier, IRN + DeepLab on ImageNet Lite0
               for set_ in default voclike; do
                   add $set_ demo_irn_imagenet_cam demo-irn-imagenet-cam "$(csv "${full[@]}")"
                   add $set_ demo_irn_imagenet demo-irn-imagenet "$(csv "${full[@]}")"; done ;;
    schedules) for e in ${EPOCHS:-8 45}; do   # EPOCHS=20: the demo's own schedule, seeds only
                   add voclike demo_cam demo-cam-e$e "$(csv "${seeds_only[@]}")" classifier.trainer.max_epochs=$e
                   add voclike demo demo-e$e "$(csv "${seeds_only[@]}")" classifier.trainer.max_epochs=$e
               done ;;
    default_schedules) for e in ${EPOCHS:-8 45}; do   # the default set's seeds at 8 and 45 epochs
                   add default demo_cam demo-cam-e$e "$(csv "${seeds_only[@]}")" classifier.trainer.max_epochs=$e
                   add default demo demo-e$e "$(csv "${seeds_only[@]}")" classifier.trainer.max_epochs=$e
               done ;;
    big_schedules) for e in ${EPOCHS:-45}; do   # the 20-class set's seeds at longer schedules (its recipe has 8)
                   add big demo_cam demo-cam-e$e "$(csv "${seeds_only[@]}")" "$(osv "${big_set[@]}" classifier.trainer.max_epochs=$e)"
                   add big demo demo-e$e "$(csv "${seeds_only[@]}")" "$(osv "${big_set[@]}" classifier.trainer.max_epochs=$e)"
               done ;;
    rows|default_rows)   # the paper's Tables IV-VI (levels, beta, GF), seeds only, on the VOC-like set
               # (rows) or the default set (default_rows); the defaults (levels 2+4, beta 0.5, GF on) are the
               # main / default group's RPNet rows
               set_=voclike; [ $g = default_rows ] && set_=default
               for b in 0.1 0.3 0.7 0.9; do add $set_ demo demo-beta$b "$(csv "${seeds_only[@]}")" classifier.model.beta=$b; done
               for lv in 2 3 4 2,3 3,4 2,3,4; do
                   add $set_ demo demo-levels${lv//,/+} "$(csv "${seeds_only[@]}")" "classifier.model.levels=[$lv]"; done
               add $set_ demo demo-noGF "$(csv "${seeds_only[@]}")" classifier.model.gaussian=false ;;
    *) echo "unknown group $g" >&2; exit 2 ;;
esac; done
if [ -n "${ONLY:-}" ]; then grep -E -- "$ONLY" "$plan" > "$plan.only"; mv "$plan.only" "$plan"; fi   # ONLY=regex: a subset
echo "$(wc -l < "$plan") chains, $jobs at a time, deadline in $budget s"

chain() {  # chain SET EXP NAME SEED STEPS OVERRIDES
    local set=$1 exp=$2 name=$3 seed=$4 steps=${5//,/ } sets=${6//@/ }
    local left=$(( deadline - $(date +%s) ))
    local runs=$work/runs/$set run=$work/runs/$set/$name/seed$seed tag=${set}__${name}__seed${seed}
    [ "$sets" = - ] && sets=""
    if [ "$left" -gt 20 ]; then
        local t=$(date +%s)
        OMP_NUM_THREADS=${THREADS:-1} timeout "$left" "$py" -m rpnet_pl.cli pipeline "experiments/$exp.yaml" \
            --data "$work/data/$set" --runs "$runs" --name "$name" --gpus "$gpus" --logger csv --seeds "$seed" \
            --steps $steps --set classifier.model.seed_monitor_images=$monitor $sets ${EXTRA_SET:-} > "$work/$tag.log" 2>&1
        echo "$tag: exit $? after $(( $(date +%s) - t )) s" | tee -a "$work/chains.txt"
        if [ -n "${REFINEMENT:-}" ] && [ -f "$run/refine/checkpoints/last.ckpt" ]; then
            # each refinement step with IRN's learned and with the ideal boundary ("Seeds or boundary?")
            for b in learned ground-truth; do
                OMP_NUM_THREADS=${THREADS:-1} "$py" -m rpnet_pl.cli eval-refinement --ckpt "$run/refine/checkpoints/last.ckpt" \
                    --cams "$run/cam/cams" --root "$work/data/$set" --pad-to "${PAD_TO:-128}" --exp-times 0 4 8 \
                    --boundary $b --out "$run/eval_refinement_$b.json" >> "$work/$tag.log" 2>&1
            done
        fi
        if [ -n "${REFINEMENT:-}" ] && grep -q "method: rpnet" "$run/classifier/config.yaml" 2>/dev/null; then
            OMP_NUM_THREADS=${THREADS:-1} "$py" -m rpnet_pl.cli confidence --ckpt "$run/classifier/checkpoints/last.ckpt" \
                --root "$work/data/$set" > "$run/confidence.txt" 2>> "$work/$tag.log"
        fi
    else
        echo "$tag: not started (deadline)" | tee -a "$work/chains.txt"; return 0
    fi
    mkdir -p "$run"; cp "$work/$tag.log" "$run/pipeline.log"
    (cd "$run" && find . \( -name metrics.json -o -name metrics.csv -o -name log.txt -o -name pipeline.log \
        -o -name config.yaml -o -name 'eval_refinement_*.json' -o -name confidence.txt \
        -o -path './pseudo_masks/masks/*.png' \) -print0 | tar czf "$out/$tag.tgz" --null -T -)
}
export -f chain; export py work out deadline gpus monitor
tr '\n' '\0' < "$plan" | xargs -0 -P "$jobs" -I{} bash -c 'chain {}'
cp "$work/chains.txt" "$out/chains.txt"
