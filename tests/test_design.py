"""The design's promises, checked: config.py is a leaf, every stage has its workflow rule, no
stage names a particular method or reads a method's options, the package has no import
circle, and nothing below the stages imports them (checked on the import statements
themselves, parsed, not by grep)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from prunebench.pruning import METHODS
from prunebench.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def test_config_is_a_leaf_that_imports_no_registry_and_no_torch():
    code = ("import sys, prunebench.config; "
            "print(sorted(m for m in sys.modules if m.startswith(('prunebench.', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['prunebench.config', 'prunebench.errors']"


def test_every_stage_is_one_workflow_rule_of_the_same_name():
    """The workflow's rules, as Snakemake lists them (the stage rules are made in a loop)."""
    pytest.importorskip("snakemake", reason="the workflow extra is not installed")
    snakemake = Path(sys.executable).parent / "snakemake"
    out = subprocess.run([str(snakemake), "--list-rules"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    rules = set(out.split())
    assert set(STAGES) <= rules, set(STAGES) - rules
    assert "download" in rules and "aggregate" in rules


def test_no_stage_or_plan_branches_on_a_method_name():
    sources = [*(ROOT / "src/prunebench/stages").glob("*.py"), ROOT / "src/prunebench/plan.py",
               ROOT / "src/prunebench/cli.py"]
    for source in sources:
        text = source.read_text()
        for name in METHODS.names():
            compared = rf"""(==|!=|\bin)\s*[(\[{{]?\s*["']{name}["']"""
            assert not re.search(compared, text), f"{source.name} branches on {name!r}"


# ---------------------------------------------------------------- the import graph


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out = {}
    for path in (SRC / "prunebench").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The nodes inside `if TYPE_CHECKING:` blocks: annotations, never executed."""
    skipped = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING"):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The package's modules that `name` imports when it runs: every import statement,
    at module level or inside a function, except those only for type checking. `from a
    import b` imports module `a.b` where that is a module, else (a name defined in) `a`."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    yield f"{base}.{alias.name}"
                elif base in modules:
                    yield base


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: set(imported_modules(name, path, modules)) - {name}
            for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_sees_a_circle_through_a_function_level_import(tmp_path):
    """The check itself: a lazy import inside a function closes a circle too, and an import
    under `if TYPE_CHECKING:` does not."""
    pkg = tmp_path / "prunebench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from prunebench.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from prunebench import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from prunebench.a import f\n")
    modules = {n: pkg / f"{n.split('.')[-1]}.py" for n in ("prunebench.a", "prunebench.b",
                                                           "prunebench.c")}
    graph = {n: set(imported_modules(n, p, modules)) - {n} for n, p in modules.items()}
    assert circles(graph) == [["prunebench.a", "prunebench.b"]]
    assert graph["prunebench.c"] == set()


def test_the_package_has_no_import_circle():
    assert circles(import_graph()) == []


# What plans and executes sits above the stages; what a run is, and the libraries of pruning,
# training, data, models and metrics, sit below them and never import upward.
ABOVE_STAGES = ("prunebench.stages", "prunebench.executor", "prunebench.plan", "prunebench.cli",
                "prunebench.launcher", "prunebench.analysis", "prunebench.sources",
                "prunebench.status")


def test_nothing_below_the_stages_imports_them_or_the_executor():
    """`stacking` sits beside the planner (it reads the stages' stack recipes, which it is
    handed); everything else outside ABOVE_STAGES is below the stages."""
    graph = import_graph()
    below = [m for m in graph if not m.startswith(ABOVE_STAGES) and m != "prunebench.stacking"]
    assert "prunebench.runs" in below and "prunebench.training.loop" in below
    for module in below:
        upward = {t for t in graph[module] if t.startswith(ABOVE_STAGES)}
        assert not upward, f"{module} imports {sorted(upward)}"
    # Stages name the executor only for type checking: it is above them.
    for module in (m for m in graph if m.startswith("prunebench.stages")):
        assert "prunebench.executor" not in graph[module], module


def test_planning_modules_never_import_the_executor():
    """Planning (the Snakemake process) must not reach the code that claims devices."""
    graph = import_graph()
    reach, todo = set(), ["prunebench.plan"]
    while todo:
        for target in graph[todo.pop()] - reach:
            reach.add(target)
            todo.append(target)
    assert "prunebench.executor" not in reach


# ---------------------------------------------------------------- methods own their options


def option_names() -> set[str]:
    return {name for method in METHODS.names() for name in METHODS.get(method).options}


def option_reads(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """Where code reads one of `names` as a key (`x["name"]`, `x.get("name")`, `"name" in
    x`, `getattr(x, "name")`) or as an attribute of something called options
    (`entry.options.name`, `opts.name`). A key computed at run time cannot be seen here;
    the stages have none (they pass a method's options on whole, to its hooks)."""
    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "pop", "setdefault") and node.args
              and isinstance(node.args[0], ast.Constant)):
            key = node.args[0].value
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr",
                                                                                "hasattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            key = node.args[1].value
        elif (isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant)
              and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)):
            key = node.left.value
        elif isinstance(node, ast.Attribute) and node.attr in names:
            owner = node.value
            owner_name = getattr(owner, "attr", getattr(owner, "id", ""))
            if owner_name in ("options", "opts", "o"):
                key = node.attr
        if isinstance(key, str) and key in names:
            found.append((node.lineno, key))
    return found


def test_the_option_check_sees_key_get_and_attribute_reads():
    tree = ast.parse("a = entry.options['rounds']\nb = opts.get('sweep', 1)\n"
                     "c = entry.options.round_epochs\nd = run.description['train']\n"
                     "e = 'rounds' in entry.options\nf = getattr(o, 'sweep')\n")
    assert sorted(option_reads(tree, {"rounds", "sweep", "round_epochs"})) == [
        (1, "rounds"), (2, "sweep"), (3, "round_epochs"), (5, "rounds"), (6, "sweep")]


def test_no_stage_reads_a_method_option_by_name():
    """What only some methods need is a hook the method declares (rounds, a training
    callback, pretraining, iterative levels, a sensitivity sweep), never a stage reading an
    option of one method."""
    names = option_names()
    assert {"rounds", "round_epochs", "reinit_control", "sweep"} <= names
    for source in sorted((SRC / "prunebench/stages").glob("*.py")):
        reads = option_reads(ast.parse(source.read_text()), names)
        assert not reads, f"{source.name} reads method options {reads}"
