#!/usr/bin/env bash
# Runs training on a GKE cluster (GPU or TPU node pools): a headless Service and an Indexed Job, one pod per node.
#
#   scripts/launch_gke.sh --image us-docker.pkg.dev/my-proj/repo/smallbig:latest --nodes 4 --gpus-per-node 8 \
#       --config configs/kinetics400_smallbig50_8x8.py:bf16 --workdir gs://my-bucket/smallbig/k400_r50
#   scripts/launch_gke.sh --accelerator tpu --tpu-type tpu-v5p-slice --tpu-topology 2x2x4 --nodes 4 ...
#   scripts/launch_gke.sh ... --dry-run          # print the manifest (YAML), apply nothing
#
# Pod i (hostname NAME-i, DNS NAME-i.NAME) runs, from --repo-dir in --image (an image with this repository installed,
# e.g. `pip install -e ".[cuda12]"` or `".[tpu]"`):  cd REPO_DIR && [--env K=V ...] COMMAND
# with the coordinates smallbig_jax.distributed reads for jax.distributed.initialize():
#   SMALLBIG_COORDINATOR=NAME-0.NAME:PORT   pod 0, through the headless Service (DNS for not-ready pods too)
#   SMALLBIG_NUM_PROCESSES=NODES            one process per pod, driving every accelerator of its node
#   SMALLBIG_PROCESS_ID=<index>             the pod's completion index (annotation batch.kubernetes.io/job-completion-index)
# Explicit coordinates need neither the `kubernetes` package nor pod-reading RBAC, which JAX's own Kubernetes
# detection would. On TPU node pools GKE also sets TPU_WORKER_ID and TPU_WORKER_HOSTNAMES for the TPU runtime.
# backoffLimit 0 and completions = parallelism = NODES: one failed pod fails the Job (all processes must run);
# resubmit to resume from the workdir's last checkpoint. The workdir must be shared (gs:// with Workload Identity
# giving the pods' service account --service-account storage access).
set -euo pipefail

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --image IMAGE [--name NAME] [--namespace NS] [--accelerator gpu|tpu] [--nodes N]"
  echo "         [--gpus-per-node N] [--gpu-type TYPE] [--tpu-type TYPE] [--tpu-topology TOPO] [--tpu-chips-per-node N]"
  echo "         [--config FILE] [--workdir DIR] [--command CMD] [--repo-dir DIR] [--env K=V]... [--port P]"
  echo "         [--service-account SA] [--dry-run]"
}

NAME="smallbig"
NAMESPACE=""
IMAGE=""
ACCELERATOR="gpu"
NODES=1
GPUS=8
GPU_TYPE="nvidia-h100-80gb"
TPU_TYPE="tpu-v5p-slice"
TPU_TOPOLOGY="2x2x1"
TPU_CHIPS=4
CONFIG="configs/kinetics400_smallbig50_8x8.py:bf16"
WORKDIR=""
COMMAND=""
REPO_DIR="/app"
PORT=1234
SERVICE_ACCOUNT=""
DRY_RUN=0
ENVS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --namespace) NAMESPACE="$2"; shift 2 ;;
    --image) IMAGE="$2"; shift 2 ;;
    --accelerator) ACCELERATOR="$2"; shift 2 ;;
    --nodes) NODES="$2"; shift 2 ;;
    --gpus-per-node) GPUS="$2"; shift 2 ;;
    --gpu-type) GPU_TYPE="$2"; shift 2 ;;
    --tpu-type) TPU_TYPE="$2"; shift 2 ;;
    --tpu-topology) TPU_TOPOLOGY="$2"; shift 2 ;;
    --tpu-chips-per-node) TPU_CHIPS="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --command) COMMAND="$2"; shift 2 ;;
    --repo-dir) REPO_DIR="$2"; shift 2 ;;
    --env) ENVS+=("$2"); shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --service-account) SERVICE_ACCOUNT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "launch_gke.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
die() { echo "launch_gke.sh: $*" >&2; exit 2; }
[[ -n "$IMAGE" ]] || die "--image is required (a container image with this repository installed)"
[[ "$ACCELERATOR" == gpu || "$ACCELERATOR" == tpu ]] || die "--accelerator must be gpu or tpu, got '$ACCELERATOR'"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive whole number, got '$NODES'"
[[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name must be a DNS label (lower case, digits, '-'), got '$NAME'"
if [[ -z "$COMMAND" ]]; then
  [[ -n "$WORKDIR" ]] || die "--workdir is required (a gs:// path shared by all pods)"
  [[ "$WORKDIR" == gs://* ]] || echo "launch_gke.sh: warning: workdir '$WORKDIR' is not on GCS; each pod would write its own" >&2
  COMMAND="smallbig-jax train --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR")"
fi
for kv in "${ENVS[@]+"${ENVS[@]}"}"; do
  [[ "$kv" == *=* ]] || die "--env expects NAME=VALUE, got '$kv'"
done

json() {  # a YAML double-quoted scalar (JSON string syntax)
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

if [[ "$ACCELERATOR" == gpu ]]; then
  SELECTOR="        cloud.google.com/gke-accelerator: $(json "$GPU_TYPE")"
  RESOURCE="nvidia.com/gpu: $GPUS"
else
  SELECTOR="        cloud.google.com/gke-tpu-accelerator: $(json "$TPU_TYPE")
        cloud.google.com/gke-tpu-topology: $(json "$TPU_TOPOLOGY")"
  RESOURCE="google.com/tpu: $TPU_CHIPS"
fi
NS_LINE=""
[[ -n "$NAMESPACE" ]] && NS_LINE="
  namespace: $(json "$NAMESPACE")"
SA_LINE=""
[[ -n "$SERVICE_ACCOUNT" ]] && SA_LINE="
      serviceAccountName: $(json "$SERVICE_ACCOUNT")"
EXTRA_ENV=""
for kv in "${ENVS[@]+"${ENVS[@]}"}"; do
  EXTRA_ENV+="
        - name: $(json "${kv%%=*}")
          value: $(json "${kv#*=}")"
done

MANIFEST="apiVersion: v1
kind: Service
metadata:
  name: $NAME$NS_LINE
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    job-name: $NAME
---
apiVersion: batch/v1
kind: Job
metadata:
  name: $NAME$NS_LINE
spec:
  completionMode: Indexed
  completions: $NODES
  parallelism: $NODES
  backoffLimit: 0
  template:
    spec:
      subdomain: $NAME
      restartPolicy: Never$SA_LINE
      nodeSelector:
$SELECTOR
      containers:
      - name: train
        image: $(json "$IMAGE")
        workingDir: $(json "$REPO_DIR")
        command: [\"bash\", \"-c\", $(json "exec $COMMAND")]
        ports:
        - containerPort: $PORT
        env:
        - name: SMALLBIG_COORDINATOR
          value: $(json "$NAME-0.$NAME:$PORT")
        - name: SMALLBIG_NUM_PROCESSES
          value: $(json "$NODES")
        - name: SMALLBIG_PROCESS_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']$EXTRA_ENV
        resources:
          limits:
            $RESOURCE"

if [[ $DRY_RUN -eq 1 ]]; then
  printf '%s\n' "$MANIFEST"
  exit 0
fi
command -v kubectl >/dev/null || { echo "launch_gke.sh: kubectl not found (gcloud container clusters get-credentials ...)" >&2; exit 127; }
printf '%s\n' "$MANIFEST" | kubectl apply -f -
echo "launch_gke.sh: follow pod 0 with: kubectl logs -f job/$NAME" >&2
