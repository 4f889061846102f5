"""The app's pages, a registry like the engine's datasets, nets, methods and synset kinds.

Each file in ``workbench/app_pages/`` declares itself in one line, ``PAGE = AppPage(title=..., icon=..., order=...)``,
and importing this module registers every such file in :data:`PAGES` under the file's name, which is also the page's
URL (``live.py`` is ``/live``). ``app.py`` builds the navigation from :func:`ordered_pages`, so adding a page is adding
its file.

A page file is a Streamlit script: running it draws the page. Its declaration is therefore read from the file's syntax
tree (the call's arguments must be literals), never by running the file; when Streamlit runs the page, the same line
builds the same :class:`AppPage`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from haba_core.errors import ConfigError
from haba_core.registry import Registry

PAGES_DIR = Path(__file__).parent / "app_pages"
DECLARATION = "PAGE = AppPage(title=..., icon=..., order=...)"


@dataclass(frozen=True)
class AppPage:
    """How the navigation shows a page: its ``title``, its ``icon`` (``":material/<name>:"``) and its place
    (``order``: lowest first, and the lowest is the page the app opens on). ``path`` is the page's script, set when
    the file is registered."""

    title: str
    icon: str
    order: int
    path: Path | None = None


PAGES: Registry[AppPage] = Registry("app page")


def _declaration(node: ast.stmt) -> ast.Call | None:
    """The call of a top-level ``PAGE = AppPage(...)`` (or ``PAGE = <module>.AppPage(...)``), else None."""
    if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
        return None
    if [getattr(t, "id", None) for t in node.targets] != ["PAGE"]:
        return None
    func = node.value.func
    return node.value if getattr(func, "id", None) == "AppPage" or getattr(func, "attr", None) == "AppPage" else None


def read_declaration(path: Path) -> AppPage:
    """The ``PAGE = AppPage(...)`` that the page file ``path`` declares, read without running the file."""
    path = Path(path)
    calls = [c for c in map(_declaration, ast.parse(path.read_text(), filename=str(path)).body) if c is not None]
    if len(calls) != 1:
        raise ConfigError(f"{path} declares {len(calls) or 'no'} pages: it needs one `{DECLARATION}`.")
    try:
        fields = dict(zip(("title", "icon", "order"), map(ast.literal_eval, calls[0].args), strict=False))
        fields.update({k.arg: ast.literal_eval(k.value) for k in calls[0].keywords})
        return AppPage(**fields, path=path.resolve())
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: its page declaration must read `{DECLARATION}` with literal values ({e}).") from e


def register_pages(directory: Path = PAGES_DIR) -> list[str]:
    """Register every page file of ``directory`` (``*.py``, except names starting with ``_``) under its file name."""
    names = []
    for path in sorted(Path(directory).glob("*.py")):
        if not path.name.startswith("_"):
            page = read_declaration(path)
            PAGES.register(path.stem, label=page.title)(page)
            names.append(path.stem)
    return names


def ordered_pages() -> list[AppPage]:
    """Every registered page in navigation order (by ``order``, then name); the first is the default page."""
    return [PAGES.get(n) for n in sorted(PAGES.list(), key=lambda n: (PAGES.get(n).order, n))]


register_pages()
