"""Weight conversion: official PyTorch SmallBigNet <-> JAX, torchvision ImageNet inflation, strictness, round trips.

The PyTorch side is `smallbig_jax/torch_reference.py` (re-exported by `tests/torch_reference.py`), written from
docs/model.md with the official module names. Tests that need torch are skipped only when torch is not installed
(`pip install -e '.[torch,dev]'`, as `make test` does).
"""

from __future__ import annotations

import logging
import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_python

from smallbig_jax import commands
from smallbig_jax.convert import keys as keymap
from smallbig_jax.models import VARIANTS, build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The official state dict of smallbig50_no_extra, 400 classes: all 515 keys (docs/model.md#state-dict-names-and-layout).
SPEC_KEYS = os.path.join(ROOT, "tests", "data", "smallbig50-state-dict-keys.txt")
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "pool", "logits")
TOL = 1e-4
TORCH_REASON = "torch is not installed (pip install -e '.[torch]'); the conversion tests need it"

# Official parameter counts with 400 classes (docs/model.md#variants).
SPEC_PARAMS = {
    "res50": 24_327_632,
    "slowonly50": 32_454_096,
    "slowonly50_extra": 39_946_704,
    "smallbig23": 11_368_400,
    "smallbig50": 24_370_640,
    "smallbig101": 43_414_992,
    "smallbig50_extra": 32_292_816,
}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason=TORCH_REASON)


@pytest.fixture(scope="module")
def ref(torch):
    import torch_reference

    torch.manual_seed(0)
    return torch_reference


def _spec_lines():
    with open(SPEC_KEYS) as f:
        return [line.strip() for line in f if line.strip()]


def _shape_line(key, shape):
    return f"{key} [{', '.join(str(d) for d in shape)}]"


# ------------------------------------------------------------------------------------------------- helpers


