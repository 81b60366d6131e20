#!/usr/bin/env bash
# Starts N processes of one JAX program on this host, joined into one multi-process run on 127.0.0.1.
#
#   scripts/launch_local.sh -n 2 -- smallbig-jax distributed_check             # 2 CPU processes (JAX_PLATFORMS=cpu)
#   scripts/launch_local.sh -n 8 --per-gpu --config configs/X.py --workdir /ckpt/run1   # one process per GPU
#   scripts/launch_local.sh -n 2 --dry-run                                     # print what would run
#
# Each process gets SMALLBIG_COORDINATOR=127.0.0.1:PORT, SMALLBIG_NUM_PROCESSES=N, SMALLBIG_PROCESS_ID=i (read by
# smallbig_jax.distributed.initialize_distributed) and, with --per-gpu, SMALLBIG_LOCAL_DEVICE_IDS=i. Without
# --per-gpu and with no JAX_PLATFORMS set, processes run on CPU (the test set-up); on a multi-GPU host the simpler
# recipe is ONE process driving all GPUs: `smallbig-jax train --config ... --workdir ...` (no launcher).
# Output lines are prefixed with [i]. If a process fails, the others are stopped; the exit status is the first
# non-zero one. --timeout SECONDS stops everything after that long (exit 124).
set -euo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: -n N  --port P  --per-gpu  --config FILE  --workdir DIR  --timeout S  --dry-run  [-- command ...]"
}

NPROC=2
PORT=""
PER_GPU=0
CONFIG="configs/kinetics400_smallbig50_8x8.py"
WORKDIR="/tmp/smallbig_run"
TIMEOUT=0
DRY_RUN=0
CMD=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n|--num-processes) NPROC="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --per-gpu) PER_GPU=1; shift ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; CMD=("$@"); break ;;
    *) echo "launch_local.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || { echo "launch_local.sh: -n must be a positive integer, got '$NPROC'" >&2; exit 2; }
if [[ ${#CMD[@]} -eq 0 ]]; then
  CMD=(smallbig-jax train --config "$CONFIG" --workdir "$WORKDIR")
fi
if [[ -z "$PORT" ]]; then
  if [[ $DRY_RUN -eq 1 ]]; then
    PORT=12355
  else
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  fi
fi

env_for() {  # the environment of process $1, as NAME=VALUE words
  local i=$1
  local vars=(SMALLBIG_COORDINATOR="127.0.0.1:$PORT" SMALLBIG_NUM_PROCESSES="$NPROC" SMALLBIG_PROCESS_ID="$i")
  if [[ $PER_GPU -eq 1 ]]; then
    vars+=(SMALLBIG_LOCAL_DEVICE_IDS="$i")
  elif [[ -z "${JAX_PLATFORMS:-}" ]]; then
    vars+=(JAX_PLATFORMS=cpu)
  fi
  printf '%s\n' "${vars[@]}"
}

if [[ $DRY_RUN -eq 1 ]]; then
  for ((i = 0; i < NPROC; i++)); do
    mapfile -t vars < <(env_for "$i")
    printf 'env'; printf ' %q' "${vars[@]}" "${CMD[@]}"; printf '\n'
  done
  exit 0
fi

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

for ((i = 0; i < NPROC; i++)); do
  mapfile -t vars < <(env_for "$i")
  env "${vars[@]}" "${CMD[@]}" > >(sed -u "s/^/[$i] /") 2>&1 &
  PIDS+=($!)
done

STATUS=0
START=$SECONDS
remaining=("${PIDS[@]}")
while [[ ${#remaining[@]} -gt 0 ]]; do
  still=()
  for pid in "${remaining[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
    else
      set +e; wait "$pid"; rc=$?; set -e
      if [[ $rc -ne 0 && $STATUS -eq 0 ]]; then
        STATUS=$rc
        echo "launch_local.sh: a process exited with status $rc; stopping the others" >&2
        cleanup
      fi
    fi
  done
  remaining=("${still[@]+"${still[@]}"}")
  if [[ $TIMEOUT -gt 0 && $((SECONDS - START)) -ge $TIMEOUT && ${#remaining[@]} -gt 0 ]]; then
    echo "launch_local.sh: timeout after ${TIMEOUT}s; stopping all processes" >&2
    cleanup
    STATUS=124
    break
  fi
  [[ ${#remaining[@]} -gt 0 ]] && sleep 0.2
done
exit "$STATUS"
