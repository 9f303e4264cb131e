#!/usr/bin/env bash
# Launch one training step of an experiment with torchrun (one process per GPU, any number of nodes).
#
#   NNODES=2 NODE_RANK=0 MASTER=node0:29500 GPUS=8 scripts/torchrun_step.sh classifier runs/voc-resnext50
#
# Run the same command on every node with its NODE_RANK. The step's resolved config must exist
# (`rpnet pipeline EXP --steps STEP --dry-run` prints it; a first `make voc-...` writes it), and
# Lightning picks up torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) by itself.
# On a CPU box for a quick check: GPUS=2 ACCELERATOR=cpu scripts/torchrun_step.sh classifier RUN_DIR
set -euo pipefail
STEP=${1:?step: classifier, refine or segmenter}
RUN=${2:?run folder, e.g. runs/voc-resnext50}
GPUS=${GPUS:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER=${MASTER:-127.0.0.1:29500}
ACCELERATOR=${ACCELERATOR:-gpu}
PY=${PY:-.venv/bin/python}
CKPT=()
[ -f "$RUN/$STEP/checkpoints/last.ckpt" ] && CKPT=(--ckpt_path "$RUN/$STEP/checkpoints/last.ckpt")
exec "$PY" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER" \
  -m rpnet_pl.cli fit "$STEP" --config "$RUN/$STEP/config.yaml" \
  --trainer.accelerator "$ACCELERATOR" --trainer.devices "$GPUS" --trainer.num_nodes "$NNODES" \
  --trainer.strategy ddp "${CKPT[@]}"
