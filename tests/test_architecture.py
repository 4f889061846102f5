"""The shape of the code: no import cycles between modules (function-local imports included), no oversized
modules without a stated reason."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("haba_core", "workbench")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> modules it imports anywhere in its body; a package also imports each of its submodules
    (``haba_core.methods`` and ``haba_core.synsets`` import every module they hold)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m:
                    graph[m].add(t)
        if f.name == "__init__.py" and "pkgutil.iter_modules" in f.read_text():  # imports all it holds
            graph[m] |= {s for s in mods if s.rpartition(".")[0] == m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


# Modules over LIMIT lines, each with its reason and a cap it may not grow past (a ratchet: shrink, never grow).
LIMIT = 400
LARGE = {
    "haba_core/methods/experts.py": (415, "expert training: its config, versioned file format and resume"),
    "workbench/newrun.py": (470, "the New run form model: field specs from every config dataclass"),
    "haba_core/evaluate.py": (465, "evaluation in memory and of a run folder in cells (trainers in training.py)"),
    "haba_core/runfolder.py": (480, "every run-folder file's name, reader and writer (the engine's, evaluation's)"),
}


def test_modules_stay_small_or_say_why():
    sizes = {str(f.relative_to(ROOT)): len(f.read_text().splitlines()) for f in modules().values()}
    for path, n in sizes.items():
        cap, reason = LARGE.get(path, (LIMIT, ""))
        assert n <= cap, f"{path} has {n} lines (cap {cap}{': ' + reason if reason else ''}); split it"
    assert set(LARGE) <= set(sizes), "a listed module is gone: drop it from LARGE"
