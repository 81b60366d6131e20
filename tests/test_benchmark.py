"""Benchmark: end to end on a narrow model (JSON record, data-parallel mesh, PyTorch side by side with identical
outputs), the peaks table, MFU, the input-pipeline hook. No timing is asserted: this machine's timings are noise."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest
from helpers import run_python

from smallbig_jax import benchmark as bm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_peaks_table_lookup_by_device_kind():
    assert bm.peak_tflops("TPU v4", "bfloat16") == 275.0
    assert bm.peak_tflops("TPU v5 lite", "bfloat16") == 197.0  # v5e's device_kind
    assert bm.peak_tflops("TPU v5", "bfloat16") == 459.0  # v5p's device_kind
    assert bm.peak_tflops("TPU v6 lite", "bfloat16") == 918.0
    assert bm.peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0
    assert bm.peak_tflops("NVIDIA H100 80GB HBM3", "float32") == 494.0
    assert bm.peak_tflops("NVIDIA H200", "bfloat16") == 989.0
    assert bm.peak_tflops("cpu", "float32") is None
    assert bm.peak_tflops("TPU v7x", "bfloat16") is None  # unknown chips give no MFU rather than a wrong one


def test_mfu_from_given_peak():
    assert bm.mfu(2e12, 0.5, 10.0) == pytest.approx(0.4)  # 4 TFLOP/s achieved of 10
    assert bm.mfu(2e12, 0.5, None) is None
    assert bm.mfu(float("nan"), 0.5, 10.0) is None


def test_summary_and_iterator_timing():
    assert bm.summarize([0.003, 0.001, 0.002]) == pytest.approx((2.0, 1.2, 2.8))
    median, p10, p90 = bm.summarize([0.009, 0.017])  # two samples: the order still holds
    assert p10 <= median <= p90
    batches = ({"clips": np.zeros((3, 2, 4, 4, 3))} for _ in range(10))
    r = bm.time_iterator(batches, batches=4, warmup=1)
    assert r["batch_size"] == 3 and r["batches"] == 4 and r["clips_per_s"] > 0


def test_interleaved_timing_counts_each_steps_page_faults():
    """A step that writes 50 MB of fresh memory (glibc maps blocks over 32 MB anew each time) faults (12,800 times
    in 4 KiB pages, 25 in transparent huge pages); an empty step does not."""
    steps = {"fresh_memory": lambda: np.ones(6_250_000).sum(), "nothing": lambda: None}
    times, faults = bm.time_interleaved(steps, steps=3, warmup=1)
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
    r = bm.input_pipeline_throughput(config, batches=3, warmup=1)
    assert r["batch_size"] == 2 and r["batches"] == 3 and r["clips_per_s"] > 0
    config.data.train_list = ""
    assert "names no dataset" in bm.input_pipeline_throughput(config)["skipped"]


def test_script_end_to_end_with_torch(tmp_path):
    """scripts/benchmark.py eval + train with --compare-torch, JSON appended (2 devices: the FLOPs test below)."""
    pytest.importorskip("torch")
    results = tmp_path / "results.jsonl"
    cmd = [
        os.path.join(ROOT, "scripts", "benchmark.py"), "--variant", "smallbig23", "--base_width", "4",
        "--num_classes", "5", "--frames", "2", "--size", "32", "--batch_per_device", "2",
        "--steps", "2", "--warmup", "1", "--compare-torch", "--torch_threads", "1", "--peak_tflops", "1.0",
        "--results", str(results),
    ]  # fmt: skip
    results.write_text('{"earlier": "record"}\n')  # appended to, never overwritten
    r = run_python(*cmd, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "PyTorch median / JAX median" in r.stdout
    lines = results.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == {"earlier": "record"}
    rec = json.loads(lines[1])
    assert rec["device_count"] == 1 and rec["mesh"] == {"data": 1} and rec["global_batch"] == 2
    assert rec["input_per_device"] == [2, 2, 32, 32, 3]
    assert rec["versions"]["jax"] and rec["versions"]["torch"]
    assert rec["command"].startswith("python ") and "--compare-torch" in rec["command"]
    names = {(t["name"], t["framework"]) for t in rec["timings"]}
    assert names == {("eval forward", "jax"), ("eval forward", "torch"), ("train step", "jax"), ("train step", "torch")}
    for t in rec["timings"]:
        assert t["step_ms_p10"] <= t["step_ms_median"] <= t["step_ms_p90"] and t["page_faults_per_step"] >= 0
        assert t["clips_per_s"] == pytest.approx(t["clips_per_s_per_device"])
        if t["framework"] == "jax":
            assert t["compile_s"] > 0 and t["gflops_per_step_per_device"] > 0
            # MFU is the per-device achieved FLOP/s over the given peak (1 TFLOP/s).
            assert t["mfu"] == pytest.approx(t["achieved_gflops_per_device"] / 1e3)
    assert set(rec["torch_speedup_ratio"]) == {"eval forward", "train step"}
    # Same weights, same input: the logits agree.
    assert rec["parity"]["eval_logits_max_abs_diff"] <= 1e-4 * max(1.0, rec["parity"]["eval_logits_max_abs"])
    assert rec["input_pipeline"]["skipped"] == "needs --config"
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
        "import jax, json; from smallbig_jax import benchmark as bm;"
        "c=bm.benchmark_config('smallbig23', base_width=4, num_classes=5, frames=2, size=32);"
        "kw=dict(batch_per_device=1, steps=1, warmup=0, modes=('eval',));"
        "a=bm.benchmark_model(c, num_devices=1, **kw); b=bm.benchmark_model(c, num_devices=2, **kw);"
        "print(json.dumps([a['timings'][0]['gflops_per_step_per_device'],"
        " b['timings'][0]['gflops_per_step_per_device']]))"
    )
    r = run_python("-c", code, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = json.loads(r.stdout.strip().splitlines()[-1])
    assert two == pytest.approx(one, rel=0.02)
