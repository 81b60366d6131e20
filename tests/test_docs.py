"""The repository's documents stand alone: code cites `docs/...` and never a file outside the repository, every
cited document and section exists, every link between the documents resolves, `docs/architecture.md`'s module map
and its table of the rest match the tree (the README links to it rather than keeping a copy)."""

from __future__ import annotations

import functools
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS_FILE = os.path.abspath(__file__)
CODE_DIRS = ("smallbig_jax", "scripts", "configs", "tests", "benchmarks", "docs", ".ci")
CODE_FILES = ("README.md", "BENCHMARKS.md", "pyproject.toml", "Makefile")
TEXT_SUFFIXES = (".py", ".sh", ".md", ".toml", ".txt", "")
IGNORED_TOP_LEVEL = {"data", "workdirs", "build", "__pycache__"}  # .gitignore'd

# Ways the code has cited the project's shared specification, which is not part of the repository.
OUTSIDE_CITATIONS = [
    re.compile(r"\.\./shared"),
    re.compile(r"shared/spec"),
    re.compile(r"/work/(?:shared|notes)"),
    re.compile(r"smallbignet\.md", re.IGNORECASE),
    re.compile(r"environment-notes\.md"),
    re.compile(r"\banchors\.md"),
    re.compile(r"\bspec,? (?:section|§)", re.IGNORECASE),
    re.compile(r"\bspec \d"),
    re.compile(r"\bthe spec\b", re.IGNORECASE),
    re.compile(r"§"),
]
# A citation of a document of the repository, with an optional section anchor: docs/model.md#variants.
DOC_CITATION = re.compile(r"(?<![\w./:-])(docs/[\w.-]+\.md|README\.md|BENCHMARKS\.md)(#[\w-]+)?")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _text_files() -> list[str]:
    paths = [os.path.join(ROOT, name) for name in CODE_FILES]
    for top in CODE_DIRS:
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            paths += [os.path.join(folder, f) for f in files if os.path.splitext(f)[1] in TEXT_SUFFIXES]
    return sorted(p for p in paths if os.path.abspath(p) != THIS_FILE)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(markdown_path: str) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", _read(markdown_path), flags=re.MULTILINE)
    return {anchor(h) for h in headings}


