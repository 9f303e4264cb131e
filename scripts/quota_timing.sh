#!/usr/bin/env bash
# The demo's RPNet classifier for EPOCHS epochs inside a cgroup whose CPU quota is QUOTA cores (as
# `docker run --cpus=QUOTA` makes one), twice: with OMP_NUM_THREADS at the visible cores (what torch
# chooses by itself under a quota) and unset (rpnet holds it to the quota, utils/cpus.py). Needs root
# and a writable cgroup (v1 cpu controller or v2); the machine should be otherwise idle. Prints the
# classifier step's seconds of each run (docs/benchmarks.md, "make demo").
#
#   sudo bash scripts/quota_timing.sh OUT [QUOTA] [EPOCHS]      (defaults: 1 core, 3 epochs)
set -euo pipefail
out=${1:?usage: quota_timing.sh OUT [QUOTA] [EPOCHS]}
quota=${2:-1}
epochs=${3:-3}
py=${PYTHON:-python3}
visible=$("$py" -c "import os; print(len(os.sched_getaffinity(0)))")
if [ -d /sys/fs/cgroup/cpu ] && [ -w /sys/fs/cgroup/cpu ]; then      # v1
    cg=/sys/fs/cgroup/cpu/rpnet-quota; mkdir -p "$cg"
    echo 100000 > "$cg/cpu.cfs_period_us"; echo $(( quota * 100000 )) > "$cg/cpu.cfs_quota_us"
elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then                   # v2
    cg=/sys/fs/cgroup/rpnet-quota; mkdir -p "$cg"; echo "$(( quota * 100000 )) 100000" > "$cg/cpu.max"
else
    echo "quota_timing: no writable cgroup here (needs root and cgroup v1 or v2)" >&2; exit 2
fi
run() {  # run NAME [ENV...]: the classifier step inside the cgroup
    local name=$1; shift
    rm -rf "$out/$name"
    ( echo $BASHPID > "$cg/cgroup.procs"
      env "$@" "$py" -m rpnet_pl.cli pipeline experiments/demo.yaml --runs "$out/$name" --logger csv \
          --steps classifier --set classifier.trainer.max_epochs="$epochs" > "$out/$name.log" 2>&1 )
    "$py" - "$out/$name" <<'EOF'
import sys, yaml
from pathlib import Path
done = next(Path(sys.argv[1]).glob("*/classifier/.done"))
print(f"{Path(sys.argv[1]).name}: classifier {yaml.safe_load(done.read_text())['seconds']:.1f} s")
EOF
}
mkdir -p "$out"
echo "quota $quota core(s), $visible visible, $epochs epoch(s)"
run threads-visible OMP_NUM_THREADS="$visible"
run threads-quota -u OMP_NUM_THREADS
rmdir "$cg" 2>/dev/null || true
