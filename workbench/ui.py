"""Streamlit helpers shared by the pages: page links, session keys, run picker, cached loaders (the pages themselves
register in ``workbench.pages``).

Session keys are namespaced ``<page>.<name>``; the only key shared between pages is :data:`SELECTED_RUN`,
and it is written only by :func:`remember_run`. Nothing here keeps module-level mutable state: caches are
Streamlit's (``st.cache_resource`` / ``st.cache_data``), keyed by file path and modification time.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from haba_core import runfolder as RF
from workbench import catalog as C
from workbench import runs as R

SELECTED_RUN = "wb.run"
POLL_S = 2.0
STATE_COLORS = {
    "queued": "gray",
    "running": "blue",
    "finished": "green",
    "failed": "red",
    "cancelled": "orange",
    R.DIED: "red",
}


def page_path(file: str) -> str:
    """Path of a page file relative to app.py (what st.Page / st.switch_page / st.page_link take)."""
    return f"workbench/app_pages/{file}"


def remember_run(name: str | None) -> None:
    """The one place that sets the run the pages share (Live, Explorer, Runs, Evaluate)."""
    st.session_state[SELECTED_RUN] = name


def badge(state: str) -> str:
    return f":{STATE_COLORS.get(state, 'gray')}[**{state}**]"


def no_runs(what: str = "No runs yet.") -> None:
    st.info(
        f"{what} Start one on the **New run** page; runs are kept in `{R.runs_dir()}`. The runs of `make demo`, "
        "`make bench`, the studies and the notebooks show up here too.",
        icon=":material/info:",
    )
    st.page_link(page_path("new_run.py"), label="New run", icon=":material/add_circle:")


@st.cache_resource(show_spinner=False)
def _run_cache() -> dict:
    """One memo of the bench's run folders for every session (``workbench.catalog``: by folder and file times)."""
    return {}


def all_runs() -> list[R.Run]:
    """Every run the pages show: the app's own and, read-only, those the bench, its demo and the studies made."""
    return C.all_runs(cache=_run_cache())


def read_only_note(run: R.Run) -> None:
    """Why the app leaves a run the bench owns alone (nothing for the app's own runs)."""
    if run.read_only:
        st.info(f"**Read-only here**: {run.origin.reason}.", icon=":material/lock:")


def run_picker(runs: list[R.Run], page: str, label: str = "Run", show_state: bool = False) -> R.Run | None:
    """A selectbox over ``runs`` that starts on (and updates) the run the pages share."""
    if not runs:
        return None
    names = [r.name for r in runs]
    key = f"{page}.run"
    wanted = st.session_state.get(SELECTED_RUN)
    if key in st.session_state and st.session_state[key] not in names:
        del st.session_state[key]
    if key not in st.session_state and wanted in names:
        st.session_state[key] = wanted
    by_name = {r.name: r for r in runs}
    fmt = (lambda n: f"{by_name[n].label}: {by_name[n].state}") if show_state else (lambda n: by_name[n].label)
    name = st.selectbox(
        label, names, key=key, format_func=fmt, on_change=lambda: remember_run(st.session_state.get(key))
    )
    return by_name.get(name)


def status_line(run: R.Run) -> None:
    """State, progress and time left of a run, in one line plus a progress bar."""
    parts = [badge(run.state), f"step {run.step} / {run.iterations}"]
    spi = run.status.get("sec_per_iter")
    if isinstance(spi, (int, float)):
        parts.append(f"{spi:.2f} s/iteration")
    if run.eta_s is not None:
        parts.append(f"about {R.format_duration(run.eta_s)} left")
    st.markdown(" · ".join(parts))
    st.progress(run.progress)


def show_error(run: R.Run) -> None:
    """A failed run's error, with its traceback and the end of its log."""
    if not run.error:
        return
    first, _, rest = str(run.error).partition("\n")
    st.error(f"**{run.state}**: {first}", icon=":material/error:")
    with st.expander("Details (traceback and log)"):
        if rest.strip():
            st.code(rest.strip(), language="text")
        log = R.tail(run.path / RF.LOG)
        if log:
            st.code(log, language="text")
        if run.state == R.DIED:
            then = run.origin.reason or "resume it from the Runs page"
            st.caption(f"The process is gone without marking the run finished; {then}.")


@st.cache_resource(max_entries=8, show_spinner=False)
def _load_synset(path: str, mtime: float):
    return R.load_snapshot(Path(path))


def load_synset(path: Path):
    """A synset file, loaded once per (path, modification time); raises CheckpointError for bad files."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = -1.0
    return _load_synset(str(path), mtime)


def snapshot_choices(run: R.Run) -> dict[str, Path]:
    """{label: file}: every snapshot by step, plus the final set."""
    out = {f"step {s}": p for s, p in R.snapshots(run).items()}
    final = R.final_synset_path(run)
    if final is not None:
        out["final"] = final
    return out


RAY_KEY = "wb.ray_address"  # the address the pages share (widget state is dropped when a page is left)
RAY_INPUT = "wb.ray_address_input"


def cluster_address() -> str | None:
    """The Ray cluster jobs go to: the sidebar's address (prefilled from ``$RAY_ADDRESS``), None for this machine."""
    import os

    from workbench.jobs import RAY_ENV

    if RAY_KEY not in st.session_state:
        st.session_state[RAY_KEY] = os.environ.get(RAY_ENV, "")
    st.session_state[RAY_INPUT] = st.session_state[RAY_KEY]  # seed the widget on every page

    def keep() -> None:
        st.session_state[RAY_KEY] = st.session_state[RAY_INPUT]

    st.sidebar.text_input(
        "Ray cluster address",
        key=RAY_INPUT,
        on_change=keep,
        placeholder="empty: run on this machine",
        help="host:port of a Ray cluster (needs `pip install -r requirements-ray.txt`). Evaluations and MTT experts "
        "launched from here then run their tasks there; progress, cancel and failed cells work as for local jobs.",
    )
    return str(st.session_state[RAY_KEY]).strip() or None
