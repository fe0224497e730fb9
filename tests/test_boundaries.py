"""The layout's rules, read off the code with `ast` (nothing is imported or run):

- stages import libraries, never each other: no import from one stage package (evolve, train, eval,
  serve, rl) into another, and none from a library package (data, benchmarks, inference, training) into a stage;
- no import circle between raywiz's modules;
- the run directory's file names are spelled in raywiz/artifacts.py only: everyone else asks it.

Function-local imports count for both rules: a lazy import is still a dependency, and two modules
that import each other, one of them lazily, are still one tangle to a reader (main's train.engine <->
train.fsdp2 was such a circle). Imports under ``if TYPE_CHECKING:`` never run and count for neither.
A package's ``__init__`` importing its own submodules is how packages are built, not a circle.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "raywiz"
STAGES = {"evolve", "train", "eval", "serve", "rl"}
LIBRARIES = {"data", "benchmarks", "inference", "training"}



@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(name: str, node: ast.AST, is_package: bool) -> list[str]:
    """The raywiz modules an import statement loads (a name imported from a package may be a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = name if is_package else name.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        base = base.rsplit(".", 1)[0]
    module = node.module if not node.level else ".".join(p for p in (base, node.module) if p)
    subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES]
    return [module, *subs]


def imports_of(name: str, path: Path) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(name, child, path.name == "__init__.py"):
                    if target == "raywiz" or target.startswith("raywiz."):
                        found.append(Import(name, target, child.lineno))
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


ALL_IMPORTS = [imp for name, path in MODULES.items() for imp in imports_of(name, path)]


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES | LIBRARIES) else None


def stage_rule_violations() -> list[Import]:
    bad = []
    for imp in ALL_IMPORTS:
        src, dst = package_of(imp.importer), package_of(imp.imported)
        if dst not in STAGES or src == dst:
            continue
        if src in STAGES or src in LIBRARIES:
            bad.append(imp)
    return bad


def test_no_stage_imports_another_and_no_library_imports_a_stage():
    bad = [f"{i.importer}:{i.line} imports {i.imported}" for i in stage_rule_violations()]
    assert not bad, "stages import libraries, never each other:\n" + "\n".join(bad)


def test_no_library_reaches_a_stage_through_other_modules():
    """data/, benchmarks/ and inference/ never load a stage, not even through a shared module (raywiz.config
    aggregates every stage's config section: a library that imported it would load all the stages)."""
    graph: dict[str, set[str]] = {}
    for imp in ALL_IMPORTS:
        graph.setdefault(imp.importer, set()).add(imp.imported)
    bad = []
    for start in sorted(m for m in MODULES if package_of(m) in LIBRARIES):
        seen, todo = {start}, [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        stages = sorted(m for m in seen if package_of(m) in STAGES)
        if stages:
            bad.append(f"{start} reaches {stages[0]}")
    assert not bad, "libraries reach stages:\n" + "\n".join(bad)


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself): Tarjan's."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return cycles


def import_edges() -> dict[str, set[str]]:
    """importer -> the raywiz modules it imports (module-level or in a function)."""
    edges: dict[str, set[str]] = {}
    for imp in ALL_IMPORTS:
        # `from raywiz.a import b` inside raywiz.a.c names its own package: not an edge of a circle.
        if imp.imported in MODULES and imp.imported != imp.importer and not imp.importer.startswith(imp.imported + "."):
            edges.setdefault(imp.importer, set()).add(imp.imported)
    return edges


def test_import_cycle_detection_finds_a_circle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_between_raywiz_modules():
    cycles = import_cycles(import_edges())
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


# ---------------------------------------------------------------- run-directory file names


def run_directory_file_names() -> set[str]:
    """Every file name artifacts.py gives a run directory, read off RunLayout and CheckpointDir themselves."""
    from raywiz import artifacts
    from raywiz.artifacts import RunLayout

    layout = RunLayout("run")
    ckpt = layout.checkpoint(1)
    paths = [layout.metrics, layout.data_report, layout.best_checkpoint, layout.pipeline_state,
             layout.worker_pid_file(0), layout.trace_file(1, 0), layout.profile_file(1),
             ckpt.train_state, ckpt.rng(0), artifacts.ModelInfo.path(ckpt.hf), artifacts.MANIFEST]
    # Eval's file names join once artifacts has the eval directory type (the evaluation-core change).
    eval_names = {"samples.jsonl", "results.jsonl", "summary.json"}
    return {_normalise(p.rsplit("/", 1)[-1]) for p in paths} | eval_names


def _normalise(text: str) -> str:
    return re.sub(r"\d+", "0", text)  # rank_3.pt and f"rank_{rank}.pt" read alike


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def spelled_names(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) wherever code spells a name as a whole string or as a path's last part (f-strings
    rendered with 0 for each field). Docstrings and messages that merely mention a name do not count."""
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "0" for v in node.values)
            for v in node.values:
                skip.add(id(v))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        else:
            continue
        last = _normalise(text.rsplit("/", 1)[-1])
        if last in names and " " not in text:
            found.append((node.lineno, last))
    return found


def name_rule_violations() -> list[tuple[str, int, str]]:
    names = run_directory_file_names()
    return [(name, line, n) for name, path in MODULES.items() if name != "raywiz.artifacts"
            for line, n in spelled_names(path, names)]


def test_run_directory_file_names_are_spelled_in_artifacts_only():
    bad = [f"{m}:{line} spells {n!r}" for m, line, n in name_rule_violations()]
    assert not bad, "ask raywiz.artifacts (RunLayout, CheckpointDir, ModelInfo, MANIFEST) instead:\n" + "\n".join(bad)


def test_the_name_checker_sees_plain_and_formatted_spellings(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('"""Mentions raywiz.json in a docstring."""\n'
                   'a = "raywiz.json"\n'
                   'b = f"{d}/rng/rank_{r}.pt"\n'
                   'c = "no raywiz.json here"\n')
    assert spelled_names(src, run_directory_file_names()) == [(2, "raywiz.json"), (3, "rank_0.pt")]


@pytest.mark.parametrize("module", ["raywiz.artifacts", "raywiz.config_base", "raywiz.log"])
def test_contract_modules_import_no_stage_or_library(module):
    """The contracts and the leaf modules sit under everything: they import no stage and no library package."""
    bad = [i for i in ALL_IMPORTS if i.importer == module and package_of(i.imported) in STAGES | LIBRARIES]
    assert not bad, bad
