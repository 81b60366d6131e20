"""Imports go one way: the model and the data pipeline know nothing of training, the step builder knows the model,
training and evaluation sit on top; no circles, no imports hidden in functions but of optional dependencies; and a
config file loads without JAX or the input pipeline."""

from __future__ import annotations

import ast
import json
import os

from helpers import run_python

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "smallbig_jax"

# Imports allowed inside functions: optional dependencies only (torch for conversion and --compare_torch).
OPTIONAL = ("torch", "cv2", f"{PACKAGE}.torch_reference")

# What each part of the package may import of the package (prefixes); anything else is a wrong-way import.
ALLOWED = {
    f"{PACKAGE}.errors": (),
    f"{PACKAGE}.variants": (),
    f"{PACKAGE}.models": (f"{PACKAGE}.models", f"{PACKAGE}.variants"),
    # The data package places its batches with the one batch sharding (`sharding` imports nothing of the package).
    f"{PACKAGE}.data": (f"{PACKAGE}.data", f"{PACKAGE}.errors", f"{PACKAGE}.rules", f"{PACKAGE}.sharding"),
    f"{PACKAGE}.convert": (f"{PACKAGE}.convert", f"{PACKAGE}.models", f"{PACKAGE}.errors"),
    f"{PACKAGE}.config": (f"{PACKAGE}.data.config", f"{PACKAGE}.variants", f"{PACKAGE}.errors", f"{PACKAGE}.rules"),
    f"{PACKAGE}.rules": (),
    f"{PACKAGE}.sharding": (),
    f"{PACKAGE}.optim": (),
    f"{PACKAGE}.steps": (
        f"{PACKAGE}.models",
        f"{PACKAGE}.convert",
        f"{PACKAGE}.config",
        f"{PACKAGE}.sharding",
        f"{PACKAGE}.optim",
    ),
    f"{PACKAGE}.checkpointing": (f"{PACKAGE}.errors",),
    f"{PACKAGE}.evaluate": (
        f"{PACKAGE}.steps",
        f"{PACKAGE}.data",
        f"{PACKAGE}.checkpointing",
        f"{PACKAGE}.convert",
        f"{PACKAGE}.config",
        f"{PACKAGE}.sharding",
        f"{PACKAGE}.optim",
    ),
    f"{PACKAGE}.train": (
        f"{PACKAGE}.steps",
        f"{PACKAGE}.data",
        f"{PACKAGE}.checkpointing",
        f"{PACKAGE}.evaluate",
        f"{PACKAGE}.config",
        f"{PACKAGE}.sharding",
        f"{PACKAGE}.runtime",
        f"{PACKAGE}.metrics",
        f"{PACKAGE}.preemption",
        f"{PACKAGE}.goodput",
        f"{PACKAGE}.workdir_lock",
        f"{PACKAGE}.errors",
    ),
    f"{PACKAGE}.preemption": (f"{PACKAGE}.cli",),
    f"{PACKAGE}.goodput": (),
    f"{PACKAGE}.workdir_lock": (f"{PACKAGE}.errors",),
    f"{PACKAGE}.cli": (f"{PACKAGE}.errors", f"{PACKAGE}.config", f"{PACKAGE}.host_memory"),
    f"{PACKAGE}.runtime": (),
    f"{PACKAGE}.metrics": (),
    f"{PACKAGE}.distributed": (),
    f"{PACKAGE}.host_memory": (),
    f"{PACKAGE}.torch_reference": (),
    f"{PACKAGE}.summary": (f"{PACKAGE}.models",),
    # The tools time and check what training builds; they never import the training loop itself.
    f"{PACKAGE}.tools": (
        f"{PACKAGE}.tools",
        f"{PACKAGE}.steps",
        f"{PACKAGE}.data",
        f"{PACKAGE}.checkpointing",
        f"{PACKAGE}.convert",
        f"{PACKAGE}.sharding",
        f"{PACKAGE}.torch_reference",
        f"{PACKAGE}.tools.targets",
        f"{PACKAGE}.optim",
        f"{PACKAGE}.summary",
        f"{PACKAGE}.errors",
    ),
    # The command line sits on top of everything; the dispatcher imports the chosen command by name.
    f"{PACKAGE}.commands": (PACKAGE,),
    f"{PACKAGE}.__main__": (f"{PACKAGE}.commands",),
}


def _modules() -> dict[str, str]:
    """Module name -> file of every module of the package."""
    out = {}
    for root, _, files in os.walk(os.path.join(REPO, PACKAGE)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: str, modules: dict[str, str]) -> tuple[set[str], list[str]]:
    """(package modules imported anywhere in the file, 'line: module' of every import inside a function or class)."""
    tree = ast.parse(open(path).read())
    package, nested = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            # `from pkg import sub` imports the submodule pkg.sub where there is one.
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            ]
        else:
            continue
        package.update(n for n in names if n.split(".")[0] == PACKAGE)
        if node not in tree.body:
            nested += [f"{node.lineno}: {n}" for n in names]
    return package, nested


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules)[0] for name, path in modules.items()}


def _part(module: str) -> str | None:
    for part in sorted(ALLOWED, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    return None


def test_no_imports_inside_functions_but_optional_dependencies():
    modules = _modules()
    hidden = {
        name: [i for i in _imports(path, modules)[1] if not i.split(": ")[1].startswith(OPTIONAL)]
        for name, path in modules.items()
    }
    assert {name: found for name, found in hidden.items() if found} == {}


def test_each_part_imports_only_the_parts_below_it():
    wrong = []
    for module, imported in _graph().items():
        part = _part(module)
        if part is None:
            continue
        wrong += [
            f"{module} -> {m}"
            for m in sorted(imported)
            if _part(m) != part and not m.startswith(ALLOWED[part]) and m != PACKAGE
        ]
    assert wrong == []
    # Nothing of the package imports the training loop: only the commands do.
    assert [
        m for m, imported in _graph().items() if f"{PACKAGE}.train" in imported and _part(m) != f"{PACKAGE}.commands"
    ] == []


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for m in sorted(graph.get(module, ())):
            if m == module or m not in graph or module.startswith(m + "."):  # a package's own __init__ runs first
                continue
            if state.get(m) == 1:  # m is on the path: the circle is the path from m back to m
                return (path + [module])[(path + [module]).index(m) :] + [m]
            if m not in state and (circle := visit(m, path + [module])):
                return circle
        state[module] = 2
        return None

    circle = next((c for m in sorted(graph) if m not in state and (c := visit(m, []))), None)
    assert circle is None


def test_a_config_file_loads_without_jax_or_the_input_pipeline():
    """Every shipped config (with its arguments) and the command-line helpers, in a fresh interpreter: JAX, Flax,
    grain, PyAV, TFDS, OpenCV, orbax and torch stay unloaded (so no JAX backend can start either)."""
    code = f"""
import importlib.util, glob, json, sys
import smallbig_jax.cli
cli_loads_jax = "jax" in sys.modules
for path in sorted(glob.glob({os.path.join(REPO, "configs", "*.py")!r})):
    spec = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg in (None, *[key for key in module.ARGS if "=" not in key]):
        module.get_config(arg)
heavy = ("jax", "flax", "grain", "av", "tensorflow_datasets", "cv2", "orbax.checkpoint", "torch",
         "smallbig_jax.models", "smallbig_jax.data.pipeline")
print(json.dumps({{"loaded": [m for m in heavy if m in sys.modules], "cli_loads_jax": cli_loads_jax}}))
"""
    out = run_python("-c", code, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {"loaded": [], "cli_loads_jax": False}
