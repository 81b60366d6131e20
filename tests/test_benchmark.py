"""Benchmark: end to end on a narrow model (JSON record, data-parallel mesh, PyTorch side by side with identical
outputs, the given peak in the record), the peaks table, MFU and the row of a timed step, the input-pipeline hook.
No timing is asserted: this machine's timings are noise."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from helpers import run_cli, run_python

from smallbig_jax.tools import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "benchmark.py") + ":tiny"


def test_peaks_table_lookup_by_device_kind():
    assert harness.peak_tflops("TPU v4", "bfloat16") == 275.0
    assert harness.peak_tflops("TPU v5 lite", "bfloat16") == 197.0  # v5e's device_kind
    assert harness.peak_tflops("TPU v5", "bfloat16") == 459.0  # v5p's device_kind
    assert harness.peak_tflops("TPU v6 lite", "bfloat16") == 918.0
    assert harness.peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0
    assert harness.peak_tflops("NVIDIA H100 80GB HBM3", "float32") == 494.0
    assert harness.peak_tflops("NVIDIA H200", "bfloat16") == 989.0
    assert harness.peak_tflops("cpu", "float32") is None
    assert harness.peak_tflops("TPU v7x", "bfloat16") is None  # unknown chips give no MFU rather than a wrong one


def test_mfu_from_given_peak():
    assert harness.mfu(2e12, 0.5, 10.0) == pytest.approx(0.4)  # 4 TFLOP/s achieved of 10
    assert harness.mfu(2e12, 0.5, None) is None
    assert harness.mfu(float("nan"), 0.5, 10.0) is None
    assert harness.mfu(2e12, 0.0, 10.0) is None


class _Step:
    """What `harness.timing` reads of a compiled JAX step."""

    flops, compile_s, memory = 2e9, 3.0, {"xla_compiled_total_gb": 0.5}


def test_row_of_a_timed_step():
    """Per device and in total on 2 devices, MFU from the step's FLOPs and the given peak; a PyTorch row has none."""
    devices = [jax.devices()[0]] * 2
    times = [0.4, 0.5, 0.6]  # median 0.5 s
    row = harness.timing(
        "train step", "jax", times, [0, 7, 9], clips_per_device=2, devices=devices, jstep=_Step(), peak=0.01
    )
    assert (row.step_ms_median, row.steps, row.page_faults_per_step) == (pytest.approx(500.0), 3, 7.0)
    assert row.clips_per_s == pytest.approx(8.0) and row.clips_per_s_per_device == pytest.approx(4.0)
    assert row.gflops_per_step_per_device == pytest.approx(2.0) and row.compile_s == 3.0
    assert row.achieved_gflops_per_device == pytest.approx(4.0)
    assert row.mfu == pytest.approx(0.4)  # 4 GFLOP/s of a 10 GFLOP/s peak
    assert row.as_json()["memory"] == {"xla_compiled_total_gb": 0.5}
    torch_row = harness.timing("train step", "torch", times, [0, 0, 0], clips_per_device=2, devices=devices)
    assert torch_row.mfu is None and torch_row.compile_s is None and torch_row.gflops_per_step_per_device is None


def test_summary_and_iterator_timing():
    assert harness.summarize([0.003, 0.001, 0.002]) == pytest.approx((2.0, 1.2, 2.8))
    assert harness.summarize([0.009, 0.017]) == pytest.approx((13.0, 9.8, 16.2))  # interpolated between two samples
    batches = ({"clips": np.zeros((3, 2, 4, 4, 3))} for _ in range(10))
    r = harness.time_iterator(batches, batches=4, warmup=1)
    assert r["batch_size"] == 3 and r["batches"] == 4 and r["clips_per_s"] > 0


def test_interleaved_timing_counts_each_steps_page_faults():
    """A step that writes 50 MB of fresh memory (glibc maps blocks over 32 MB anew each time) faults (12,800 times
    in 4 KiB pages, 25 in transparent huge pages); an empty step does not."""
    steps = {"fresh_memory": lambda: np.ones(6_250_000).sum(), "nothing": lambda: None}
    times, faults = harness.time_interleaved(steps, steps=3, warmup=1)
    assert [len(t) for t in times.values()] == [3, 3] and [len(f) for f in faults.values()] == [3, 3]
    assert min(faults["fresh_memory"]) >= 25 > max(faults["nothing"])