def randomize(torch, model, seed):
    """Non-trivial weights: random BN affine (big-view BNs non-zero) and running statistics, a wider classifier."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Conv3d):
                fan_out = mod.weight.shape[0] * mod.weight[0, 0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / fan_out) ** 0.5)
            elif isinstance(mod, torch.nn.BatchNorm3d):
                c = mod.num_features
                if name.endswith(("bn3", "big1.1", "big2.1", "big3.1", "big4_2.1", "downsample.1")):
                    mod.weight.copy_(torch.randn(c, generator=g) * 0.4)  # branch ends: keep activations O(1)
                else:
                    mod.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                mod.bias.copy_(torch.randn(c, generator=g) * 0.1)
                mod.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                mod.num_batches_tracked.fill_(1000)
            elif isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 2.0 / mod.in_features**0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
    return model.eval()


def torch_model(torch, ref, variant, num_classes, t, base_width, seed=1):
    return randomize(torch, ref.TorchSmallBigNet(variant, num_classes, t, base_width=base_width), seed)


def first_differing_stage(jax_stages, torch_stages, tol=TOL):
    """(name of the first stage whose max |diff| exceeds tol * max(1, max |ref|), or None; per-stage report)."""
    report, first = [], None
    for name in STAGES:
        r = torch_stages[name].detach().numpy()
        if r.ndim == 5:
            r = r.transpose(0, 2, 3, 4, 1)  # NCTHW -> NTHWC
        j = np.asarray(jax_stages[name])
        if j.shape != r.shape:
            report.append(f"{name}: shape {j.shape} vs torch {r.shape}")
            first = first or name
            continue
        diff = float(np.abs(j - r).max())
        scale = float(np.abs(r).max())
        report.append(f"{name}: max|diff| {diff:.3g} (max|ref| {scale:.3g})")
        if first is None and diff > tol * max(1.0, scale):
            first = name
    return first, report


def assert_parity(torch, tmodel, jmodel, x_ncthw, tol=TOL):
    with torch.no_grad():
        t_stages = tmodel.stages(x_ncthw)
    j_stages = jmodel.stages(jnp.asarray(x_ncthw.permute(0, 2, 3, 4, 1).numpy()))
    first, report = first_differing_stage(j_stages, t_stages, tol)
    logits_diff = float(np.abs(np.asarray(j_stages["logits"]) - t_stages["logits"].numpy()).max())
    assert first is None and logits_diff <= tol, (
        f"JAX and PyTorch disagree; first differing stage: {first}; logits max|diff| {logits_diff:.3g}\n  "
        + "\n  ".join(report)
    )
    assert float(np.abs(t_stages["logits"].numpy()).max()) > 0.5, "logits too small for a meaningful comparison"
    return logits_diff


def flat_arrays(model):
    from flax import nnx

    return {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def leftovers(directory, name):
    """Anything in `directory` whose name contains `name` (outputs and temporaries)."""
    return [f for f in os.listdir(directory) if name in f]


# ------------------------------------------------------------------------------------------------- key tables


def test_key_table_is_the_official_list_for_smallbig50():
    table = keymap.torch_state_dict_shapes("smallbig50", 400)
    assert [_shape_line(k, s) for k, s in table.items()] == _spec_lines()


def test_reference_state_dict_is_the_official_list(torch, ref):
    model = ref.TorchSmallBigNet("smallbig50", 400, 8)
    got = [_shape_line(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == _spec_lines()
    assert len(got) == 515


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reference_matches_key_table_and_spec_params(torch, ref, variant):
    full = ref.TorchSmallBigNet(variant, 400, 8)
    assert sum(p.numel() for p in full.parameters()) == SPEC_PARAMS[variant]
    narrow = ref.TorchSmallBigNet(variant, 13, 8, base_width=8)
    got = {k: tuple(v.shape) for k, v in narrow.state_dict().items()}
    assert got == keymap.torch_state_dict_shapes(variant, 13, 8)


def test_nnx_paths_cover_the_model_once():
    from flax import nnx

    table = keymap.key_table("smallbig50_extra", 5, 8)
    model = nnx.eval_shape(lambda: build_model("smallbig50_extra", 5, base_width=8))
    assert sorted(s.nnx_path for s in table) == sorted(tuple(p) for p, _ in nnx.to_flat_state(nnx.state(model)))
    assert len({s.torch_key for s in table}) == len(table)
    names = {s.torch_key for s in table}
    for key in (
        "layer2.0.big4_1.weight",
        "layer2.0.big4_2.0.weight",
        "layer2.0.big4_2.1.running_var",
        "layer3.1.big3.1.weight",
        "layer4.0.downsample.0.weight",
        "fc.bias",
    ):
        assert key in names


# ------------------------------------------------------------------------------------------------- parity


def test_parity_smallbig50_full_size_8x224(torch, ref):
    """SmallBig-R50, 400 classes, one 8x224x224 clip: the issue's headline parity check."""
    from smallbig_jax.convert import state_dict_to_model

    tmodel = torch_model(torch, ref, "smallbig50", 400, 8, 64)
    jmodel, report = state_dict_to_model(tmodel.state_dict())
    assert (report["variant"], report["num_classes"], report["base_width"]) == ("smallbig50", 400, 64)
    x = torch.randn(1, 3, 8, 224, 224, generator=torch.Generator().manual_seed(5))
    diff = assert_parity(torch, tmodel, jmodel, x)
    print(f"\nparity smallbig50 1x8x224x224: logits max|diff| {diff:.3g}")


def test_parity_smallbig50_16_frames(torch, ref):
    """16 frames (8 at full size above; other variants at 8 below)."""
    from smallbig_jax.convert import state_dict_to_model

    t = 16
    tmodel = torch_model(torch, ref, "smallbig50", 10, t, 8, seed=t)
    jmodel, _ = state_dict_to_model(tmodel.state_dict())
    x = torch.randn(2, 3, t, 32, 32, generator=torch.Generator().manual_seed(t))
    diff = assert_parity(torch, tmodel, jmodel, x)
    print(f"\nparity smallbig50 w8 2x{t}x32x32: logits max|diff| {diff:.3g}")


