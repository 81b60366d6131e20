"""Shared fixtures for the data tests (names prefixed ``sbdata_``): tiny videos written as frame folders and mp4.

Frame ``t`` of every fixture video encodes its index in the green channel's mean (``20 + 12*t``), and a
horizontal ramp in red and a vertical ramp in blue, so tests can tell which frame, crop and flip they got.

The longest tests are collected first, so that the two pytest-xdist workers of ``make test`` start on them and fill the
rest of the time with the short ones. A test that starts a process (through `tests/helpers.py` or `subprocess`) or runs
a whole training (`train_and_evaluate`), itself, through a function of its module or through a fixture, is marked
``slow`` here (`make test-fast` leaves those out); a test may also say ``@pytest.mark.slow``. One persistent JAX
compilation cache, new for each pytest run, is shared by the workers and by the training processes that tests start:
compilation is most of the suite's time, and many tests compile the same tiny training step.
"""

from __future__ import annotations

import ast
import functools
import os
import shutil
import tempfile

import numpy as np
import pytest


def pytest_configure(config):
    """The controller makes the run's compilation cache folder; xdist workers get it through `workerinput`, the
    processes tests start through the environment (jax reads these variables when it is imported)."""
    if hasattr(config, "workerinput"):
        cache_dir = config.workerinput["jax_cache_dir"]
    else:
        cache_dir = config.jax_cache_dir = tempfile.mkdtemp(prefix="smallbig_jax_cache_")
    os.environ.update(
        {
            "JAX_COMPILATION_CACHE_DIR": cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1",  # the heavy programs only
            "JAX_COMPILATION_CACHE_MAX_SIZE": str(
                8 << 30
            ),  # any limit turns on the cache's file lock (parallel writers)
        }
    )
    from smallbig_jax import cli

    cli.choose_jax_platforms(keep_cuda_compiler=True)  # with the aot extra on a CPU-only machine: as without it


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: pytest without xdist must not reject it
def pytest_configure_node(node):  # on the controller, for each worker
    node.workerinput["jax_cache_dir"] = node.config.jax_cache_dir


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        shutil.rmtree(config.jax_cache_dir, ignore_errors=True)


SBDATA_FRAMES, SBDATA_H, SBDATA_W, SBDATA_VIDEOS = 16, 48, 64, 12


def sbdata_video(num_frames: int = SBDATA_FRAMES, h: int = SBDATA_H, w: int = SBDATA_W) -> np.ndarray:
    """``[T, H, W, 3]`` uint8: red = x ramp, green = 20 + 12*t, blue = y ramp."""
    v = np.zeros((num_frames, h, w, 3), np.uint8)
    v[..., 0] = np.linspace(0, 255, w).astype(np.uint8)[None, None, :]
    v[..., 1] = (20 + 12 * np.arange(num_frames))[:, None, None]
    v[..., 2] = np.linspace(0, 255, h).astype(np.uint8)[None, :, None]
    return v


def sbdata_frame_ids(clip: np.ndarray) -> np.ndarray:
    """Frame index of each frame of a decoded fixture clip, from the green channel."""
    return np.round((clip[..., 1].reshape(len(clip), -1).mean(1) - 20) / 12).astype(int)


@pytest.fixture(scope="session")
def sbdata_dir(tmp_path_factory) -> str:
    """A folder with ``frames/`` + ``frames.txt`` and ``videos/`` + ``videos.txt`` (12 videos, labels v % 3)."""
    from smallbig_jax.data import lists, writers

    root = str(tmp_path_factory.mktemp("sbdata"))
    video = sbdata_video()
    frame_rows, video_rows = [], []
    for v in range(SBDATA_VIDEOS):
        name = f"vid{v:02d}"
        writers.write_frame_folder(os.path.join(root, "frames", name), video)
        writers.write_mp4(os.path.join(root, "videos", name + ".mp4"), video)
        frame_rows.append((name, SBDATA_FRAMES, v % 3))
        video_rows.append((name + ".mp4", v % 3))
    lists.write_frame_list(os.path.join(root, "frames.txt"), frame_rows)
    lists.write_video_list(os.path.join(root, "videos.txt"), video_rows)
    return root


LONGEST_FIRST = ("test_synthetic_task.py", "test_train_run.py", "test_train.py", "test_faults.py", "test_elastic.py")


# What makes a test slow when it calls it: a new process (tests/helpers.py, or `subprocess` itself) or a training run.
HELPERS, TRAINING_RUN = "helpers", "train_and_evaluate"