def test_input_pipeline_throughput_reads_the_configs_dataset(tmp_path):
    from smallbig_jax.data import synthetic, writers

    out = str(tmp_path / "synthetic")
    writers.write_synthetic_dataset(out, num_train=10, num_val=2, num_frames=8, size=32, workers=1, arrayrecord=False)
    config = ml_collections.ConfigDict(
        {"batch_size": 2, "model": {"num_classes": 5}, "data": synthetic.data_config(out, fmt="video")}
    )
    config.data.crop_size, config.data.scale_size = 28, 32
    r = harness.input_pipeline_throughput(config, batches=3, warmup=1)
    assert r["batch_size"] == 2 and r["batches"] == 3 and r["clips_per_s"] > 0
    config.data.train_list = ""
    assert "names no dataset" in harness.input_pipeline_throughput(config)["skipped"]


def test_command_end_to_end_with_torch(tmp_path):
    """`smallbig-jax benchmark` eval + train with --compare_torch, the given peak in the record, JSON appended
    (2 devices: the FLOPs test below)."""
    pytest.importorskip("torch")
    results = tmp_path / "results.jsonl"
    args = [
        f"--config={TINY}", "--config.data.crop_size=32", "--batch_per_device=2", "--steps=2", "--warmup=1",
        "--compare_torch", "--torch_threads=1", "--peak_tflops=0.5", f"--results={results}",
    ]  # fmt: skip
    results.write_text('{"earlier": "record"}\n')  # appended to, never overwritten
    r = run_cli("benchmark", *args, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "PyTorch median / JAX median" in r.stdout
    lines = results.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == {"earlier": "record"}
    rec = json.loads(lines[1])
    assert rec["device_count"] == 1 and rec["mesh"] == {"data": 1} and rec["global_batch"] == 2
    assert rec["input_per_device"] == [2, 2, 32, 32, 3]
    assert rec["versions"]["jax"] and rec["versions"]["torch"]
    assert rec["command"].startswith("python ") and "--compare_torch" in rec["command"]
    assert rec["config"] == TINY and rec["variant"] == "smallbig23" and rec["dtype"] == "float32"
    assert rec["peak_tflops_per_device"] == 0.5 and rec["peak_note"] is None  # CPUs have no peak of their own
    names = {(t["name"], t["framework"]) for t in rec["timings"]}
    assert names == {("eval forward", "jax"), ("eval forward", "torch"), ("train step", "jax"), ("train step", "torch")}
    for t in rec["timings"]:
        assert t["steps"] == 2 and t["clips_per_device"] == 2
        if t["framework"] == "jax":  # the given peak reached each JAX row's MFU
            assert t["compile_s"] > 0 and t["gflops_per_step_per_device"] > 0 and t["mfu"] > 0
        else:
            assert t["mfu"] is None and t["compile_s"] is None
    assert set(rec["torch_speedup_ratio"]) == {"eval forward", "train step"}
    # Same weights, same input: the logits agree.
    assert rec["parity"]["eval_logits_max_abs_diff"] <= 1e-4 * max(1.0, rec["parity"]["eval_logits_max_abs"])
    assert "names no dataset" in rec["input_pipeline"]["skipped"]
    # The checkpoint holds float32 parameters twice (weights, SGD momentum) plus BN statistics and the step.
    from smallbig_jax.models import build_model, count_params

    params_mb = count_params(build_model("smallbig23", 5, base_width=4)) * 4 / 2**20
    c = rec["checkpoint"]
    assert 2 * params_mb < c["megabytes"] < 2 * params_mb + 1, c
    assert 0 < c["save_blocking_s"] <= c["save_total_s"] and c["restore_s"] > 0, c


def test_per_device_flops_match_single_device_program():
    """With 2 devices the FLOPs reported per device are those of the 1-device program at the per-device batch
    (XLA's cost analysis of the partitioned program describes one partition)."""
    code = (
        "import jax, json; from ml_collections.config_flags.config_flags import ConfigFileFlagParser;"
        "from smallbig_jax.tools import benchmark as bm;"
        f"c=ConfigFileFlagParser('config').parse({TINY!r}); c.data.crop_size=32;"
        "kw=dict(batch_per_device=1, steps=1, warmup=0, modes=('eval',));"
        "a=bm.benchmark_model(c, num_devices=1, **kw); b=bm.benchmark_model(c, num_devices=2, **kw);"
        "print(json.dumps([a['timings'][0]['gflops_per_step_per_device'],"
        " b['timings'][0]['gflops_per_step_per_device']]))"
    )
    r = run_python("-c", code, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = json.loads(r.stdout.strip().splitlines()[-1])
    assert two == pytest.approx(one, rel=0.02)