@pytest.mark.parametrize("variant", [v for v in sorted(VARIANTS) if v != "smallbig50"])
def test_parity_other_variants(torch, ref, variant):
    from smallbig_jax.convert import state_dict_to_model

    tmodel = torch_model(torch, ref, variant, 11, 8, 8, seed=3)
    jmodel, report = state_dict_to_model(tmodel.state_dict())
    assert report["variant"] == variant  # inferred from the keys
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(7))
    diff = assert_parity(torch, tmodel, jmodel, x)
    print(f"\nparity {variant} w8 2x8x32x32: logits max|diff| {diff:.3g}")


def test_parity_report_names_first_differing_stage(torch, ref):
    """The diagnostic the parity tests print: a weight changed in layer3 is reported as layer3, not later."""
    from smallbig_jax.convert import state_dict_to_model

    tmodel = torch_model(torch, ref, "smallbig23", 4, 8, 8)
    jmodel, _ = state_dict_to_model(tmodel.state_dict())
    jmodel.layer3[1].big_bn2.bias[...] = jmodel.layer3[1].big_bn2.bias[...] + 0.5
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        t_stages = tmodel.stages(x)
    j_stages = jmodel.stages(jnp.asarray(x.permute(0, 2, 3, 4, 1).numpy()))
    first, report = first_differing_stage(j_stages, t_stages)
    assert first == "layer3", report
    with pytest.raises(AssertionError, match="first differing stage: layer3"):
        assert_parity(torch, tmodel, jmodel, x)


# ------------------------------------------------------------------------------------------------- input forms


def test_accepted_checkpoint_forms(torch, ref, tmp_path):
    """Official wrapper with `module.` keys, bare with and without prefix, float16: all give the same model."""
    from smallbig_jax.convert import convert_pth

    tmodel = torch_model(torch, ref, "smallbig23", 6, 8, 8)
    sd = tmodel.state_dict()
    official = {
        "epoch": 42,
        "state_dict": {"module." + k: v for k, v in sd.items()},
        "best_metric": 71.5,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0, 1]}]},
    }
    forms = {
        "official.pth": official,
        "bare.pth": sd,
        "bare_prefixed.pth": {"module." + k: v for k, v in sd.items()},
    }
    results = {}
    for name, obj in forms.items():
        torch.save(obj, tmp_path / name)
        model, report = convert_pth(tmp_path / name)
        results[name] = (flat_arrays(model), report)
    base, _ = results["bare.pth"]
    for name, (arrays, report) in results.items():
        assert arrays.keys() == base.keys()
        assert all(np.array_equal(arrays[k], base[k]) for k in base), name
        assert report["variant"] == "smallbig23" and report["num_classes"] == 6 and report["base_width"] == 8
        assert any("inferred variant smallbig23" in n for n in report["notes"])
        assert report["ignored_num_batches_tracked"] == sum(k.endswith("num_batches_tracked") for k in sd)
    assert results["official.pth"][1]["container"]["wrapper"] == "dict with 'state_dict'"
    assert results["official.pth"][1]["container"]["prefix_stripped"] == "module."
    assert results["official.pth"][1]["container"]["epoch"] == 42
    assert results["bare.pth"][1]["container"]["prefix_stripped"] is None

    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    torch.save(half, tmp_path / "half.pth")
    model, report = convert_pth(tmp_path / "half.pth")
    assert report["source_dtypes"] == ["float16"]
    arrays = flat_arrays(model)
    expect, _ = results["bare.pth"]
    for k in expect:
        assert arrays[k].dtype == np.float32
        assert np.array_equal(arrays[k], expect[k].astype(np.float16).astype(np.float32)), k


def test_explicit_config_overrides_inference(torch, ref):
    from smallbig_jax.convert import ConversionError, state_dict_to_model

    sd = ref.TorchSmallBigNet("smallbig23", 6, 8, base_width=8).state_dict()
    model, report = state_dict_to_model(sd, "smallbig23", 6, 8)
    assert report["variant"] == "smallbig23"
    with pytest.raises(ConversionError) as e:
        state_dict_to_model(sd, variant="smallbig50")
    msg = str(e.value)
    assert "smallbig50" in msg and "missing key layer1.1.conv1.weight (expected shape [8, 32, 1, 1, 1])" in msg