@functools.cache
def _slow_functions(path: str) -> frozenset[str]:
    """Names of the module-level functions and classes of the file at `path` (tests, fixtures, helpers) that start a
    process (a function imported from `tests/helpers.py`, or `subprocess`) or run a training, directly or through
    other functions and classes of the module."""
    with open(path) as f:
        tree = ast.parse(f.read())
    starts = {"subprocess", HELPERS}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == HELPERS:
            starts.update(a.asname or a.name for a in node.names)
    calls = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            attrs = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            calls[node.name] = names | ({TRAINING_RUN} & (names | attrs))
    slow = {name for name, used in calls.items() if used & (starts | {TRAINING_RUN})}
    while grown := {name for name, used in calls.items() if name not in slow and used & slow}:
        slow |= grown
    return frozenset(slow)


# In-process tests that compile a whole network, a train step or a full-size model, or start grain's worker processes
# (tens of CPU seconds each, up to minutes; the longest of the fast tier in a `--durations` run): slow as well. Kept
# here, by module and name, so that the test files need no marker.
HEAVY = {
    "test_convert.py": (
        "test_parity_smallbig50_full_size_8x224",
        "test_parity_other_variants",
        "test_parity_smallbig50_16_frames",
        "test_imagenet_inflation_smallbig50",
        "test_imagenet_inflation_temporal_kernels_and_r101",
        "test_export_files_and_parity_back_in_torch",
        "test_reference_matches_key_table_and_spec_params",
        "test_reference_runs_channels_last_3d",
        "test_round_trip_jax_torch_jax_exact",
        "test_script_converts_and_checkpoint_loads_ready_model",
        "test_init_from",
        "test_parity_report_names_first_differing_stage",
    ),
    "test_model.py": (
        "test_whole_network_equals_its_3d_reference_in_value_and_gradient",
        "test_one_set_of_weights_serves_8_16_32_frames",
        "test_bfloat16_compute_stays_close_to_float32",
        "test_time_reversal_invariance_holds_and_frame_permutation_breaks_it",
        "test_smallbig_at_init_equals_res50_with_the_same_small_view_weights",
        "test_every_block_kind_runs_forward_and_backward",
        "test_initialisation_follows_the_official_code",
        "test_model_train_and_eval_modes_switch_every_batchnorm",
        "test_bad_arguments_get_clear_errors",
    ),
    "test_docs.py": ("test_model_md_and_readme_macs_are_the_models", "test_model_md_parameter_counts_are_the_models"),
    "test_data_pipeline.py": ("test_train_deterministic_across_worker_counts_and_resumable_with_workers",),
    "test_data_scripts.py": ("test_synthetic_needs_temporal_context",),
    "test_formulations.py": (
        "test_block_same_under_both_formulations",
        "test_bfloat16_block_gradient_same_under_both_formulations",
    ),
    "test_steps.py": (
        "test_training_and_evaluation_take_their_steps_from_the_builder",
        "test_benchmark_times_the_steps_training_builds_end_to_end_from_the_real_loader",
    ),
    "test_train.py": ("test_gradient_accumulation_equals_one_batch_with_one_batchnorm_group_per_micro_batch",),
    "test_eval_protocol.py": (
        "test_every_view_equals_the_official_protocol",
        "test_a_broken_view_excludes_its_whole_video",
        "test_real_footage_prepared_and_evaluated_10x3",
    ),
    "test_runtime.py": ("test_step_profiler_traces_the_asked_steps_into_the_logdir",),
    "test_remat.py": ("test_remat_gives_the_same_step",),
    "test_aot.py": (
        "test_multislice_mesh_puts_the_slice_axis_outermost_and_the_gradient_reduction_spans_the_slices",
        "test_a_compiler_that_crashes_or_raises_loses_its_row_only",
        "test_the_pools_edge_padding_sends_nothing_between_chips",
    ),
}


def _is_slow(item) -> bool:
    if item.get_closest_marker("slow"):
        return True
    if getattr(item, "originalname", item.name) in HEAVY.get(os.path.basename(str(item.fspath)), ()):
        return True
    module = _slow_functions(str(item.fspath))
    conftest = _slow_functions(__file__)
    name = getattr(item, "originalname", item.name)
    return name in module or any(f in module or f in conftest for f in getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(items):
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)

    def rank(item):
        name = os.path.basename(str(item.fspath))
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each module is kept
