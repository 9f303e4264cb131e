#!/usr/bin/env bash
# Real-size GPU check: the voc_resnext50 experiment (ResNeXt-50 RPNet classifier, crop 512, 8 groups
# of 2 = 16 images a step; IRN ResNet-50; DeepLab-LargeFOV ResNet-50) for STEPS optimiser steps per
# training stage on a VOC-layout synthetic set, with GPU memory sampled every 0.5 s, then the GPU
# half of `make bench`. No ImageNet weights (pretrained: false): speed and memory do not depend on them.
# The ground-truth masks stand in for the IR labels and pseudo masks, so no CRF step is needed.
#
#   bash scripts/gpu_check.sh OUT_DIR [STEPS]     (OUT_DIR/gpu_check.tgz: logs, memory trace, bench section)
# Each stage is bounded by STAGE_TIMEOUT seconds (default 150), the bench by BENCH_TIMEOUT (200).
set -uo pipefail
dest=${1:?usage: gpu_check.sh OUT_DIR [STEPS]}
steps=${2:-200}
out=$(mktemp -d /tmp/gpu_check.XXXX)
mkdir -p "$dest"
pack() { kill "${smi:-0}" 2>/dev/null; tar czf "$dest/gpu_check.tgz" -C "$out" . ; }
trap pack EXIT
py=${PYTHON:-python3}
rp() { "$py" -m rpnet_pl.cli "$@"; }
bench=$(dirname "$0")/../tools/bench.py
data=${GPU_CHECK_DATA:-/tmp/gpu-synth}
runs=/tmp/gpu-runs
run=$runs/voc-resnext50

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch, pytorch_lightning, timm; print('torch', torch.__version__, 'lightning', pytorch_lightning.__version__, 'timm', timm.__version__)" | tee -a "$out/gpu.txt"
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 500 > "$out/memory.csv" &
smi=$!

t0=$(date +%s)
if [ ! -f "$data/VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt" ]; then
    rp data synth --out "$data" --images 400 --size 320 --object-scale 0.35 0.75 --context family > /dev/null
fi
echo "synth: $(( $(date +%s) - t0 )) s" | tee "$out/times.txt"

set_common=(classifier.model.pretrained=false refine.model.pretrained=false segmenter.model.pretrained=false
            classifier.trainer.max_steps=$steps classifier.trainer.max_epochs=100
            refine.trainer.max_steps=$steps refine.trainer.max_epochs=100
            segmenter.trainer.max_steps=$steps)
stage() {  # stage NAME: one training step of the pipeline, timed, with its log kept
    local s=$1; local t=$(date +%s)
    echo "== $s start $(date -u +%H:%M:%S)" | tee -a "$out/times.txt"
    timeout "${STAGE_TIMEOUT:-150}" "$py" -m rpnet_pl.cli pipeline experiments/voc_resnext50.yaml --data "$data" --runs "$runs" --gpus 1 --logger csv \
        --steps "$s" --set "${set_common[@]}" > "$out/$s.log" 2>&1 || { tail -30 "$out/$s.log"; return 1; }
    echo "== $s end $(date -u +%H:%M:%S): $(( $(date +%s) - t )) s" | tee -a "$out/times.txt"
    cp "$run/$s/log.txt" "$out/$s.steplog.txt" 2>/dev/null || true
}
stage classifier || true
mkdir -p "$run/ir_labels/labels" "$run/pseudo_masks/masks"
cp "$data"/VOCdevkit/VOC2012/SegmentationClassAug/*.png "$run/ir_labels/labels/"
cp "$data"/VOCdevkit/VOC2012/SegmentationClassAug/*.png "$run/pseudo_masks/masks/"
stage refine || true
stage segmenter || true
cp -r "$run"/*/csv "$out/" 2>/dev/null || true

t=$(date +%s)
timeout "${BENCH_TIMEOUT:-200}" "$py" "$bench" --profile gpu --out "$out/bench.md" > "$out/bench.log" 2>&1 \
    || echo "bench: exit $? (see bench.log)" | tee -a "$out/times.txt"
echo "bench: $(( $(date +%s) - t )) s" | tee -a "$out/times.txt"

# The GPU path's checks (GPU_CHECK_MODES=1): the parity cases in each mode of the GPU path, the DeepLab
# inference case in each layout / precision with and without cudnn.benchmark, and, when REF_DIR holds
# clones of the public code (REF_DIR/rpnet, REF_DIR/irn, REF_DIR/deeplab: e.g. under build/, carried to
# the device), the per-stage timing against it at the recipes' sizes.
if [ "${GPU_CHECK_MODES:-0}" = 1 ]; then
    for mode in "" "--channels-last" "--bf16" "--bf16 --channels-last"; do
        echo "== parity cuda $mode" >> "$out/modes.txt"
        timeout 120 "$py" -m rpnet_pl.cli parity --device cuda $mode >> "$out/modes.txt" 2>&1
    done
    for flags in "" "--bf16" "--channels-last" "--bf16 --channels-last" "--bf16 --channels-last --cudnn-benchmark" \
                 "--cudnn-benchmark"; do
        echo "== bench deeplab-infer $flags" >> "$out/modes.txt"
        timeout 120 "$py" "$bench" --profile gpu --cases deeplab-infer --no-write $flags 2>&1 \
            | grep -E "images/s|error" >> "$out/modes.txt"
    done
    if [ -n "${REF_DIR:-}" ]; then
        timeout "${REF_TIMEOUT:-300}" "$py" scripts/reference_timing.py "$REF_DIR/rpnet" --irn "$REF_DIR/irn" \
            --deeplab "$REF_DIR/deeplab" --device cuda --size voc --runs 5 --warmup 2 \
            --markdown "$out/reference_timing.md" > "$out/reference_timing.log" 2>&1 \
            || echo "reference timing: exit $? (see reference_timing.log)" | tee -a "$out/times.txt"
    fi
fi