def test_nan_weights_convert_with_a_warning_naming_them(torch, ref, caplog):
    from smallbig_jax.convert import state_dict_to_model

    sd = ref.TorchSmallBigNet("smallbig23", 6, 8, base_width=8).state_dict()
    sd["fc.weight"][0, 0] = float("nan")
    sd["layer1.0.bn1.running_var"][1] = float("inf")
    with caplog.at_level(logging.WARNING):
        _, report = state_dict_to_model(sd)
    assert report["nonfinite_tensors"] == ["fc.weight", "layer1.0.bn1.running_var"]
    assert "2 tensors hold NaN or Inf values (fc.weight, layer1.0.bn1.running_var)" in caplog.text


# ------------------------------------------------------------------------------------------------- strictness


def _run_script(*args):
    """`smallbig-jax convert *args` in this process."""
    return commands.run("convert", [str(a) for a in args])


def test_all_problems_reported_together_and_nothing_written(torch, ref, tmp_path, capsys):
    from smallbig_jax.convert import ConversionError, convert_pth

    sd = dict(ref.TorchSmallBigNet("smallbig50", 400, 8, base_width=8).state_dict())
    del sd["layer2.1.big1.1.weight"]
    sd["layer2.1.big5.weight"] = torch.zeros(3)
    sd["layer3.0.conv2.weight"] = torch.zeros(32, 32, 1, 5, 5)
    sd["fc.weight"] = torch.zeros(400, 255)
    sd["layer1.0.bn1.running_mean"] = torch.zeros(8, dtype=torch.int64)
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as e:
        convert_pth(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "1 missing, 1 unexpected, 2 shape mismatches, 1 non-float tensors" in msg
    assert "missing key layer2.1.big1.1.weight (expected shape [16])" in msg
    assert "unexpected key layer2.1.big5.weight (shape [3])" in msg
    assert "shape mismatch layer3.0.conv2.weight: expected [32, 32, 1, 3, 3], found [32, 32, 1, 5, 5]" in msg
    assert "shape mismatch fc.weight: expected [400, 256], found [400, 255]" in msg
    assert "dtype of layer1.0.bn1.running_mean" in msg
    assert len(e.value.problems) == 5

    out = tmp_path / "out"
    assert _run_script("--input", tmp_path / "bad.pth", "--output", out) == 2
    err = capsys.readouterr().err
    assert "missing key layer2.1.big1.1.weight" in err and "nothing was written" in err
    assert leftovers(tmp_path, "out") == []


def _old_layout(torch, ref):
    sd = dict(ref.TorchSmallBigNet("smallbig50", 400, 8, base_width=8).state_dict())
    new = {}
    for k, v in sd.items():  # downsample.0 (conv) -> downsample.1, downsample.1 (BN) -> downsample.2
        if ".downsample.1." in k:
            new[k.replace(".downsample.1.", ".downsample.2.")] = v
        elif ".downsample.0." in k:
            new[k.replace(".downsample.0.", ".downsample.1.")] = v
        else:
            new[k] = v
    return {"state_dict": {"module." + k: v for k, v in new.items()}}


BAD_INPUTS = {
    "old_layout": ("pre-2022 downsample layout", lambda torch, ref, p: torch.save(_old_layout(torch, ref), p)),
    "text_file": ("not a PyTorch checkpoint", lambda torch, ref, p: p.write_text("epoch,top1\n1,0.5\n")),
    "empty_file": ("the file is empty", lambda torch, ref, p: p.write_bytes(b"")),
    "truncated": ("truncated or corrupt", None),
    "code_in_pickle": ("execute code", lambda torch, ref, p: p.write_bytes(pickle.dumps(_Evil(p), protocol=2))),
    "not_a_dict": ("not a checkpoint", lambda torch, ref, p: torch.save([torch.zeros(3)], p)),
    "no_tensors": ("holds no tensors", lambda torch, ref, p: torch.save({"epoch": 3, "best_metric": 0.1}, p)),
    "torchvision_2d": ("--imagenet", None),
}


class _Evil:
    """Unpickling this runs a shell command that creates `<path>.pwned`."""

    def __init__(self, path):
        self.path = f"{path}.pwned"

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_clear_error_and_no_output(torch, ref, tmp_path, capsys, case):
    from smallbig_jax.convert import ConversionError, convert_pth

    expected, make = BAD_INPUTS[case]
    path = tmp_path / f"{case}.pth"
    if case == "truncated":
        torch.save(ref.TorchSmallBigNet("smallbig23", 4, 8, base_width=8).state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "torchvision_2d":
        torch.save(tiny_torchvision_resnet(torch, (3, 4, 6, 3), 8).state_dict(), path)
    else:
        make(torch, ref, path)
    with pytest.raises(ConversionError, match=expected.replace("(", r"\(")):
        convert_pth(path)
    out = tmp_path / "converted"
    assert _run_script("--input", path, "--output", out) == 2
    assert expected in capsys.readouterr().err
    assert leftovers(tmp_path, "converted") == []
    assert not os.path.exists(f"{path}.pwned")  # nothing from the file was executed


# ------------------------------------------------------------------------------------------------- checkpoints


def test_script_converts_and_checkpoint_loads_ready_model(torch, ref, tmp_path, capsys):
    import json

    from smallbig_jax.convert import load_converted_model

    tmodel = torch_model(torch, ref, "smallbig50", 9, 8, 8)
    torch.save(
        {"epoch": 1, "state_dict": {"module." + k: v for k, v in tmodel.state_dict().items()}}, tmp_path / "ck.pth"
    )
    out = tmp_path / "converted"
    assert _run_script("--input", tmp_path / "ck.pth", "--output", out) == 0
    printed = capsys.readouterr().out
    assert "inferred variant smallbig50 (smallbig50_no_extra)" in printed and "inferred 9 classes" in printed
    assert sorted(os.listdir(out)) == ["conversion_report.json", "model_config.json", "state"]
    assert leftovers(tmp_path, ".tmp") == []
    config = json.loads((out / "model_config.json").read_text())
    assert (config["variant"], config["num_classes"], config["base_width"]) == ("smallbig50", 9, 8)
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["tensors_converted"] == len(keymap.key_table("smallbig50", 9, 8))

    model = load_converted_model(out)
    assert all(m.use_running_average for m in _batchnorms(model))  # eval mode, ready to predict
    x = torch.randn(2, 3, 8, 32, 32)
    assert_parity(torch, tmodel, model, x)

    # A directory whose state does not fit its config, or no converted checkpoint at all, is refused.
    import shutil

    from smallbig_jax.convert import CheckpointFormatError

    shutil.copytree(out, tmp_path / "tampered")
    config["num_classes"] = 10
    (tmp_path / "tampered" / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointFormatError, match=r"shape of fc.kernel: expected \(256, 10\), found \(256, 9\)"):
        load_converted_model(tmp_path / "tampered")
    with pytest.raises(CheckpointFormatError, match="not a converted checkpoint"):
        load_converted_model(tmp_path)

    # An existing output is not replaced without --overwrite, and stays intact.
    assert _run_script("--input", tmp_path / "ck.pth", "--output", out) == 2
    assert "exists" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["conversion_report.json", "model_config.json", "state"]


def test_set_arrays_lists_every_problem_and_writes_nothing():
    """The one write of arrays into a model (used by every import and by `load_converted_model`) names every missing
    leaf, array without a leaf and wrong shape at once, and leaves the model as it was."""
    from smallbig_jax.convert import ConversionError
    from smallbig_jax.convert.state import model_arrays, set_arrays

    model = build_model("smallbig23", 3, base_width=4)
    before = model_arrays(model)
    arrays = dict(before)
    arrays[("bn1", "scale")] = np.full(before[("bn1", "scale")].shape, 5.0, np.float32)  # fits: still not written
    del arrays[("fc", "bias")]
    arrays[("fc", "kernel")] = np.zeros((1, 3), np.float32)
    arrays[("layer9", "0", "scale")] = np.zeros(2, np.float32)
    with pytest.raises(ConversionError) as error:
        set_arrays(model, arrays, complete=True)
    assert error.value.problems == [
        "missing fc.bias (3,)",
        "unexpected layer9.0.scale (2,)",
        "shape of fc.kernel: expected (128, 3), found (1, 3)",
    ]
    after = model_arrays(model)
    assert all(np.array_equal(after[p], before[p]) for p in before)
    set_arrays(model, {("bn1", "scale"): arrays[("bn1", "scale")]})  # a part, by path, when not `complete`
    assert float(model.bn1.scale[...][0]) == 5.0


def test_stage_depths_are_read_from_the_keys():
    assert keymap.stage_depths(keymap.torch_state_dict_shapes("smallbig23", 5, 8)) == (1, 2, 3, 1)
    keys = ["conv1.weight", "layer2.1.conv1.weight", "layer2.0.bn1.bias", "layer10.3.x"]
    assert keymap.stage_depths(keys) == (0, 2, 0, 0)


def _batchnorms(model):
    from flax import nnx

    from smallbig_jax.models.layers import BatchNorm

    return [m for _, m in nnx.iter_graph(model) if isinstance(m, BatchNorm)]


def test_save_failure_leaves_nothing(tmp_path, monkeypatch):
    from smallbig_jax.convert import checkpoint

    model = _perturbed_jax_model("smallbig23", 3, 8, seed=0)

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.json, "dump", broken)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_converted(tmp_path / "ck", model, {})
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------- JAX -> PyTorch


def _perturbed_jax_model(variant, num_classes, base_width, seed):
    """A JAX model with every array random (BN statistics and big-view BNs included)."""
    from smallbig_jax.convert.state import arrays_to_model

    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in keymap.key_table(variant, num_classes, base_width):
        shape, leaf = spec.jax_shape, spec.nnx_path[-1]
        if leaf == "var":
            arrays[spec.nnx_path] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif leaf in ("scale", "bias", "mean"):
            arrays[spec.nnx_path] = (rng.standard_normal(shape) * 0.3).astype(np.float32)
        else:  # conv kernels, fc
            fan_in = int(np.prod(shape[:-1]))
            arrays[spec.nnx_path] = (rng.standard_normal(shape) * (1.0 / fan_in) ** 0.5).astype(np.float32)
    return arrays_to_model(arrays, variant, num_classes, base_width)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_round_trip_jax_torch_jax_exact(torch, ref, variant):
    from smallbig_jax.convert import export_state_dict, state_dict_to_model

    model = _perturbed_jax_model(variant, 7, 8, seed=11)
    sd = export_state_dict(model)
    tmodel = ref.TorchSmallBigNet(variant, 7, 8, base_width=8)
    tmodel.load_state_dict(sd, strict=True)  # the official module names accept it
    back, _ = state_dict_to_model(tmodel.state_dict())
    a, b = flat_arrays(model), flat_arrays(back)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_export_files_and_parity_back_in_torch(torch, ref, tmp_path, capsys):
    from smallbig_jax.convert import load_converted_model, save_converted, save_pth, state_dict_to_model

    model = _perturbed_jax_model("smallbig50_extra", 5, 8, seed=2)
    model.eval()
    save_converted(tmp_path / "jax", model, {"note": "trained in JAX"})
    assert _run_script("--export", "--input", tmp_path / "jax", "--output", tmp_path / "bare.pth") == 0
    assert (
        _run_script("--export", "--official_format", "--input", tmp_path / "jax", "--output", tmp_path / "off.pth") == 0
    )
    assert "exported smallbig50_extra" in capsys.readouterr().out
    bare = torch.load(tmp_path / "bare.pth", weights_only=True)
    official = torch.load(tmp_path / "off.pth", weights_only=True)
    assert all(k.startswith("module.") for k in official["state_dict"])
    assert list(bare) == [k[len("module.") :] for k in official["state_dict"]]
    assert list(bare) == list(keymap.torch_state_dict_shapes("smallbig50_extra", 5, 8))

    tmodel = ref.TorchSmallBigNet("smallbig50_extra", 5, 8, base_width=8).eval()
    tmodel.load_state_dict(bare, strict=True)
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(3))
    jmodel = load_converted_model(tmp_path / "jax")
    with torch.no_grad():
        t_stages = tmodel.stages(x)
    first, report = first_differing_stage(jmodel.stages(jnp.asarray(x.permute(0, 2, 3, 4, 1).numpy())), t_stages)
    assert first is None, report
    back, _ = state_dict_to_model({k[len("module.") :]: v for k, v in official["state_dict"].items()})
    a, b = flat_arrays(jmodel), flat_arrays(back)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    save_pth(jmodel, tmp_path / "api.pth")
    assert list(torch.load(tmp_path / "api.pth", weights_only=True)) == list(bare)


