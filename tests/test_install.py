"""The accelerator extras of pyproject.toml (cuda12, cuda13, tpu) are pinned to the core jax/jaxlib and agree with
what the installed jax itself declares for those extras, so `pip install -e ".[cuda12]"` can never pull a plugin
built for another jaxlib."""

from __future__ import annotations

import importlib.metadata
import os
import tomllib

from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _pins(requirements: list[str]) -> dict[str, Requirement]:
    return {Requirement(r).name.replace("_", "-").lower(): Requirement(r) for r in requirements}


def _exact(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not an exact pin"
    return spec.version


def test_accelerator_extras_pin_the_core_jaxlib():
    project = _project()
    core = _pins(project["dependencies"])
    version = _exact(core["jax"])
    assert _exact(core["jaxlib"]) == version
    extras = project["optional-dependencies"]
    for cuda in ("cuda12", "cuda13"):
        pins = _pins(extras[cuda])
        assert set(pins) == {f"jax-{cuda}-plugin", f"jax-{cuda}-pjrt"}, extras[cuda]
        assert {_exact(r) for r in pins.values()} == {version}, extras[cuda]
        assert pins[f"jax-{cuda}-plugin"].extras == {"with-cuda"}  # CUDA and cuDNN from pip, not the system
    assert "libtpu" in _pins(extras["tpu"])
    for extra in ("cuda12", "cuda13", "tpu"):  # nothing in an extra contradicts a core pin
        for name, req in _pins(extras[extra]).items():
            if name in core:
                assert _exact(req) == _exact(core[name]), (extra, req)


def test_extras_satisfy_what_the_installed_jax_declares():
    """jax's own `jax[cuda12]`, `jax[cuda13]` and `jax[tpu]` requirements (its metadata) accept our pins."""
    assert importlib.metadata.version("jax") == _exact(_pins(_project()["dependencies"])["jax"])
    declared: dict[str, list[Requirement]] = {}
    for line in importlib.metadata.requires("jax"):
        req = Requirement(line)
        for extra in ("cuda12", "cuda13", "tpu"):
            if req.marker is not None and req.marker.evaluate({"extra": extra}):
                declared.setdefault(extra, []).append(req)
    ours = _project()["optional-dependencies"]
    for extra in ("cuda12", "cuda13", "tpu"):
        pins = _pins(ours[extra]) | _pins(_project()["dependencies"])
        assert declared.get(extra), f"the installed jax declares no [{extra}] extra"
        for req in declared[extra]:
            name = req.name.replace("_", "-").lower()
            assert name in pins, f"jax[{extra}] needs {req}; pyproject's [{extra}] lacks it"
            assert not req.specifier or req.specifier.contains(_exact(pins[name]), prereleases=True), (
                extra,
                str(req),
                str(pins[name]),
            )


def test_aot_extra_is_the_compilers_pinned_to_the_core_without_cuda_wheels():
    """`aot` (smallbig-jax compile): libtpu as the tpu extra pins it, the CUDA plugin and PJRT at the core's jaxlib,
    no "with-cuda" (nothing runs on a GPU); `make setup` installs it."""
    project = _project()
    version = _exact(_pins(project["dependencies"])["jaxlib"])
    aot = _pins(project["optional-dependencies"]["aot"])
    assert set(aot) == {"libtpu", "jax-cuda12-pjrt", "jax-cuda12-plugin"}
    assert _exact(aot["libtpu"]) == _exact(_pins(project["optional-dependencies"]["tpu"])["libtpu"])
    assert _exact(aot["jax-cuda12-pjrt"]) == _exact(aot["jax-cuda12-plugin"]) == version
    assert not aot["jax-cuda12-plugin"].extras
    with open(os.path.join(ROOT, "Makefile")) as f:
        assert "'.[torch,dev,aot]'" in f.read()