def _section(markdown: str, heading: str) -> str:
    """The text under `## heading`, up to the next heading of level 2."""
    start = markdown.index(f"## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end >= 0 else len(markdown)]


def _backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_nothing_cites_a_document_outside_the_repository():
    found = []
    for path in _text_files():
        for n, line in enumerate(_read(path).splitlines(), start=1):
            if any(pattern.search(line) for pattern in OUTSIDE_CITATIONS):
                found.append(f"{_rel(path)}:{n}: {line.strip()}")
    assert not found, "cite docs/... (in this repository) instead of:\n" + "\n".join(found)


def test_every_cited_document_and_section_exists():
    cited, missing = 0, []
    for path in _text_files():
        for n, line in enumerate(_read(path).splitlines(), start=1):
            for target, section in DOC_CITATION.findall(line):
                cited += 1
                file = os.path.join(ROOT, target)
                if not os.path.isfile(file):
                    missing.append(f"{_rel(path)}:{n}: {target} does not exist")
                elif section and section[1:] not in _anchors(file):
                    missing.append(f"{_rel(path)}:{n}: {target} has no section {section}")
    assert cited > 20  # the code does cite the documents
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize(
    "document",
    ["README.md", "BENCHMARKS.md"]
    + [f"docs/{f}" for f in sorted(os.listdir(os.path.join(ROOT, "docs"))) if f.endswith(".md")],
)
def test_links_between_documents_resolve(document):
    path = os.path.join(ROOT, document)
    broken = []
    for n, line in enumerate(_read(path).splitlines(), start=1):
        for link in MARKDOWN_LINK.findall(line):
            if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
                continue
            target, _, section = link.partition("#")
            file = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
            if not file.startswith(ROOT + os.sep) or not os.path.exists(file):
                broken.append(f"{document}:{n}: {link}: no such file in the repository")
            elif section and file.endswith(".md") and section not in _anchors(file):
                broken.append(f"{document}:{n}: {link}: no such section")
    assert not broken, "\n".join(broken)


def test_architecture_module_map_lists_every_module_of_the_package():
    text = _read(os.path.join(ROOT, "docs", "architecture.md"))
    listed = set(re.findall(r"`(smallbig_jax/[\w/]+\.py)`", text))
    modules = set()
    for folder, dirs, files in os.walk(os.path.join(ROOT, "smallbig_jax")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        modules |= {_rel(os.path.join(folder, f)) for f in files if f.endswith(".py")}
    assert not modules - listed, f"modules missing from docs/architecture.md: {sorted(modules - listed)}"
    assert not listed - modules, f"docs/architecture.md lists modules that do not exist: {sorted(listed - modules)}"


def test_readme_points_to_the_module_map_instead_of_keeping_its_own():
    readme = _read(os.path.join(ROOT, "README.md"))
    layout = _section(readme, "Layout")
    assert "](docs/architecture.md)" in layout and "| `" not in layout  # a link, not a second table to drift


def test_architecture_lists_every_top_level_entry_and_the_files_of_its_folders():
    """The "Around the package" table of docs/architecture.md: every path it names exists, every top-level entry of
    the repository is named, and the rows of `scripts/`, `benchmarks/` and `docs/` name each file there."""
    text = _read(os.path.join(ROOT, "docs", "architecture.md"))
    start = text.index("Around the package:")
    rows = [line.split("|")[1:-1] for line in text[start:].splitlines() if line.startswith("| `")]
    named, problems = set(), []
    for path_cell, what_cell in rows:
        for name in _backticked(path_cell):  # `Makefile`, `.ci/run`, `pyproject.toml`
            named.add(name.rstrip("/").split("/")[0])
            if not os.path.exists(os.path.join(ROOT, name)):
                problems.append(f"docs/architecture.md names {name}, which does not exist")
        folder = _backticked(path_cell)[0].rstrip("/")
        if folder in ("scripts", "benchmarks", "docs"):
            files = {
                f
                for f in os.listdir(os.path.join(ROOT, folder))
                if f.endswith((".py", ".sh", ".md")) and f != "architecture.md"
            }
            problems += [f"docs/architecture.md omits {folder}/{f}" for f in sorted(files) if f not in what_cell]
    top_level = {e for e in os.listdir(ROOT) if not e.startswith(".") and not e.endswith(".egg-info")}
    ignored = IGNORED_TOP_LEVEL | {"smallbig_jax", "README.md"}  # the package: the module map above
    problems += [f"docs/architecture.md omits {e}" for e in sorted(top_level - ignored - named)]
    assert not problems, "\n".join(problems)


# --- The numbers the documents state are the code's ----------------------------------------------------------------

MODEL_NAMES = {  # how docs/model.md's compute table names the variants
    "`res50`": "res50",
    "SmallBig-23": "smallbig23",
    "SmallBig-R50": "smallbig50",
    "SmallBig-R101": "smallbig101",
    "SmallBig-R50 extra": "smallbig50_extra",
}


def _table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the rows of the first table under `heading` (header and separator rows left out)."""
    lines = _section(markdown, heading).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.split("|")[1:-1]])
    return rows


def _int(text: str) -> int:
    return int(text.replace(",", ""))


@functools.cache
def _params(variant: str, num_classes: int) -> int:
    from flax import nnx

    from smallbig_jax.models import build_model, count_params

    return count_params(nnx.eval_shape(lambda: build_model(variant, num_classes)))


@functools.cache
def _gmacs(variant: str, frames: int, size: int) -> float:
    """Multiply-accumulates of one clip, from the traced forward of the full-size model (nothing is computed)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from smallbig_jax.models import build_model
    from smallbig_jax.summary import count_macs

    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(variant, 400)))

    def logits(state, clips):
        model = nnx.merge(graphdef, state)
        model.eval()
        return model(clips)

    clips = jax.ShapeDtypeStruct((1, frames, size, size, 3), jnp.float32)
    return count_macs(jax.make_jaxpr(logits)(state, clips).jaxpr) / 1e9


def test_model_md_parameter_counts_are_the_models():
    rows = _table_rows(_read(os.path.join(ROOT, "docs", "model.md")), "Variants")
    assert len(rows) == 7
    for variant, *_, params in rows:
        assert _params(variant.strip("`"), 400) == _int(params), variant
    assert _params("smallbig50", 174) == 23_907_566  # the Something-Something figure of the same section


def test_model_md_and_readme_macs_are_the_models():
    rows = _table_rows(_read(os.path.join(ROOT, "docs", "model.md")), "Compute")
    checked = 0
    for model, frames, crops, gmacs in rows:
        values = [float(v) for v in gmacs.split(" / ")]
        frame_list = [int(v) for v in frames.split(" / ")] * (len(values) if "/" not in frames else 1)
        crop_list = [int(v) for v in crops.split(" / ")] * (len(values) if "/" not in crops else 1)
        for t, size, value in zip(frame_list, crop_list, values, strict=True):
            assert round(_gmacs(MODEL_NAMES[model], t, size), 2) == value, (model, t, size)
            checked += 1
    assert checked == 12
    readme_rows = _table_rows(_read(os.path.join(ROOT, "README.md")), "What SmallBigNet is")
    for variant, _, _, params, gmacs in readme_rows:
        assert _params(variant.strip("`"), 400) == _int(params), variant
        if gmacs:
            assert round(_gmacs(variant.strip("`"), 8, 224), 2) == float(gmacs), variant