# ------------------------------------------------------------------------------------------------- ImageNet


def tiny_torchvision_resnet(torch, depths, width, num_classes=1000, seed=0):
    """A 2D bottleneck ResNet with torchvision's module names (conv1, bn1, layerL.i.{conv,bn}{1,2,3},
    downsample.{0,1}, fc)."""
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or inplanes != planes * 4:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
                )

        def forward(self, x):
            idt = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + idt)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes = width
            for s, d in enumerate(depths):
                blocks = []
                for i in range(d):
                    blocks.append(Bottleneck(inplanes, width * 2**s, 2 if (i == 0 and s > 0) else 1))
                    inplanes = width * 2**s * 4
                setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(inplanes, num_classes)

        def features(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for s in range(len(depths)):
                x = getattr(self, f"layer{s + 1}")(x)
            return torch.flatten(self.avgpool(x), 1)

    torch.manual_seed(seed)
    net = ResNet()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in net.named_modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(
                    torch.randn(c, generator=g) * 0.4
                    if name.endswith(("bn3", "downsample.1"))
                    else torch.rand(c, generator=g) * 0.5 + 0.5
                )
                mod.bias.copy_(torch.randn(c, generator=g) * 0.1)
                mod.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return net.eval()


def test_imagenet_inflation_smallbig50(torch, tmp_path):
    from smallbig_jax.convert import inflate_imagenet_pth

    net = tiny_torchvision_resnet(torch, (3, 4, 6, 3), 8)
    torch.save(net.state_dict(), tmp_path / "resnet50.pth")
    model, report = inflate_imagenet_pth(tmp_path / "resnet50.pth", num_classes=12)
    out = tmp_path / "init"
    assert _run_script("--imagenet", "--input", tmp_path / "resnet50.pth", "--output", out, "--num_classes", 12) == 0
    from smallbig_jax.convert import load_converted_model

    scripted = flat_arrays(load_converted_model(out))
    assert (report["source_arch"], report["variant"], report["num_classes"]) == ("resnet50", "smallbig50", 12)
    # 265 of 267 ImageNet tensors load for SB-R50: all but fc.weight and fc.bias (docs/model.md#imagenet-initialisation)
    assert report["tensors_from_imagenet"] == 265 and report["skipped_from_file"] == ["fc.bias", "fc.weight"]
    assert report["temporal_inflation"] == ["kT=1"]
    sd = net.state_dict()
    arrays = flat_arrays(model)
    table = {s.torch_key: s for s in keymap.key_table("smallbig50", 12, 8)}
    assert np.array_equal(arrays[table["conv1.weight"].nnx_path][0], sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    assert np.array_equal(arrays[table["layer3.4.bn2.running_var"].nnx_path], sd["layer3.4.bn2.running_var"].numpy())
    for key, spec in table.items():
        if ".big" in key and key.endswith(("weight", "bias")):
            assert not arrays[spec.nnx_path].any(), key  # big-view BNs stay zero
    assert arrays[table["fc.weight"].nnx_path].shape == (256, 12)
    assert scripted.keys() == arrays.keys() and all(np.array_equal(scripted[k], arrays[k]) for k in arrays)

    # Functionally the inflated 2D net: on a clip of identical frames, pooled features equal the 2D features.
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net.features(image).numpy()
    clip = jnp.asarray(image.permute(0, 2, 3, 1).numpy())[:, None].repeat(8, axis=1)
    model.eval()
    got = np.asarray(model.stages(clip)["pool"])
    assert np.abs(got - want).max() <= TOL * max(1.0, np.abs(want).max())


def test_imagenet_inflation_temporal_kernels_and_r101(torch, tmp_path):
    from smallbig_jax.convert import ConversionError, inflate_imagenet

    r50 = tiny_torchvision_resnet(torch, (3, 4, 6, 3), 8).state_dict()
    model, report = inflate_imagenet(r50, "slowonly50", 5)
    assert report["temporal_inflation"] == ["kT=1", "kT=3"]
    spec = {s.torch_key: s for s in keymap.key_table("slowonly50", 5, 8)}["layer3.2.conv1.weight"]
    kernel = flat_arrays(model)[spec.nnx_path]  # [3, 1, 1, I, O]
    w2d = r50["layer3.2.conv1.weight"].numpy()[:, :, 0, 0].T
    for t in range(3):
        np.testing.assert_array_equal(kernel[t, 0, 0], w2d / 3)

    # R101 is initialised from ResNet-101, not (as the official code does by mistake) from ResNet-50.
    with pytest.raises(ConversionError) as e:
        inflate_imagenet(r50, "smallbig101", 5)
    msg = str(e.value)
    assert "smallbig101 needs torchvision resnet101" in msg and "missing key layer3.22.conv3.weight" in msg
    assert msg.count("missing key layer3.") == 17 * 15  # layer3.6-22: conv1-3 + 3 BNs x 4 tensors each
    _, partial = inflate_imagenet(r50, "smallbig101", 5, allow_partial=True)
    assert "layer3.6.conv1.weight" in partial["missing_left_at_init"]
    r101 = tiny_torchvision_resnet(torch, (3, 4, 23, 3), 8).state_dict()
    _, full = inflate_imagenet(r101, num_classes=5)
    assert full["variant"] == "smallbig101" and full["source_arch"] == "resnet101" and not full["missing_left_at_init"]
    # A ResNet-101 file has no place in smallbig50: refused, not silently truncated.
    with pytest.raises(ConversionError, match="unexpected key layer3.6.conv1.weight"):
        inflate_imagenet(r101, "smallbig50", 5)


def test_init_from(torch, ref, tmp_path):
    from smallbig_jax.convert import init_from, save_converted, state_dict_to_model

    torch.save(tiny_torchvision_resnet(torch, (3, 4, 6, 3), 8).state_dict(), tmp_path / "in1k.pth")
    model = build_model("smallbig50", 7, base_width=8, seed=4)
    before = flat_arrays(model)
    report = init_from(model, tmp_path / "in1k.pth")
    after = flat_arrays(model)
    assert report["tensors_from_imagenet"] == 265
    assert np.array_equal(after[("fc", "kernel")], before[("fc", "kernel")])
    assert not np.array_equal(after[("conv1", "kernel")], before[("conv1", "kernel")])

    # Fine-tuning from an official checkpoint with another class count: all but the classifier.
    tmodel = torch_model(torch, ref, "smallbig50", 400, 8, 8)
    torch.save({"state_dict": {"module." + k: v for k, v in tmodel.state_dict().items()}}, tmp_path / "k400.pth")
    report = init_from(model, tmp_path / "k400.pth")
    assert "kept at init" in report["classifier"]
    source, _ = state_dict_to_model(tmodel.state_dict())
    src, now = flat_arrays(source), flat_arrays(model)
    assert np.array_equal(now[("fc", "kernel")], after[("fc", "kernel")])
    assert all(np.array_equal(now[k], src[k]) for k in now if k[0] != "fc")

    save_converted(tmp_path / "conv", source)
    model2 = build_model("smallbig50", 400, base_width=8, seed=9)
    assert init_from(model2, tmp_path / "conv")["classifier"] == "loaded"
    assert all(np.array_equal(v, src[k]) for k, v in flat_arrays(model2).items())


def test_import_without_torch():
    """`import smallbig_jax.convert` must not import torch (it is an optional extra)."""
    code = "import sys, smallbig_jax, smallbig_jax.convert; assert 'torch' not in sys.modules, 'torch imported'"
    run_python("-c", code, check=True)


def test_reference_runs_channels_last_3d(torch, ref):
    """The reference (also used for speed comparisons) gives the same result in torch's channels_last_3d layout."""
    model = torch_model(torch, ref, "smallbig50_extra", 6, 8, 8)
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
        model = model.to(memory_format=torch.channels_last_3d)
        got = model(x.to(memory_format=torch.channels_last_3d))
    assert float((got - want).abs().max()) <= 1e-5
