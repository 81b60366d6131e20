"""One rule per config field, checked once: `config.check_config` against `config.RULES` (the data options' rules
beside their defaults in `smallbig_jax/data/config.py`). No other `raise` in the package names a config field,
except the guards listed in `ALLOWED` below, which check what a field's rule cannot know (the devices, the workdir,
the batch a step is given) or guard a leaf function that is also called without a config."""

from __future__ import annotations

import ast
import os
import re

from smallbig_jax import config as config_lib
from smallbig_jax.data import config as data_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "smallbig_jax")
RULE_HOMES = ("smallbig_jax/config.py", "smallbig_jax/data/config.py", "smallbig_jax/rules.py")

# (file, function) -> why this raise may name a config field. A new entry needs a reason the rule table cannot give.
ALLOWED = {
    ("smallbig_jax/train.py", "open_run"): "batch_size against the device count, known only on the mesh",
    ("smallbig_jax/runtime.py", "compilation_cache_dir"): "compilation_cache='workdir' against the workdir argument",
    ("smallbig_jax/steps.py", "train_step"): "the batch a step is given against grad_accum_steps",
    ("smallbig_jax/checkpointing.py", "best_step"): "no evaluation metrics saved: names the field that records them",
    ("smallbig_jax/data/lists.py", "read_frame_list"): "a list line's frame count, not the field num_frames",
    ("smallbig_jax/data/lists.py", "read_video_list"): "a list line's frame count, not the field num_frames",
    ("smallbig_jax/data/transforms.py", "eval_crop_size"): "one-line guard of a public leaf function",
    ("smallbig_jax/data/transforms.py", "eval_crop_corners"): "one-line guard of a public leaf function",
    ("smallbig_jax/models/smallbig.py", "__init__"): "one-line guard of the model's constructor (build_model)",
    ("smallbig_jax/commands/check.py", "main"): "names the command's own flags (--format, --num_classes)",
    ("smallbig_jax/commands/compile.py", "_batches"): "batch_size against the target's device count",
    ("smallbig_jax/tools/aot.py", "check_batches"): "a --per_device_batch against grad_accum_steps",
}


def field_pattern() -> re.Pattern:
    """The ways a message names a field: its dotted name (`data.num_crops`), `config.<field>`, or its own name when
    that cannot be an ordinary word (`num_crops`, `params_sharding`)."""
    words = set()
    for field in config_lib.RULES:
        words.add(re.escape(field))
        words.add(re.escape(f"config.{field}"))
        leaf = field.rsplit(".", 1)[-1]
        if "_" in leaf:
            words.add(re.escape(leaf))
    return re.compile(r"(?<![\w.])(" + "|".join(sorted(words, key=len, reverse=True)) + r")(?!\w)")


def _text(node: ast.AST) -> str:
    """The literal text of a raised exception's message: its string arguments, the literal parts of f-strings and of
    concatenations (not the names or keys inside the formatted values)."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else ""
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) for v in node.values)
    if isinstance(node, ast.BinOp):
        return _text(node.left) + _text(node.right)
    if isinstance(node, ast.Call):
        return " ".join(_text(a) for a in node.args)
    return ""


def raise_sites() -> dict[tuple[str, str], list[str]]:
    """(file, enclosing function) -> 'line: field' for every raise of the package whose message names a field."""
    pattern, found = field_pattern(), {}
    for root, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, REPO)
            if not name.endswith(".py") or rel in RULE_HOMES:
                continue
            for func, node in _raises(ast.parse(open(path).read()), "<module>"):
                hit = pattern.search(_text(node.exc))
                if hit:
                    found.setdefault((rel, func), []).append(f"{node.lineno}: {hit.group(1)}")
    return found


def _raises(node: ast.AST, func: str):
    """(innermost enclosing function, node) of every `raise <exception>` under `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Raise) and child.exc is not None:
            yield func, child
        inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
        yield from _raises(child, inner)


def test_every_field_has_one_rule_and_its_default_beside_it():
    data_fields = {f"data.{f}" for f in data_config.FIELDS}
    assert data_fields <= set(config_lib.RULES)
    assert {f: config_lib.RULES[f] for f in data_fields} == data_config.DATA_RULES
    assert set(config_lib.flatten(data_config.default_data_config())) == set(data_config.FIELDS)


def test_no_raise_outside_the_rule_table_names_a_config_field():
    assert {site: lines for site, lines in raise_sites().items() if site not in ALLOWED} == {}


def test_the_allowed_guards_still_exist():
    assert set(ALLOWED) - set(raise_sites()) == set()


def test_the_scan_finds_a_re_check():
    source = "def f(c):\n    if c.num_crops not in (1, 3):\n        raise ValueError(f'data.num_crops={c.num_crops}')\n"
    raise_node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Raise))
    assert field_pattern().search(_text(raise_node.exc)).group(1) == "data.num_crops"
