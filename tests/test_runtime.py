"""Accelerator defaults: every training config's bf16 variant, the compilation cache setting, XLA GPU flags that
leave the user's own alone, field checks, and a profiler trace of exactly the asked steps."""

from __future__ import annotations

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from smallbig_jax import runtime
from smallbig_jax.config import ConfigError, check_config, official_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def _get_config(path: str, arg: str | None):
    spec = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=os.path.basename)
def test_every_training_config_has_a_bfloat16_variant(path):
    default = _get_config(path, None)
    bf16 = _get_config(path, "bf16")
    assert default.model.dtype == "float32"
    assert bf16.model.dtype == "bfloat16" and bf16.model.param_dtype == "float32"
    # Nothing else changes.
    bf16.model.dtype = "float32"
    assert bf16.to_dict() == default.to_dict()
    assert default.compilation_cache == "user" and default.profile_steps == 0
    check_config(default)


def test_compilation_cache_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert runtime.compilation_cache_dir("user", None) == str(tmp_path / "cache" / "smallbig_jax" / "xla")
    assert runtime.compilation_cache_dir("workdir", "gs://b/run") == "gs://b/run/xla_cache"
    assert runtime.compilation_cache_dir("", "w") is None
    assert runtime.compilation_cache_dir("/srv/xla", "w") == "/srv/xla"
    with pytest.raises(ValueError, match="needs a workdir"):
        runtime.compilation_cache_dir("workdir", None)

    config = official_recipe(variant="smallbig23", num_classes=5, num_frames=2, sampling="dense")
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        applied = runtime.configure(config, str(tmp_path / "run"))
        assert (
            applied["compilation_cache"]
            == jax.config.jax_compilation_cache_dir
            == runtime.compilation_cache_dir("user", None)
        )
        jax.config.update("jax_compilation_cache_dir", "/elsewhere")  # set before the run: kept
        config.compilation_cache = "workdir"
        assert runtime.configure(config, str(tmp_path / "run"))["compilation_cache"] == "/elsewhere"
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_xla_gpu_flags_keep_the_users_own_and_fields_are_checked():
    merged = runtime.merged_xla_flags(
        "--xla_gpu_enable_latency_hiding_scheduler=false --xla_foo=1", runtime.DEFAULT_XLA_GPU_FLAGS + " --xla_bar=2"
    )
    assert merged == "--xla_gpu_enable_latency_hiding_scheduler=false --xla_foo=1 --xla_bar=2"
    assert runtime.merged_xla_flags("", runtime.DEFAULT_XLA_GPU_FLAGS) == runtime.DEFAULT_XLA_GPU_FLAGS
    config = official_recipe(variant="smallbig23", num_classes=5, num_frames=2, sampling="dense")
    for key, bad, message in (
        ("profile_steps", -1, "config.profile_steps=-1"),
        ("xla_gpu_flags", "latency_hiding", "config.xla_gpu_flags="),
    ):
        c = official_recipe(variant="smallbig23", num_classes=5, num_frames=2, sampling="dense")
        c[key] = bad
        with pytest.raises(ConfigError, match=message):
            check_config(c)
    check_config(config)


def test_step_profiler_traces_the_asked_steps_into_the_logdir(tmp_path):
    step_fn = jax.jit(lambda x: x * 2 + 1)
    profiler = runtime.StepProfiler(2, str(tmp_path / "tensorboard"), first_step=0)
    traced = []
    x = jnp.ones(4)
    for step in range(1, 7):
        profiler.before(step)
        if profiler.active:
            traced.append(step)
        x = step_fn(x)
        profiler.after(step, x)
    profiler.close()
    assert traced == [2, 3] and not profiler.active
    assert glob.glob(str(tmp_path / "tensorboard" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    off = runtime.StepProfiler(0, str(tmp_path / "off"), first_step=0)
    off.before(2)
    assert not off.active and not os.path.exists(tmp_path / "off")
