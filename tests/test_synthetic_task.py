"""The default synthetic task at CI size: SmallBig learns the axis of motion, the per-frame res50 cannot."""

import importlib.util
import os

import pytest

from smallbig_jax import train
from smallbig_jax.data import writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_config(arg: str):
    spec = importlib.util.spec_from_file_location(
        "synthetic_smallbig", os.path.join(REPO, "configs", "synthetic_smallbig.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic_ci"))
    writers.write_synthetic_dataset(out, num_train=600, num_val=200, size=32, workers=2)
    return out


def test_smallbig_learns_the_motion_and_per_frame_res50_stays_near_chance(dataset, tmp_path):
    """Same data, schedule and width; top-1 over the 200 held-out videos with 2 clips x 3 crops (chance 0.20).

    Seed 0 with the exact training and evaluation geometry: SmallBig 0.94, res50 0.275 (0.205 on 2026-11-30).
    SmallBig's result at this size depends much on the seed: with the geometry before, seeds 0-3 gave 0.68, 0.895,
    0.58, 0.95 (seeds 0-2 with YNNPACK's convs instead of XLA's: 0.935, 0.735, 0.645), res50 0.255. Hence a
    threshold far above res50 and chance rather than near SmallBig's best runs.
    """
    top1 = {}
    for variant in ("smallbig23", "res50"):
        config = synthetic_config(f"ci,dir={dataset}")
        config.model.variant = variant
        top1[variant] = train.train_and_evaluate(config, str(tmp_path / variant)).test["top1"]
    print(f"synthetic task at CI size, test top-1: {top1}")  # shown with `pytest -s`; BENCHMARKS.md quotes it
    assert top1["smallbig23"] >= 0.5, top1
    assert top1["res50"] <= 0.4, top1
