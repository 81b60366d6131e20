"""One step builder: the training loop, the evaluation and the benchmark run the same step functions
(`smallbig_jax.steps`), with the config's accumulation and EMA; the benchmark's end-to-end mode feeds the real step
from the real loader."""

from __future__ import annotations

import importlib.util
import inspect
import os

from smallbig_jax import evaluate, steps, train
from smallbig_jax.tools import benchmark as bm
from smallbig_jax.tools import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str, arg: str):
    spec = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_training_and_evaluation_take_their_steps_from_the_builder():
    assert evaluate.make_eval_step is steps.make_eval_step
    # The run gets its state and step from steps.train_setup (a copy of the construction would not), and no function
    # of train.py builds a model, a state or a step of its own.
    assert {"steps", "train_setup"} <= set(train.open_run.__code__.co_names)
    builders = {"make_train_step", "train_step_fn", "create_train_state", "model_from_config", "build_model", "jit"}
    for name, function in vars(train).items():
        if inspect.isfunction(function) and function.__module__ == train.__name__:
            assert not builders & set(function.__code__.co_names), name


def test_benchmark_times_the_steps_training_builds_end_to_end_from_the_real_loader(tmp_path, monkeypatch):
    """benchmark_model's timed functions are the very jitted train and eval steps of `steps.train_setup` for the
    config (here with gradient accumulation and EMA), and its end-to-end mode runs them on the config's loader."""
    from smallbig_jax.data import writers

    out = str(tmp_path / "synthetic")
    writers.write_synthetic_dataset(out, num_train=12, num_val=2, num_frames=8, size=32, workers=1, arrayrecord=False)
    config = load_config(os.path.join(REPO, "configs", "synthetic_smallbig.py"), f"tiny,dir={out}")
    config.grad_accum_steps, config.ema_decay = 2, 0.9

    built, timed = [], []
    real_setup, real_step = steps.train_setup, harness.JaxStep.__init__
    monkeypatch.setattr(steps, "train_setup", lambda *a, **k: built.append(real_setup(*a, **k)) or built[-1])

    def spy(self, jitted, args, feeds_state):
        timed.append(jitted)
        real_step(self, jitted, args, feeds_state)

    monkeypatch.setattr(harness.JaxStep, "__init__", spy)
    rec = bm.benchmark_model(config, batch_per_device=4, num_devices=1, steps=2, warmup=1, measure_end_to_end=True)
    (setup,) = built
    assert timed == [setup.eval_step, setup.train_step]
    assert "ema_params" in setup.state  # the step was built with EMA
    assert rec["step_config"] == {
        "formulation": "cpu",  # "auto" on a CPU mesh
        "batchnorm": "global",
        "grad_accum_steps": 2,
        "ema_decay": 0.9,
        "params_sharding": "replicate",
    }
    assert rec["global_batch"] == 4 and rec["input_per_device"] == [4, 4, 28, 28, 3]
    e = rec["end_to_end"]
    assert e["steps"] == 2 and e["clips_per_s"] > 0 and 0 <= e["data_wait_share"] <= 1
    assert e["input_bound"] == (e["data_wait_share"] > 0.1)
    assert "end to end (loader + train step)" in bm.format_results(rec)
