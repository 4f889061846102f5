"""The tutorials in notebooks/: committed clean, and every one executes headless with tiny settings.

Each notebook has a cell tagged ``parameters`` (papermill's convention). The execution test inserts a cell
after it that overrides those values (``SMALL = True`` on the generated ``toy`` dataset, runs under the test's
temporary folder), executes the notebook with nbclient in a fresh kernel from this interpreter, and fails
on the first cell that raises.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300

# What each notebook runs with in CI; every name must exist in its parameters cell.
COMMON = {"DATASET": "toy", "SMALL": True, "THREADS": 1}
TEST_PARAMETERS: dict[str, dict] = {
    "01_haba_in_ten_minutes": {},
    "02_one_factorization_any_backend": {},
    "03_cross_architecture_evaluation": {},
}


def parameters_cell(nb) -> int:
    """Index of the cell tagged ``parameters``."""
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    raise AssertionError("no cell tagged 'parameters'")


def inject_parameters(nb, params: dict) -> None:
    """Insert a cell after the ``parameters`` cell that assigns ``params`` (papermill's injected-parameters)."""
    i = parameters_cell(nb)
    declared = nb.cells[i].source
    for name in params:
        assert f"\n{name} =" in "\n" + declared, f"{name} is not in the parameters cell"
    source = "# injected by tests/test_notebooks.py\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, cell)


def execute_notebook(path: Path, params: dict, workdir: Path, timeout: int = CELL_TIMEOUT_S):
    """Execute ``path`` with ``params`` injected, kernel cwd ``workdir``; returns the executed notebook.

    Raises ``nbclient.exceptions.CellExecutionError`` on the first cell that raises.
    """
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    inject_parameters(nb, params)
    # no PYTHONPATH: the kernel finds haba_core and workbench because the project is installed (`make` does it)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def test_there_are_three_tutorials():
    assert [p.stem for p in NOTEBOOKS] == sorted(TEST_PARAMETERS), "update TEST_PARAMETERS for new notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_clean(path: Path):
    """No outputs or execution counts; a parameters cell; the first cell states the run time on this machine."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs; strip them before committing"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    assert "parameters" in nb.cells[parameters_cell(nb)].metadata["tags"]
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "run time on this machine" in first.source.lower()
    assert "not measured" not in first.source
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert not any("sys.path" in c.source or "PYTHONPATH" in c.source for c in nb.cells if c.cell_type == "code"), (
        f"{path.name}: no path tricks; the project is installed (pip install -e .)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_executes_with_small_settings(path: Path, tmp_path: Path):
    params = {**COMMON, "RUNS_DIR": str(tmp_path / "runs"), **TEST_PARAMETERS[path.stem]}
    t0 = time.perf_counter()
    nb = execute_notebook(path, params, tmp_path)
    seconds = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    assert any((tmp_path / "runs").iterdir()), "the notebook wrote no run under RUNS_DIR"
    print(f"{path.name}: {seconds:.1f} s", file=sys.stderr)
