"""Launchers: dry runs print the expected commands; the local launcher starts a real two-process JAX run on
127.0.0.1 (CPU, gloo collectives) that agrees on a global batch; `initialize_distributed` reads its settings."""

from __future__ import annotations

import json
import os
import sys

import pytest
from helpers import run

from smallbig_jax.cli import EXIT_PREEMPTED
from smallbig_jax.distributed import distributed_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, timeout=30, **kwargs):
    """`scripts/<script> *args`, like `helpers.run`."""
    return run([os.path.join(ROOT, "scripts", script), *args], timeout=timeout, **kwargs)


def test_tpu_pod_dry_run_prints_gcloud_command():
    r = _run(
        "launch_tpu_pod.sh", "--tpu", "my-v5p-64", "--zone", "us-east5-a", "--project", "proj",
        "--config", "configs/kinetics400_smallbig50_8x8.py", "--workdir", "gs://bucket/run1",
        "--env", "XLA_FLAGS=--xla_a=1 --xla_b", "--dry-run",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    assert out.startswith(
        "gcloud compute tpus tpu-vm ssh my-v5p-64 --zone=us-east5-a --project=proj --worker=all --command='"
    )
    remote = out.split("--command='", 1)[1].rstrip("'")
    assert remote == (
        "cd $HOME/smallbig_jax && for try in $(seq 0 100); do env SMALLBIG_DISTRIBUTED=1 XLA_FLAGS=--xla_a=1\\ "
        "--xla_b smallbig-jax train --config configs/kinetics400_smallbig50_8x8.py --workdir gs://bucket/run1; "
        "status=$?; [ $status -eq 75 ] || exit $status; "
        'echo "preempted (exit 75): resuming" >&2; done; exit 75'
    )


def test_tpu_pod_worker_loop_requeues_only_on_the_preempted_status(tmp_path):
    """The remote command, run by bash with a stand-in for the training command: it runs again after exit 75 (a
    preempted run) and stops with any other status."""
    r = _run("launch_tpu_pod.sh", "--tpu", "t", "--zone", "z", "--repo-dir", str(tmp_path), "--retries", "5",
             "--command", "bash step.sh", "--dry-run")  # fmt: skip
    remote = r.stdout.strip().split("--command='", 1)[1].rstrip("'")
    (tmp_path / "step.sh").write_text("n=$(cat n 2>/dev/null || echo 0); echo $((n+1)) > n; [ $n -ge 2 ] || exit 75\n")
    out = run(["bash", "-c", remote], timeout=30)
    assert out.returncode == 0 and (tmp_path / "n").read_text().strip() == "3", out.stderr
    assert out.stderr.count("preempted (exit 75): resuming") == 2


def test_tpu_pod_custom_command_and_missing_arguments():
    r = _run(
        "launch_tpu_pod.sh", "--tpu", "t", "--zone", "z", "--repo-dir", "/srv/code", "--setup", "pip install -e .",
        "--command", "smallbig-jax benchmark --config.model.dtype=bfloat16", "--dry-run",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "--project" not in r.stdout
    assert (
        "--command='cd /srv/code && pip install -e . && for try in $(seq 0 100); do env SMALLBIG_DISTRIBUTED=1 "
        "smallbig-jax benchmark --config.model.dtype=bfloat16; status=$?"
    ) in r.stdout
    r = _run("launch_tpu_pod.sh", "--tpu", "t", "--dry-run")
    assert r.returncode == 2 and "--zone" in r.stderr
    r = _run("launch_tpu_pod.sh", "--tpu", "t", "--zone", "z", "--dry-run")
    assert r.returncode == 2 and "--workdir is required" in r.stderr


@pytest.mark.parametrize("per_host", [False, True])
def test_slurm_dry_run_prints_batch_script(per_host):
    args = ["--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--workdir", "/shared/run1"]
    r = _run("launch_slurm.sh", *args, *(["--per-host"] if per_host else []), "--repo-dir", "/srv/code", "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    tasks = 1 if per_host else 4
    assert "#SBATCH --nodes=2" in lines
    assert f"#SBATCH --ntasks-per-node={tasks}" in lines
    assert "#SBATCH --gpus-per-node=4" in lines
    assert "#SBATCH --partition=gpu" in lines
    assert "cd /srv/code" in lines
    assert "export SMALLBIG_DISTRIBUTED=1" in lines
    assert ("export SMALLBIG_LOCAL_DEVICE_IDS=0,1,2,3" in lines) == per_host
    assert (
        f"srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node={tasks} smallbig-jax train "
        "--config configs/kinetics400_smallbig50_8x8.py --workdir /shared/run1"
    ) in lines
    # Preemption: SIGTERM 120 s before the end, requeued when the run exits with the preempted status (75).
    assert "#SBATCH --requeue" in lines and "#SBATCH --signal=TERM@120" in lines
    srun = lines.index(next(line for line in lines if line.startswith("srun ")))
    assert lines[srun + 1 : srun + 6] == [
        "status=$?",
        "if [[ $status -eq 75 ]]; then  # preempted, checkpoint saved: run again from it",
        '  scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        "exit $status",
    ]


@pytest.mark.parametrize("accelerator", ["gpu", "tpu"])
def test_gke_dry_run_renders_service_and_indexed_job(accelerator):
    import yaml

    args = [
        "--image",
        "us-docker.pkg.dev/p/r/smallbig:1",
        "--name",
        "k400",
        "--nodes",
        "4",
        "--namespace",
        "ml",
        "--workdir",
        "gs://bucket/run 1",
        "--env",
        "XLA_FLAGS=--xla_a=1 --xla_b",
        "--service-account",
        "trainer",
    ]
    if accelerator == "tpu":
        args += ["--accelerator", "tpu", "--tpu-type", "tpu-v5p-slice", "--tpu-topology", "2x2x4"]
    r = _run("launch_gke.sh", *args, "--dry-run")
    assert r.returncode == 0, r.stderr
    service, job = yaml.safe_load_all(r.stdout)
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": "k400"} and service["metadata"]["namespace"] == "ml"
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4 and spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "k400" and pod["serviceAccountName"] == "trainer"
    # Preemption: a pod that exits 75 (saved, preempted) or is evicted is recreated, not counted as a failure.
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onExitCodes": {"containerName": "train", "operator": "In", "values": [EXIT_PREEMPTED]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 120
    (container,) = pod["containers"]
    assert container["image"] == "us-docker.pkg.dev/p/r/smallbig:1" and container["workingDir"] == "/app"
    assert container["command"] == [
        "bash",
        "-c",
        "exec smallbig-jax train --config configs/kinetics400_smallbig50_8x8.py:bf16 --workdir gs://bucket/run\\ 1",
    ]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["SMALLBIG_PROCESS_ID"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert env["XLA_FLAGS"] == "--xla_a=1 --xla_b"
    # What jax.distributed.initialize() gets in pod 2: pod 0 through the headless Service, 4 processes, index 2.
    pod_env = {k: v for k, v in env.items() if isinstance(v, str)} | {"SMALLBIG_PROCESS_ID": "2"}
    assert distributed_settings(env=pod_env) == dict(
        coordinator_address="k400-0.k400:1234", num_processes=4, process_id=2
    )
    if accelerator == "gpu":
        assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
        assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
    else:
        assert pod["nodeSelector"] == {
            "cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
            "cloud.google.com/gke-tpu-topology": "2x2x4",
        }
        assert container["resources"]["limits"] == {"google.com/tpu": 4}


def test_gke_missing_or_bad_arguments():
    r = _run("launch_gke.sh", "--workdir", "gs://b/r", "--dry-run")
    assert r.returncode == 2 and "--image is required" in r.stderr
    r = _run("launch_gke.sh", "--image", "i", "--dry-run")
    assert r.returncode == 2 and "--workdir is required" in r.stderr
    r = _run("launch_gke.sh", "--image", "i", "--workdir", "gs://b", "--nodes", "0", "--dry-run")
    assert r.returncode == 2 and "--nodes" in r.stderr
    r = _run("launch_gke.sh", "--image", "i", "--workdir", "gs://b", "--name", "Bad_Name", "--dry-run")
    assert r.returncode == 2 and "DNS label" in r.stderr


def test_local_dry_run_prints_per_process_environment():
    r = _run("launch_local.sh", "-n", "3", "--port", "4321", "--dry-run", "--", "python", "x.py", "--flag", "a b")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith(
            f"env SMALLBIG_COORDINATOR=127.0.0.1:4321 SMALLBIG_NUM_PROCESSES=3 SMALLBIG_PROCESS_ID={i} "
        )
        assert line.endswith("python x.py --flag a\\ b")


def test_distributed_settings_from_environment():
    assert distributed_settings(env={}) is None
    assert distributed_settings(env={"SMALLBIG_DISTRIBUTED": "1"}) == {}
    assert distributed_settings(env={"SMALLBIG_DISTRIBUTED": "1", "SMALLBIG_LOCAL_DEVICE_IDS": "0,1"}) == {
        "local_device_ids": [0, 1]
    }
    full = {"SMALLBIG_COORDINATOR": "h:1", "SMALLBIG_NUM_PROCESSES": "2", "SMALLBIG_PROCESS_ID": "1"}
    assert distributed_settings(env=full) == dict(coordinator_address="h:1", num_processes=2, process_id=1)
    assert distributed_settings(env=full | {"SMALLBIG_DISTRIBUTED": "0"}) is None
    assert distributed_settings("other:2", 4, 3, env=full)["coordinator_address"] == "other:2"
    with pytest.raises(ValueError, match="SMALLBIG_PROCESS_ID"):
        distributed_settings(env={"SMALLBIG_COORDINATOR": "h:1", "SMALLBIG_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="not in 0..1"):
        distributed_settings(env=full | {"SMALLBIG_PROCESS_ID": "2"})
    with pytest.raises(ValueError, match="SMALLBIG_DISTRIBUTED"):
        distributed_settings(env={"SMALLBIG_DISTRIBUTED": "maybe"})


def test_real_two_process_run_on_loopback():
    """Two CPU processes, one device each, joined by jax.distributed on 127.0.0.1 through the local launcher."""
    r = _run(
        "launch_local.sh", "-n", "2", "--timeout", "100", "--",
        sys.executable, "-m", "smallbig_jax", "distributed_check", "--init_timeout=60",
        drop=("SMALLBIG_", "XLA_FLAGS"), timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    results = {}
    for line in r.stdout.splitlines():
        prefix, _, rest = line.partition("] ")
        if rest.startswith("{"):
            results[int(prefix.lstrip("["))] = json.loads(rest)
    assert sorted(results) == [0, 1], r.stdout[-3000:]
    for i, res in results.items():
        assert res["process_index"] == i
        assert res["process_count"] == 2 and res["initialized"]
        assert res["global_devices"] == 2 and res["local_devices"] == 1
        assert res["global_batch"] == 4
        assert res["global_sum"] == pytest.approx(res["expected_sum"], rel=1e-6)
        assert res["logits_shape"] == [4, 5]
    assert results[0]["global_sum"] == results[1]["global_sum"]
    assert results[0]["logits_sum"] == pytest.approx(results[1]["logits_sum"], rel=1e-6)
    assert results[0]["first_shard_sums"] == results[1]["first_shard_sums"]
    assert len(results[0]["first_shard_sums"]) == 2
