"""The default synthetic task at CI size: SmallBig learns the axis of motion, the per-frame res50 cannot."""

import importlib.util
import os

import pytest

from smallbig_jax import train
from smallbig_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_config(arg: str):
    spec = importlib.util.spec_from_file_location("synthetic_smallbig", os.path.join(REPO, "configs",
                                                                                     "synthetic_smallbig.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic_ci"))
    synthetic.write_dataset(out, num_train=600, num_val=200, size=32, workers=2)
    return out


def test_smallbig_reaches_85_percent_and_per_frame_res50_stays_far_below(dataset, tmp_path):
    """Same data, schedule and width; top-1 over the 200 held-out videos with 2 clips x 3 crops.

    Measured: SmallBig 0.915, res50 0.255 (chance 0.20). (0.96 while the max-pools' backward split the gradient
    between tied maxima, autodiff's rule; all of it to the first maximum, PyTorch's rule, is what the model does
    now, and the synthetic frames' flat backgrounds have many ties.)
    """
    top1 = {}
    for variant in ("smallbig23", "res50"):
        config = synthetic_config(f"ci,dir={dataset}")
        config.model.variant = variant
        top1[variant] = train.train_and_evaluate(config, str(tmp_path / variant))["top1"]
    print(f"synthetic task at CI size, test top-1: {top1}")  # shown with `pytest -s`; BENCHMARKS.md quotes it
    assert top1["smallbig23"] >= 0.85, top1
    assert top1["res50"] <= 0.5, top1
