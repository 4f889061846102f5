"""The shape of the code: no import cycles between modules (function-local imports included), formatting and
lint are ruff's (the version pinned in requirements.txt), no oversized modules without a stated reason."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("haba_core", "workbench", "bench")
# Sized too, but outside the import graph: scripts/ holds one-off probes (programs, not a package; the studies are
# bench modules).
SIZED = (*PACKAGES, "scripts")


def modules(packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    out = {}
    for pkg in packages:
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


def ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The venv's ruff (the one requirements.txt pins), in the repository with pyproject.toml's settings."""
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=cwd, capture_output=True, text=True)


def test_ruff_is_the_pinned_version():
    pinned = re.search(r"^ruff==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert pinned, "requirements.txt must pin ruff (ruff==X.Y.Z): another version formats differently"
    assert ruff("--version").stdout.split() == ["ruff", pinned[1]], "run `make setup` to install the pinned ruff"


def test_the_code_is_ruff_formatted_and_lint_clean():
    fmt = ruff("format", "--check", ".")
    assert fmt.returncode == 0, f"ruff format would change these files (run `make format`):\n{fmt.stdout}{fmt.stderr}"
    lint = ruff("check", "--output-format", "concise", ".")
    assert lint.returncode == 0, f"ruff check finds (run `make format`, then fix the rest):\n{lint.stdout}{lint.stderr}"


# A formatter escape (fmt: skip, fmt: off) is for a genuine table, a literal laid out in columns that formatting would
# destroy; a module too long once formatted wants code moved to its owner, not lines packed.
MAX_FMT_SKIPS = 10


def python_files() -> list[Path]:
    return [ROOT / "app.py", *(f for top in (*SIZED, "tests") for f in sorted((ROOT / top).rglob("*.py")))]


def test_few_formatter_escapes():
    found = [
        f"{f.relative_to(ROOT)}:{i}"
        for f in python_files()
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if re.search(r"#\s*fmt:\s*(skip|off)", line)
    ]
    listing = "\n".join(found)
    assert len(found) <= MAX_FMT_SKIPS, f"{len(found)} formatter escapes (at most {MAX_FMT_SKIPS}):\n{listing}"


# Modules over LIMIT lines once formatted, each with its reason and a cap it may not grow past (a ratchet: shrink,
# never grow). Covers the packages, bench/ and scripts/.
LIMIT = 400
LARGE = {
    "haba_core/methods/experts.py": (415, "expert training: its config, versioned file format and resume"),
    "workbench/newrun.py": (470, "the New run form model: field specs from every config dataclass"),
    "haba_core/evaluate.py": (465, "evaluation in memory and of a run folder in cells (trainers in training.py)"),
    "haba_core/runfolder.py": (
        490,
        "every run-folder file's name, path, reader and writer (the engine's, evaluation's, the app's)",
    ),
    "bench/speed.py": (515, "issue #14's speed table: one run times every workload and writes the one table"),
}


def formatted_sizes(tmp: Path) -> dict[str, int]:
    """Line counts of every module and script as `ruff format` writes it (one ruff run over a copy)."""
    files = list(modules(SIZED).values())
    for f in files:
        (tmp / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, tmp / f.relative_to(ROOT))
    done = ruff("format", "--config", str(ROOT / "pyproject.toml"), ".", cwd=tmp)
    assert done.returncode == 0, done.stderr
    return {str(f.relative_to(ROOT)): len((tmp / f.relative_to(ROOT)).read_text().splitlines()) for f in files}


def test_modules_stay_small_or_say_why(tmp_path):
    sizes = formatted_sizes(tmp_path)
    over = []
    for path, n in sizes.items():
        cap, reason = LARGE.get(path, (LIMIT, ""))
        if n > cap:
            over.append(f"{path} has {n} lines formatted (cap {cap}{': ' + reason if reason else ''})")
    assert not over, "move code to its owner:\n" + "\n".join(over)
    assert set(LARGE) <= set(sizes), "a listed module is gone: drop it from LARGE"


def test_studies_are_imported_as_bench_modules_and_nothing_imports_the_probes():
    """A study is a ``bench`` module (``python -m bench.<name>``), imported as one; ``scripts/`` holds one-off probes
    that the packages and the tests never import, nor reach by putting a folder on ``sys.path``. One module may:
    ``bench/peers/common.py`` runs other projects' scripts, whose own imports need their checkout on the path."""
    found = [
        f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
        for f in python_files()
        if f.relative_to(ROOT).parts[0] != "scripts" and f.relative_to(ROOT).as_posix() != "bench/peers/common.py"
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if re.search(r"\bsys\.path\.(insert|append)\b|^\s*(from|import)\s+scripts\b", line)
    ]
    assert not found, "import studies as bench modules (move a reused script into bench/ with git mv):\n" + "\n".join(
        found
    )


# One owner per file format: a run folder's file names are haba_core.runfolder's (its constants and the functions that
# name a path, like RF.synset_path); elsewhere a name may appear in a message to the user, never in a path.
RUN_FOLDER_CODE = (*SIZED, "app.py")
NAME_OWNER = "haba_core/runfolder.py"


def run_folder_names() -> set[str]:
    """Every file or folder name haba_core.runfolder defines (its upper-case string constants), and their parts."""
    tree = ast.parse((ROOT / NAME_OWNER).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
            value = node.value
            if isinstance(value, ast.JoinedStr):  # MATRIX_CSV = f"{EVAL_DIR}/matrix.csv"
                value = value.values[-1]
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                names.update(p for p in value.value.split("/") if p)
    return names


def path_uses(line: str, names: set[str]) -> list[str]:
    """The run-folder names ``line`` uses in a path: ``/ "name"``, ``"name" /``, an argument of ``Path(...)`` or
    ``joinpath(...)``, or the end of a path-like literal (``"runs/x/name"``); a message ("no config.json") is none."""
    found = []
    for n in sorted(names):
        q = rf"""["']{re.escape(n)}["']"""
        patterns = (
            rf"/\s*{q}",
            rf"{q}\s*/(?!/)",
            rf"\b(Path|PurePath|joinpath)\([^()]*{q}",
            rf"""["'][^"'\s]*/{re.escape(n)}["']""",
        )
        if any(re.search(p, line) for p in patterns):
            found.append(n)
    return found


def test_the_path_check_tells_paths_from_messages():
    names = {"config.json", "eval"}
    assert path_uses('cfg = io.read_json_strict(run / "config.json")', names) == ["config.json"]
    assert path_uses('p = Path(run, "eval")', names) == ["eval"]
    assert path_uses('run = f"runs/{cell}/run/config.json"', names) == ["config.json"]
    assert path_uses('raise HabaError(f"{run} has no config.json; pass --run")', names) == []
    assert path_uses('ev = cfg["eval"]', names) == []


def test_run_folder_file_names_only_in_runfolder():
    names = run_folder_names()
    assert {"config.json", "status.json", "synset.safetensors", "eval", "matrix.csv", "spec.json"} <= names
    found = []
    for top in RUN_FOLDER_CODE:
        for f in sorted((ROOT / top).rglob("*.py")) if (ROOT / top).is_dir() else [ROOT / top]:
            rel = f.relative_to(ROOT).as_posix()
            if rel == NAME_OWNER:
                continue
            for i, line in enumerate(f.read_text().splitlines(), 1):
                code = line.split("#", 1)[0] if not line.lstrip().startswith(("f'", 'f"', "'", '"')) else line
                for n in path_uses(code, names):
                    found.append(f"{rel}:{i}: {n!r} as a path ({line.strip()})")
    assert not found, "run-folder file names belong to haba_core/runfolder.py (its constants and path functions):\n" + (
        "\n".join(found)
    )
