"""`smallbig-jax accelerator_check` at its tiny size on 2 CPU devices: the same code path as on an accelerator,
numerics checks included; the size sweep stops cleanly at out-of-memory."""

from __future__ import annotations

import json
import os

import pytest
from helpers import run_cli

from smallbig_jax.tools import accelerator_check as check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_check_on_two_cpu_devices(tmp_path):
    results, table = tmp_path / "checks.jsonl", tmp_path / "check.md"
    r = run_cli(
        "accelerator_check",
        f"--config={os.path.join(ROOT, 'configs', 'benchmark.py')}:tiny,bf16",
        "--tiny",
        "--peak_tflops=0.5",
        f"--results={results}",
        f"--markdown={table}",
        cwd=tmp_path,
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (line,) = results.read_text().splitlines()
    rec = json.loads(line)
    assert rec["platform"] == "cpu" and rec["device_count"] == 2 and rec["passed"]
    assert rec["model"] == {
        "variant": "smallbig23",
        "base_width": 4,
        "num_classes": 5,
        "frames": 2,
        "size": 64,
        "dtype": "bfloat16",
        "batchnorm": "per_device",
    }
    num = rec["numerics"]
    assert num["batch"] == [4, 2, 64, 64, 3] and num["device"].startswith("2 x ")  # sharded over both devices
    f32 = num["logits_f32_vs_cpu"]
    assert f32["passed"] and f32["max_abs_diff"] <= check.LOGITS_F32_BOUND * max(1.0, f32["max_abs_logit"])
    bf16 = num["logits_bf16_vs_f32"]
    assert bf16["passed"] and 0 < bf16["relative_l2"] <= check.LOGITS_BF16_BOUND  # bfloat16 really rounds
    upd = num["update_f32_vs_cpu"]
    assert upd["passed"] and upd["relative_l2"] <= check.UPDATE_F32_BOUND
    assert upd["loss"] == pytest.approx(upd["reference_loss"], rel=1e-4)
    assert rec["speed"]["peak_tflops_per_device"] == 0.5  # the given peak, not the table's (none for CPUs)
    for name in ("train step", "eval forward"):
        (s,) = rec["speed"][name]
        assert s["name"] == name and s["clips_per_device"] == 2 and s["steps"] == 2
        assert s["compile_s"] > 0 and s["clips_per_s_per_device"] > 0 and s["clips_per_s"] > 0
        assert s["gflops_per_step_per_device"] > 0 and s["mfu"] > 0  # the given peak reached the rows
    ip = rec["input_pipeline"]
    assert ip["clips_per_s"] > 0
    assert rec["input_data"] == "4 synthetic mp4s of 8 frames at 64x64"  # the tiny config's clip span and scale
    train_rate = rec["speed"]["train step"][0]["clips_per_s_per_device"] * 2
    assert ip["step_clips_per_s_per_host"] == pytest.approx(train_rate)
    assert ip["cores_needed"] == -(-train_rate // ip["clips_per_s_per_core"])
    md = table.read_text()
    assert "| train step | 2 |" in md and "| eval forward | 2 |" in md and "Numerics passed." in md
    assert md.strip() in r.stdout


class _FakeOOM(RuntimeError):
    pass


def test_sweep_stops_each_mode_at_out_of_memory_and_reraises_anything_else():
    import ml_collections

    from smallbig_jax import sharding
    from smallbig_jax.config import official_recipe

    config = official_recipe(variant="smallbig23", num_classes=5, num_frames=2, sampling="dense")
    mesh = sharding.make_mesh()
    calls = []

    def oom_setup(cfg: ml_collections.ConfigDict, mesh, steps_per_epoch):
        calls.append(cfg.batch_size)
        raise _FakeOOM("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.3GiB.\nmore detail")

    r = check.speed(config, mesh, [8, 16, 32], steps_=1, warmup=0, setup_fn=oom_setup)
    oom = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.3GiB."
    assert r["train step"] == [{"clips_per_device": 8, "oom": oom}]
    assert r["eval forward"] == [{"clips_per_device": 8, "oom": oom}]
    assert calls == [8 * mesh.size]  # 16 and 32 never tried

    def broken_setup(cfg, mesh, steps_per_epoch):  # not a lack of memory: the check stops with it
        raise ValueError("config.batchnorm='x'")

    with pytest.raises(ValueError, match="batchnorm"):
        check.speed(config, mesh, [8], steps_=1, warmup=0, setup_fn=broken_setup)
    assert check.is_out_of_memory(RuntimeError("Allocator (GPU_0_bfc) ran out of memory; OOM"))
    assert not check.is_out_of_memory(RuntimeError("INVALID_ARGUMENT: shapes"))
