"""The fast tier (`make test-fast`) leaves out exactly the tests that start a process or run a training: conftest.py
finds them through the functions and fixtures they use, so a new test of that kind is marked without a decorator."""

from __future__ import annotations

import ast
import os
import textwrap

from conftest import HEAVY, _slow_functions

MODULE = textwrap.dedent(
    """
    import subprocess
    from helpers import run_cli as cli
    from smallbig_jax import train

    def helper(x):
        return cli("summary", x)

    def indirect():
        return helper("a")

    def test_through_helpers():
        indirect()

    def test_subprocess():
        subprocess.run(["true"])

    def test_training_run(tmp_path):
        train.train_and_evaluate(None, tmp_path)

    def test_in_process(tmp_path):
        from smallbig_jax import commands
        commands.run("check", [])  # in this process: not slow

    def fixture_that_trains():
        return train.train_and_evaluate(None, "w")

    class Runner:
        def __init__(self):
            self.process = subprocess.Popen(["true"])

    def starts_through_a_class():
        return Runner()
    """
)


def test_tests_that_start_processes_or_train_are_found(tmp_path):
    path = tmp_path / "test_module.py"
    path.write_text(MODULE)
    assert _slow_functions(str(path)) == {
        "helper",
        "indirect",
        "test_through_helpers",
        "test_subprocess",
        "test_training_run",
        "fixture_that_trains",
        "Runner",
        "starts_through_a_class",
    }


def test_the_slow_marker_is_registered(pytestconfig):
    """Registered in pyproject.toml: `-m "not slow"` selects by a known marker (pytest warns on unknown ones)."""
    assert any(m.startswith("slow:") for m in pytestconfig.getini("markers"))


def test_every_heavy_test_named_in_conftest_exists():
    """A renamed test must not fall back into the fast tier unnoticed: each name in `HEAVY` is a test."""
    tests = os.path.dirname(os.path.abspath(__file__))
    for module, names in HEAVY.items():
        tree = ast.parse(open(os.path.join(tests, module)).read())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert set(names) - defined == set(), module
