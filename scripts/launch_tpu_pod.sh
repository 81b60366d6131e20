#!/usr/bin/env bash
# Runs the training command on every worker of a Cloud TPU VM pod slice, with one shared workdir on GCS.
#
#   scripts/launch_tpu_pod.sh --tpu my-v5p-64 --zone us-east5-a --project my-proj \
#       --config configs/kinetics400_smallbig50_8x8.py --workdir gs://my-bucket/smallbig/k400_r50
#   scripts/launch_tpu_pod.sh ... --dry-run            # print the gcloud command, run nothing
#   scripts/launch_tpu_pod.sh ... --command "smallbig-jax benchmark --config=configs/benchmark.py:smallbig50,bf16 --batch_per_device=8"
#
# Every worker runs, from --repo-dir (the checkout on the workers, same path everywhere):
#   cd REPO_DIR && [SETUP &&] env SMALLBIG_DISTRIBUTED=1 [--env K=V ...] COMMAND
# SMALLBIG_DISTRIBUTED=1 makes smallbig_jax.distributed.initialize_distributed() call jax.distributed.initialize()
# with no arguments: on TPU VMs JAX finds the coordinator, process count and index itself. The workdir is a GCS path
# that Orbax (through etils.epath) reads and writes from all workers; workers need storage access (the TPU VM's
# service account with roles/storage.objectAdmin on the bucket). Output of all workers streams back, prefixed by
# gcloud with the worker number.
set -euo pipefail

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --tpu NAME --zone ZONE [--project P] [--config FILE] [--workdir gs://...] [--command CMD]"
  echo "         [--repo-dir DIR] [--setup CMD] [--env K=V]... [--worker all|N] [--dry-run]"
}

TPU=""
ZONE=""
PROJECT=""
CONFIG="configs/kinetics400_smallbig50_8x8.py"
WORKDIR=""
COMMAND=""
REPO_DIR="\$HOME/smallbig_jax"
SETUP=""
WORKER="all"
DRY_RUN=0
ENVS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --command) COMMAND="$2"; shift 2 ;;
    --repo-dir) REPO_DIR="$2"; shift 2 ;;
    --setup) SETUP="$2"; shift 2 ;;
    --env) ENVS+=("$2"); shift 2 ;;
    --worker) WORKER="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "launch_tpu_pod.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n "$TPU" && -n "$ZONE" ]] || { echo "launch_tpu_pod.sh: --tpu and --zone are required" >&2; usage >&2; exit 2; }
if [[ -z "$COMMAND" ]]; then
  [[ -n "$WORKDIR" ]] || { echo "launch_tpu_pod.sh: --workdir is required (a gs:// path shared by all workers)" >&2; exit 2; }
  [[ "$WORKDIR" == gs://* ]] || echo "launch_tpu_pod.sh: warning: workdir '$WORKDIR' is not on GCS; each worker would write its own" >&2
  COMMAND="smallbig-jax train --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR")"
fi
for kv in "${ENVS[@]+"${ENVS[@]}"}"; do
  [[ "$kv" == *=* ]] || { echo "launch_tpu_pod.sh: --env expects NAME=VALUE, got '$kv'" >&2; exit 2; }
done

ENV_WORDS="SMALLBIG_DISTRIBUTED=1"
for kv in "${ENVS[@]+"${ENVS[@]}"}"; do
  ENV_WORDS+=" ${kv%%=*}=$(printf '%q' "${kv#*=}")"
done
REMOTE="cd $REPO_DIR && "
[[ -n "$SETUP" ]] && REMOTE+="$SETUP && "
REMOTE+="env $ENV_WORDS $COMMAND"

GCLOUD=(gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE")
[[ -n "$PROJECT" ]] && GCLOUD+=(--project="$PROJECT")
GCLOUD+=(--worker="$WORKER")

if [[ $DRY_RUN -eq 1 ]]; then  # copy-pasteable: the remote command in single quotes
  q="'\\''"
  printf '%q ' "${GCLOUD[@]}"; printf -- "--command='%s'\n" "${REMOTE//\'/$q}"
  exit 0
fi
GCLOUD+=(--command="$REMOTE")
command -v gcloud >/dev/null || { echo "launch_tpu_pod.sh: gcloud not found (install the Google Cloud CLI)" >&2; exit 127; }
exec "${GCLOUD[@]}"
