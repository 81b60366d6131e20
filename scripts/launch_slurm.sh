#!/usr/bin/env bash
# Multi-node GPU training under SLURM: writes a batch script and submits it with sbatch.
#
#   scripts/launch_slurm.sh --nodes 2 --gpus-per-node 8 --partition gpu \
#       --config configs/kinetics400_smallbig50_8x8.py --workdir /shared/ckpt/k400_r50
#   scripts/launch_slurm.sh ... --per-host        # one process per node driving all its GPUs (default: one per GPU)
#   scripts/launch_slurm.sh ... --dry-run         # print the batch script and the sbatch command, submit nothing
#
# srun starts the tasks; each runs `env SMALLBIG_DISTRIBUTED=1 COMMAND`, and smallbig_jax.distributed's
# initialize_distributed() lets JAX read SLURM's variables (SLURM_PROCID, SLURM_NTASKS, SLURM_STEP_NODELIST) for the
# coordinator and process index. With one task per GPU, JAX gives task i the GPU SLURM_LOCALID; with --per-host the
# script also sets SMALLBIG_LOCAL_DEVICE_IDS=0,...,G-1 so the single task per node drives all G GPUs. The workdir
# must be on a file system that every node sees (or a gs:// path).
set -euo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --nodes N --gpus-per-node G [--per-host|--per-gpu] [--partition P] [--account A] [--time HH:MM:SS]"
  echo "         [--cpus-per-task C] [--job-name NAME] [--config FILE] [--workdir DIR] [--command CMD]"
  echo "         [--repo-dir DIR] [--env K=V]... [--script FILE] [--dry-run]"
}

NODES=1
GPUS=8
PER_HOST=0
PARTITION=""
ACCOUNT=""
TIME="48:00:00"
CPUS=""
JOB_NAME="smallbig"
CONFIG="configs/kinetics400_smallbig50_8x8.py"
WORKDIR=""
COMMAND=""
REPO_DIR="$(pwd)"
SCRIPT=""
DRY_RUN=0
ENVS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES="$2"; shift 2 ;;
    --gpus-per-node) GPUS="$2"; shift 2 ;;
    --per-host) PER_HOST=1; shift ;;
    --per-gpu) PER_HOST=0; shift ;;
    --partition) PARTITION="$2"; shift 2 ;;
    --account) ACCOUNT="$2"; shift 2 ;;
    --time) TIME="$2"; shift 2 ;;
    --cpus-per-task) CPUS="$2"; shift 2 ;;
    --job-name) JOB_NAME="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --command) COMMAND="$2"; shift 2 ;;
    --repo-dir) REPO_DIR="$2"; shift 2 ;;
    --env) ENVS+=("$2"); shift 2 ;;
    --script) SCRIPT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "launch_slurm.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in NODES GPUS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "launch_slurm.sh: --${v,,} must be a positive integer" >&2; exit 2; }
done
if [[ -z "$COMMAND" ]]; then
  [[ -n "$WORKDIR" ]] || { echo "launch_slurm.sh: --workdir is required (shared by all nodes)" >&2; exit 2; }
  COMMAND="smallbig-jax train --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR")"
fi
TASKS_PER_NODE=$GPUS
[[ $PER_HOST -eq 1 ]] && TASKS_PER_NODE=1

render() {
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$TASKS_PER_NODE"
  echo "#SBATCH --gpus-per-node=$GPUS"
  [[ -n "$CPUS" ]] && echo "#SBATCH --cpus-per-task=$CPUS"
  echo "#SBATCH --time=$TIME"
  [[ -n "$PARTITION" ]] && echo "#SBATCH --partition=$PARTITION"
  [[ -n "$ACCOUNT" ]] && echo "#SBATCH --account=$ACCOUNT"
  echo "#SBATCH --output=%x-%j.out"
  echo "set -euo pipefail"
  echo "cd $(printf '%q' "$REPO_DIR")"
  echo "export SMALLBIG_DISTRIBUTED=1"
  if [[ $PER_HOST -eq 1 ]]; then
    echo "export SMALLBIG_LOCAL_DEVICE_IDS=$(seq -s, 0 $((GPUS - 1)))"
  fi
  for kv in "${ENVS[@]+"${ENVS[@]}"}"; do
    [[ "$kv" == *=* ]] || { echo "launch_slurm.sh: --env expects NAME=VALUE, got '$kv'" >&2; exit 2; }
    echo "export ${kv%%=*}=$(printf '%q' "${kv#*=}")"
  done
  echo "srun --kill-on-bad-exit=1 --nodes=$NODES --ntasks-per-node=$TASKS_PER_NODE $COMMAND"
}

BODY="$(render)"
if [[ $DRY_RUN -eq 1 ]]; then
  echo "# batch script:"
  echo "$BODY"
  echo "# submit with:"
  echo "sbatch ${SCRIPT:-<batch script>}"
  exit 0
fi
command -v sbatch >/dev/null || { echo "launch_slurm.sh: sbatch not found (not on a SLURM login node?)" >&2; exit 127; }
SCRIPT="${SCRIPT:-$(mktemp "${TMPDIR:-/tmp}/smallbig_slurm.XXXXXX.sh")}"
echo "$BODY" > "$SCRIPT"
echo "launch_slurm.sh: batch script $SCRIPT" >&2
exec sbatch "$SCRIPT"
